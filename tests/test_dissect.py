"""dissect: IoU and chance baseline worked out on paper, the stage on a tiny store, its CLI (skipping and
resuming: test_stage_contract.py)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import HAND_CNN
from rfstore.stats.iou import concept_counts, label_units
from rfstore.datasets import Preprocessing
from rfstore.models import ModelSpec
from rfstore.pipeline.stages.activations import ActivationsConfig, run_activations
from rfstore.recorded.network import NetworkContext
from rfstore.pipeline.stages.dissect import DissectConfig, NoConceptsError, load_concept_map, run_dissect
from rfstore.pipeline.stages.init import InitConfig, run_init
from rfstore.pipeline.stages.occlude import OccludeConfig, run_occlude
from rfstore.pipeline.stages.rf import RFConfig, run_rf
from rfstore.pipeline.stages.segment import SegmentConfig, run_segment
from rfstore.pipeline.stages.topk import TopKConfig, run_topk
from rfstore.store import open_store

CONCEPTS = {"0": "background", "1": "red", "2": "blue"}


def test_iou_and_chance_worked_out_on_paper() -> None:
    """Two 4x4 images (A = 16 pixels), concepts 0 (background), 1 and 2.

    Image 1: concept 1 = the 2x2 top-left block, concept 2 = the 2x2 bottom-right block, the
    rest 0 (8 px); the unit's mask = rows 0-1, columns 0-2 (a = 6).
      intersections [2, 4, 0]; unions 6 + [8, 4, 4] - I = [12, 6, 10]
      chance intersections a c / A = 6 [8, 4, 4] / 16 = [3, 1.5, 1.5]; chance unions [11, 8.5, 8.5]
    Image 2: concept 2 = row 0 (4 px), the rest 0 (12 px); the unit's mask = column 0 (a = 4).
      intersections [3, 0, 1]; unions 4 + [12, 0, 4] - I = [13, 4, 7]
      chance intersections 4 [12, 0, 4] / 16 = [3, 0, 1]; chance unions [13, 4, 7]
    Summed: I = [5, 4, 1], U = [25, 10, 17]  -> IoU   = [0.2, 0.4, 1/17]
            E = [6, 1.5, 2.5], EU = [24, 12.5, 15.5] -> chance = [0.25, 0.12, 2.5/15.5]
    Label: concept 1 (0.4 > 1/17; 0.4 > its chance 0.12 and >= 0.04); background is never a label.
    """
    maps = np.zeros((2, 4, 4), dtype=np.uint8)
    maps[0, :2, :2] = 1
    maps[0, 2:, 2:] = 2
    maps[1, 0, :] = 2
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2, :3] = True
    masks[1, :, 0] = True
    counts = concept_counts(masks, maps, 3)
    np.testing.assert_array_equal(counts.intersection, [5, 4, 1])
    np.testing.assert_array_equal(counts.union, [25, 10, 17])
    np.testing.assert_allclose(counts.iou(), [0.2, 0.4, 1 / 17])
    np.testing.assert_allclose(counts.chance_intersection, [6, 1.5, 2.5])
    np.testing.assert_allclose(counts.chance_union, [24, 12.5, 15.5])
    np.testing.assert_allclose(counts.iou_chance(), [0.25, 0.12, 2.5 / 15.5])
    best, labelled = label_units(counts.iou()[None], counts.iou_chance()[None], np.array([False, True, True]))
    assert best.tolist() == [1] and labelled.tolist() == [True]


def test_labels_need_more_than_chance_and_min_iou() -> None:
    iou = np.array([[0.9, 0.10, 0.30],    # best eligible 2, above its chance: labelled
                    [0.9, 0.20, 0.10],    # best eligible 1 but under its chance 0.25: not labelled
                    [0.0, 0.03, 0.03],    # tie -> lowest index 1; above chance but under min_iou 0.04
                    [np.nan] * 3])        # not scored
    chance = np.array([[0.5, 0.05, 0.10], [0.5, 0.25, 0.05], [0.0, 0.01, 0.01], [np.nan] * 3])
    best, labelled = label_units(iou, chance, np.array([False, True, True]))
    assert best.tolist() == [2, 1, 1, -1]
    assert labelled.tolist() == [True, False, False, False]
    # an empty image set: union 0 gives IoU 0, not NaN
    empty = concept_counts(np.zeros((1, 2, 2), bool), np.zeros((1, 2, 2), np.uint8), 2)
    assert empty.iou().tolist() == [0.0, 0.0] and empty.iou_chance().tolist() == [0.0, 0.0]


def write_masked_folder(root: Path, with_concepts: bool = True) -> Path:
    """8x8 images whose red (concept 1) and blue (concept 2) squares the masks label exactly."""
    rng = np.random.default_rng(3)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / "masks" / label).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            pixels = rng.integers(0, 60, (8, 8, 3)).astype(np.uint8)
            mask = np.zeros((8, 8), dtype=np.uint8)
            for concept, channel in ((1, 0), (2, 2)):
                y, x = rng.integers(0, 6, 2)
                pixels[y:y + 3, x:x + 3, channel] = 255
                mask[y:y + 3, x:x + 3] = concept
            Image.fromarray(pixels, "RGB").save(root / label / f"img{i}.png")
            Image.fromarray(mask, "L").save(root / "masks" / label / f"img{i}.png")
    if with_concepts:
        (root / "concepts.json").write_text(json.dumps(CONCEPTS))
    return root


def segmented_store(path: Path, data: Path, maps: tuple[str, ...] = ()) -> None:
    with open_store(path, "a") as store:
        run_init(store, InitConfig(model=ModelSpec(HAND_CNN, None, 0), data=data, preprocessing=Preprocessing.tensor(),
                                   layers="1", name="net"))
        ctx = NetworkContext.open(store)
        run_activations(ctx, ActivationsConfig(batch_size=8, num_workers=0, maps=maps))
        run_topk(ctx, TopKConfig(k=3))
        run_occlude(ctx, OccludeConfig(size=2, stride=1, fill="zero", device="cpu"))
        run_rf(ctx, RFConfig())
        run_segment(ctx, SegmentConfig())


def expected_scores(store, data: Path, masks: str = "seg_mask") -> tuple[np.ndarray, np.ndarray]:
    """IoU and chance per (unit, concept), recomputed pixel set by pixel set from the stored masks."""
    seg, top = store.read(f"net/1/{masks}"), store.read("net/1/topk_image")
    paths = store.read("net/image_path")
    iou, chance = np.zeros((2, 3)), np.zeros((2, 3))
    for unit in range(2):
        for concept in range(3):
            inter = union = e_inter = e_union = 0.0
            for rank in range(3):
                concept_mask = np.asarray(Image.open(data / "masks" / paths[top[unit, rank]])) == concept
                unit_mask = seg[unit, rank] == 1
                inter += np.logical_and(unit_mask, concept_mask).sum()
                union += np.logical_or(unit_mask, concept_mask).sum()
                e = unit_mask.sum() * concept_mask.sum() / 64
                e_inter += e
                e_union += unit_mask.sum() + concept_mask.sum() - e
            iou[unit, concept], chance[unit, concept] = inter / union, e_inter / e_union
    return iou, chance


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
def test_stage_scores_and_opens_in_xarray(tmp_path: Path, suffix: str) -> None:
    data = write_masked_folder(tmp_path / "img")
    path = tmp_path / f"store.{suffix}"
    segmented_store(path, data)
    with open_store(path, "a") as store:
        ctx = NetworkContext.open(store)
        result = run_dissect(ctx, DissectConfig())
        assert result.units_done == {"1": 2} and result.images_without_mask == 0
        iou, chance = expected_scores(store, data)
        np.testing.assert_allclose(store.read("net/1/concept_iou"), iou, rtol=1e-6)
        np.testing.assert_allclose(store.read("net/1/iou_chance"), chance, rtol=1e-6)
        assert store.read("net/1/concept_name").tolist() == ["background", "red", "blue"]
        best = iou[:, 1:].argmax(axis=1) + 1
        np.testing.assert_allclose(store.read("net/1/iou"), iou[[0, 1], best], rtol=1e-6)
        labels = store.read("net/1/concept").tolist()
        for unit in range(2):
            ok = iou[unit, best[unit]] > chance[unit, best[unit]] and iou[unit, best[unit]] >= 0.04
            assert labels[unit] == (CONCEPTS[str(best[unit])] if ok else "")
        # unit 1 sees the centre red minus blue pixel: it detects the red squares
        assert labels[1] == "red" and iou[1, 1] > 2 * chance[1, 1]
        before = {n: store.read(f"net/1/{n}") for n in ("concept", "iou", "concept_iou", "iou_chance")}
    xr = pytest.importorskip("xarray")
    ds = (xr.open_zarr(path, group="net/1", consolidated=False) if suffix == "zarr"
          else xr.open_dataset(path, group="net/1", engine="h5netcdf"))
    with ds:
        assert ds["concept_iou"].dims == ("unit", "concept_name")
        assert ds["concept_name"].values.tolist() == ["background", "red", "blue"]
        assert ds["concept"].values.tolist() == before["concept"].tolist()
        np.testing.assert_allclose(ds["iou_chance"].sel(concept_name="red").values, before["iou_chance"][:, 1])


def test_activation_masks_score_seg_mask_dissect(tmp_path: Path) -> None:
    """--masks activation scores NetDissect's thresholded activation maps; switching needs --force."""
    from typer.testing import CliRunner

    from rfstore.cli import app
    from rfstore.errors import MissingInputError, StageMismatchError

    data = write_masked_folder(tmp_path / "img")
    plain = tmp_path / "plain.zarr"
    segmented_store(plain, data)
    with open_store(plain, "a") as store:
        for layers in ((), ("1",)):  # every layer, or one named
            with pytest.raises(MissingInputError, match="--maps 1 --force"):
                run_dissect(NetworkContext.open(store), DissectConfig(layers=layers, masks="activation"))
    path = tmp_path / "maps.zarr"
    segmented_store(path, data, maps=("1",))
    with open_store(path, "a") as store:
        ctx = NetworkContext.open(store)
        assert run_dissect(ctx, DissectConfig(masks="activation")).units_done == {"1": 2}
        iou, chance = expected_scores(store, data, "seg_mask_dissect")
        assert not np.allclose(iou, expected_scores(store, data)[0])  # the two segmentations differ here
        np.testing.assert_allclose(store.read("net/1/concept_iou"), iou, rtol=1e-6)
        np.testing.assert_allclose(store.read("net/1/iou_chance"), chance, rtol=1e-6)
        assert store.attrs("net/1")["dissect_masks"] == "activation"
        with pytest.raises(StageMismatchError, match="masks"):
            run_dissect(ctx, DissectConfig())
        run_dissect(ctx, DissectConfig(), force=True)
        np.testing.assert_allclose(store.read("net/1/concept_iou"), expected_scores(store, data)[0], rtol=1e-6)
    bad = CliRunner().invoke(app, ["dissect", str(path), "--masks", "both"])
    assert bad.exit_code == 2 and "Invalid value for '--masks': choose one of rf, activation" in bad.output


