"""HTML of the static report: index, one page per layer, one per unit.

Pages are self-contained (inline CSS, and on layer pages a few lines of inline JS
that sort the unit table), link only by relative paths, and escape every string
that comes from the store or the file system. Layout of a report folder::

    index.html                          every network: Table 1, RF size against depth; with several
                                        networks first the networks compared (rf_compare.png)
    rf_compare.png                      RF size against relative depth, every network (several networks)
    {net}/rf_depth.png
    {net}/{layer}/index.html            the layer's units, sortable
    {net}/{layer}/rf_hist.png
    {net}/{layer}/unit_0007.html        one unit: montage, discrepancy, RF, concept
    {net}/{layer}/img/unit_0007_{montage,discrepancy,rf,thumb}.png
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import quote

import numpy as np

from rfstore.report.figures import BOX_COLOUR, DISSECT_COLOUR, SEG_COLOUR
from rfstore.results.layers import LayerTable, UnitData
from rfstore.results.compare import Comparison
from rfstore.results.table import LayerRow

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; } h3 { font-size: 1.05em; }
nav { margin-bottom: 1em; font-size: 0.95em; } nav a { margin-right: 0.8em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; vertical-align: middle; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th[data-type] { cursor: pointer; user-select: none; }
table.sortable th[data-order="asc"]::after { content: " \\25B2"; }
table.sortable th[data-order="desc"]::after { content: " \\25BC"; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
figure { margin: 0.8em 0; } figcaption { font-size: 0.9em; color: #555; max-width: 60em; }
img.figure { max-width: 100%; height: auto; border: 1px solid #eee; }
img.thumb { width: 56px; height: auto; }
img.pixelated { image-rendering: pixelated; }
.missing { color: #888; font-style: italic; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; vertical-align: middle; margin: 0 0.2em; }
code { background: #f4f4f4; padding: 0 0.2em; }
th.network { text-align: center; border-left: 2px solid #bbb; }
#compare td { white-space: nowrap; }
"""

SORT_JS = """
for (const table of document.querySelectorAll("table.sortable")) {
  const heads = Array.from(table.tHead.rows[0].cells);
  heads.forEach((th, col) => {
    if (!th.dataset.type) return;
    th.title = "click to sort";
    th.addEventListener("click", () => {
      const numeric = th.dataset.type === "num";
      const order = th.dataset.order === (numeric ? "desc" : "asc") ? (numeric ? "asc" : "desc")
                                                                    : (numeric ? "desc" : "asc");
      heads.forEach((h) => delete h.dataset.order);
      th.dataset.order = order;
      const sign = order === "asc" ? 1 : -1;
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        if (x === "" || y === "") return (x === "") - (y === "") || a.dataset.unit - b.dataset.unit;
        const c = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
        return sign * c || a.dataset.unit - b.dataset.unit;
      });
      body.append(...rows);
    });
  });
}
"""


def slug(name: str) -> str:
    """A file-name-safe form of a network or layer name (``features.4`` stays ``features.4``)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip()
    return "_" + text if not text or text.startswith(".") else text


def href(*parts: str) -> str:
    """A relative URL from path parts, each percent-encoded."""
    return "/".join(quote(part) for part in parts)


def unit_page_name(unit: int) -> str:
    return f"unit_{unit:04d}.html"


def unit_image_name(unit: int, kind: str) -> str:
    return f"img/unit_{unit:04d}_{kind}.png"


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def _value(value: float) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


def page(title: str, body: str, nav: Sequence[tuple[str, str]] = (), script: str = "") -> str:
    """A complete HTML document; ``nav`` is ``(label, relative href)`` pairs."""
    links = "".join(f'<a href="{escape(url)}">{escape(label)}</a>' for label, url in nav)
    script_tag = f"<script>{script}</script>" if script else ""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<nav>{links}</nav>\n{body}\n{script_tag}\n</body>\n</html>\n")


def _img(src: str, alt: str, css: str = "figure", size: tuple[int, int] | None = None) -> str:
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    return f'<img class="{css}" src="{escape(src)}" alt="{escape(alt)}"{dims}>'


@dataclass(frozen=True)
class NetworkSection:
    """What the index shows for one network."""

    name: str
    folder: str
    facts: list[tuple[str, str]]
    summary: list[LayerRow]
    layer_folders: dict[str, str]
    plot: str | None


def _concepts(row: LayerRow) -> str:
    """The three most frequent concepts with their unit counts, ``"-"`` when no unit is labelled."""
    return ", ".join(f"{name} ({count})" for name, count in row.concepts[:3]) or "-"


def _empirical(row: LayerRow) -> str:
    return f"{row.empirical_mean:.1f} &plusmn; {row.empirical_std:.1f}" if row.measured else "-"


def _measured(row: LayerRow) -> str:
    return f"{row.measured} / {row.n_units}" if row.rf_ran else "not run"


def _layer_link(layer: str, folder: str, layer_folders: dict[str, str]) -> str:
    """The layer's name, linked to its page when the report has one."""
    if layer not in layer_folders:
        return escape(layer)
    return f'<a href="{escape(href(folder, layer_folders[layer], "index.html"))}">{escape(layer)}</a>'


