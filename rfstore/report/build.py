"""Stage ``report``: a static HTML report of a store, and ``show``: one unit's picture.

Reads (store opened read-only by the caller, so a writer never blocks it): per
network its attrs, ``image_path`` and the images themselves (from the dataset
root, through the recorded preprocessing); per layer its attrs, ``topk_*``,
``discrepancy``, ``rf_map``, ``rf_size``, ``seg_mask``, ``seg_mask_dissect`` and
dissect's ``concept``, ``iou``, ``concept_iou``, ``iou_chance`` where present
(:mod:`rfstore.results.layers`). Writes nothing to the store; writes the report
folder laid out as in :mod:`rfstore.report.pages` (plus ``.rfstore-report``,
the list of what it wrote, so that a later report replaces exactly that), or
one picture file for ``show``.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rfstore.datasets.preprocess import describe_preprocessing
from rfstore.errors import MissingInputError, RfstoreError, UsageError
from rfstore.report import figures, pages, plots
from rfstore.results.layers import ImageCache, LayerReader, LayerTable, UnitData
from rfstore.results.compare import compare_networks, network_names
from rfstore.results.table import table1
from rfstore.recorded.network import NetworkContext
from rfstore.results.status import describe_weights
from rfstore.store import Store

MARKER = ".rfstore-report"
#: the plot of every network's RF size against relative depth, beside index.html (stores of several networks)
COMPARE_PLOT = "rf_compare.png"
#: side of the report's top-image tiles: smaller inputs are zoomed by an integer factor to at least this,
#: inputs up to 2.5 times this kept as they are, bigger ones shrunk to twice this
TILE_PX = 224


@dataclass(frozen=True)
class ReportConfig:
    """What to report: all networks (or one), all layers (or some), all units (or a slice of each layer)."""

    out: Path
    network: str | None = None
    layers: tuple[str, ...] = ()
    units: slice | None = None


@dataclass
class ReportResult:
    index: Path
    unit_pages: int = 0
    layer_pages: int = 0
    figures: int = 0
    seconds: float = 0.0
    unreadable_images: list[str] = field(default_factory=list)


def _prepare(out: Path, entries: list[str], force: bool) -> None:
    """Empty what an earlier report wrote in ``out``; refuse a foreign non-empty folder unless ``force``,
    and even then refuse to write over a file or folder of the report's ``entries`` that is not its own."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file, not a folder", "out")
    marker = out / MARKER
    if marker.is_file():
        for name in json.loads(marker.read_text()).get("entries", []):
            target = out / name
            if Path(name).name != name or name in ("", ".", ".."):
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    elif out.is_dir() and any(out.iterdir()):
        if not force:
            raise RfstoreError(f"{out} is not empty and holds no earlier report; choose another --out, "
                               f"or add --force to write the report into it anyway")
        taken = [name for name in entries if (out / name).exists()]
        if taken:
            raise RfstoreError(f"{out} already has {', '.join(taken)}, which the report would overwrite; "
                               f"choose another --out")
    out.mkdir(parents=True, exist_ok=True)


def _unique_slugs(names: list[str]) -> dict[str, str]:
    slugs: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        base = candidate = pages.slug(name)
        n = 1
        while candidate.lower() in taken or candidate.lower() in ("index.html", MARKER, COMPARE_PLOT):
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate.lower())
        slugs[name] = candidate
    return slugs


def _networks(store: Store, network: str | None) -> list[str]:
    return network_names(store, [network] if network is not None else [])


def _classes(attrs: dict) -> str:
    classes = list(attrs.get("classes", []))
    return f" ({len(classes)} classes: {', '.join(map(str, classes[:6]))}{', ...' if len(classes) > 6 else ''})" \
        if classes else ""


def _facts(ctx: NetworkContext) -> list[tuple[str, str]]:
    attrs = ctx.attrs
    model = attrs.get("model", {})
    weights_text = describe_weights(model)
    height, width = ctx.input_size
    return [("model", str(attrs.get("model_spec", model.get("spec", "?")))), ("weights", weights_text),
            ("dataset", f"{ctx.n_images} images in {attrs.get('dataset_root', '?')}" + _classes(attrs)),
            ("input", f"{height} x {width} px"),
            ("preprocessing", describe_preprocessing(attrs.get("preprocessing"))),
            ("created", str(attrs.get("created", "?")))]


