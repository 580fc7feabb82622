"""``rfstore export --tally DIR``: NetDissect-Lite's ``tally.csv`` of every dissected layer.

One file per layer with ``dissect --method netdissect`` results,
``DIR/{network}/{layer}/tally.csv``, with NetDissect-Lite's columns: ``unit``
(numbered from 1), ``category``, ``label``, ``score`` (the unit's best label over
all categories and its IoU), then per category, in ``category.csv`` order,
``{category}-label``, ``-truth`` (the label's pixels over the dataset),
``-activation`` (the unit's mask pixels on images showing the category),
``-intersect`` and ``-iou``. Rows run by score, highest first (ties: by unit).
Where a category has no label of IoU above 0 its label is the name of label 0
(Broden's ``-``) with counts and IoU 0, as NetDissect-Lite writes it.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from rfstore.errors import MissingInputError
from rfstore.recorded.network import NetworkContext
from rfstore.store.layout import netdissect_group


def tally_columns(categories: list[str]) -> list[str]:
    """The header of a ``tally.csv``."""
    fields = ("label", "truth", "activation", "intersect", "iou")
    per_category = [f"{c}-{field}" for c in categories for field in fields]
    return ["unit", "category", "label", "score", *per_category]


def tally_rows(ctx: NetworkContext, layer: str) -> tuple[list[str], list[dict[str, object]]]:
    """The columns and rows of one layer's ``tally.csv``, rows by score (see the module docstring)."""
    group = netdissect_group(ctx.network, layer)
    read = {name: ctx.store.read(f"{group}/{name}") for name in (
        "category", "concept_label", "truth", "intersect", "activation", "category_concept", "category_iou",
        "label_concept", "label_category", "score")}
    categories = [str(c) for c in read["category"]]
    names = read["concept_label"]
    rows = []
    for unit in sorted(range(read["score"].size), key=lambda u: (-read["score"][u], u)):
        label = int(read["label_concept"][unit])
        row: dict[str, object] = {
            "unit": unit + 1, "category": str(read["label_category"][unit]) or categories[0],
            "label": str(names[max(label, 0)]), "score": float(read["score"][unit]) if label >= 0 else 0.0}
        for c, category in enumerate(categories):
            best = int(read["category_concept"][unit, c])
            found = best >= 0
            row |= {f"{category}-label": str(names[max(best, 0)]),
                    f"{category}-truth": int(read["truth"][best]) if found else 0,
                    f"{category}-activation": int(read["activation"][unit, c]) if found else 0,
                    f"{category}-intersect": int(read["intersect"][unit, best]) if found else 0,
                    f"{category}-iou": float(read["category_iou"][unit, c]) if found else 0.0}
        rows.append(row)
    return tally_columns(categories), rows


def export_tally(ctx: NetworkContext, out: Path) -> list[Path]:
    """Write ``out/{network}/{layer}/tally.csv`` for every layer with netdissect results; the files written."""
    layers = [layer for layer in ctx.layers if ctx.store.has(f"{netdissect_group(ctx.network, layer)}/score")]
    if not layers:
        raise MissingInputError(f"no layer of {ctx.network} has netdissect results: run "
                                f"'rfstore dissect {ctx.store.path} --method netdissect' first")
    written = []
    for layer in layers:
        columns, rows = tally_rows(ctx, layer)
        path = Path(out) / ctx.network / layer / "tally.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(rows)
        written.append(path)
    return written


def detector_summary(labels: np.ndarray, detector: np.ndarray) -> str:
    """``"disk 3, bright 2"``: the labels of the detectors, most frequent first."""
    from collections import Counter

    found = Counter(str(label) for label, is_detector in zip(labels, detector) if is_detector)
    return ", ".join(f"{name} {count}" for name, count in found.most_common())
