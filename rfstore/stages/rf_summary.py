"""Zhou et al.'s Table 1 for ``rf --summary``: now read by :mod:`rfstore.results.table`.

``rf_summary(ctx)`` is :func:`rfstore.results.table.table1` (one :class:`~rfstore.results.table.LayerRow`
per recorded layer) and ``format_summary(ctx)`` is :func:`rfstore.results.table.format_table1`.
"""
from __future__ import annotations

from rfstore.results.table import LayerRow, format_table1 as format_summary, table1 as rf_summary

__all__ = ["LayerRow", "format_summary", "rf_summary"]