def _save(image, path: Path) -> None:  # image: PIL.Image.Image
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", compress_level=1)


def _selected_units(n_units: int, units: slice | None) -> list[int]:
    return [int(u) for u in (np.arange(n_units)[units] if units is not None else np.arange(n_units))]


@dataclass(frozen=True)
class _Drawing:
    """How a report draws units: where images come from and their zoom in the PNG."""

    images: ImageCache
    scale: float


def _unit_figures(data: UnitData, drawing: _Drawing, layer_dir: Path) -> dict[str, tuple[str, int, int]]:
    """Draw and write one unit's figures; ``{kind: (relative path, width, height shown)}`` of those drawn."""
    tiles = figures.overlay_tiles(data, drawing.images, drawing.scale)
    pictures = {
        "montage": figures.unit_montage(data, drawing.images, drawing.scale, tiles=tiles, labels=False),
        "discrepancy": figures.discrepancy_montage(data, drawing.images, drawing.scale, labels=False),
        "rf": figures.rf_heatmap(data),
        "thumb": figures.thumbnail(data, drawing.images, tiles=tiles),
    }
    written = {}
    for kind, picture in pictures.items():
        if picture is None:
            continue
        name = pages.unit_image_name(data.unit, kind)
        _save(picture, layer_dir / name)
        written[kind] = (name, picture.width, picture.height)
    return written


def _layer_report(ctx: NetworkContext, reader: LayerReader, table: LayerTable, layer_dir: Path, units: list[int],
                  drawing: _Drawing, result: ReportResult, tick: Callable[[int], None] | None) -> None:
    """The layer's page, and the page and figures of each of ``units``."""
    layer_dir.mkdir(parents=True, exist_ok=True)
    paths = ctx.image_paths()
    thumbs: set[int] = set()
    for n, unit in enumerate(units):
        data = reader.unit(unit)
        written = _unit_figures(data, drawing, layer_dir)
        result.figures += len(written)
        if "thumb" in written:
            thumbs.add(unit)
        top_paths = [str(paths[i]) if i >= 0 else "" for i in data.image]
        neighbours = (units[n - 1] if n > 0 else None, units[n + 1] if n + 1 < len(units) else None)
        html = pages.unit_page(data, ctx.network, written, top_paths, neighbours, str(ctx.store.path))
        (layer_dir / pages.unit_page_name(unit)).write_text(html, encoding="utf-8")
        result.unit_pages += 1
        if tick:
            tick(1)
    histogram = None
    if (~np.isnan(table.rf_size)).any():
        plots.save(plots.rf_histogram_figure(table), layer_dir / "rf_hist.png")
        histogram = "rf_hist.png"
        result.figures += 1
    html = pages.layer_page(table, ctx.network, set(units), histogram, thumbs)
    (layer_dir / "index.html").write_text(html, encoding="utf-8")
    result.layer_pages += 1


def _network_report(store: Store, network: str, folder: str, config: ReportConfig, result: ReportResult,
                    tick: Callable[[int], None] | None) -> pages.NetworkSection:
    """Every page and figure of one network, in ``config.out / folder``; what the index shows of it."""
    ctx = NetworkContext.open(store, network)
    out = config.out / folder
    out.mkdir(parents=True, exist_ok=True)
    selected = ctx.check_layers(list(config.layers))
    readers = {layer: LayerReader(ctx, layer) for layer in ctx.layers}
    tables = [readers[layer].table() for layer in ctx.layers]
    plot_name = "rf_depth.png"
    plots.save(plots.rf_depth_figure(tables, network), out / plot_name)
    result.figures += 1
    layer_slugs = _unique_slugs(ctx.layers)
    scale = figures.tile_scale(ctx.input_size, target=TILE_PX)
    drawing = _Drawing(ImageCache(ctx), scale)
    for table in tables:
        layer = table.info.layer
        if layer in selected:
            _layer_report(ctx, readers[layer], table, out / layer_slugs[layer],
                          _selected_units(table.info.n_units, config.units), drawing, result, tick)
    result.unreadable_images += sorted(drawing.images.failures.values())
    return pages.NetworkSection(name=network, folder=folder, facts=_facts(ctx), summary=table1(ctx),
                                layer_folders={name: layer_slugs[name] for name in selected}, plot=plot_name)


