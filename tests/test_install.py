"""``pip install .`` into a fresh virtual environment, then a store opened as the docs show, without a warning.

The environment is new (``python -m venv``, no system site-packages) and rfstore goes in with plain
``pip install .``: pip resolves its requirements as it would for anyone. Only in the fast variant (the one
``make test`` runs) torch, torchvision and what they require are taken from this test's own environment
through a ``.pth`` file instead of being unpacked again (5.7 GB and two minutes for the CUDA build), so that
nothing else of this environment (pytest, xarray, h5netcdf, Dask, Captum: the dev extra) is visible there;
``pytest -m slow`` runs the variant that installs torch too (about two minutes on 2 cores, and 5.7 GB of
disk while it runs).

In that environment a Zarr and an HDF5 store are computed; ``rfstore.open(...)[network][layer]`` without the
xarray extra fails in one line that names the extra the README tells to install; after
``pip install 'rfstore[xarray]'`` (as that line says) the README's and the store reference's ways of opening a
store run with every warning an error.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: what ``pip install .`` needs of the repository
SOURCE = ("pyproject.toml", "README.md", "rfstore")
#: the distributions shared with the fresh environment in the fast variant: these and what they require
SHARED_ROOTS = ("torch", "torchvision")


def _requirements_closure(roots: tuple[str, ...]) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``roots`` and, recursively, those they require (markers evaluated)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional requirement that is not installed here
        found[name] = dist
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def _share(dists: list[importlib.metadata.Distribution], folder: Path) -> None:
    """Symbolic links in ``folder`` to every top-level file and folder of ``dists`` (packages, .dist-info, .libs)."""
    folder.mkdir()
    for dist in dists:
        site = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if not (folder / top).exists() and (site / top).exists():
                (folder / top).symlink_to(site / top)


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would let the new environment see this one's packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(extra)
    return env


def _run(args: list[object], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module", params=["shared-torch", pytest.param("fresh", marks=pytest.mark.slow)])
def installed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new virtual environment with rfstore installed by ``pip install .`` (no extra); returns its python."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    source.mkdir()
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    env = base / "env"
    _run([sys.executable, "-m", "venv", env], cwd=base)
    python = env / "bin" / "python"
    if request.param == "shared-torch":
        shared = base / "shared-torch"
        _share(_requirements_closure(SHARED_ROOTS), shared)
        site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=base)
                    .stdout.strip())
        (site / "shared_torch.pth").write_text(f"{shared}\n")
    _run([python, "-m", "pip", "install", "--quiet", "."], cwd=source, timeout=900)
    yield python
    if request.param == "fresh":
        shutil.rmtree(base, ignore_errors=True)  # gigabytes with torch installed: not kept for later runs


def test_plain_install_has_no_dev_packages_and_runs(installed: Path, tmp_path: Path) -> None:
    where = _run([installed, "-c", "import rfstore, sys; print(rfstore.__file__); print(sys.prefix)"], cwd=tmp_path)
    module, prefix = where.stdout.split()
    assert Path(module).is_relative_to(prefix), "rfstore is imported from the new environment, not the source"
    missing = _run([installed, "-c", textwrap.dedent("""
        import importlib.util
        print(" ".join(m for m in ("xarray", "h5netcdf", "dask", "pytest", "captum") if importlib.util.find_spec(m)))
        """)], cwd=tmp_path)
    assert missing.stdout.strip() == "", f"the dev extra leaked into the new environment: {missing.stdout}"
    version = _run([installed.parent / "rfstore", "--version"], cwd=tmp_path)
    assert re.search(r"\d+\.\d+\.\d+", version.stdout)


#: a Zarr and an HDF5 store: the demo's network on 12 of its scenes, features.11, two units
BUILD = """
from pathlib import Path
import rfstore
from rfstore.datasets import Preprocessing
from rfstore.demo.scenes import write_scene_folder
from rfstore.models import ModelSpec
from rfstore.pipeline.stages.init import InitConfig

write_scene_folder(Path("scenes"), per_class=2, seed=0)
for store in ("s.zarr", "s.h5"):
    init = InitConfig(model=ModelSpec("rfstore.demo.network:tiny_alexnet_trained"), data=Path("scenes"), name="net",
                      preprocessing=Preprocessing.tensor(), layers="features.11")
    rfstore.run_pipeline(store, rfstore.PipelineConfig(init=init, units=slice(0, 2), options={
        "activations": {"num_workers": 0}, "topk": {"k": 3}, "occlude": {"size": 10, "stride": 5, "fill": "zero"}}),
        say=lambda line: None)
"""

#: how README.md and docs/store.md open a store
OPEN = """
import rfstore
import xarray as xr

for store in ("s.zarr", "s.h5"):
    ds = rfstore.open(store)["net"]["features.11"]
    assert ds.rf_size.dims == ("unit",)
    print(float(ds.rf_size.mean()), ds.topk_image.sel(unit=1).values)
ds = xr.open_zarr("s.zarr", group="net/features.11")
h5 = xr.open_dataset("s.h5", group="net/features.11", engine="h5netcdf")
assert float(ds.rf_size.mean()) == float(h5.rf_size.mean())
print("opened")
"""


def test_stores_open_as_the_docs_show_after_the_extra_the_error_names(installed: Path, tmp_path: Path) -> None:
    _run([installed, "-c", BUILD], cwd=tmp_path)
    refused = subprocess.run([str(installed), "-c", 'import rfstore; rfstore.open("s.zarr")["net"]["features.11"]'],
                             cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith("ModuleNotFoundError: rfstore.open(...)[network][layer] needs xarray"), message
    install = re.search(r"pip install '(rfstore\[(\w+)\])'", message)
    assert install, message
    readme = (ROOT / "README.md").read_text()
    assert f"pip install '.[{install.group(2)}]'" in readme.split("## Two commands")[0], \
        "the README's install names the extra that rfstore.open asks for"

    _run([installed, "-m", "pip", "install", "--quiet", install.group(1)], cwd=tmp_path, timeout=900)
    opened = _run([installed, "-W", "error", "-c", OPEN], cwd=tmp_path)
    assert opened.stdout.strip().endswith("opened")
    assert "Warning" not in opened.stderr, opened.stderr
