"""Read-side results of a store: Zhou's Table 1 per network, networks side by side, unit pairings.

Imports only :mod:`rfstore.store`, :mod:`rfstore.recorded.network`, :mod:`rfstore.recorded.progress` and
numpy (no torch, no report, no CLI), so that the report, the CLI and notebooks share one reading of a store.

- :mod:`rfstore.results.table`: Table 1 of one network, relative depth;
- :mod:`rfstore.results.compare`: several networks aligned by relative depth;
- :mod:`rfstore.results.correlate`: streamed Pearson correlations of two layers' ``act_max``;
- :mod:`rfstore.results.matches`: the pairings ``compare --match`` stored.
"""
from __future__ import annotations

from rfstore.results.compare import AlignedRow, Comparison, NotComparableError, align, compare_networks, network_names
from rfstore.results.matches import LayerMatch, PairSummary, pair_summaries, read_matches
from rfstore.results.table import LayerRow, relative_depth, table1

__all__ = ["AlignedRow", "Comparison", "LayerMatch", "LayerRow", "NotComparableError", "PairSummary", "align",
           "compare_networks", "network_names", "pair_summaries", "read_matches", "relative_depth", "table1"]
