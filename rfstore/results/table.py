"""Zhou et al.'s Table 1 of one network, read from a store: per layer, theoretical vs empirical RF size.

Reads, per recorded layer of the network: attrs ``kind``, ``num_units``, ``rf_theory_size``; arrays
``rf_size`` (unit) and the ``dissect`` stage's ``concept`` (unit) where present. Writes nothing. Partial
results count what is there: a unit is *measured* when its ``rf_size`` is not NaN, *labelled* when its
``concept`` is not ``""`` (``dissect --method topk``).

**Relative depth.** A layer's relative depth is its position among the network's recorded layers (the
``layers`` attr that ``init`` wrote: the order of ``--layers``, or the modules' registration order for the
default selection), scaled to [0, 1]: ``index / (n_layers - 1)``; 0 is the first recorded layer (and the
only one of a one-layer network), 1 the last. It is the x axis of the report's RF-against-depth plots.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rfstore.recorded.network import NetworkContext
from rfstore.store.layout import layer_group


def relative_depth(index: int, n_layers: int) -> float:
    """``index / (n_layers - 1)``: 0 for the first layer (and for a network of one layer), 1 for the last."""
    return index / (n_layers - 1) if n_layers > 1 else 0.0


def size_label(size: tuple[int, int] | None) -> str:
    """``"51"`` for a square size ``(y, x)``, ``"51x43"`` otherwise, ``"-"`` when unknown."""
    if size is None:
        return "-"
    y, x = size
    return str(y) if y == x else f"{y}x{x}"


@dataclass(frozen=True)
class LayerRow:
    """One row of Table 1: a layer's theoretical and empirical RF size and how many units have them.

    ``theory_size`` is ``(y, x)`` in input pixels (None when the layer has none); ``empirical_mean`` and
    ``empirical_std`` (population std) are over the measured units' ``rf_size``, NaN when none is measured;
    ``concepts`` are the labels with their unit counts, most frequent first (ties alphabetical);
    ``rf_ran`` / ``dissect_ran`` say whether ``rf`` / ``dissect`` wrote their arrays for the layer (a count
    of 0 then means "none measured", not "not run").
    """

    network: str
    layer: str
    index: int
    depth: float
    kind: str
    n_units: int
    theory_size: tuple[int, int] | None
    empirical_mean: float
    empirical_std: float
    measured: int
    labelled: int
    concepts: tuple[tuple[str, int], ...]
    rf_ran: bool = True
    dissect_ran: bool = True

    @property
    def theoretical(self) -> float:
        """Mean of the theoretical RF's height and width (NaN when unknown)."""
        return float(np.mean(self.theory_size)) if self.theory_size else math.nan

    @property
    def theory_label(self) -> str:
        return size_label(self.theory_size)

    @property
    def empirical_label(self) -> str:
        """``"10.2 +- 1.3"``, or ``"-"`` when no unit is measured."""
        return f"{self.empirical_mean:.1f} +- {self.empirical_std:.1f}" if self.measured else "-"

    @property
    def measured_label(self) -> str:
        """Units with an empirical RF, or ``"not run"`` before ``rf``."""
        return str(self.measured) if self.rf_ran else "not run"

    @property
    def labelled_label(self) -> str:
        """Units with a concept, or ``"not run"`` before ``dissect``."""
        return str(self.labelled) if self.dissect_ran else "not run"


def _read(ctx: NetworkContext, layer: str, name: str) -> np.ndarray | None:
    path = f"{layer_group(ctx.network, layer)}/{name}"
    return ctx.store.read(path) if ctx.store.is_array(path) else None


def _concept_counts(concept: np.ndarray | None) -> tuple[tuple[str, int], ...]:
    if concept is None:
        return ()
    names = [v.decode() if isinstance(v, bytes) else str(v) for v in concept if v]
    values, counts = np.unique(np.array(names, dtype=str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return tuple((str(values[i]), int(counts[i])) for i in order)


def layer_row(ctx: NetworkContext, layer: str) -> LayerRow:
    """Table 1's row of one recorded layer."""
    attrs = ctx.layer_attrs(layer)
    size = attrs.get("rf_theory_size")
    stored_sizes = _read(ctx, layer, "rf_size")
    sizes = np.zeros(0) if stored_sizes is None else np.asarray(stored_sizes, dtype=np.float64)
    sizes = sizes[~np.isnan(sizes)]
    concept = _read(ctx, layer, "concept")
    concepts = _concept_counts(concept)
    index = ctx.layers.index(layer)
    return LayerRow(
        network=ctx.network, layer=layer, index=index, depth=relative_depth(index, len(ctx.layers)),
        kind=str(attrs.get("kind", "?")), n_units=int(attrs["num_units"]),
        theory_size=None if size is None else (int(size[0]), int(size[1])),
        empirical_mean=float(sizes.mean()) if sizes.size else math.nan,
        empirical_std=float(sizes.std()) if sizes.size else math.nan,
        measured=int(sizes.size), labelled=sum(count for _, count in concepts), concepts=concepts,
        rf_ran=stored_sizes is not None, dissect_ran=concept is not None,
    )


def table1(ctx: NetworkContext) -> list[LayerRow]:
    """Table 1 of a network: one row per recorded layer, in recorded order."""
    return [layer_row(ctx, layer) for layer in ctx.layers]


#: the columns of one network's part of a Table 1 printed as text (:func:`row_cells`)
COLUMNS = ("layer", "RF theory", "RF empirical", "measured", "labelled")


def row_cells(row: LayerRow | None) -> list[str]:
    """The text cells of :data:`COLUMNS` for one row (blanks for a network without a layer there)."""
    if row is None:
        return [""] * len(COLUMNS)
    return [row.layer, row.theory_label, row.empirical_label, f"{row.measured}/{row.n_units}" if row.rf_ran else "not run",
            row.labelled_label]


def pad(lines: list[list[str]], left: set[int]) -> list[list[str]]:
    """Cells padded to their column's width: columns in ``left`` flush left, the others flush right."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return [[cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))]
            for line in lines]


def format_table1(ctx: NetworkContext) -> str:
    """Table 1 of a network as text: :data:`COLUMNS` (measured: units with an empirical RF / all units)."""
    lines = pad([list(COLUMNS)] + [row_cells(row) for row in table1(ctx)], left={0})
    return "\n".join("  ".join(line).rstrip() for line in lines)
