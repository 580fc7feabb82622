"""The documentation's examples run, and the CLI reference is the Typer app's.

Every fenced ``python`` and ``sh`` block of README.md and docs/*.md is an example: the test of its file runs
them in document order in a sandbox folder (the working directory) that holds what the docs name:

* ``demo-out/demo.zarr``, ``demo-out/demo.h5`` and ``demo-out/demo-scenes``: the demo's network on the demo's
  scenes (fewer scenes and units than ``rfstore demo``, the same names);
* ``~/images``, ``~/photos``, ``~/avatar/{geo,lmk}`` (``HOME`` is the sandbox's ``home``), ``broden1_224`` (a
  generated Broden-layout folder) and ``avatarnet.pt`` (a small two-class AlexNet-like model, pickled whole);
* torchvision's cache with a randomly initialised AlexNet in the place of the ``DEFAULT`` weights (no download).

Python blocks run in this process with every warning an error. Shell blocks may hold only ``rfstore``
commands; each runs in this process through the Typer app and must exit 0. An HTML comment right before a
block changes that:

* ``<!-- no-test: REASON -->``: the block is not run (it needs a cluster, a download, hours...);
* ``<!-- test-run-options: ARGS (why) -->``: ARGS are appended to each ``rfstore run`` of the block (fewer
  units, to keep the suite fast).
"""
from __future__ import annotations

import re
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"sh", "bash", "shell", "console"}
#: at most this many blocks may be left out: every other example runs
MAX_NOT_TESTED = 10

_FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
_MARK = re.compile(r"^<!--\s*([\w-]+)\s*:\s*(.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marks: dict[str, str]

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def example(self) -> bool:
        return self.lang == "python" or self.lang in SHELL


def read_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the ``<!-- name: value -->`` marks right before each."""
    lines = path.read_text().splitlines()
    blocks, marks, i = [], {}, 0
    while i < len(lines):
        line = lines[i].strip()
        mark, fence = _MARK.match(line), _FENCE.match(line)
        if mark:
            marks[mark.group(1)] = mark.group(2)
        elif fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence.group(1)), None)
            assert end is not None, f"{path.name}:{i + 1}: unclosed code block"
            blocks.append(Block(path, i + 1, fence.group(2).lower(), "\n".join(lines[i + 1:end]), marks))
            marks, i = {}, end
        elif line:
            marks = {}  # a mark applies to the block right after it (blank lines allowed in between)
        i += 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for path in DOCS for block in read_blocks(path)]


# -- the marks and the CLI reference ----------------------------------------------------------------------------------
def test_every_example_runs_or_says_why_not() -> None:
    examples = [b for b in all_blocks() if b.example]
    assert len(examples) >= 20  # the parser found the docs' examples
    unknown = [f"{b.where}: {name}" for b in all_blocks() for name in b.marks
               if name not in ("no-test", "test-run-options")]
    assert not unknown, f"unknown marks: {unknown}"
    left_out = [b for b in examples if "no-test" in b.marks]
    assert all(b.marks["no-test"] for b in left_out), "a no-test mark names its reason"
    assert len(left_out) <= MAX_NOT_TESTED, [b.where for b in left_out]
    stray = [b.where for b in all_blocks() if b.marks and not b.example]
    assert not stray, f"marks before blocks that are not examples: {stray}"
    for block in examples:
        if block.lang in SHELL and "no-test" not in block.marks:
            for command in shell_commands(block.code):
                assert command[0] == "rfstore", f"{block.where}: only rfstore commands run here: {command}"


def test_cli_reference_is_current() -> None:
    """docs/cli.md is what scripts/cli_reference.py writes from the Typer app (rerun it after changing an option)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import cli_reference
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    expected = cli_reference.render()
    assert (ROOT / "docs" / "cli.md").read_text() == expected, \
        "docs/cli.md is not current: run python scripts/cli_reference.py"


def test_cli_reference_covers_every_command_and_option() -> None:
    import typer.main

    from rfstore.cli import app

    text = (ROOT / "docs" / "cli.md").read_text()
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f"## rfstore {name}\n" in text
        section = text.split(f"## rfstore {name}\n")[1].split("\n## rfstore ")[0]
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert f"`{param.opts[0]}`" in section, (name, param.opts[0])


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped, spaces to hyphens)."""
    text = re.sub(r"^(`{3,}).*?^\1", "", path.read_text(), flags=re.M | re.S)  # no headings inside code blocks
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
            for title in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_readme_links_and_layout() -> None:
    """Relative links lead to files and headings that exist; the layout section names every package of the tree."""
    for path in DOCS:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", path.read_text()):
            if re.match(r"\w+://", target):
                continue
            linked = (path.parent / target) if target else path
            assert linked.exists(), f"{path.name}: broken link {target}"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(linked), f"{path.name}: no heading #{anchor} in {linked.name}"
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout")[1]
    packages = sorted(str(p.parent.relative_to(ROOT / "rfstore")) for p in (ROOT / "rfstore").rglob("__init__.py")
                      if p.parent != ROOT / "rfstore")
    for package in packages:
        assert re.search(rf"^\s+{re.escape(package)}/\s", layout, re.M), f"layout lacks rfstore/{package}/"
    assert len(readme.splitlines()) < 200, "the README stays short: details go to docs/"


def test_tests_named_in_the_docs_exist() -> None:
    """``tests/FILE.py::name`` and `` `test_name` `` in the docs name a test that is there (the guide cites them)."""
    sources = {p.name: p.read_text() for p in (ROOT / "tests").glob("*.py")}
    for path in DOCS:
        text = path.read_text()
        for file, name in re.findall(r"tests/(\w+\.py)(?:::(\w+))?", text):
            assert file in sources, f"{path.name}: no tests/{file}"
            assert not name or re.search(rf"def {name}\b", sources[file]), f"{path.name}: no {name} in tests/{file}"
        for name in re.findall(r"`(test_\w+)`", text):
            assert any(re.search(rf"def {name}\b", source) for source in sources.values()), f"{path.name}: no {name}"


# -- running the examples ---------------------------------------------------------------------------------------------
def shell_commands(code: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped, one list of words each."""
    joined = re.sub(r"\\\n", " ", code)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def _expand(word: str, home: Path) -> str:
    return str(home / word[2:]) if word.startswith("~/") else (str(home) if word == "~" else word)