def _comparison(store: Store, sections: list[pages.NetworkSection], out: Path,
                result: ReportResult) -> pages.ComparisonSection:
    """The networks side by side (:mod:`rfstore.results.compare`) and their RF plot, written to ``out``."""
    comparison = compare_networks(store, [section.name for section in sections])
    plots.save(plots.rf_compare_figure(comparison), out / COMPARE_PLOT)
    result.figures += 1
    return pages.ComparisonSection(comparison, {section.name: section for section in sections}, COMPARE_PLOT)


def _one_thread() -> AbstractContextManager[None]:
    """torch on one thread while drawing: its few small ops cost more in thread hand-offs than they gain."""
    from rfstore.models.threads import torch_threads

    return torch_threads(1)


def count_units(store: Store, config: ReportConfig) -> int:
    """How many unit pages :func:`run_report` will write (for a progress bar)."""
    total = 0
    for network in _networks(store, config.network):
        ctx = NetworkContext.open(store, network)
        for layer in ctx.check_layers(list(config.layers)):
            total += len(_selected_units(ctx.n_units(layer), config.units))
    return total


def run_report(store: Store, config: ReportConfig, force: bool = False,
               progress: Callable[[int], Callable[[int], None]] | None = None) -> ReportResult:
    """Write the report of ``store`` into ``config.out``; returns where its index is and what it wrote."""
    began = time.perf_counter()
    networks = _networks(store, config.network)
    total = count_units(store, config)  # checks the layers before anything is written
    folders = _unique_slugs(networks)
    entries = ["index.html", *([COMPARE_PLOT] if len(networks) > 1 else []), *folders.values()]
    _prepare(config.out, entries, force)
    tick = progress(total) if progress else None
    result = ReportResult(index=config.out / "index.html")
    with _one_thread():
        sections = [_network_report(store, network, folders[network], config, result, tick) for network in networks]
    notes = []
    if config.layers or config.units is not None:
        notes.append("This report covers only part of the store (--layers / --units).")
    title = f"rfstore report: {Path(str(store.path)).name}"
    comparison = _comparison(store, sections, config.out, result) if len(networks) > 1 else None
    result.index.write_text(pages.index_page(title, sections, notes, comparison), encoding="utf-8")
    (config.out / MARKER).write_text(json.dumps({"entries": entries}))
    result.seconds = time.perf_counter() - began
    return result


@dataclass(frozen=True)
class ShowConfig:
    """One unit's picture: ``layer``, ``unit``, written to ``out`` (format from its suffix)."""

    layer: str
    unit: int
    out: Path
    network: str | None = None
    scale: float | None = None


def unit_picture(store: Store, layer: str, unit: int, network: str | None = None, scale: float | None = None):
    """The :func:`~rfstore.report.figures.unit_sheet` of one unit (a ``PIL.Image.Image``)."""
    ctx = NetworkContext.open(store, network)
    ctx.check_layers([layer])
    reader = LayerReader(ctx, layer)
    if not 0 <= unit < reader.info.n_units:
        raise RfstoreError(f"layer {layer} has units 0..{reader.info.n_units - 1}, not {unit}")
    data = reader.unit(unit)
    with _one_thread():
        return figures.unit_sheet(data, ImageCache(ctx), scale or figures.tile_scale(ctx.input_size, target=256))


def run_show(store: Store, config: ShowConfig) -> Path:
    """Write one unit's montage, discrepancy maps and RF heat map as one picture; a unit whose maps are not
    computed yet is an error naming the command that computes them."""
    ctx = NetworkContext.open(store, config.network)
    ctx.check_layers([config.layer])
    reader = LayerReader(ctx, config.layer)
    if 0 <= config.unit < reader.info.n_units and reader.unit(config.unit).discrepancy is None:
        raise MissingInputError(f"unit {config.unit} of layer {config.layer} has no discrepancy maps yet: run "
                                f"'rfstore occlude {store.path} --layers {config.layer} --units {config.unit}' "
                                f"(then 'rfstore rf' and 'rfstore segment' with the same selection)")
    picture = unit_picture(store, config.layer, config.unit, config.network, config.scale)
    if config.out.parent and not config.out.parent.exists():
        raise RfstoreError(f"folder {config.out.parent} does not exist")
    try:
        picture.save(config.out)
    except (KeyError, ValueError) as err:
        raise RfstoreError(f"cannot write {config.out}: unknown picture format {config.out.suffix!r} "
                           f"(use .png, .jpg, .pdf, .tiff or .webp)") from err
    return config.out
