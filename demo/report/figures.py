"""The report's figures, each registered once (``FIGURES``): the CLI's ``--out`` and the Results tab both draw
every figure registered here, so a new figure is one function and one entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.protocol import BEST_FIRST, COLOURS
from demo.report.paper import PAPER_BARS


@dataclass(frozen=True)
class ReportFigure:
    name: str
    file: str  # the file name it is written under, in --out or the Results tab's folder
    title: str  # what the Results tab labels it
    draw: Callable[[dict, Path], Path]  # (report, path) -> the PNG written


def figure7(report: dict, path: str | Path) -> Path:
    """Figure 7 redrawn: a stacked horizontal bar per model of ours, then the paper's two bars, as a PNG."""
    # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    bars = _bars(report)
    fig = Figure(figsize=(10, 1.4 + 0.9 * len(bars)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    rows = range(len(bars))[::-1]  # ours on top, the paper's at the bottom
    for row, (_label, shares, is_paper) in zip(rows, bars, strict=True):
        _stack(ax, row, shares, is_paper)
    ax.set_yticks(list(rows), [label for label, _, _ in bars], fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of rated turns (%)")
    ax.set_title(_figure7_title(report), pad=24)
    legend = [Patch(color=COLOURS[name], label=name) for name in BEST_FIRST]
    legend.append(Patch(facecolor="white", edgecolor="grey", hatch="//", label="paper"))
    ax.legend(handles=legend, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=4, frameon=False, fontsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _bars(report: dict) -> list[tuple[str, dict[str, Any], bool]]:
    """(label, shares, from the paper) per bar: each model of ours, then the paper's two."""
    bars = []
    for name, m in report["models"].items():
        label = f"{name}\n{m['turns']} turns, {m['conversations']} conversations"
        if m["excellent_ci"]:
            label += f"\nCI excellent {m['excellent_ci'][0]:.0f}–{m['excellent_ci'][1]:.0f}"
            label += f", fail {m['fail_ci'][0]:.0f}–{m['fail_ci'][1]:.0f}"
        bars.append((label, m, False))
    for key, label in PAPER_BARS.items():
        turns = report["paper"][key]["fails_per_turns"].split(" in ")[-1]
        bars.append((f"{label}\n{turns} turns", report["paper"][key], True))
    return bars


def _stack(ax: Any, row: int, shares: dict[str, Any], is_paper: bool) -> None:
    """One bar: the levels best first, each labelled with its share, and ours with their 95 % intervals."""
    style = {"alpha": 0.55, "hatch": "//"} if is_paper else {}
    left = 0.0
    for name in BEST_FIRST:
        width = shares.get(name) or 0.0  # the paper's bars have no share for a level the paper did not use
        ax.barh(row, width, left=left, color=COLOURS[name], edgecolor="white", **style)
        if width >= 5:
            ax.text(left + width / 2, row, f"{width:.1f}%", ha="center", va="center", fontsize=9)
        elif width > 0:  # too narrow to hold its label: write it just above the bar
            ax.text(left + width / 2, row + 0.42, f"{width:.1f}%", ha="center", va="bottom", fontsize=7)
        left += width
    if not is_paper and shares.get("excellent_ci"):  # the intervals, drawn where the segments meet
        ex, (ex_lo, ex_hi) = shares["excellent"], shares["excellent_ci"]
        edge, (fail_lo, fail_hi) = 100 - shares["fail"], shares["fail_ci"]
        for x, low, high in ((ex, ex_lo, ex_hi), (edge, 100 - fail_hi, 100 - fail_lo)):
            ax.errorbar(x, row, xerr=[[x - low], [high - x]], fmt="none", ecolor="black", capsize=4, lw=1)


def _figure7_title(report: dict) -> str:
    title = "Turn ratings, cf. LIMA Figure 7"
    if report["models"]:
        return title
    unblinded = report.get("unblinded", {}).get("turns", 0)
    if unblinded:
        return title + f" (no blind ratings yet; {unblinded} unblinded turns are reported apart)"
    return title + " (no ratings yet: only the paper's bars)"


FIGURES = (ReportFigure("figure7", "figure7.png", "Figure 7 for these models", figure7),)


def write_figures(report: dict, folder: str | Path) -> dict[str, Path]:
    """Every registered figure of ``report``, drawn into ``folder`` under its file name: name -> path."""
    folder = Path(folder)
    return {entry.name: entry.draw(report, folder / entry.file) for entry in FIGURES}