def run_shell(block: Block, home: Path) -> None:
    from typer.testing import CliRunner

    from rfstore.cli import app

    extra = shlex.split(block.marks.get("test-run-options", "").split(" (")[0])
    for command in shell_commands(block.code):
        args = [_expand(word, home) for word in command[1:]]
        if args[:1] == ["run"]:
            args += extra
        began = time.perf_counter()
        result = CliRunner().invoke(app, args)
        print(f"  rfstore {shlex.join(args)}: {time.perf_counter() - began:.1f} s")
        assert result.exit_code == 0, (f"{block.where}: `{shlex.join(command)}` exited {result.exit_code}:\n"
                                       f"{result.output}\n{result.exception!r}")


def run_python(block: Block) -> None:
    code = compile(block.code, block.where, "exec")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an example that warns (a FutureWarning, xarray's metadata warning) fails
        warnings.filterwarnings("ignore", "cached checkpoint", RuntimeWarning)  # the stand-in AlexNet weights
        exec(code, {"__name__": "__docs__"})  # noqa: S102 - the documentation's own examples


@pytest.fixture(scope="session")
def sandbox_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the docs' examples name (see the module docstring), built once."""
    base = tmp_path_factory.mktemp("docs")
    home = base / "home"
    _photos(home / "images", ("beach", "street"), 3, (160, 120), seed=0)
    _photos(home / "photos", ("scenes", "things"), 3, (96, 80), seed=1)
    _photos(home / "avatar", ("geo", "lmk"), 4, (64, 64), seed=2)
    from broden_fixtures import write_broden
    from compare_nets import two_class_alexnet

    write_broden(base / "broden1_224", n_images=10)
    import torch

    torch.save(two_class_alexnet(seed=1), base / "avatarnet.pt")  # the whole module, pickled
    _demo_stores(base / "demo-out")
    _alexnet_default_weights(base / "torch")
    return base


@pytest.fixture
def sandbox(sandbox_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the sandbox as the working directory, HOME its ``home``, torchvision's cache beside it."""
    root = tmp_path / "sandbox"
    shutil.copytree(sandbox_base, root, ignore=shutil.ignore_patterns("torch"), symlinks=True)
    monkeypatch.chdir(root)
    monkeypatch.setenv("HOME", str(root / "home"))
    monkeypatch.setenv("TORCH_HOME", str(sandbox_base / "torch"))
    return root


@pytest.mark.filterwarnings("ignore:cached checkpoint:RuntimeWarning")  # the stand-in for AlexNet's DEFAULT weights
@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_examples_run(path: Path, sandbox: Path) -> None:
    """The file's examples in document order, in one sandbox (a later block may read what an earlier one wrote)."""
    for block in read_blocks(path):
        if not block.example or "no-test" in block.marks:
            continue
        began = time.perf_counter()
        if block.lang == "python":
            run_python(block)
        else:
            run_shell(block, sandbox / "home")
        print(f"{block.where}: {time.perf_counter() - began:.1f} s")  # shown with pytest -rP


# -- the sandbox's contents -------------------------------------------------------------------------------------------
def _photos(root: Path, classes: tuple[str, ...], per_class: int, size: tuple[int, int], seed: int) -> None:
    """Generated scenes, resized and saved as JPEG photos in class folders."""
    from rfstore.demo.scenes import make_scene

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image, _ = make_scene(c, [seed, c, i])
            image.resize(size, Image.BILINEAR).save(root / name / f"{name}_{i}.jpg", quality=90)


def _demo_stores(out: Path) -> None:
    """The demo's network, scenes, K and occluder, in both backends; only features.11 and a few units."""
    import rfstore
    from rfstore.datasets import Preprocessing
    from rfstore.demo.config import DemoConfig
    from rfstore.demo.scenes import write_scene_folder
    from rfstore.models import ModelSpec
    from rfstore.pipeline.stages.init import InitConfig

    demo = DemoConfig()
    scenes = out / "demo-scenes"
    write_scene_folder(scenes, per_class=2, seed=demo.seed)
    size, stride = demo.occluder
    for store, units in (("demo.zarr", slice(0, 8)), ("demo.h5", slice(0, 2))):
        init = InitConfig(model=ModelSpec("rfstore.demo.network:tiny_alexnet_trained", None, 0), data=scenes,
                          name="tiny_alexnet", preprocessing=Preprocessing.tensor(), layers="features.11")
        rfstore.run_pipeline(out / store, rfstore.PipelineConfig(init=init, units=units, options={
            "activations": {"num_workers": 0}, "topk": {"k": demo.k},
            "occlude": {"size": size, "stride": stride, "fill": "zero"}}), say=lambda line: None)


def _alexnet_default_weights(torch_home: Path) -> None:
    """A seeded random AlexNet where torchvision's cache keeps the DEFAULT weights: ``--weights DEFAULT`` loads it
    offline (rfstore warns that its hash is not the official one)."""
    import torch
    import torchvision

    url = torchvision.models.AlexNet_Weights.DEFAULT.url
    path = torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[1]  # torch.hub.get_dir() / checkpoints
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), path)
