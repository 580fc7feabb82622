"""A researcher's first hour (#11): weights named, ``run`` and ``report`` honouring a selection on an existing
store, options left out taken from what the store recorded, a failed ``init`` leaving nothing, and the errors
a newcomer meets, each in one line with the command that helps."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from conftest import HAND_CNN, write_tiny_folder
from test_networks import SIZE
from rfstore.cli import app
from rfstore.store import open_store
from rfstore.store.layout import layer_group

NETWORK = "hand_cnn"
FIRST_RUN = ("--preprocess", "tensor", "--layers", "1,4", "--k", "3", "--size", "3", "--stride", "1",
             "--workers", "0")


def invoke(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def occluded_units(store: Path, layer: str) -> list[int]:
    """Units of ``layer`` whose discrepancy maps are all computed (no NaN)."""
    with open_store(store) as opened:
        path = f"{layer_group(NETWORK, layer)}/discrepancy"
        if not opened.is_array(path):
            return []
        maps = opened.read(path)
    return [unit for unit in range(maps.shape[0]) if not np.isnan(maps[unit]).any()]


@pytest.fixture
def first_run(tmp_path: Path, tiny_folder: Path) -> Path:
    """A store where only unit 0 of layer ``1`` (and the one unit of layer ``4``) went through every stage."""
    store = tmp_path / "s.zarr"
    result = invoke("run", store, "--model", HAND_CNN, "--data", tiny_folder, *FIRST_RUN, "--units", "0:1")
    assert result.exit_code == 0, result.output
    first_line = result.stderr.splitlines()[0]
    assert first_line.startswith("hand_cnn: ") and first_line.endswith("the factory's weights, seed 0")
    assert occluded_units(store, "1") == [0] and occluded_units(store, "4") == [0]
    return store


def test_run_on_an_existing_store_honours_the_selection_and_reuses_parameters(first_run: Path) -> None:
    # K 3 and the 3 px occluder as recorded, not the defaults (10, 11 px: larger than the 8 px images)
    again = invoke("run", first_run, "--layers", "1", "--units", "1:2")
    assert again.exit_code == 0, again.output
    assert occluded_units(first_run, "1") == [0, 1]
    assert "wait" not in again.stderr  # units left out on purpose are not waiting for anything
    clash = invoke("run", first_run, "--layers", "1", "--units", "1:2", "--k", "5")
    assert clash.exit_code == 1
    message = clash.stderr.splitlines()[-1]
    assert message.startswith("error: ") and "k" in message and "--force" in message


def test_report_follows_the_selection_and_names_the_command_for_missing_units(first_run: Path,
                                                                             tmp_path: Path) -> None:
    only = tmp_path / "only"
    made = invoke("run", first_run, "--layers", "1", "--units", "0:1", "--report", only)
    assert made.exit_code == 0, made.output
    pages = sorted(p.relative_to(only / NETWORK).as_posix() for p in (only / NETWORK).rglob("unit_*.html"))
    assert pages == ["1/unit_0000.html"]
    wider = tmp_path / "wider"
    assert invoke("report", first_run, "--out", wider, "--layers", "1", "--units", "0:2").exit_code == 0
    missing = (wider / NETWORK / "1" / "unit_0001.html").read_text()
    assert f"rfstore occlude {first_run} --layers 1 --units 1" in missing


def test_show_of_a_unit_not_computed_exits_1_with_the_command(first_run: Path, tmp_path: Path) -> None:
    picture = tmp_path / "u1.png"
    result = invoke("show", first_run, "1", "1", "--out", picture)
    assert result.exit_code == 1 and not picture.exists()
    assert "rfstore occlude" in result.stderr and "--layers 1 --units 1" in result.stderr
    assert invoke("show", first_run, "1", "0", "--out", picture).exit_code == 0 and picture.stat().st_size > 0


@pytest.mark.parametrize("bad", [("--layers", "no.such.layer"), ("--data", "nowhere")])
def test_a_failed_init_leaves_nothing_behind(tmp_path: Path, tiny_folder: Path, bad: tuple[str, str]) -> None:
    store = tmp_path / "s.zarr"
    options = {"--model": HAND_CNN, "--data": str(tiny_folder), "--preprocess": "tensor"}
    flag, value = bad
    options[flag] = value if flag != "--data" else str(tmp_path / value)
    result = invoke("init", store, *[item for pair in options.items() for item in pair])
    assert result.exit_code in (1, 2) and result.stderr.count("\n") == 1, result.output
    assert not store.exists() and not (tmp_path / "s.zarr.lock").exists()


def test_a_torchvision_model_without_weights_is_refused(tmp_path: Path, tiny_folder: Path) -> None:
    store = tmp_path / "s.zarr"
    result = invoke("init", store, "--model", "torchvision:alexnet", "--data", tiny_folder)
    assert result.exit_code == 2 and "--weights" in result.stderr and "none" in result.stderr
    assert not store.exists()


def test_files_that_are_not_stores_are_refused_in_one_line(tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("not a store")
    folder_file = tmp_path / "file.zarr"
    folder_file.write_text("a file")
    foreign = tmp_path / "photos.zarr"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    for path, words in ((text, "not an HDF5 file"), (folder_file, "not a Zarr directory"),
                        (foreign, "without zarr.json")):
        result = invoke("status", path)
        assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
        assert words in result.stderr


def test_a_wrong_suffix_is_refused_before_torch_is_imported(tmp_path: Path) -> None:
    code = ("import sys\nfrom rfstore.cli import main\nsys.argv = ['rfstore', 'status', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit as exit:\n    print(exit.code, 'torch' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "RFSTORE_DEBUG"}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.txt")], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.stdout.split() == ["1", "False"], result.stderr
    assert ".zarr" in result.stderr and ".h5" in result.stderr


def test_help_shows_choices_and_the_extra_by_its_name() -> None:
    help_text = invoke("run", "--help").stdout
    assert "pip install 'rfstore[dist]'" in help_text
    assert "imagenet|tensor" in help_text and "<str>" not in help_text.split("--preprocess")[1].split("\n")[0]
    listed = invoke("--help").stdout
    order = [listed.index(f"  {name} ") for name in ("init", "activations", "topk", "occlude", "rf", "segment",
                                                      "dissect")]
    assert order == sorted(order)


def test_patterns_and_types_select_recorded_layers_in_every_stage(first_run: Path, tmp_path: Path) -> None:
    again = invoke("run", first_run, "--layers", "type:ReLU", "--units", "0:2")  # layers 1 and 4 are ReLUs
    assert again.exit_code == 0, again.output
    assert occluded_units(first_run, "1") == [0, 1]
    assert invoke("occlude", first_run, "--layers", "[4]", "--units", "0:1").exit_code == 0
    report = tmp_path / "rep"
    assert invoke("report", first_run, "--out", report, "--layers", "?", "--units", "0:1").exit_code == 0
    assert sorted(p.name for p in (report / NETWORK).iterdir() if p.is_dir()) == ["1", "4"]
    for selection in ("type:Conv2d", "no*"):  # recorded layers only: the convolutions were not recorded
        refused = invoke("occlude", first_run, "--layers", selection)
        assert refused.exit_code == 1 and f"{selection} not in the store; " in refused.stderr
        assert "it records: 1, 4" in refused.stderr


def test_validate_records_the_output_it_found(tmp_path: Path) -> None:
    """Naming the output validate chose by itself is no change; naming another one is."""
    images = write_tiny_folder(tmp_path / "images", n_per_class=2, size=SIZE)
    store = tmp_path / "s.zarr"
    model = f"{Path(__file__).parent / 'test_networks.py'}:namedtuple_net"
    assert invoke("init", store, "--model", model, "--data", images, "--preprocess", "tensor").exit_code == 0
    first = invoke("validate", store, "--output", "aux", "--workers", "0")
    assert first.exit_code == 0 and "class scores: output aux, 2 columns" in first.stdout, first.output
    same = invoke("validate", store, "--output", "1", "--workers", "0")  # position 1 is aux
    assert same.exit_code == 0 and "accuracy" in same.stdout, same.output
    other = invoke("validate", store, "--output", "main", "--workers", "0")
    assert other.exit_code == 1 and "--force" in other.stderr


def test_plan_and_occlude_say_what_the_occluder_cannot_measure(tmp_path: Path, tiny_folder: Path) -> None:
    """8 px images, a 5 px occluder at stride 2: positions 0, 2 leave pixel 7 uncovered; layer 1's RF is 3 px."""
    store = tmp_path / "s.zarr"
    assert invoke("init", store, "--model", HAND_CNN, "--data", tiny_folder, "--preprocess", "tensor",
                  "--layers", "1,4").exit_code == 0
    options = ("--k", "2", "--size", "5", "--stride", "2", "--workers", "0")
    uncovered = "never covers the last 1 row(s) and 1 column(s) of the 8x8 input; a stride that divides 3"
    small = "the theoretical RF of layer(s) 1 is smaller than the 5 px occluder"
    planned = invoke("plan", store, *options)
    assert planned.exit_code == 0 and uncovered in planned.stdout and small in planned.stdout, planned.output
    ran = invoke("run", store, *options)
    assert ran.exit_code == 0 and f"occlude: note: the 5 px occluder at stride 2 {uncovered}" in ran.stderr
    assert f"occlude: note: {small}" in ran.stderr
    fitting = invoke("plan", store, "--k", "2", "--size", "3", "--stride", "1", "--workers", "0")
    assert "note:" not in fitting.stdout, fitting.output
