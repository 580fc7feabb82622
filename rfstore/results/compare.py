"""Several networks of one store side by side: Table 1 of each, layers aligned by relative depth.

Reads what :mod:`rfstore.results.table` reads, for each network; writes nothing.

**Alignment.** Each network's layers have a relative depth in [0, 1] (:func:`rfstore.results.table.relative_depth`:
position among the recorded layers over ``n_layers - 1``). The network with the most layers (the first
named on a tie) is the reference: one row per layer of it, at that layer's depth. Every layer of another
network goes to the row whose depth is nearest its own (the shallower row on a tie). Since the other
network has no more layers than the reference, its depths are at least as far apart as the rows, so no
two of its layers share a row; a row may have no layer of a network with fewer layers.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from rfstore.errors import InputError
from rfstore.results.table import COLUMNS, LayerRow, pad, row_cells, table1
from rfstore.recorded.network import NetworkContext, find_network
from rfstore.store import Store


class NotComparableError(InputError):
    """Two networks cannot be matched unit by unit: they did not see the same images."""


def network_names(store: Store, chosen: Sequence[str] = ()) -> list[str]:
    """The networks named in ``chosen`` (checked, in that order, without repeats), or every network of the store."""
    if chosen:
        names = [find_network(store, name) for name in chosen]
        return list(dict.fromkeys(names))
    groups, _ = store.children("")
    names = [g for g in groups if "model" in store.attrs(g)]
    if not names:
        find_network(store, None)  # the clear error for an empty or foreign store
    return names


@dataclass(frozen=True)
class AlignedRow:
    """One row of the side-by-side table: the reference network's depth and each network's layer there (or None)."""

    depth: float
    layers: dict[str, LayerRow | None]


@dataclass(frozen=True)
class Comparison:
    """Table 1 of each network (``tables``, in recorded layer order) and the aligned ``rows``."""

    networks: list[str]
    tables: dict[str, list[LayerRow]]
    rows: list[AlignedRow]

    def layer_pairs(self, a: str, b: str) -> list[tuple[str, str]]:
        """``(layer of a, layer of b)`` for every row where both networks have a layer, shallowest first."""
        return [(row.layers[a].layer, row.layers[b].layer) for row in self.rows
                if row.layers.get(a) is not None and row.layers.get(b) is not None]


def _nearest_row(index: int, n_layers: int, n_rows: int) -> int:
    """The row (of ``n_rows`` evenly spread over [0, 1]) nearest depth ``index / (n_layers - 1)``;
    the shallower row on a tie (exact fractions: no rounding decides a tie)."""
    if n_layers < 2:
        return 0
    return math.ceil(Fraction(index * (n_rows - 1), n_layers - 1) - Fraction(1, 2))


def align(tables: dict[str, list[LayerRow]]) -> list[AlignedRow]:
    """Rows of the side-by-side table (see the module docstring); ``tables`` in the order to show them."""
    if not tables:
        return []
    reference = max(tables, key=lambda name: len(tables[name]))  # max keeps the first on a tie
    rows: list[dict[str, LayerRow | None]] = [{name: None for name in tables} for _ in tables[reference]]
    for name, table in tables.items():
        for row in table:
            rows[_nearest_row(row.index, len(table), len(rows))][name] = row
    return [AlignedRow(depth=ref.depth, layers=row) for ref, row in zip(tables[reference], rows)]


def compare_networks(store: Store, networks: Sequence[str] = ()) -> Comparison:
    """Table 1 of ``networks`` (default: every network of the store), aligned by relative depth."""
    names = network_names(store, networks)
    tables = {name: table1(NetworkContext.open(store, name)) for name in names}
    return Comparison(networks=names, tables=tables, rows=align(tables))


def _layer_cells(row: LayerRow | None, depth: float) -> list[str]:
    cells = row_cells(row)
    if row is not None and abs(row.depth - depth) > 0.005:
        cells[0] = f"{row.layer} ({row.depth:.2f})"
    return cells


def format_comparison(comparison: Comparison) -> str:
    """The side-by-side Table 1 as text: a depth column, then :data:`~rfstore.results.table.COLUMNS` per network.

    A layer whose own relative depth differs from its row's shows it in brackets. ``measured`` is
    units with an empirical RF / all units; ``labelled`` counts units with a ``dissect`` concept.
    """
    width, names = len(COLUMNS), comparison.networks
    lines = [["depth"] + [cell for name in names for cell in [name] + [""] * (width - 1)],
             [""] + list(COLUMNS) * len(names)]
    for row in comparison.rows:
        cells = [cell for name in names for cell in _layer_cells(row.layers[name], row.depth)]
        lines.append([f"{row.depth:.2f}", *cells])
    out = []
    for cells in pad(lines, left={1 + width * i for i in range(len(names))}):
        blocks = [cells[0]] + ["  ".join(cells[1 + width * i:1 + width * (i + 1)]) for i in range(len(names))]
        out.append(" | ".join(blocks).rstrip())
    title = ("Zhou et al. 2015, Table 1, side by side; layers aligned by relative depth "
             "(position among the recorded layers, 0 = first, 1 = last)")
    return title + "\n\n" + "\n".join(out)


def same_images(store: Store, a: str, b: str) -> str | None:
    """None when networks ``a`` and ``b`` were run on the same image folder, else why not (one phrase).

    The same folder: the same ``dataset_root`` and ``dataset_digest`` attrs and the same ``image_path`` list.
    """
    attrs = {name: store.attrs(name) for name in (a, b)}
    roots = [str(attrs[name].get("dataset_root")) for name in (a, b)]
    if roots[0] != roots[1]:
        return f"{a} was run on {roots[0]} and {b} on {roots[1]}"
    if attrs[a].get("dataset_digest") != attrs[b].get("dataset_digest"):
        return f"the image folder {roots[0]} changed between the init of {a} and that of {b}"
    paths = [store.read(f"{name}/image_path") for name in (a, b)]
    if len(paths[0]) != len(paths[1]) or not np.array_equal(paths[0].astype(str), paths[1].astype(str)):
        return f"{a} and {b} record different images of {roots[0]}"
    return None