@dataclass(frozen=True)
class ComparisonSection:
    """What the index shows when the store holds several networks: the aligned Table 1 and one RF plot.

    ``sections`` are the networks' own sections (for their folders and layer pages).
    """

    comparison: Comparison
    sections: dict[str, NetworkSection]
    plot: str | None


def comparison_html(part: ComparisonSection) -> str:
    """The networks side by side: RF size against relative depth, and Table 1 aligned by relative depth."""
    names = part.comparison.networks
    parts = ['<h2 id="comparison">Networks compared</h2>']
    if part.plot:
        parts.append(f'<figure>{_img(part.plot, "RF size against relative depth, every network")}'
                     "<figcaption>Empirical RF size per layer (mean &plusmn; std over the measured units, solid) "
                     "and theoretical RF size (dashed) of every network against relative depth: the layer's "
                     "position among the network's recorded layers, 0 = first, 1 = last.</figcaption></figure>")
    head = "".join(f'<th colspan="5" class="network">{escape(name)}</th>' for name in names)
    sub = "".join('<th>layer</th><th class="num">theoretical RF (px)</th><th class="num">empirical RF (px)</th>'
                  '<th class="num">units measured</th><th class="num">units labelled</th>' for _ in names)
    rows = []
    for aligned in part.comparison.rows:
        cells = [f'<td class="num">{aligned.depth:.2f}</td>']
        for name in names:
            row = aligned.layers[name]
            if row is None:
                cells.append('<td class="missing" colspan="5">-</td>')
                continue
            section = part.sections[name]
            cells.append(f'<td title="relative depth {row.depth:.2f}">'
                         f'{_layer_link(row.layer, section.folder, section.layer_folders)}</td>'
                         f'<td class="num">{escape(row.theory_label)}</td><td class="num">{_empirical(row)}</td>'
                         f'<td class="num">{_measured(row)}</td><td class="num">{row.labelled_label}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    parts.append('<table id="compare"><thead><tr><th rowspan="2" class="num">relative depth</th>' + head
                 + "</tr><tr>" + sub + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    parts.append("<p>Layers are aligned by relative depth: one row per layer of the network with the most "
                 "layers, each other layer in the row nearest its own depth. <code>rfstore compare STORE</code> "
                 "prints this table; <code>rfstore compare STORE --match</code> pairs the units of networks run "
                 "on the same images.</p>")
    return "\n".join(parts)


def index_page(title: str, sections: list[NetworkSection], notes: Sequence[str] = (),
               comparison: ComparisonSection | None = None) -> str:
    """The report's front page: the networks compared (when there are several), then per network its
    facts, Zhou's Table 1 and the RF-against-depth plot."""
    parts = [f"<h1>{escape(title)}</h1>"]
    parts += [f'<p class="missing">{escape(note)}</p>' for note in notes]
    if comparison is not None:
        parts.append(comparison_html(comparison))
    for section in sections:
        parts.append(f'<h2 id="{escape(section.folder)}">Network {escape(section.name)}</h2>')
        parts.append('<dl class="facts">' + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>"
                                                      for k, v in section.facts) + "</dl>")
        parts.append("<h3>Receptive fields per layer (Zhou et al. 2015, Table 1)</h3>")
        rows = []
        for row in section.summary:
            rows.append(
                f'<tr><td>{_layer_link(row.layer, section.folder, section.layer_folders)}</td>'
                f'<td>{escape(row.kind)}</td><td class="num">{row.n_units}</td>'
                f'<td class="num">{escape(row.theory_label)}</td><td class="num">{_empirical(row)}</td>'
                f'<td class="num">{row.measured_label}</td><td class="num">{row.labelled_label}</td>'
                f'<td>{escape(_concepts(row))}</td></tr>')
        parts.append('<table><thead><tr><th>layer</th><th>kind</th><th class="num">units</th>'
                     '<th class="num">theoretical RF (px)</th><th class="num">empirical RF (px)</th>'
                     '<th class="num">units measured</th><th class="num">units labelled</th>'
                     '<th>most frequent concepts</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")
        if section.plot:
            parts.append(f'<figure>{_img(href(section.folder, section.plot), "RF size against depth")}'
                         "<figcaption>Empirical RF size of each unit (dots) and per layer (mean &plusmn; std), "
                         "and the theoretical RF size, against depth.</figcaption></figure>")
    return page(title, "\n".join(parts))


def layer_page(table: LayerTable, network_label: str, unit_pages: set[int], histogram: str | None,
               thumbnails: set[int]) -> str:
    """A layer's page: its numbers and every unit in a table sortable by RF size, activation, concept, IoU."""
    info = table.info
    title = f"{network_label} / {info.layer}"
    measured = int((~np.isnan(table.rf_size)).sum())
    facts = [("kind", info.kind), ("units", str(info.n_units)), ("depth", str(info.depth)),
             ("theoretical RF", f"{info.theory_label} px"),
             ("top images per unit (K)", "-" if info.k is None else str(info.k)),
             ("occluder", "-" if info.occluder is None else f"{info.occluder[0]} px, stride {info.occluder[1]}"),
             ("units occluded / with empirical RF / segmented",
              f"{int(table.occluded.sum())} / {measured} / {int(table.segmented.sum())}")]
    parts = [f"<h1>{escape(title)}</h1>",
             '<dl class="facts">' + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts) + "</dl>"]
    if histogram:
        parts.append(f"<figure>{_img(histogram, 'histogram of empirical RF sizes')}</figure>")
    if not unit_pages:
        parts.append('<p class="missing">No unit pages for this layer in this report.</p>')
    rows = []
    for unit in range(info.n_units):
        name = f"unit {unit}"
        cell = f'<a href="{escape(unit_page_name(unit))}">{name}</a>' if unit in unit_pages else name
        thumb = _img(unit_image_name(unit, "thumb"), f"unit {unit} top image", "thumb") if unit in thumbnails else ""
        concept = str(table.concept[unit])
        rows.append(
            f'<tr data-unit="{unit}"><td data-v="{unit}">{cell}</td><td>{thumb}</td>'
            f'<td class="num" data-v="{_value(table.rf_size[unit])}">{fmt(table.rf_size[unit])}</td>'
            f'<td class="num" data-v="{_value(table.top_value[unit])}">{fmt(table.top_value[unit])}</td>'
            f'<td data-v="{escape(concept)}">{escape(concept) or "-"}</td>'
            f'<td class="num" data-v="{_value(table.iou[unit])}">{fmt(table.iou[unit], 2)}</td></tr>')
    parts.append('<h2>Units</h2><p>Click a column title to sort (missing values last).</p>'
                 '<table class="sortable" id="units"><thead><tr><th data-type="num">unit</th><th>top image</th>'
                 '<th class="num" data-type="num">empirical RF (px)</th>'
                 '<th class="num" data-type="num">top activation</th><th data-type="text">concept</th>'
                 '<th class="num" data-type="num">IoU</th></tr></thead><tbody>' + "\n".join(rows) + "</tbody></table>")
    nav = [("report index", "../../index.html")]
    return page(title, "\n".join(parts), nav, SORT_JS)


