"""dissect --method netdissect: the Broden reader, the exact streaming quantile, NetDissect-Lite's tally
worked out by hand, the stage against an independent computation from stored maps, kill -9 and resume,
tally.csv, and xarray opening every group of a Zarr store without a warning."""
from __future__ import annotations

import csv
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from broden_fixtures import BRIGHT, CATEGORIES, EDGE, HALF_LAYERS, REDDISH, SCENES, SHAPES, label_png, write_broden
from conftest import TESTS, write_tiny_folder
from rfstore.stats.netdissect import (Annotation, Tally, best_labels, iou, label_totals, resize_bilinear_pil,
                                     unit_masks)
from rfstore.stats.quantile import TopQuantile, kept
from rfstore.datasets.broden import BrodenError, is_broden, read_broden
from rfstore.models import ModelSpec
from rfstore.pipeline.stages.activations import ActivationsConfig, run_activations
from rfstore.recorded.network import NetworkContext
from rfstore.pipeline.stages.init import InitConfig, run_init
from rfstore.pipeline.stages.netdissect import NetDissectConfig, NotBrodenError, run_netdissect
from rfstore.pipeline.stages.netdissect_export import export_tally, tally_columns
from rfstore.recorded.progress import Plan, StageProgress
from rfstore.store import open_store

HALF_NET = f"{TESTS / 'broden_fixtures.py'}:tiny_alexnet_half"
NETWORK = "tiny_alexnet_half"


@pytest.fixture(scope="module")
def broden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_broden(tmp_path_factory.mktemp("broden") / "broden")


def init_store(path: Path, data: Path, layers: tuple[str, ...] = HALF_LAYERS, split: str | None = None) -> None:
    with open_store(path, "a") as store:
        run_init(store, InitConfig(model=ModelSpec(HALF_NET, None, 0), data=data, layers=",".join(layers),
                                   split=split))


