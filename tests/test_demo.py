"""The embedded demo: seeded scenes with masks, deterministic training, shipped weights, same seed -> same store."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rfstore.demo.network import WEIGHTS_INFO, shipped_weights, tiny_alexnet_trained
from rfstore.demo.scenes import CLASS_CONCEPT, CLASSES, CONCEPTS, make_scene, scene_arrays, scene_folder_matches, \
    scene_seed, write_scene_folder
from rfstore.demo.train import TrainConfig, accuracy, deterministic_cpu, fit, sha256_file
from rfstore.recorded.network import parameters_digest
from rfstore.store import open_store


def test_scenes_are_seeded_and_carry_their_concepts(tmp_path: Path) -> None:
    for class_index, name in enumerate(CLASSES):
        image, mask = make_scene(class_index, [7, class_index])
        again, mask_again = make_scene(class_index, [7, class_index])
        assert np.array_equal(np.asarray(image), np.asarray(again))
        assert np.array_equal(np.asarray(mask), np.asarray(mask_again))
        values = np.unique(np.asarray(mask))
        assert set(values) <= set(range(len(CONCEPTS)))
        assert (np.asarray(mask) == CONCEPTS.index(CLASS_CONCEPT[name])).sum() > 100  # its objects are there
    write_scene_folder(tmp_path, per_class=1, seed=3)
    assert json.loads((tmp_path / "concepts.json").read_text()) == {str(i): c for i, c in enumerate(CONCEPTS)}
    image = tmp_path / "disks" / "disks_0000.png"
    mask = Image.open(tmp_path / "masks" / "disks" / "disks_0000.png")
    assert mask.mode == "L" and mask.size == Image.open(image).size
    assert scene_folder_matches(tmp_path, per_class=1, seed=3)
    assert not scene_folder_matches(tmp_path, per_class=2, seed=3)


def test_scene_folder_written_by_processes_is_the_same(tmp_path: Path) -> None:
    """``workers=2`` writes the same files, byte for byte, in the same order."""
    one = write_scene_folder(tmp_path / "one", per_class=2, seed=4, size=48)
    two = write_scene_folder(tmp_path / "two", per_class=2, seed=4, size=48, workers=2)
    assert [p.relative_to(tmp_path / "one") for p in one] == [p.relative_to(tmp_path / "two") for p in two]
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert all((tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes() for f in files)


def test_training_is_deterministic() -> None:
    """Two short trainings from the same seed give bit-identical weights; settings are restored."""
    config = TrainConfig(train_per_class=2, epochs=2, batch_size=4)
    images, labels = scene_arrays(2, seed=5, split="train")
    threads = torch.get_num_threads()
    states = []
    for _ in range(2):
        with deterministic_cpu():
            states.append(fit(config, images, labels).state_dict())
    assert torch.get_num_threads() == threads
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert not torch.equal(states[0]["features.0.weight"], fit(TrainConfig(seed=1, epochs=1, train_per_class=2),
                                                               images, labels).state_dict()["features.0.weight"])


def test_shipped_weights_are_recorded_and_classify_held_out_scenes() -> None:
    path = shipped_weights()
    info = json.loads((path.parent / Path(WEIGHTS_INFO).name).read_text())
    assert path.stat().st_size < 2 * 1024 * 1024
    assert info["sha256"] == sha256_file(path)
    assert info["parameters_sha256"] == parameters_digest(tiny_alexnet_trained())  # what init records
    assert info["classes"] == list(CLASSES)
    assert info["heldout_accuracy"] >= 0.8
    model = tiny_alexnet_trained()
    state = torch.load(path, weights_only=True)
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
    # 8 scenes per class that training never saw: the held-out split, past the recorded held-out set
    held, seed = info["parameters"]["heldout_per_class"], info["parameters"]["seed"]
    pairs = [(c, np.asarray(make_scene(c, scene_seed(seed, "heldout", c, n))[0]))
             for c in range(len(CLASSES)) for n in range(held, held + 8)]
    images, labels = np.stack([p[1] for p in pairs]), np.array([p[0] for p in pairs])
    assert accuracy(model, images, labels) >= 0.7


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a store, by path."""
    out: dict[str, np.ndarray] = {}
    with open_store(path, "r") as store:
        pending = [""]
        while pending:
            group = pending.pop()
            groups, arrays = store.children(group)
            pending += [f"{group}/{g}".strip("/") for g in groups]
            for name in arrays:
                out[f"{group}/{name}".strip("/")] = store.read(f"{group}/{name}".strip("/"))
    return out