def test_mask_follows_the_preprocessing_geometry(tmp_path: Path) -> None:
    """A 16x24 mask of 2x2 blocks, resized to shorter side 8 (nearest) and centre-cropped to 8x8: rows 2..9."""
    small = np.arange(8 * 12, dtype=np.uint8).reshape(12, 8) % 7
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.kron(small, np.ones((2, 2), np.uint8)), "L").save(tmp_path / "masks" / "x.png")
    Image.new("RGB", (16, 24)).save(tmp_path / "x.jpg")
    ctx = SimpleNamespace(dataset_root=tmp_path, input_size=(8, 8),
                          attrs={"preprocessing": Preprocessing(resize=8, crop=8, mean=None, std=None).to_dict()})
    np.testing.assert_array_equal(load_concept_map(ctx, "x.jpg"), small[2:10])
    assert load_concept_map(ctx, "missing.jpg") is None


def test_without_concepts_dissect_fails_and_run_skips_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rfstore.cli import app

    data = write_masked_folder(tmp_path / "img", with_concepts=False)
    path = tmp_path / "store.zarr"
    segmented_store(path, data)
    with open_store(path, "a") as store:
        with pytest.raises(NoConceptsError, match="no concepts.json"):
            run_dissect(NetworkContext.open(store), DissectConfig())
    runner = CliRunner()
    alone = runner.invoke(app, ["dissect", str(path)])
    assert alone.exit_code == 1 and "no concepts.json" in alone.output
    pipeline = runner.invoke(app, ["run", str(path), "--size", "2", "--stride", "1", "--fill", "zero", "--k", "3"])
    assert pipeline.exit_code == 0, pipeline.output
    assert "dissect: skipped" in pipeline.output
    # with concepts.json but only one mask file left, the top images without masks are left out and counted
    (data / "concepts.json").write_text(json.dumps(CONCEPTS))
    for mask in sorted((data / "masks").rglob("*.png"))[1:]:
        mask.unlink()
    partial = runner.invoke(app, ["dissect", str(path)])
    assert partial.exit_code == 0, partial.output
    with open_store(path, "r") as store:
        left_out = store.attrs("net/1")["dissect_images_without_mask"]
        top = store.read("net/1/topk_image")
    assert left_out == len(set(top.ravel().tolist()) - {0}) > 0  # image 0 (a/img0.png) kept its mask
    assert f"{left_out} top image(s) have no mask file" in partial.output
