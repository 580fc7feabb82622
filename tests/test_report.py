"""The HTML report, the unit pictures, ``rfstore show``, and the report in a real headless Chromium."""
from __future__ import annotations

import base64
import dataclasses
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from compare_fixtures import build_two_network_store
from rfstore.cli import app
from rfstore.datasets import Preprocessing
from rfstore.models import ModelSpec
from rfstore.report import figures
from rfstore.results.layers import ImageCache, LayerInfo, LayerReader, UnitData
from rfstore.pipeline.stages.activations import ActivationsConfig, run_activations
from rfstore.recorded.network import NetworkContext
from rfstore.pipeline.stages.init import InitConfig, run_init
from rfstore.pipeline.stages.occlude import OccludeConfig, run_occlude
from rfstore.report.build import ReportConfig, run_report
from rfstore.pipeline.stages.rf import RFConfig, run_rf
from rfstore.results.table import table1
from rfstore.pipeline.stages.segment import SegmentConfig, run_segment
from rfstore.pipeline.stages.topk import TopKConfig, run_topk
from rfstore.store import ArraySpec, open_store

TINY_ALEXNET = "rfstore.demo.network:tiny_alexnet"
CONCEPTS = ["background", "disk", "square", "triangle", "bar"]
LABELS = {0: ("disk", 0.5), 1: ("square", 0.25), 3: ("bar", 0.125)}  # features.4 units labelled by "dissect"


def write_labels(store, group: str, n_units: int) -> None:
    """What the dissect stage writes: concept/iou (unit), concept_iou/iou_chance (unit, concept_name)."""
    concept = np.array([LABELS.get(u, ("", 0))[0] for u in range(n_units)], dtype=object)
    iou = np.array([LABELS[u][1] if u in LABELS else np.nan for u in range(n_units)], dtype=np.float32)
    scores = np.full((n_units, len(CONCEPTS)), np.nan, dtype=np.float32)
    for unit, (name, value) in LABELS.items():
        scores[unit] = value / 4
        scores[unit, CONCEPTS.index(name)] = value
    chance = np.where(np.isnan(scores), np.nan, 0.01).astype(np.float32)
    names = ArraySpec((len(CONCEPTS),), "str", ("concept_name",), (len(CONCEPTS),), "")
    store.create_array(f"{group}/concept_name", names, data=np.array(CONCEPTS, dtype=object))
    store.create_array(f"{group}/concept", ArraySpec((n_units,), "str", ("unit",), (n_units,), ""), data=concept)
    store.create_array(f"{group}/iou", ArraySpec((n_units,), "float32", ("unit",), (n_units,), np.nan), data=iou)
    for name, values in (("concept_iou", scores), ("iou_chance", chance)):
        store.create_array(f"{group}/{name}", ArraySpec(values.shape, "float32", ("unit", "concept_name"),
                                                        values.shape, np.nan), data=values)
    store.update_attrs(group, {"dissect_min_iou": 0.04, "dissect_masks": "activation"})


@pytest.fixture(scope="module")
def scene_store(tmp_path_factory: pytest.TempPathFactory, scene_folder: Path) -> Path:
    """Two layers of the demo's network on 12 generated 96 px scenes; units 0-3 occluded, rf, segmented."""
    path = tmp_path_factory.mktemp("report") / "scenes.zarr"
    with open_store(path, "a") as st:
        run_init(st, InitConfig(model=ModelSpec(TINY_ALEXNET, None, 0), data=scene_folder,
                                preprocessing=Preprocessing.tensor(), layers="features.1,features.4", name="net"))
        ctx = NetworkContext.open(st)
        run_activations(ctx, ActivationsConfig(batch_size=12, num_workers=0))
        run_topk(ctx, TopKConfig(k=3))
        run_occlude(ctx, OccludeConfig(size=9, stride=3, fill="zero", units=slice(0, 4), device="cpu"))
        run_rf(ctx, RFConfig())
        run_segment(ctx, SegmentConfig())
        write_labels(st, "net/features.4", ctx.n_units("features.4"))
    return path


