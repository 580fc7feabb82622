"""``rfstore compare``: Table 1 of two networks side by side (against the store's own numbers), ``--match``
(against ``numpy.corrcoef`` on the stored ``act_max``), the streaming of its correlations, and the seed
study's case end to end through the CLI."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image, ImageDraw
from typer.testing import CliRunner, Result

from compare_fixtures import build_two_network_store
from compare_nets import two_class_alexnet
from rfstore.cli import app
from rfstore.results.compare import align
from rfstore.results.correlate import RunningCorrelation, correlate_layers
from rfstore.results.table import LayerRow
from rfstore.store import open_store


def invoke(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module", params=["zarr", "h5"])
def two_nets(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, scene_folder: Path) -> Path:
    return build_two_network_store(tmp_path_factory.mktemp("compare") / f"two.{request.param}", scene_folder)


# -- the side-by-side table ---------------------------------------------------------------------------------------
def parse_block(text: str) -> tuple | None:
    """``(layer, own depth or "", theory, empirical, measured, labelled)`` of one network's cells, None if blank."""
    tokens = [token.replace("\0", " ") for token in text.replace("not run", "not\0run").split()]
    if not tokens:
        return None
    labelled, measured = tokens[-1], tokens[-2]
    if tokens[-3] == "-":
        empirical, theory, rest = "-", tokens[-4], tokens[:-4]
    else:
        empirical, theory, rest = " ".join(tokens[-5:-2]), tokens[-6], tokens[:-6]
    return rest[0], " ".join(rest[1:]), theory, empirical, measured, labelled