@pytest.fixture(scope="module", params=["zarr", "h5"])
def dissected(request: pytest.FixtureRequest, broden: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of the Broden folder with the layers' maps kept and netdissect run."""
    path = tmp_path_factory.mktemp("store") / f"store.{request.param}"
    init_store(path, broden)
    with open_store(path, "a") as store:
        ctx = NetworkContext.open(store)
        run_activations(ctx, ActivationsConfig(batch_size=4, num_workers=0, maps=HALF_LAYERS, device="cpu"))
        run_netdissect(ctx, NetDissectConfig(batch_size=3, num_workers=0, device="cpu"))
    return path


# -- the reader ------------------------------------------------------------------------
def test_broden_reader(broden: Path, tmp_path: Path) -> None:
    dataset = read_broden(broden)
    assert is_broden(broden) and not is_broden(write_tiny_folder(tmp_path / "plain"))
    assert dataset.categories == CATEGORIES and dataset.n_labels == REDDISH + 1
    assert dataset.label_names[REDDISH] == "reddish" and dataset.label_names[BRIGHT] == "bright"
    assert dataset.label_names[REDDISH - 1] == ""  # a number label.csv skips
    primary = dataset.primary_categories()
    assert primary[SHAPES["disk"]] == 0 and primary[EDGE] == 0 and primary[REDDISH] == 1
    assert primary[BRIGHT] == 1  # listed by object (coverage 0.05) and color (0.2): color
    assert primary[SCENES["disks"]] == 2 and primary[0] == -1
    assert dataset.primary_categories([1, 2])[REDDISH] == 0 and dataset.primary_categories([1, 2])[EDGE] == -1
    assert dataset.splits() == ["train", "val"] and len(dataset.rows) == 10
    # image 0: two object layers (shapes, edges), two color layers, one scene label
    row = dataset.rows[0]
    annotation = dataset.annotation(row, [0, 1, 2])
    assert annotation.pixels.shape == (4, 48, 48) and annotation.size == (48, 48)
    assert annotation.image_labels.tolist() == [SCENES["bars"]]
    rgb = np.asarray(Image.open(broden / "images" / row.items[1][1])).astype(np.int64)
    np.testing.assert_array_equal(annotation.pixels[3], rgb[..., 0] + 256 * rgb[..., 1])
    assert set(np.unique(annotation.pixels[3])) <= {0, REDDISH} and (annotation.pixels[3] == REDDISH).any()
    assert set(np.unique(annotation.pixels[1])) == {0, EDGE}
    assert dataset.annotation(row, [2]).pixels.shape == (0, 48, 48)
    last = dataset.rows[-1]
    assert not last.has_data([0, 1]) and last.has_data([2])
    val = dataset.image_index("val")
    assert val.paths == tuple(f"images/scenes/scene_{i:03d}.jpg" for i in range(6, 10)) and val.classes == ()
    with pytest.raises(BrodenError, match="no split 'test'"):
        dataset.image_index("test")
    with pytest.raises(BrodenError, match="no category"):
        dataset.category_indices(["material"])
    label_png(broden / "images" / "wrong.png", np.zeros((4, 4), np.int64))
    bad = type(row)(row.image, row.split, row.seg_size, (("wrong.png",), (), ()))
    with pytest.raises(BrodenError, match="4x4, but index.csv gives sh x sw = 48x48"):
        dataset.annotation(bad, [0])


# -- the quantile ----------------------------------------------------------------------
@pytest.mark.parametrize("level", [0.995, 0.9, 0.5, 0.37, 0.0, 1.0])
def test_streaming_quantile_equals_numpy(level: float) -> None:
    rng = np.random.default_rng(7)
    for trial in range(40):
        n, channels = int(rng.integers(1, 600)), 3
        values = rng.standard_normal((n, channels)).astype(np.float32)
        if trial % 2:
            values = np.round(values, 1)  # ties
        expected = np.quantile(values.astype(np.float64), level, axis=0)
        bound = n + int(rng.integers(0, 40))
        whole = TopQuantile(channels, level, bound, "float32")
        shards = [TopQuantile(channels, level, bound, "float32") for _ in range(3)]
        cuts = np.sort(rng.integers(0, n, 5))
        for i, part in enumerate(np.split(values, cuts)):
            whole.add(part)
            top = -np.sort(-part.T, axis=1)[:, :max(kept(level, bound), 1)]
            shards[i % 3].add_candidates(top, part.shape[0])  # only the largest values of each block
        merged = TopQuantile.from_state_dict(shards[2].state_dict())
        merged.merge(shards[0])
        merged.merge(shards[1])
        assert np.array_equal(whole.result(), expected) and np.array_equal(merged.result(), expected)
        assert whole.top().shape[1] <= max(kept(level, bound), 1)  # only the top fraction is kept
    with pytest.raises(ValueError, match="exceed max_count"):
        TopQuantile(1, 0.5, 3).add(np.zeros((4, 1)))
    with pytest.raises(ValueError, match="NaN"):
        TopQuantile(1, 0.5, 3).add(np.full((1, 1), np.nan))
    assert np.isnan(TopQuantile(2, 0.5, 3).result()).all()


def test_quantile_keeps_half_a_percent() -> None:
    """The memory formula of the module docstring: 256 units of 13x13 maps over 100,000 images."""
    assert kept(0.995, 100_000 * 169) == 84_501
    assert kept(0.995, 1000) == 6 and kept(0.995, 1) == 1 and kept(0.995, 0) == 0


# -- the tally, by hand ----------------------------------------------------------------
def test_tally_and_iou_worked_out_by_hand() -> None:
    """Labels 1 (a), 2 (b): pixel category P; 3 (c): pixel category Q; 4 (s): image-level category S.
    Segmentations 2x3; unit 0's masks below, unit 1's are empty.

    Image 1: P layers [[1,1,0],[2,2,0]] and [[0,2,0],[0,0,0]] (pixel (0,1) is both a and b), Q layer
    [[3,0,0],[0,0,3]], image label s; mask [[1,1,0],[0,0,0]] (2 px).
      truth a 2, b 3, c 2, s 6; intersections a 2, b 1, c 1, s 2; P, Q and S are all under the mask:
      activation P, Q, S += 2.
    Image 2: P layer [[0,0,0],[0,1,1]]; mask [[1,0,0],[1,0,0]] (2 px).
      truth a += 2; no label of P under the mask: it adds nothing to any union (not 2 to a's).
    Image 3: Q layer all c, image label s; mask [[0,0,0],[0,0,1]] (1 px).
      truth c += 6, s += 6; intersections c += 1, s += 1; activation Q += 1, S += 1.
    Totals: truth [a 4, b 3, c 8, s 12], intersections [2, 1, 2, 3], activation [P 2, Q 3, S 3]:
      IoU a = 2 / (2 + 4 - 2) = 1/2, b = 1 / (2 + 3 - 1) = 1/4, c = 2 / (3 + 8 - 2) = 2/9,
      s = 3 / (3 + 12 - 3) = 1/4. Unit 0: P a (1/2), Q c (2/9), S s (1/4); its label a, a detector.
    """
    category = np.array([-1, 0, 0, 1, 2])
    images = [
        (Annotation(np.array([[[1, 1, 0], [2, 2, 0]], [[0, 2, 0], [0, 0, 0]], [[3, 0, 0], [0, 0, 3]]]),
                    np.array([4]), (2, 3)), [[1, 1, 0], [0, 0, 0]]),
        (Annotation(np.array([[[0, 0, 0], [0, 1, 1]]]), np.array([], dtype=np.int64), (2, 3)), [[1, 0, 0], [1, 0, 0]]),
        (Annotation(np.full((1, 2, 3), 3), np.array([4]), (2, 3)), [[0, 0, 0], [0, 0, 1]]),
    ]
    tally, truth = Tally(2, category, 3), np.zeros(5, dtype=np.int64)
    for annotation, mask in images:
        truth += label_totals(annotation, 5)
        tally.add(torch.tensor(np.array([mask, np.zeros((2, 3))]), dtype=torch.bool), annotation)
    assert truth.tolist() == [0, 4, 3, 8, 12]
    assert tally.intersect.tolist() == [[0, 2, 1, 2, 3], [0, 0, 0, 0, 0]]
    assert tally.activation.tolist() == [[2, 3, 3], [0, 0, 0]]
    scores = iou(tally.intersect, tally.activation, truth, category)
    np.testing.assert_allclose(scores[0], [0, 1 / 2, 1 / 4, 2 / 9, 1 / 4], rtol=1e-9)
    assert (scores[1] == 0).all()
    labels = best_labels(scores, category, 3)
    assert labels.category_label.tolist() == [[1, 3, 4], [-1, -1, -1]]
    assert labels.label.tolist() == [1, -1] and labels.category.tolist() == [0, -1]
    np.testing.assert_allclose(labels.score, [0.5, 0.0])
    assert labels.detectors().tolist() == [True, False] and labels.detectors(0.6).tolist() == [False, False]


def test_masks_are_pil_bilinear_then_strictly_above_threshold() -> None:
    rng = np.random.default_rng(3)
    for size, seg in ((5, 48), (11, 48), (13, 112), (48, 48), (112, 56), (9, 7)):
        maps = (rng.standard_normal((3, size, size)) * 4).astype(np.float32)
        ours = resize_bilinear_pil(torch.from_numpy(maps), (seg, seg)).numpy()
        for unit in range(3):
            pil = np.asarray(Image.fromarray(maps[unit], mode="F").resize((seg, seg), Image.BILINEAR))
            np.testing.assert_array_equal(ours[unit], pil)
    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    assert unit_masks(maps, torch.tensor([2.0], dtype=torch.float64), (2, 2)).tolist() == [[[False, False],
                                                                                           [False, True]]]


# -- the stage -------------------------------------------------------------------------
def independent_netdissect(store, data: Path, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds and IoU from the stored float16 maps, the CSV files and the PNGs, loop by loop."""
    maps = store.read(f"{NETWORK}/{layer}/act_map").astype(np.float32)
    rows = list(csv.DictReader(open(data / "index.csv")))
    used = [i for i, row in enumerate(rows) if any(row[c] for c in CATEGORIES)]
    units = maps.shape[1]
    thresholds = np.array([np.quantile(maps[used, u].astype(np.float64), 0.995) for u in range(units)])
    category = {}
    for c, name in enumerate(CATEGORIES):
        for entry in csv.DictReader(open(data / f"c_{name}.csv")):
            if int(entry["code"]):
                category.setdefault(int(entry["number"]), []).append((float(entry["coverage"]), c))
    category = {label: max(found)[1] for label, found in category.items()}
    n_labels = REDDISH + 1
    intersect, activation, truth = np.zeros((units, n_labels)), np.zeros((units, 3)), np.zeros(n_labels)
    for i in used:
        pixels, scalars = [], []
        for name in CATEGORIES:
            for item in filter(None, rows[i][name].split(";")):
                if item.isdigit():
                    scalars.append(int(item))
                else:
                    rgb = np.asarray(Image.open(data / "images" / item)).astype(np.int64)
                    pixels.append(rgb[..., 0] + 256 * rgb[..., 1])
        size = (int(rows[i]["sw"]), int(rows[i]["sh"]))
        for layer_labels in pixels:
            for label in np.unique(layer_labels[layer_labels > 0]):
                truth[label] += (layer_labels == label).sum()
        for label in scalars:
            truth[label] += size[0] * size[1]
        for u in range(units):
            mask = np.asarray(Image.fromarray(maps[i, u], mode="F").resize(size, Image.BILINEAR)) > thresholds[u]
            seen = set()
            for layer_labels in pixels:
                for label in np.unique(layer_labels[mask]):
                    if label:
                        intersect[u, label] += (layer_labels[mask] == label).sum()
                        seen.add(category[label])
            for label in scalars:
                intersect[u, label] += mask.sum()
                seen.add(category[label])
            for c in seen:
                activation[u, c] += mask.sum()
    scores = np.zeros((units, n_labels))
    for label, c in category.items():
        scores[:, label] = intersect[:, label] / (activation[:, c] + truth[label] - intersect[:, label] + 1e-10)
    return thresholds, scores


def test_stage_agrees_with_an_independent_computation(dissected: Path, broden: Path) -> None:
    with open_store(dissected, "r") as store:
        for layer in HALF_LAYERS:
            group = f"{NETWORK}/{layer}/netdissect"
            thresholds, scores = independent_netdissect(store, broden, layer)
            np.testing.assert_allclose(store.read(f"{group}/threshold"), thresholds, rtol=1e-12)
            np.testing.assert_allclose(store.read(f"{group}/iou"), scores, atol=1e-4)
            assert scores.max() > 0.05  # some unit does detect something
            best, category = store.read(f"{group}/category_iou"), store.read(f"{group}/concept_category")
            for c, name in enumerate(CATEGORIES):
                np.testing.assert_allclose(best[:, c], scores[:, category == name].max(axis=1), atol=1e-4)
            np.testing.assert_allclose(store.read(f"{group}/score"), best.max(axis=1), atol=1e-4)
            detector = store.read(f"{group}/detector").astype(bool)
            np.testing.assert_array_equal(detector, store.read(f"{group}/score") >= 0.04)
            assert store.attrs(group)["images"] == 10
        assert store.read(f"{NETWORK}/image_split").tolist() == ["train"] * 6 + ["val"] * 4
        assert store.read(f"{NETWORK}/concept_label")[REDDISH] == "reddish"
        assert store.attrs(NETWORK)["preprocessing"]["crop"] is None  # Broden's default keeps images whole



def test_export_writes_netdissect_lite_tally_csv(dissected: Path, tmp_path: Path) -> None:
    with open_store(dissected, "r") as store:
        written = export_tally(NetworkContext.open(store), tmp_path / "out")
        assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == [
            f"{NETWORK}/{layer}/tally.csv" for layer in HALF_LAYERS]
        group = f"{NETWORK}/features.11/netdissect"
        score, label = store.read(f"{group}/score"), store.read(f"{group}/label")
        best, names = store.read(f"{group}/category_concept"), store.read(f"{group}/concept_label")
        truth, intersect = store.read(f"{group}/truth"), store.read(f"{group}/intersect")
        activation, category_iou = store.read(f"{group}/activation"), store.read(f"{group}/category_iou")
    with open(written[-1], newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["unit", "category", "label", "score"] + [
        f"{c}-{f}" for c in CATEGORIES for f in ("label", "truth", "activation", "intersect", "iou")]
    assert reader.fieldnames == tally_columns(list(CATEGORIES))
    assert sorted(int(row["unit"]) for row in rows) == list(range(1, score.size + 1))  # numbered from 1
    scores = [float(row["score"]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    for row in rows:
        unit = int(row["unit"]) - 1
        assert float(row["score"]) == score[unit] and row["label"] == (label[unit] or "-")
        assert row["category"] in CATEGORIES
        for c, name in enumerate(CATEGORIES):
            if best[unit, c] < 0:
                assert row[f"{name}-label"] == "-" and float(row[f"{name}-iou"]) == 0
                continue
            assert row[f"{name}-label"] == names[best[unit, c]]
            assert int(row[f"{name}-truth"]) == truth[best[unit, c]]
            assert int(row[f"{name}-intersect"]) == intersect[unit, best[unit, c]]
            assert int(row[f"{name}-activation"]) == activation[unit, c]
            assert float(row[f"{name}-iou"]) == category_iou[unit, c]


def test_xarray_opens_every_group_without_a_warning(dissected: Path) -> None:
    """Consolidated metadata is current after every stage: xarray neither warns nor falls back."""
    xr = pytest.importorskip("xarray")
    if dissected.suffix != ".zarr":
        pytest.skip("consolidated metadata is Zarr's")
    groups = [NETWORK] + [f"{NETWORK}/{layer}{sub}" for layer in HALF_LAYERS for sub in ("", "/netdissect")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for group in groups:
            with xr.open_zarr(dissected, group=group) as ds:
                assert ds.sizes
        with xr.open_zarr(dissected, group=f"{NETWORK}/features.7/netdissect") as ds:
            assert ds["iou"].dims == ("unit", "concept") and ds["category_label"].dims == ("unit", "category")
            assert ds["category"].values.tolist() == list(CATEGORIES)
            assert ds["concept_label"].sel(concept=REDDISH).values == "reddish"
        with xr.open_zarr(dissected, group=f"{NETWORK}/features.7") as ds:
            assert "act_map" in ds and "topk_image" not in ds
        import rfstore

        with rfstore.open(dissected)[NETWORK].netdissect("features.7") as ds:  # the notebook API's view
            assert ds["score"].dims == ("unit",)
    from rfstore.pipeline.stages.topk import TopKConfig, run_topk

    with open_store(dissected, "a") as store:  # a later stage adds arrays: xarray sees them, still quietly
        run_topk(NetworkContext.open(store), TopKConfig(k=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with xr.open_zarr(dissected, group=f"{NETWORK}/features.7") as ds:
            assert ds["topk_image"].dims == ("unit", "rank")


def test_kill_9_in_each_pass_then_rerun_gives_the_same_results(broden: Path, tmp_path: Path) -> None:
    """Real processes killed (SIGKILL) between a quantile checkpoint's slot and its done flags, then in
    the tally pass; a last run finishes and every result equals an uninterrupted run's, bit for bit."""
    from test_kill import ForkServer, kill_when, run_env

    layers = "features.4,features.7"
    dissect = ["--method", "netdissect", "--workers", "0", "--device", "cpu", "--batch-size", "2",
               "--checkpoint-seconds", "0"]
    trace = tmp_path / "trace.txt"
    quiet = run_env(tmp_path) | {"RFSTORE_IMAGE_BLOCK": "2"}  # 10 images: 5 blocks per pass
    traced = run_env(tmp_path, trace, delay=0.02) | {"RFSTORE_IMAGE_BLOCK": "2"}
    server = ForkServer(quiet)
    try:
        def run(argv: list[str], env: dict[str, str], name: str) -> int:
            server.start(argv, env, tmp_path / f"{name}.err")
            return server.wait()

        for store in ("reference.zarr", "killed.zarr"):
            assert run(["init", str(tmp_path / store), "--model", HALF_NET, "--data", str(broden), "--layers", layers],
                       quiet, "init") == 0, (tmp_path / "init.err").read_text()
        assert run(["dissect", str(tmp_path / "reference.zarr"), *dissect], quiet, "ref") == 0
        killed = tmp_path / "killed.zarr"
        group = f"{NETWORK}/_rfstore"
        for name, marker in (("quantile", f"write {group}/netdissect-quantile/slot1/blocks"),
                             ("tally", f"write {group}/netdissect-tally/done")):
            kill_when(lambda: server.start(["dissect", str(killed), *dissect], traced, tmp_path / f"{name}.err"),
                      trace, marker, nth=2)
            assert server.wait() == -signal.SIGKILL, (tmp_path / f"{name}.err").read_text()
            with open_store(killed, "r") as store:
                tracker = StageProgress(store, NETWORK, f"netdissect-{name}")
                done = tracker.done_mask()
                assert tracker.record().state == "running" and 0 < done.sum() < 5
                if name == "quantile":  # killed after a slot was saved, before its blocks were flagged done
                    slots = [store.read(f"{tracker.group}/slot{i}/blocks").astype(bool) for i in (0, 1)]
                    assert np.array_equal(slots[0], done) and slots[1].sum() > done.sum()
        assert run(["dissect", str(killed), *dissect], quiet, "final") == 0, (tmp_path / "final.err").read_text()
    finally:
        server.close()
    with open_store(tmp_path / "reference.zarr", "r") as reference, open_store(killed, "r") as store:
        for layer in layers.split(","):
            group = f"{NETWORK}/{layer}/netdissect"
            _, arrays = reference.children(group)
            assert "iou" in arrays and store.children(group)[1] == arrays
            for name in arrays:
                np.testing.assert_array_equal(store.read(f"{group}/{name}"), reference.read(f"{group}/{name}"))
        assert not store.has(f"{NETWORK}/_rfstore/netdissect-quantile/slot0")  # checkpoints dropped when done


def test_cli_split_categories_and_errors(broden: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rfstore.cli import app

    runner = CliRunner()
    path = tmp_path / "val.zarr"
    init = runner.invoke(app, ["init", str(path), "--model", HALF_NET, "--data", str(broden), "--layers",
                               "features.11", "--split", "val"])
    assert init.exit_code == 0, init.output
    nd = ["--method", "netdissect", "--workers", "0", "--device", "cpu"]
    done = runner.invoke(app, ["dissect", str(path), *nd, "--categories", "object,color"])
    assert done.exit_code == 0, done.output
    assert "over 3 images" in done.output  # the val images annotated in object or color (not the last)
    with open_store(path, "r") as store:
        paths = [f"images/scenes/scene_{i:03d}.jpg" for i in range(6, 10)]
        assert store.read(f"{NETWORK}/image_path").tolist() == paths
        attrs = store.attrs(f"{NETWORK}/features.11/netdissect")
        assert attrs["categories"] == ["object", "color"] and attrs["images"] == 3
        assert store.read(f"{NETWORK}/features.11/netdissect/category").tolist() == ["object", "color"]
    again = runner.invoke(app, ["dissect", str(path), *nd, "--categories", "object,color"])
    assert again.exit_code == 0 and "up to date" in again.output
    reused = runner.invoke(app, ["dissect", str(path), *nd])  # --categories left out: the recorded ones
    assert reused.exit_code == 0 and "up to date" in reused.output
    changed = runner.invoke(app, ["dissect", str(path), *nd, "--categories", "object"])
    assert changed.exit_code == 1 and "--force" in changed.output
    assert runner.invoke(app, ["dissect", str(path), *nd, "--split", "train"]).exit_code == 1  # not recorded
    topk_split = runner.invoke(app, ["dissect", str(path), "--split", "val"])
    assert topk_split.exit_code == 2 and "only go with --method netdissect" in topk_split.output
    # a plain image folder: no --split at init, no netdissect
    plain = write_tiny_folder(tmp_path / "plain", n_per_class=1, size=96)
    bad_split = runner.invoke(app, ["init", str(tmp_path / "p.zarr"), "--model", HALF_NET, "--data", str(plain),
                                    "--split", "val"])
    assert bad_split.exit_code == 2 and "--split" in bad_split.output and "is not one" in bad_split.output
    with open_store(tmp_path / "p.h5", "a") as store:
        run_init(store, InitConfig(model=ModelSpec(HALF_NET, None, 0), data=plain, layers="features.4"))
        with pytest.raises(NotBrodenError, match="needs a Broden dataset"):
            run_netdissect(NetworkContext.open(store), NetDissectConfig(device="cpu", num_workers=0))


@pytest.mark.slow
def test_cluster_gives_the_numbers_of_one_process(broden: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each block of both passes as a task of a local Dask cluster (two worker processes, ~1 min)."""
    from rfstore.pipeline.cluster import ClusterSpec, session
    from rfstore.store import layout

    monkeypatch.setattr(layout, "IMAGE_BLOCK", 3)  # 10 images: 4 blocks, the last of one image
    config = NetDissectConfig(batch_size=2, num_workers=0, device="cpu", checkpoint_seconds=0)
    for name in ("one.zarr", "cluster.zarr"):
        init_store(tmp_path / name, broden, ("features.7",))
    with open_store(tmp_path / "one.zarr", "a") as store:
        run_netdissect(NetworkContext.open(store), config)
    with session(tmp_path / "cluster.zarr", ClusterSpec(local_workers=2)) as client:
        with open_store(tmp_path / "cluster.zarr", "a") as store:
            result = run_netdissect(NetworkContext.open(store), config, client=client)
    assert result.quantile_plan is Plan.FRESH and result.images == 10
    group = f"{NETWORK}/features.7/netdissect"
    with open_store(tmp_path / "one.zarr", "r") as one, open_store(tmp_path / "cluster.zarr", "r") as cluster:
        for name in one.children(group)[1]:
            np.testing.assert_array_equal(cluster.read(f"{group}/{name}"), one.read(f"{group}/{name}"))