@pytest.fixture(scope="module")
def report_dir(scene_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of units 0-5 of each layer (the layer pages list all units)."""
    out = tmp_path_factory.mktemp("html") / "report"
    with open_store(scene_store, "r") as st:
        result = run_report(st, ReportConfig(out=out, units=slice(0, 6)))
    assert result.index == out / "index.html" and result.unit_pages == 2 * 6 and result.layer_pages == 2
    return out


class Links(HTMLParser):
    """Every href and src of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.targets.append((tag, value))


def links_of(page: Path) -> list[tuple[str, Path]]:
    parser = Links()
    parser.feed(page.read_text(encoding="utf-8"))
    out = []
    for tag, url in parser.targets:
        parsed = urlparse(url)
        assert not parsed.scheme and not parsed.netloc and not url.startswith("/"), f"{page}: non-relative {url}"
        out.append((tag, (page.parent / unquote(parsed.path)).resolve()))
    return out


def test_every_link_resolves_and_every_page_is_reachable(report_dir: Path) -> None:
    pages = {p.resolve() for p in report_dir.rglob("*.html")}
    assert len(pages) == 1 + 2 + 2 * 6
    for page in pages:
        for tag, target in links_of(page):
            assert target.is_file(), f"{page.relative_to(report_dir)}: <{tag}> to missing {target}"
            assert report_dir.resolve() in target.parents, f"{page}: link leaves the report: {target}"
    seen, todo = set(), [(report_dir / "index.html").resolve()]
    while todo:
        page = todo.pop()
        if page not in seen:
            seen.add(page)
            todo += [t for tag, t in links_of(page) if tag == "a" and t.suffix == ".html"]
    assert seen == pages


def test_index_has_table_1_and_the_depth_plot(report_dir: Path, scene_store: Path) -> None:
    index = (report_dir / "index.html").read_text(encoding="utf-8")
    with open_store(scene_store, "r") as st:
        rows = table1(NetworkContext.open(st))
    assert [row.measured for row in rows] == [4, 4]
    for row in rows:
        assert f"{row.empirical_mean:.1f} &plusmn; {row.empirical_std:.1f}" in index
    assert '<td class="num">7</td>' in index and '<td class="num">27</td>' in index  # theoretical RF sizes
    assert "bar (1), disk (1), square (1)" in index  # most frequent concepts, ties alphabetical
    assert "the factory&#x27;s weights, seed 0" in index or "the factory's weights, seed 0" in index
    assert "random init" not in index  # a factory may load its own weights (the demo's does)
    plot = Image.open(report_dir / "net" / "rf_depth.png")
    assert plot.size == (640, 360)
    assert 'id="comparison"' not in index and not (report_dir / "rf_compare.png").exists()  # one network


@pytest.fixture(scope="module")
def compare_report(scene_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A store of two networks (compare_fixtures) and its report, one unit page per layer."""
    store = build_two_network_store(tmp_path_factory.mktemp("two") / "two.zarr", scene_folder)
    out = tmp_path_factory.mktemp("html") / "compare"
    with open_store(store, "r") as st:
        run_report(st, ReportConfig(out=out, units=slice(0, 1)))
    return store, out


def test_index_compares_the_networks_of_a_store(compare_report: tuple[Path, Path]) -> None:
    store, compare_report_dir = compare_report
    index = (compare_report_dir / "index.html").read_text(encoding="utf-8")
    section = index[index.index('<h2 id="comparison">'):index.index("<h2", index.index('<h2 id="comparison">') + 1)]
    assert section.count('<th colspan="5" class="network">') == 2 and ">tiny<" in section and ">twoclass<" in section
    body = section[section.index("<tbody>"):section.index("</tbody>")]
    assert body.count("<tr>") == 4 and body.count('colspan="5">-</td>') == 1  # tiny has no layer at depth 0.67
    with open_store(store, "r") as st:
        rf = st.read("tiny/features.11/rf_size")
    assert f"{np.mean(rf):.1f} &plusmn; {np.std(rf):.1f}" in body  # every unit measured there
    assert '<a href="tiny/features.11/index.html">features.11</a>' in body
    assert '<td class="num">5 / 16</td>' in body and '<td class="num">0 / 24</td>' in body  # measured / units
    assert Image.open(compare_report_dir / "rf_compare.png").size == (640, 380)


def test_layer_and_unit_pages_show_what_is_computed(report_dir: Path, scene_store: Path) -> None:
    layer = (report_dir / "net" / "features.4" / "index.html").read_text(encoding="utf-8")
    with open_store(scene_store, "r") as st:
        rf_size = st.read("net/features.4/rf_size")
    assert f'data-v="{float(rf_size[0])!r}"' in layer and 'data-v="disk"' in layer
    assert layer.count('<tr data-unit="') == 32 and "table.sortable" in layer
    labelled = (report_dir / "net" / "features.4" / "unit_0000.html").read_text(encoding="utf-8")
    assert "disk (IoU 0.5 on activation masks)" in labelled and "<th class=\"num\">chance IoU</th>" in labelled
    for kind in ("montage", "discrepancy", "rf"):
        assert f'src="img/unit_0000_{kind}.png"' in labelled
    waiting = (report_dir / "net" / "features.4" / "unit_0005.html").read_text(encoding="utf-8")
    assert "unit_0005_montage.png" in waiting and "unit_0005_discrepancy.png" not in waiting
    assert "not computed yet (<code>rfstore occlude" in waiting and "not computed yet (<code>rfstore rf" in waiting


def test_rerun_replaces_the_report_and_a_foreign_folder_needs_force(scene_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    with open_store(scene_store, "r") as st:
        run_report(st, ReportConfig(out=out, layers=("features.4",), units=slice(0, 2)))
        assert sorted(p.name for p in (out / "net" / "features.4").glob("*.html")) == [
            "index.html", "unit_0000.html", "unit_0001.html"]
        run_report(st, ReportConfig(out=out, layers=("features.1",), units=slice(5, 6)))
        assert not (out / "net" / "features.4").exists()  # the earlier report's pages are gone
        assert (out / "net" / "features.1" / "unit_0005.html").is_file()
        foreign = tmp_path / "notes"
        foreign.mkdir()
        (foreign / "mine.txt").write_text("keep")
        with pytest.raises(Exception, match="not empty"):
            run_report(st, ReportConfig(out=foreign))
        run_report(st, ReportConfig(out=foreign, layers=("features.1",), units=slice(0, 1)), force=True)
        assert (foreign / "mine.txt").read_text() == "keep" and (foreign / "index.html").is_file()
        (tmp_path / "other" / "net").mkdir(parents=True)
        with pytest.raises(Exception, match="would overwrite"):  # not even with --force
            run_report(st, ReportConfig(out=tmp_path / "other"), force=True)


def square_unit(seg: bool = True) -> UnitData:
    """A 10x10 input, one top image; segmentation = rows/cols 3..6; theoretical RF 3 px centred on (5, 5)."""
    info = LayerInfo(network="n", layer="l", depth=1, kind="conv", n_units=1, input_hw=(10, 10), theory_size=(3, 3),
                     theory_jump=(1, 1), theory_start=(0.0, 0.0), k=1, occluder=(2, 1), rf_threshold=0.5)
    mask = np.zeros((1, 10, 10), dtype=np.uint8)
    mask[0, 3:7, 3:7] = 1
    discrepancy = np.zeros((1, 9, 9), dtype=np.float32)
    discrepancy[0, 6:8, 6:8] = 1.0  # occluding the bottom-right corner lowers the unit
    rf_map = np.zeros((5, 5), dtype=np.float32)
    rf_map[1:4, 1:4] = 1.0
    rf_map[2, 2] = 3.0
    return UnitData(info=info, unit=0, image=np.array([0]), value=np.array([2.5]), y=np.array([5]), x=np.array([5]),
                    centres=np.array([[5.0, 5.0]]), discrepancy=discrepancy, rf_map=rf_map, rf_size=3.0,
                    seg_mask=mask if seg else None, seg_mask_dissect=None, concept="disk", iou=0.5, concepts=[])


def test_overlay_pixels_worked_out_on_paper() -> None:
    colour = np.array([100, 150, 200], dtype=np.uint8)
    pixels = np.broadcast_to(colour, (10, 10, 3)).copy()
    scale = 4
    tile = np.asarray(figures.overlay_tile(square_unit(), 0, pixels, scale))
    assert tile.shape == (40, 40, 3)
    dimmed = (colour * figures.DIM).astype(np.uint8)
    assert tile[4 * 4 + 1, 4 * 4 + 1].tolist() == colour.tolist()  # inside the mask, off its border and the box
    assert tile[1, 1].tolist() == dimmed.tolist()  # outside: dimmed
    assert tile[3 * 4, 3 * 4 + 2].tolist() == list(figures.SEG_COLOUR)  # the mask's top border
    assert tile[4 * 4, 5 * 4].tolist() == list(figures.BOX_COLOUR)  # theoretical RF: rows/cols 4..6
    plain = np.asarray(figures.overlay_tile(square_unit(seg=False), 0, pixels, scale))
    assert plain[1, 1].tolist() == colour.tolist()  # nothing dimmed without a segmentation
    montage = figures.unit_montage(square_unit(), lambda image: pixels, scale)
    assert montage.size == (40 + 2 * figures.GAP, figures.LABEL_H + 40 + figures.GAP)
    row = figures.unit_montage(square_unit(), lambda image: pixels, scale, labels=False)
    assert np.array_equal(np.asarray(row)[:40, figures.GAP:figures.GAP + 40], tile)


def test_discrepancy_and_rf_pictures() -> None:
    unit = square_unit()
    picture = np.asarray(figures.discrepancy_montage(unit, lambda image: None, 4, labels=False))
    tile = picture[:40, figures.GAP:figures.GAP + 40].astype(int)
    heat = ~(tile == figures.BOX_COLOUR).all(axis=-1)  # leave out the theoretical RF's box and cross
    red = tile[..., 0] - tile[..., 2]
    assert red[7 * 4 + 1, 7 * 4 + 1] > 50  # pixel (7, 7): every window covering it lowers the unit by 1
    assert 0 < red[8 * 4 + 1, 8 * 4 + 1] < red[7 * 4 + 1, 7 * 4 + 1]  # pixel (8, 8): one window in four
    assert abs(red[1, 1]) < 10 and red[heat].min() > -10  # no change elsewhere, and nowhere a rise
    picture = figures.rf_heatmap(unit, target=50)  # 5x5 map, zoomed 10x, below a label line
    assert picture is not None
    arr = np.asarray(picture)[figures.LABEL_H:figures.LABEL_H + 50, figures.GAP:figures.GAP + 50]
    assert arr[21, 25].tolist() == list(figures.RF_OUTLINE)  # only the peak reaches half the maximum:
    assert arr[25, 25].tolist() == figures.colorize(np.ones((1, 1)), "inferno", 0, 1)[0, 0].tolist()  # outlined
    assert arr[10, 25].tolist() == list(figures.BOX_COLOUR)  # theoretical RF: 3 px around the centre
    assert arr[5, 5].tolist() == figures.colorize(np.zeros((1, 1)), "inferno", 0, 3)[0, 0].tolist()
    assert figures.rf_heatmap(dataclasses.replace(unit, rf_map=None)) is None


def test_montage_overlays_the_stored_segmentation(scene_store: Path) -> None:
    with open_store(scene_store, "r") as st:
        ctx = NetworkContext.open(st)
        unit = LayerReader(ctx, "features.4").unit(0)
        images = ImageCache(ctx)
        montage = np.asarray(figures.unit_montage(unit, images, 1.0, labels=False))
        original = images(int(unit.image[0]))
    tile = montage[:96, figures.GAP:figures.GAP + 96]
    inside = unit.seg_mask[0] > 0
    interior = inside & ~figures.boundary(inside)
    assert interior.any() and (~inside).any()
    box = (tile == figures.BOX_COLOUR).all(axis=-1)  # leave out the theoretical RF's box and centre cross
    keep_in, keep_out = interior & ~box, ~inside & ~box
    assert np.array_equal(tile[keep_in], original[keep_in])
    assert np.array_equal(tile[keep_out], (original[keep_out] * figures.DIM).astype(np.uint8))


def test_show_and_report_commands(scene_store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "unit.png"
    done = runner.invoke(app, ["show", str(scene_store), "features.4", "0", "--out", str(out)])
    assert done.exit_code == 0, done.output
    picture = Image.open(out)
    assert picture.format == "PNG" and picture.width >= 3 * 192 and picture.height > 3 * 192
    bad = runner.invoke(app, ["show", str(scene_store), "features.4", "99", "--out", str(out)])
    assert bad.exit_code == 1 and "units 0..31" in bad.output
    bad = runner.invoke(app, ["show", str(scene_store), "features.9", "0", "--out", str(out)])
    assert bad.exit_code == 1 and "not in the store" in bad.output
    done = runner.invoke(app, ["report", str(scene_store), "--out", str(tmp_path / "rep"), "--layers", "features.4",
                               "--units", "0:3"])
    assert done.exit_code == 0, done.output
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / "rep" / "index.html")


class HeadlessChromium:
    """Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fds 3 and 4)."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()

        def child_fds() -> None:  # put the pipe ends on fds 3 and 4 without clobbering either
            read_end = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1200,900"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=child_fds)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.writer = os.fdopen(to_chrome_w, "wb", buffering=0)
        self.reader = os.fdopen(from_chrome_r, "rb", buffering=0)
        self.buffer, self.next_id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.reader], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("no answer from Chromium")
            chunk = self.reader.read(1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.writer.write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 30
        while True:
            answer = self._message(deadline)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def load(self, action: str | None = None, url: str | None = None) -> str:
        """Open ``url`` or run ``action`` (JS that follows a link); wait for the load event; the new URL."""
        self.events.clear()
        if url:
            self.call("Page.navigate", session=True, url=url)
        else:
            self.evaluate(action)
        deadline = time.monotonic() + 30
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._message(deadline))
        return self.evaluate("location.href")

    def images(self) -> list[list]:
        return self.evaluate(
            "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")

    def screenshot(self) -> Image.Image:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data)))

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.process.wait(timeout=10)
        except Exception:  # noqa: BLE001 - make sure it goes away
            self.process.kill()
            self.process.wait()


