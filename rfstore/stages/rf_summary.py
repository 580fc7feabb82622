"""Zhou et al.'s Table 1 for a store: per layer, theoretical vs empirical RF size.

Reads: per layer the ``rf_theory_size`` attr and ``rf_size`` (unit). Writes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rfstore.stages.context import NetworkContext
from rfstore.store.layout import layer_group


@dataclass(frozen=True)
class LayerRFSummary:
    layer: str
    theoretical: float  # mean of the y and x sizes, in pixels
    empirical_mean: float
    empirical_std: float
    units: int  # units with an empirical RF


def rf_summary(ctx: NetworkContext) -> list[LayerRFSummary]:
    rows = []
    for layer in ctx.layers:
        attrs = ctx.layer_attrs(layer)
        theory = float(np.mean(attrs["rf_theory_size"])) if "rf_theory_size" in attrs else float("nan")
        path = f"{layer_group(ctx.network, layer)}/rf_size"
        sizes = ctx.store.read(path) if ctx.store.is_array(path) else np.zeros(0)
        sizes = sizes[~np.isnan(sizes)]
        rows.append(LayerRFSummary(layer, theory, float(sizes.mean()) if sizes.size else float("nan"),
                                   float(sizes.std()) if sizes.size else float("nan"), int(sizes.size)))
    return rows


def format_summary(ctx: NetworkContext) -> str:
    lines = [f"{'layer':<16}{'theoretical RF':>16}{'empirical RF':>22}{'units':>8}"]
    for row in rf_summary(ctx):
        emp = f"{row.empirical_mean:.1f} +- {row.empirical_std:.1f}" if row.units else "-"
        lines.append(f"{row.layer:<16}{row.theoretical:>16.0f}{emp:>22}{row.units:>8}")
    return "\n".join(lines)
