"""The two kinds of percentage chart the reports draw, each drawn one way: bars (an evaluation's scores, a demo's
before/after) and lines against a setting (hft's poison ratio, sweep's safety samples). Written through `storage`."""

from __future__ import annotations

from vlguard_jax import storage


def bars(target: storage.PathLike, names: list[str], series: dict[str, list[float | None]], label: str,
         title: str | None = None) -> storage.Path:
    """Bars of each series' value per name (None: no bar) on a 0–100 axis, a series' bars side by side with the
    others' and named in a legend when there are several. Many names (MMLU's 57 subjects) read better as rows."""
    import numpy as np

    horizontal = len(names) > 12
    size = (6, max(3, 0.22 * len(names))) if horizontal else (max(4, 0.6 * len(names) * (1 + len(series))), 3.5)
    fig, ax = storage.figure(*size)
    width = 0.8 / len(series)
    positions = np.arange(len(names))
    for i, (name, values) in enumerate(series.items()):
        heights = [value or 0.0 for value in values]
        where = positions + (i - (len(series) - 1) / 2) * width
        (ax.barh if horizontal else ax.bar)(where, heights, width, label=name)
    if horizontal:
        ax.set_yticks(positions, names, fontsize=6)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel(label)
    else:
        ax.set_xticks(positions, names, fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_ylabel(label)
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    return storage.save_figure(fig, target)


def lines(ax, series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str) -> None:
    """On `ax`, a marked line through each series' (setting, percent) points; a series with none is named in the
    legend with no line: not measured, not zero."""
    for name, points in series.items():
        if points:
            ax.plot(*zip(*sorted(points)), marker="o", label=name)
        else:
            ax.plot([], [], " ", label=f"{name}: n/a")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
