"""Bad input through the command line: never a lost result, always one clear sentence.

Real files (broken images, symlink loops, decompression bombs, an EXIF-rotated
photo, state_dicts that do not fit, a model file that does not import) and the
real CLI, run in this process (same code path as the ``rfstore`` script from
argument parsing to exit code, without its seconds of imports).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import HAND_CNN, TESTS, write_tiny_folder
from image_fixtures import EXIF_ORIENTATION_TAG, make_bad_files, noisy_rgb_image
from test_reliability import INIT, cli, initialised

from rfstore.datasets import load_rgb
from rfstore.store import open_store


def test_bad_image_files_are_listed_and_good_ones_computed(tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "images", n_per_class=3)
    expected = make_bad_files(folder / "b" / "bad")  # empty, truncated, text, directory.jpg, bombs, loops...
    photo = noisy_rgb_image(16, 8, np.random.default_rng(3))  # stored sideways: 16 wide, 8 high
    exif = photo.getexif()
    exif[EXIF_ORIENTATION_TAG] = 6
    photo.save(folder / "a" / "rotated.jpg", exif=exif.tobytes(), quality=95)
    upright = load_rgb(folder / "a" / "rotated.jpg")
    assert upright.size == (8, 16)
    upright.save(folder / "a" / "upright.png")  # the same pixels, already upright, no EXIF
    Image.open(folder / "a" / "rotated.jpg").convert("RGB").save(folder / "a" / "sideways.png")
    store = tmp_path / "s.h5"
    init = ["init", str(store), "--data", str(folder), "--model", HAND_CNN, "--layers", "1", "--name", "hand",
            "--preprocess", "tensor", "--resize", "8", "--crop", "8"]
    code, err = cli(*init)
    assert code == 0, err
    code, err = cli("activations", str(store), "--workers", "0")
    assert code == 0, err
    code, status = cli("status", str(store))
    assert code == 0
    report = status + err
    for name, reason in expected.items():
        assert f"b/bad/{name}: {reason}" in report, (name, reason, report)
    with open_store(store, "r") as st:
        paths = list(st.read("hand/image_path"))
        errors = st.read("hand/image_error")
        acts = {q: st.read(f"hand/1/{q}") for q in ("act_max", "act_mean", "act_y", "act_x")}
    good = [i for i, p in enumerate(paths) if not p.startswith("b/bad/")]
    assert not any(errors[good]) and not np.isnan(acts["act_max"][good]).any()
    bad = [i for i, p in enumerate(paths) if p.startswith("b/bad/")]
    assert bad and all(errors[bad]) and np.isnan(acts["act_max"][bad]).all()
    rotated, same, sideways = (paths.index(f"a/{n}") for n in ("rotated.jpg", "upright.png", "sideways.png"))
    for q, values in acts.items():  # EXIF rotation applied: the photo is computed upright
        np.testing.assert_array_equal(values[rotated], values[same], err_msg=q)
    assert any(not np.array_equal(values[rotated], values[sideways]) for values in acts.values())


def test_model_spec_that_does_not_import_or_whose_weights_do_not_fit(tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "images", n_per_class=2)
    store = str(tmp_path / "s.zarr")
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('this file is broken')\n")
    code, err = cli("init", store, "--data", str(folder), "--model", f"{broken}:factory")
    assert code == 1 and "RuntimeError: this file is broken" in err and err.count("\n") == 1
    code, err = cli("init", store, "--data", str(folder), "--model", "no_such_package.nets:factory")
    assert code == 1 and "no_such_package" in err and "make sure it is installed" in err

    from tiny_nets import hand_cnn

    state = hand_cnn().state_dict()
    state["0.weight"] = torch.zeros(4, 3, 3, 3)  # wrong shape
    state["9.weight"] = torch.zeros(1)  # unexpected
    del state["3.bias"]  # missing
    weights = tmp_path / "weights.pt"
    torch.save(state, weights)
    code, err = cli("init", store, "--data", str(folder), "--model", HAND_CNN, "--weights", str(weights))
    assert code == 1
    for part in ("missing keys: 3.bias", "unexpected keys: 9.weight",
                 "shape mismatches: 0.weight (4, 3, 3, 3) vs model (2, 3, 3, 3)"):
        assert part in err, err


def test_unknown_layers_list_the_near_matches(tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "images", n_per_class=2)
    code, err = cli("init", str(tmp_path / "s.zarr"), "--data", str(folder), "--model", HAND_CNN,
                    "--preprocess", "tensor", "--layers", "1,44")
    assert code == 1 and "44" in err and "near matches: 4" in err, err
    store = initialised(tmp_path, "zarr", folder)
    code, err = cli("activations", str(store), "--maps", "11", "--workers", "0")
    assert code == 1 and "layer(s) 11 not in the store; near matches: 1" in err, err


def test_units_out_of_range_and_options_that_contradict_the_store(tmp_path: Path) -> None:
    store = initialised(tmp_path, "h5")
    assert cli("activations", str(store), "--workers", "0")[0] == 0
    assert cli("topk", str(store), "--k", "3")[0] == 0
    code, err = cli("topk", str(store), "--k", "4")
    assert code == 1 and "k: stored 3, asked 4" in err and "--force" in err
    code, err = cli("occlude", str(store), "--units", "5:9", "--size", "3", "--device", "cpu")
    assert code == 2 and "--units: 5:9 selects no unit of layer 1, which has units 0..1" in err
    code, err = cli("occlude", str(store), "--units", "3:1")
    assert code == 2  # bad usage
    code, err = cli("init", str(store), "--data", str(tmp_path / "images"), *INIT[:-2], "--name", "hand",
                    "--layers", "1")
    assert code == 1 and "already in" in err and "layers differ" in err and "--force" in err


def test_store_of_another_schema_version_or_another_network(tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "images", n_per_class=2)
    store = initialised(tmp_path, "zarr", folder)
    with open_store(store, "a") as st:
        st.update_attrs("", {"schema_version": 99})
    code, err = cli("activations", str(store), "--workers", "0")
    assert code == 1 and "schema version 99; this rfstore reads version 1" in err

    from tiny_nets import hand_cnn

    weights = tmp_path / "w.pt"
    torch.save(hand_cnn().state_dict(), weights)
    store = tmp_path / "other.zarr"
    code, err = cli("init", str(store), "--data", str(folder), "--model", HAND_CNN, "--weights", str(weights),
                    "--preprocess", "tensor", "--layers", "1", "--name", "hand")
    assert code == 0, err
    changed = hand_cnn().state_dict()
    changed["0.bias"] += 1
    torch.save(changed, weights)  # the weights file now holds another network
    code, err = cli("activations", str(store), "--workers", "0")
    assert code == 1 and "no longer gives the network recorded at init" in err
    code, err = cli("activations", str(tmp_path / "missing.zarr"), "--workers", "0")
    assert code == 1 and "no store at" in err and "rfstore init" in err


@pytest.mark.parametrize("content", [b"", b"not hdf5 at all"])
def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "s.h5"
    path.write_bytes(content)
    code, err = cli("status", str(path))
    assert code == 1 and "error:" in err and err.count("\n") == 1
    assert path.read_bytes() == content  # left untouched
    assert TESTS.is_dir()