def parse_table(stdout: str) -> tuple[list[str], list[tuple[str, list]]]:
    """The networks of ``compare``'s table and its rows: ``(depth, [block per network])``."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("depth"))
    names = [part.strip() for part in lines[start].split("|")[1:]]
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        parts = [part.strip() for part in line.split("|")]
        parts += [""] * (1 + len(names) - len(parts))
        rows.append((parts[0], [parse_block(part) for part in parts[1:]]))
    return names, rows


def table_by_hand(store_path: Path, network: str) -> dict[str, tuple]:
    """Per layer ``(theory, empirical, measured, labelled)`` as the table should print them, from the raw arrays."""
    expected = {}
    with open_store(store_path, "r") as st:
        for layer in st.attrs(network)["layers"]:
            group = f"{network}/{layer}"
            n = st.attrs(group)["num_units"]
            size = st.attrs(group)["rf_theory_size"]
            has_rf = st.is_array(f"{group}/rf_size")
            rf = st.read(f"{group}/rf_size").astype(np.float64) if has_rf else np.full(n, np.nan)
            has_concept = st.is_array(f"{group}/concept")
            concept = st.read(f"{group}/concept") if has_concept else np.full(n, "")
            measured = int(np.count_nonzero(~np.isnan(rf)))
            empirical = f"{np.nanmean(rf):.1f} +- {np.nanstd(rf):.1f}" if measured else "-"
            theory = str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"
            labelled = str(sum(1 for c in concept if c)) if has_concept else "not run"
            expected[layer] = (theory, empirical, f"{measured}/{n}" if has_rf else "not run", labelled)
    return expected


def assert_table_is_the_stores(stdout: str, store_path: Path, layout: list[tuple[str, list]]) -> None:
    """``layout``: per row its depth and per network ``(layer, own depth note)`` or None."""
    names, rows = parse_table(stdout)
    by_hand = {name: table_by_hand(store_path, name) for name in names}
    assert [depth for depth, _ in rows] == [depth for depth, _ in layout]
    for (_, blocks), (_, places) in zip(rows, layout):
        for name, block, place in zip(names, blocks, places):
            if place is None:
                assert block is None
                continue
            assert block[:2] == place
            assert block[2:] == by_hand[name][place[0]], (name, place)


TWO_NETS_ROWS = [("0.00", [("features.1", ""), ("features.1", "")]),
                 ("0.33", [("features.4", "(0.50)"), ("features.4", "")]),  # 0.5 lies halfway: the shallower row
                 ("0.67", [None, ("features.7", "")]),
                 ("1.00", [("features.11", ""), ("classifier.2", "")])]


def test_table_is_table_1_of_each_network_aligned_by_relative_depth(two_nets: Path) -> None:
    done = invoke("compare", two_nets, "tiny", "twoclass")
    assert done.exit_code == 0, done.output
    assert parse_table(done.stdout)[0] == ["tiny", "twoclass"]
    assert_table_is_the_stores(done.stdout, two_nets, TWO_NETS_ROWS)
    swapped = invoke("compare", two_nets, "twoclass", "tiny")
    assert parse_table(swapped.stdout)[0] == ["twoclass", "tiny"]
    assert_table_is_the_stores(swapped.stdout, two_nets, [(d, places[::-1]) for d, places in TWO_NETS_ROWS])
    bad = invoke("compare", two_nets, "tiny", "nosuch")
    assert bad.exit_code == 1 and "no network 'nosuch'" in bad.output


def fake_rows(network: str, n: int) -> list[LayerRow]:
    return [LayerRow(network, f"l{i}", i, i / (n - 1), "conv", 1, None, np.nan, np.nan, 0, 0, ()) for i in range(n)]


def test_alignment_puts_each_layer_in_the_nearest_row_of_the_deepest_network() -> None:
    rows = align({"five": fake_rows("five", 5), "seven": fake_rows("seven", 7), "two": fake_rows("two", 2)})
    assert [round(row.depth, 3) for row in rows] == [round(i / 6, 3) for i in range(7)]
    where = {name: [row.layers[name].layer if row.layers[name] else None for row in rows] for name in ("five", "two")}
    # five's depths 0, .25, .5, .75, 1 are nearest rows 0, 1.5 -> 1 (tie: shallower), 3, 4.5 -> 4, 6
    assert where["five"] == ["l0", "l1", None, "l2", "l3", None, "l4"]
    assert where["two"] == ["l0", None, None, None, None, None, "l1"]
    assert [row.layers["seven"].layer for row in rows] == [f"l{i}" for i in range(7)]


# -- unit matching --------------------------------------------------------------------------------------------------
def corrcoef_cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(p, q)`` Pearson r of the columns of a and b by numpy.corrcoef (NaN for constant columns)."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.corrcoef(np.hstack([a, b]).T.astype(np.float64))[:a.shape[1], a.shape[1]:]


def open_group(path: Path, group: str) -> xr.Dataset:
    """The group as xarray opens it, loaded and closed (an HDF5 file left open here would hide later writes)."""
    if path.suffix == ".zarr":
        opened = xr.open_zarr(path, group=group, consolidated=False)
    else:
        opened = xr.open_dataset(path, group=group, engine="h5netcdf", phony_dims="sort")
    with opened:
        return opened.load()


def assert_best(match: xr.Dataset, corr: np.ndarray) -> None:
    """Each unit's stored best match is the column of highest r in ``corr`` (-1 / NaN for a unit without r)."""
    best, r = match.best_unit.values, match.best_corr.values
    assert match.best_unit.dims == ("unit",) and len(best) == len(corr)
    for unit, row in enumerate(corr):
        if np.isnan(row).all():
            assert best[unit] == -1 and np.isnan(r[unit])
        else:
            assert abs(r[unit] - np.nanmax(row)) < 1e-5 and abs(row[best[unit]] - np.nanmax(row)) < 1e-9