def test_same_seed_same_demo_store(tmp_path: Path) -> None:
    """A reduced demo (one scene per class, one layer) run twice gives identical arrays, dissection included."""
    from typer.testing import CliRunner

    from rfstore.cli import app

    runner = CliRunner()
    for run in ("a", "b"):
        result = runner.invoke(app, ["demo", str(tmp_path / run / "demo.zarr"), "--per-class", "1",
                                     "--layers", "features.4"])
        assert result.exit_code == 0, result.output
        assert "dissect: features.4: 32 unit(s) scored" in result.output
    first, second = store_arrays(tmp_path / "a" / "demo.zarr"), store_arrays(tmp_path / "b" / "demo.zarr")
    assert first.keys() == second.keys() and "tiny_alexnet/features.4/concept_iou" in first
    for key, values in first.items():
        if values.dtype == object:
            assert values.tolist() == second[key].tolist(), key
        else:
            np.testing.assert_array_equal(values, second[key], err_msg=key)


def test_retrain_trains_writes_the_record_and_uses_the_new_weights(tmp_path: Path, monkeypatch) -> None:
    """``demo --retrain`` with the training shortened (the real one takes minutes)."""
    from typer.testing import CliRunner

    from rfstore.cli import app
    from rfstore.demo import train as train_module

    real = train_module.train
    short = TrainConfig(train_per_class=2, heldout_per_class=1, epochs=1)
    monkeypatch.setattr(train_module, "train", lambda out, config=None, progress=None: real(out, short, progress))
    store = tmp_path / "demo.zarr"
    result = CliRunner().invoke(app, ["demo", str(store), "--per-class", "1", "--layers", "features.1", "--retrain"])
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output and "differs from the shipped weights" in result.output
    weights = tmp_path / "tiny_alexnet.pt"
    record = json.loads(weights.with_suffix(".json").read_text())
    assert record["sha256"] == sha256_file(weights) and record["parameters"]["epochs"] == 1
    with open_store(store, "r") as st:
        model = st.attrs("tiny_alexnet")["model"]
        assert model["spec"] == "rfstore.demo.network:tiny_alexnet" and model["weights"] == str(weights)
        assert st.attrs("tiny_alexnet")["parameters_sha256"] == record["parameters_sha256"]


def test_trained_last_conv_units_detect_the_objects(tmp_path: Path) -> None:
    """With the shipped weights, most units of features.11 get a concept with IoU at least twice its chance level.

    A smaller set than the demo's (8 scenes per class) and a coarser occluder (12 px, stride 6)
    keep this affordable; the demo itself does better (see the README).
    """
    from rfstore.datasets import Preprocessing
    from rfstore.models import ModelSpec
    from rfstore.pipeline.stages.activations import ActivationsConfig, run_activations
    from rfstore.recorded.network import NetworkContext
    from rfstore.pipeline.stages.dissect import DissectConfig, run_dissect
    from rfstore.pipeline.stages.init import InitConfig, run_init
    from rfstore.pipeline.stages.occlude import OccludeConfig, run_occlude
    from rfstore.pipeline.stages.rf import RFConfig, run_rf
    from rfstore.pipeline.stages.segment import SegmentConfig, run_segment
    from rfstore.pipeline.stages.topk import TopKConfig, run_topk

    data = tmp_path / "scenes"
    write_scene_folder(data, per_class=8, seed=1)
    with open_store(tmp_path / "trained.zarr", "a") as store:
        run_init(store, InitConfig(model=ModelSpec("rfstore.demo.network:tiny_alexnet_trained", None, 0), data=data,
                                   preprocessing=Preprocessing.tensor(), layers="features.11", name="net"))
        ctx = NetworkContext.open(store)
        run_activations(ctx, ActivationsConfig(batch_size=48, num_workers=0))
        run_topk(ctx, TopKConfig(k=5))
        run_occlude(ctx, OccludeConfig(size=12, stride=6, fill="zero", device="cpu"))
        run_rf(ctx, RFConfig())
        run_segment(ctx, SegmentConfig())
        run_dissect(ctx, DissectConfig())
        labels = store.read("net/features.11/concept")
        iou = store.read("net/features.11/concept_iou")
        chance = store.read("net/features.11/iou_chance")
        names = store.read("net/features.11/concept_name").tolist()
    detectors = 0
    for unit, label in enumerate(labels):
        if label:
            c = names.index(label)
            detectors += iou[unit, c] >= 2 * chance[unit, c] and iou[unit, c] >= 0.04
    assert detectors > len(labels) / 2, (detectors, labels.tolist())
    assert len(set(labels) - {""}) >= 4  # detectors of several kinds of object, not one
