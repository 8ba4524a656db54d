"""What every figure of the report is made of: panels of stacked horizontal bars (ours solid, the paper's hatched),
each segment labelled with its share, and 95 % intervals drawn as whiskers where the segments meet."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.protocol import BEST_FIRST, COLOURS

PAPER_STYLE = {"alpha": 0.55, "hatch": "//"}


@dataclass(frozen=True)
class Bar:
    label: str
    segments: list[tuple[float | None, str]]  # (share in per cent, colour), left to right; None: a level not given
    whiskers: list[tuple[float, float, float]] = field(default_factory=list)  # (x, low, high): an interval
    paper: bool = False


def level_bar(label: str, shares: dict[str, Any], intervals: dict[str, Any] | None, paper: bool = False) -> Bar:
    """A bar of the three levels, best first, with the excellent and fail intervals drawn where the segments
    meet (``intervals``: level -> [low, high] or None)."""
    whiskers = []
    if intervals and intervals.get("excellent") and intervals.get("fail"):
        (ex_lo, ex_hi), (fail_lo, fail_hi) = intervals["excellent"], intervals["fail"]
        whiskers = [(shares["excellent"], ex_lo, ex_hi), (100 - shares["fail"], 100 - fail_hi, 100 - fail_lo)]
    return Bar(label, [(shares.get(name), COLOURS[name]) for name in BEST_FIRST], whiskers, paper)


def canvas(rows: int, columns: int, width: float, height: float) -> tuple[Any, Any]:
    """A figure of ``rows`` x ``columns`` panels on an Agg canvas (no pyplot global state, no display needed);
    the panels as a 2-D array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, columns, squeeze=False)


def panel(ax: Any, bars: list[Bar], title: str, xlabel: str, legend: dict[str, str], slots: int = 0) -> None:
    """One panel: the bars top to bottom, their labels, and a legend (label -> colour, plus the paper's hatch);
    room for ``slots`` bars, so panels side by side draw bars of one height."""
    from matplotlib.patches import Patch

    rows = range(len(bars))[::-1]  # the first bar on top
    for row, bar in zip(rows, bars, strict=True):
        _stack(ax, row, bar)
    ax.set_yticks(list(rows), [bar.label for bar in bars], fontsize=8)
    ax.set_xlim(0, 100)
    if slots > len(bars):
        ax.set_ylim(len(bars) - slots - 0.5, len(bars) - 0.5)
    ax.set_xlabel(xlabel)
    ax.set_title(title, pad=24)
    handles = [Patch(color=colour, label=name) for name, colour in legend.items()]
    handles.append(Patch(facecolor="white", edgecolor="grey", hatch="//", label="paper"))
    where = {"loc": "lower center", "bbox_to_anchor": (0.5, 1.0), "ncols": len(handles)}  # one row, under the title
    ax.legend(handles=handles, frameon=False, fontsize=8, **where)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _stack(ax: Any, row: int, bar: Bar) -> None:
    style = PAPER_STYLE if bar.paper else {}
    left = 0.0
    for share, colour in bar.segments:
        width = share or 0.0  # the paper's bars have no share for a level the paper did not use
        ax.barh(row, width, left=left, color=colour, edgecolor="white", **style)
        if width >= 5:
            ax.text(left + width / 2, row, f"{width:.1f}%", ha="center", va="center", fontsize=9)
        elif width > 0:  # too narrow to hold its label: write it just above the bar
            ax.text(left + width / 2, row + 0.42, f"{width:.1f}%", ha="center", va="bottom", fontsize=7)
        left += width
    for x, low, high in bar.whiskers:
        ax.errorbar(x, row, xerr=[[x - low], [high - x]], fmt="none", ecolor="black", capsize=4, lw=1)


def save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