def test_match_pairs_each_unit_with_its_best_correlated_unit(two_nets: Path) -> None:
    done = invoke("compare", two_nets, "--match", "--block-images", "5", "--top", "100")  # 18 images: 4 blocks
    assert done.exit_code == 0, done.output
    pairs = [("features.1", "features.1"), ("features.4", "features.4"), ("features.11", "classifier.2")]
    listed = re.findall(r"^ +(\d+) +(\d+) +(-?[\d.]+)$", done.stdout, flags=re.MULTILINE)
    counts = [int(n) for n in re.findall(r"(\d+) mutual best pairs", done.stdout)]
    mutual_all, dead = [], 0
    for la, lb in pairs:
        a = open_group(two_nets, f"tiny/{la}").act_max.values
        b = open_group(two_nets, f"twoclass/{lb}").act_max.values
        corr = corrcoef_cross(a, b)
        forward = open_group(two_nets, f"tiny/{la}/match/twoclass/{lb}")
        backward = open_group(two_nets, f"twoclass/{lb}/match/tiny/{la}")
        assert_best(forward, corr)
        assert_best(backward, corr.T)
        assert forward.attrs["n_images"] == 18
        best_ab, best_ba = forward.best_unit.values, backward.best_unit.values
        mutual_all.append({(u, int(v)) for u, v in enumerate(best_ab) if v >= 0 and best_ba[v] == u})
        dead += int(np.isnan(corr).all(axis=1).sum())
    assert dead > 0  # units constant over the images (dead ReLUs) have no match: -1 / NaN checked above
    assert counts == [len(m) for m in mutual_all] and sum(counts) == len(listed) > 0
    offset = 0
    for mutual, (la, lb) in zip(mutual_all, pairs):
        shown = listed[offset:offset + len(mutual)]
        offset += len(mutual)
        assert {(int(u), int(v)) for u, v, _ in shown} == mutual
        assert [float(r) for _, _, r in shown] == sorted((float(r) for _, _, r in shown), reverse=True)
    again = invoke("compare", two_nets, "--match")
    assert again.exit_code == 0 and "already current; nothing to do" in again.output
    assert invoke("activations", two_nets, "--network", "twoclass", "--force", "--workers", "0").exit_code == 0
    assert invoke("compare", two_nets).stdout.count("(STALE: activations recomputed since") == 3
    again = invoke("compare", two_nets, "--match")
    assert "3 layer pair(s) over 18 images stored" in again.output and "STALE" not in again.output
    layer = open_group(two_nets, "tiny/features.4")  # the layer group still opens as it did, the pairings below it
    assert layer.act_max.dims == ("image", "unit") and "best_unit" not in layer


def test_correlations_stream_blocks_of_image_rows(two_nets: Path) -> None:
    pairs = [("features.4", "features.4"), ("features.11", "classifier.2")]
    with open_store(two_nets, "r") as st:
        rows_read = []
        read = st.read

        def spy(path: str, selection=slice(None)):
            if path.endswith("/act_max"):
                rows_read.append(len(range(*selection.indices(18))))
            return read(path, selection)

        st.read = spy
        stats = correlate_layers(st, "tiny", "twoclass", pairs, block=4)
        st.read = read
        for (la, lb), stat in zip(pairs, stats):
            expected = corrcoef_cross(st.read(f"tiny/{la}/act_max"), st.read(f"twoclass/{lb}/act_max"))
            np.testing.assert_allclose(stat.correlation(), expected, atol=1e-9)
    assert max(rows_read) == 4 and sum(rows_read) == 18 * 2 * len(pairs)  # never more than a block of rows


def test_running_correlation_leaves_out_unfinished_images_and_constant_units() -> None:
    rng = np.random.default_rng(3)
    a = 1e4 + rng.normal(size=(50, 3))  # a large offset: raw sums of squares would lose the digits
    b = np.column_stack([a[:, 0] * 2 + rng.normal(scale=0.1, size=50), np.full(50, 5.0), rng.normal(size=50)])
    a[[7, 30]] = np.nan  # images not computed yet
    stat = RunningCorrelation(3, 3)
    for start in range(0, 50, 8):
        stat.update(a[start:start + 8], b[start:start + 8])
    keep = ~np.isnan(a).any(axis=1)
    expected = corrcoef_cross(a[keep], b[keep])
    assert stat.n == 48 and np.isnan(stat.correlation()[:, 1]).all()
    np.testing.assert_allclose(stat.correlation(), expected, atol=1e-9)


