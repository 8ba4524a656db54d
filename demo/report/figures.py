"""The report's figures, each registered once (``FIGURES``): the CLI's ``--out`` and the Results tab both draw
every figure registered here, so a new figure is one function and one entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from demo.protocol import BEST_FIRST, COLOURS
from demo.report import drawing, study_figures
from demo.report.drawing import Bar
from demo.report.paper import PAPER_BARS


@dataclass(frozen=True)
class ReportFigure:
    name: str
    file: str  # the file name it is written under, in --out or the Results tab's folder
    title: str  # what the Results tab labels it
    draw: Callable[[dict, Path], Path]  # (report, path) -> the PNG written


def figure7(report: dict, path: str | Path) -> Path:
    """Figure 7 redrawn from people's ratings: a stacked horizontal bar per model of ours, then the paper's two
    bars, as a PNG."""
    return _turns(report["models"], report["paper"], _figure7_title(report), path)


def figure7_automatic(report: dict, path: str | Path) -> Path:
    """Figure 7 redrawn from a model judge's ratings (autoplay): labelled automatic, beside the paper's bars."""
    auto = report.get("automatic") or {}
    title = "Automatic turn ratings (autoplay, a model judge), cf. LIMA Figure 7"
    if not auto.get("models"):
        title += " (none yet: only the paper's bars)"
    return _turns(auto.get("models") or {}, report["paper"], title, path)


def _turns(models: dict, paper: dict, title: str, path: str | Path) -> Path:
    bars = _bars(models, paper)
    fig, axes = drawing.canvas(1, 1, 10, 1.4 + 0.9 * len(bars))
    drawing.panel(axes[0, 0], bars, title, "share of rated turns (%)", {name: COLOURS[name] for name in BEST_FIRST})
    return drawing.save(fig, path)


def _bars(models: dict, paper: dict) -> list[Bar]:
    """Each model of ours, then the paper's two bars."""
    bars = []
    for name, m in models.items():
        label = f"{name}\n{m['turns']} turns, {m['conversations']} conversations"
        if m["excellent_ci"]:
            label += f"\nCI excellent {m['excellent_ci'][0]:.0f}–{m['excellent_ci'][1]:.0f}"
            label += f", fail {m['fail_ci'][0]:.0f}–{m['fail_ci'][1]:.0f}"
        bars.append(drawing.level_bar(label, m, {"excellent": m["excellent_ci"], "fail": m["fail_ci"]}))
    for key, label in PAPER_BARS.items():
        turns = paper[key]["fails_per_turns"].split(" in ")[-1]
        bars.append(drawing.level_bar(f"{label}\n{turns} turns", paper[key], None, paper=True))
    return bars


def _figure7_title(report: dict) -> str:
    title = "Turn ratings, cf. LIMA Figure 7"
    if report["models"]:
        return title
    unblinded = report.get("unblinded", {}).get("turns", 0)
    if unblinded:
        return title + f" (no blind ratings yet; {unblinded} unblinded turns are reported apart)"
    return title + " (no ratings yet: only the paper's bars)"


FIGURES = (
    ReportFigure("figure7", "figure7.png", "Figure 7 for these models", figure7),
    ReportFigure("figure7_automatic", "figure7-automatic.png", "Figure 7, automatic (model judge)", figure7_automatic),
    ReportFigure("figure1", "figure1.png", "Figure 1: pairwise preference per baseline", study_figures.figure1),
    ReportFigure("figure3", "figure3.png", "Figure 3: fail / pass / excellent", study_figures.figure3),
    ReportFigure("safety", "safety.png", "Safety: answers to sensitive prompts", study_figures.safety),
)


def write_figures(report: dict, folder: str | Path) -> dict[str, Path]:
    """Every registered figure of ``report``, drawn into ``folder`` under its file name: name -> path."""
    folder = Path(folder)
    return {entry.name: entry.draw(report, folder / entry.file) for entry in FIGURES}