def assert_not_blank(picture: Image.Image) -> None:
    assert picture.format == "PNG" and picture.width >= 800 and picture.height >= 600
    pixels = np.asarray(picture.convert("RGB")).astype(np.int32)
    colours = np.unique((pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2])
    assert pixels.std() > 10 and len(colours) > 50


def check_comparison_page(browser: HeadlessChromium, index: Path) -> None:
    """The index of a two-network store: the comparison plot and table, and its links to layer pages."""
    browser.load(url=index.as_uri())
    images = browser.images()
    assert [src for src, _, _ in images] == ["rf_compare.png", "tiny/rf_depth.png", "twoclass/rf_depth.png"]
    assert all(complete and width > 0 for _, complete, width in images), images
    assert browser.evaluate("document.querySelectorAll('#compare tbody tr').length") == 4
    assert_not_blank(browser.screenshot())
    url = browser.load("document.querySelector('#compare a').click()")
    assert url == (index.parent / "tiny" / "features.1" / "index.html").as_uri()


def test_report_in_headless_chromium(report_dir: Path, compare_report: tuple[Path, Path], tmp_path: Path) -> None:
    if os.environ.get("RFSTORE_NO_BROWSER") == "1":
        pytest.skip("RFSTORE_NO_BROWSER=1")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Chromium is not installed: run scripts/ensure-chromium (or set RFSTORE_NO_BROWSER=1)")
    browser = HeadlessChromium(executable, tmp_path / "profile")
    try:
        url = browser.load(url=(report_dir / "index.html").resolve().as_uri())
        assert url.endswith("/index.html") and browser.evaluate("document.title") == "rfstore report: scenes.zarr"
        images = browser.images()
        assert images and all(complete and width > 0 for _, complete, width in images), images
        assert_not_blank(browser.screenshot())
        links = browser.evaluate("Array.from(document.links).map(a => a.href)")
        assert len(links) == 2 and all(Path(unquote(urlparse(link).path)).is_file() for link in links)

        url = browser.load("document.querySelector('table a').click()")
        assert url.endswith("/net/features.1/index.html")
        images = browser.images()
        assert len(images) == 1 + 6 and all(complete and width > 0 for _, complete, width in images), images
        column = "Array.from(document.querySelectorAll('#units tbody tr')).map(r => r.cells[2].dataset.v)"
        browser.evaluate("document.querySelectorAll('#units th')[2].click()")
        values = browser.evaluate(column)
        measured = [float(v) for v in values if v]
        assert len(measured) == 4 and measured == sorted(measured, reverse=True) and values[4:] == [""] * 12
        browser.evaluate("document.querySelectorAll('#units th')[2].click()")
        measured = [float(v) for v in browser.evaluate(column) if v]
        assert measured == sorted(measured)

        url = browser.load("Array.from(document.links).find(a => a.textContent === 'unit 0').click()")
        assert url.endswith("/net/features.1/unit_0000.html")
        images = browser.images()
        kinds = ("montage", "discrepancy", "rf")
        assert [src for src, _, _ in images] == [f"img/unit_0000_{kind}.png" for kind in kinds]
        assert all(complete and width > 0 for _, complete, width in images), images
        assert_not_blank(browser.screenshot())
        url = browser.load("Array.from(document.links).find(a => a.textContent === 'report index').click()")
        assert url == (report_dir / "index.html").resolve().as_uri()
        check_comparison_page(browser, (compare_report[1] / "index.html").resolve())
    finally:
        browser.close()