# -- the seed study's case, end to end ---------------------------------------------------------------------------
def write_images(root: Path, classes: dict[str, str], per_class: int, size: int, seed: int) -> Path:
    """Noisy RGB images, each with a bright disk or square (its class's shape) at a random place."""
    rng = np.random.default_rng(seed)
    for name, shape in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = Image.fromarray(rng.integers(0, 120, (size, size, 3), dtype=np.uint8))
            x, y = rng.integers(4, size - 24, 2)
            box = (int(x), int(y), int(x) + 20, int(y) + 20)
            colour = tuple(int(c) for c in rng.integers(150, 256, 3))
            (ImageDraw.Draw(image).ellipse if shape == "disk" else ImageDraw.Draw(image).rectangle)(box, fill=colour)
            image.save(root / name / f"{i:02d}.png")
    return root


def test_seed_study_torchvision_alexnet_and_a_pickled_two_class_variant(tmp_path: Path) -> None:
    photos = write_images(tmp_path / "photos", {"scenes": "disk", "things": "square"}, 3, 80, seed=0)
    avatar = write_images(tmp_path / "avatar", {"geo": "disk", "lmk": "square"}, 4, 64, seed=1)
    torch.save(two_class_alexnet(seed=1), tmp_path / "avatarnet.pt")  # the whole module, pickled
    store = tmp_path / "study.zarr"
    conv = "features.1,features.4,features.7,features.9,features.11"  # at 64 px the classifier has no RF geometry
    occlusion = ["--units", "0:2", "--k", "2", "--size", "16", "--stride", "8", "--fill", "zero", "--workers", "0"]
    done = invoke("run", store, "--model", "torchvision:alexnet", "--weights", "none", "--name", "alexnet",
                  "--preprocess", "imagenet", "--resize", "72", "--crop", "64", "--data", photos, "--layers", conv,
                  *occlusion)
    assert done.exit_code == 0, done.output
    done = invoke("run", store, "--model", f"pickle:{tmp_path / 'avatarnet.pt'}", "--trust-pickle",
                  "--name", "avatarnet", "--preprocess", "tensor", "--data", avatar, *occlusion)
    assert done.exit_code == 0, done.output

    done = invoke("validate", store, "--network", "avatarnet", "--class-map", "geo=0,lmk=1", "--workers", "0")
    assert done.exit_code == 0, done.output
    model = torch.load(tmp_path / "avatarnet.pt", weights_only=False)  # the test's own file
    images = sorted(avatar.rglob("*.png"))
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) / 255.0
                          for p in images])
    with torch.no_grad():
        predicted = model(pixels).argmax(dim=1).numpy()
    truth = np.array([0 if p.parent.name == "geo" else 1 for p in images])
    assert f"accuracy {np.mean(predicted == truth):.4f} on 8 labelled images" in done.stdout

    done = invoke("compare", store)
    assert done.exit_code == 0, done.output
    alexnet = conv.split(",")
    # avatarnet's depths 0, 1/3, 2/3, 1 are nearest alexnet's rows 0, 0.25, 0.75, 1
    avatarnet = {0: ("features.1", ""), 1: ("features.4", "(0.33)"), 3: ("features.7", "(0.67)"),
                 4: ("classifier.2", "")}
    layout = [(f"{i / 4:.2f}", [(layer, ""), avatarnet.get(i)]) for i, layer in enumerate(alexnet)]
    assert_table_is_the_stores(done.stdout, store, layout)
    measured = [block[4] for _, blocks in parse_table(done.stdout)[1] for block in blocks if block]
    assert any(not m.startswith("0/") for m in measured)  # empirical RFs were measured (units 0:2 of each layer)

    refused = invoke("compare", store, "--match")
    assert refused.exit_code == 1
    assert "same images" in refused.output and f"alexnet was run on {photos}" in refused.output
