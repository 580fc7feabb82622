"""The report's few matplotlib plots (Agg canvas, no pyplot state): RF size against depth, RF size histogram."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rfstore.results.layers import LayerTable
from rfstore.results.compare import Comparison


def _figure(width: float, height: float):  # -> matplotlib.figure.Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="tight")
    FigureCanvasAgg(figure)
    return figure


def _legend(ax, **kwargs) -> None:  # ax: matplotlib.axes.Axes
    """A legend of what was drawn; none when nothing labelled was drawn."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def rf_depth_figure(tables: list[LayerTable], network: str):  # -> matplotlib.figure.Figure
    """Empirical RF size of every unit (dots), its mean +- std per layer and the theoretical size,
    against the layer's depth (Zhou et al. 2015, Table 1 as a plot).

    Parameters
    ----------
    tables : list of LayerTable
        The layers in network order.
    network : str
        Used in the title.
    """
    figure = _figure(6.4, 3.6)
    ax = figure.add_subplot()
    depth = np.arange(1, len(tables) + 1)
    theory = [float(np.mean(t.info.theory_size)) if t.info.theory_size else np.nan for t in tables]
    if np.isfinite(theory).any():
        ax.plot(depth, theory, "s--", color="tab:blue", label="theoretical RF")
    rng = np.random.default_rng(0)
    means, stds = [], []
    for d, table in zip(depth, tables):
        sizes = table.rf_size[~np.isnan(table.rf_size)]
        if sizes.size:
            ax.scatter(d + rng.uniform(-0.15, 0.15, sizes.size), sizes, s=6, color="tab:orange", alpha=0.35,
                       linewidths=0)
        means.append(sizes.mean() if sizes.size else np.nan)
        stds.append(sizes.std() if sizes.size else np.nan)
    if np.isfinite(means).any():
        ax.errorbar(depth, means, yerr=stds, fmt="o-", color="tab:red", capsize=3,
                    label="empirical RF (mean +- std)")
    ax.set_xticks(depth, [t.info.layer for t in tables], rotation=30 if len(tables) > 6 else 0, fontsize=8)
    ax.set_xlabel("layer (depth)")
    ax.set_ylabel("RF size (input pixels)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{network}: receptive field size against depth", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=8, loc="upper left")
    return figure


def rf_compare_figure(comparison: Comparison):  # -> matplotlib.figure.Figure
    """Every network's RF size against relative depth in one plot: per layer the empirical mean +- std over
    the measured units (solid, with error bars) and the theoretical size (dashed), one colour per network."""
    figure = _figure(6.4, 3.8)
    ax = figure.add_subplot()
    colours = [f"C{i % 10}" for i in range(len(comparison.networks))]
    for name, colour in zip(comparison.networks, colours):
        rows = comparison.tables[name]
        depth = [row.depth for row in rows]
        theory = [row.theoretical for row in rows]
        if np.isfinite(theory).any():
            ax.plot(depth, theory, "s--", color=colour, alpha=0.6, markersize=4, label=f"{name}: theoretical")
        means = [row.empirical_mean for row in rows]
        if np.isfinite(means).any():
            ax.errorbar(depth, means, yerr=[row.empirical_std for row in rows], fmt="o-", color=colour, capsize=3,
                        label=f"{name}: empirical (mean +- std)")
    ax.set_xlim(-0.05, 1.05)
    ax.set_xlabel("relative depth (position among the recorded layers: 0 = first, 1 = last)")
    ax.set_ylabel("RF size (input pixels)")
    ax.set_ylim(bottom=0)
    ax.set_title("receptive field size against relative depth", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=7, loc="upper left")
    return figure


def rf_histogram_figure(table: LayerTable):  # -> matplotlib.figure.Figure
    """Histogram of a layer's empirical RF sizes, with the theoretical size as a line."""
    figure = _figure(4.8, 2.6)
    ax = figure.add_subplot()
    sizes = table.rf_size[~np.isnan(table.rf_size)]
    if sizes.size:
        ax.hist(sizes, bins=min(30, max(5, sizes.size // 3)), color="tab:orange")
    if table.info.theory_size:
        ax.axvline(float(np.mean(table.info.theory_size)), color="tab:blue", linestyle="--", label="theoretical")
        ax.legend(fontsize=8)
    ax.set_xlabel("empirical RF size (input pixels)")
    ax.set_ylabel("units")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{table.info.layer}: {sizes.size} of {table.info.n_units} units measured", fontsize=10)
    return figure


def save(figure, path: Path) -> None:  # figure: matplotlib.figure.Figure
    """Write a figure as PNG."""
    figure.savefig(path, format="png")