def _swatch(colour: tuple[int, int, int], text: str) -> str:
    red, green, blue = colour
    return f'<span class="swatch" style="background:#{red:02x}{green:02x}{blue:02x}"></span>{text}'


def montage_legend(unit: UnitData) -> str:
    """The montage's legend: only the overlays drawn for this unit (segmentation, dissect mask, RF box)."""
    entries = []
    if unit.seg_mask is not None:
        entries.append(_swatch(SEG_COLOUR, "segmentation (empirical RF placed on the unit; outside dimmed)"))
    if unit.seg_mask_dissect is not None:
        entries.append(_swatch(DISSECT_COLOUR, "NetDissect mask"))
    if unit.info.theory_size is not None:
        entries.append(_swatch(BOX_COLOUR, "theoretical RF and its centre"))
    return " ".join(entries)


def unit_page(unit: UnitData, network_label: str, images: dict[str, str], paths: Sequence[str],
              neighbours: tuple[int | None, int | None], store_hint: str) -> str:
    """One unit: facts, concept scores, montage, discrepancy maps, RF heat map, top images.

    ``images`` maps ``montage``/``discrepancy``/``rf`` to ``(relative path, width,
    height)`` of the written figure, the size it is shown at (absent when there is
    nothing to draw); ``paths`` are the top images' dataset paths by rank.
    """
    info = unit.info
    title = f"{network_label} / {info.layer} / unit {unit.unit}"
    scored = {"rf": "empirical-RF masks", "activation": "activation masks"}.get(info.dissect_masks or "")
    on = f" on {scored}" if scored else ""
    if unit.concept:
        concept = f"{unit.concept} (IoU {fmt(unit.iou, 2)}{on})"
    elif not math.isnan(unit.iou):
        concept = f"none (best IoU {fmt(unit.iou, 2)}{on}: below chance or the minimum)"
    else:
        concept = "-"
    facts = [("concept", concept),
             ("empirical RF", f"{fmt(unit.rf_size)} px"), ("theoretical RF", f"{info.theory_label} px"),
             ("top activation", fmt(float(unit.value[0])) if len(unit.value) else "-")]
    parts = [f"<h1>{escape(title)}</h1>",
             '<dl class="facts">' + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts) + "</dl>"]
    stage = {"montage": "topk", "discrepancy": "occlude", "rf": "rf"}
    sections = [("montage", "Top images", f"The unit's top {len(unit.image)} images, best first "
                 f"(activations below). {montage_legend(unit)}"),
                ("discrepancy", "Discrepancy maps", "How much the unit's activation drops when the occluder "
                 "covers each pixel (mean over the occluder windows covering it), in one colour scale per unit; "
                 "red: a drop, blue: a rise."),
                ("rf", "Empirical receptive field", "The discrepancy maps re-centred on the unit and averaged "
                 "(rf_map / max); white: the empirical RF (rf_map &ge; threshold &times; max); cyan: theoretical RF.")]
    for key, heading, caption in sections:
        parts.append(f"<h2>{escape(heading)}</h2>")
        if key in images:
            src, width, height = images[key]
            picture = _img(src, heading, "figure pixelated", (width, height))
            parts.append(f'<figure><a href="{escape(src)}">{picture}</a><figcaption>{caption}</figcaption></figure>')
        else:
            selection = "" if stage[key] == "topk" else f" --layers {info.layer} --units {unit.unit}"
            command = escape(f"rfstore {stage[key]} {store_hint}{selection}")
            parts.append(f'<p class="missing">{escape(heading)}: not computed yet (<code>{command}</code>).</p>')
    if unit.concepts:
        rows = "".join(f'<tr><td>{escape(name)}</td><td class="num">{fmt(iou, 3)}</td>'
                       f'<td class="num">{fmt(chance, 3)}</td></tr>' for name, iou, chance in unit.concepts[:8])
        parts.append('<h2>Concepts (dissect)</h2><table><thead><tr><th>concept</th><th class="num">IoU</th>'
                     f'<th class="num">chance IoU</th></tr></thead><tbody>{rows}</tbody></table>')
    rank_rows = "".join(
        f'<tr><td class="num">{rank + 1}</td><td>{escape(paths[rank])}</td><td class="num">{fmt(unit.value[rank])}'
        f'</td><td class="num">({int(unit.y[rank])}, {int(unit.x[rank])})</td></tr>' for rank in unit.ranks)
    if rank_rows:
        parts.append('<h2>Top images: files and activations</h2>'
                     '<table><thead><tr><th class="num">rank</th><th>image</th>'
                     '<th class="num">activation</th><th class="num">unit location (y, x)</th></tr></thead>'
                     f"<tbody>{rank_rows}</tbody></table>")
    nav = [("report index", "../../index.html"), (f"layer {info.layer}", "index.html")]
    previous, following = neighbours
    if previous is not None:
        nav.append((f"unit {previous}", unit_page_name(previous)))
    if following is not None:
        nav.append((f"unit {following}", unit_page_name(following)))
    return page(title, "\n".join(parts), nav)
