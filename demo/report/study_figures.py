"""The prompt studies' figures (registered in ``figures.FIGURES``): Figure 1's win / tie / loss bars per baseline,
Figure 3's fail / pass / excellent shares (out-of-distribution prompts apart) and the safety share. One row of
panels per study of the kind, people's ratings on the left and a model judge's (automatic) on the right, each
beside the paper's numbers where its text gives them (``paper.PAPER_STUDIES``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from demo.protocol import BEST_FIRST, COLOURS
from demo.report import drawing
from demo.report.drawing import Bar
from demo.report.paper import PAPER_STUDIES
from demo.studies.records import OUTCOMES

# The outcomes in the scale's colours: a win reads like an excellent answer, a loss like a failed one.
OUTCOME_COLOURS = {"win": COLOURS["excellent"], "tie": COLOURS["pass"], "loss": COLOURS["fail"]}
SAFETY_COLOURS = {"safe": COLOURS["excellent"], "unsafe": COLOURS["fail"]}
RATERS = {"human": "people", "automatic": "automatic: a model judge"}


def figure1(report: dict, path: str | Path) -> Path:
    """Figure 1 (and 2, from the judge): a stacked win / tie / loss bar per baseline with 95 % intervals."""
    legend = {**OUTCOME_COLOURS, "equivalent or better": OUTCOME_COLOURS["tie"]}
    return _grid(report, "pairwise", "LIMA Figure 1", _pairwise_bars, "share of judgments (%)", legend, path)


def figure3(report: dict, path: str | Path) -> Path:
    """Figure 3: each source's fail / pass / excellent shares with intervals, out-of-distribution prompts apart."""
    legend = {name: COLOURS[name] for name in BEST_FIRST}
    return _grid(report, "absolute", "LIMA Figure 3", _absolute_bars, "share of rated answers (%)", legend, path)


def safety(report: dict, path: str | Path) -> Path:
    """The safety study: each source's safe share with its interval, over all sensitive prompts and the malicious."""
    return _grid(report, "safety", "LIMA safety", _safety_bars, "share of answers (%)", SAFETY_COLOURS, path)


def _grid(
    report: dict, kind: str, what: str, bars_of: Callable[[dict, str], list[Bar]], xlabel: str,
    legend: dict[str, str], path: str | Path,
) -> Path:  # fmt: skip
    """One row per study of ``kind`` (one row of the paper's bars alone when there is none), people's panel and
    the judge's side by side."""
    studies = [(name, study) for name, study in (report.get("studies") or {}).items() if study["kind"] == kind]
    rows = [[(name, rater, bars_of(study[rater], rater)) for rater in RATERS] for name, study in studies]
    if not rows:
        rows = [[(None, rater, bars_of({}, rater)) for rater in RATERS]]
    tallest = [max(len(bars) for _, _, bars in row) for row in rows]
    fig, axes = drawing.canvas(len(rows), len(RATERS), 18, sum(1.6 + 0.9 * max(n, 1) for n in tallest))
    for r, row in enumerate(rows):
        for c, (name, rater, bars) in enumerate(row):
            title = f"{what}, {RATERS[rater]}" + (f": study {name}" if name else ": no study yet")
            if name and not _rated(bars):
                title += " (no ratings yet)"
            drawing.panel(axes[r, c], bars, title, xlabel, legend, slots=tallest[r])
    return drawing.save(fig, path)


def _rated(bars: list[Bar]) -> bool:
    return any(not bar.paper for bar in bars)


def _pairwise_bars(part: dict[str, Any], rater: str) -> list[Bar]:
    bars = []
    for entry in (part.get("per_baseline") or {}).values():
        ci, lc = entry["ci"], entry["length_controlled"]
        whiskers = []
        if ci["win"] and ci["loss"]:  # where win meets tie, and where tie meets loss
            whiskers = [(entry["win"], *ci["win"]), (100 - entry["loss"], 100 - ci["loss"][1], 100 - ci["loss"][0])]
        label = (
            f"{entry['model']} vs {entry['baseline']}\n{entry['judgments']} judgments, answers "
            f"{entry['model_chars']:.0f} vs {entry['baseline_chars']:.0f} chars\n"
            f"length-controlled preference {lc['preference']:.0f}%" + _interval(lc["ci"])
        )
        bars.append(Bar(label, [(entry[o], OUTCOME_COLOURS[o]) for o in OUTCOMES], whiskers))
    for baseline, paper in PAPER_STUDIES["pairwise"][rater].items():
        share = paper["win_or_tie"]
        segments = [(share, OUTCOME_COLOURS["tie"]), (100 - share, OUTCOME_COLOURS["loss"])]
        bars.append(Bar(f"LIMA vs {baseline} (paper)\nequivalent or better", segments, paper=True))
    return bars


def _absolute_bars(part: dict[str, Any], rater: str) -> list[Bar]:
    bars = []
    for apart, rated in (("", part), (", out of distribution", part.get("out_of_distribution") or {})):
        for source, shares in (rated.get("shares") or {}).items():
            label = f"{source}{apart}\n{shares['fails_per_ratings']} failed, answers {shares['chars']:.0f} chars"
            bars.append(drawing.level_bar(label, shares, rated["ci"][source]))
    if rater == "human":
        paper = PAPER_STUDIES["absolute"]
        bars.append(drawing.level_bar("LIMA (paper)\n50 test prompts", paper["in_distribution"], None, paper=True))
        label = "LIMA, out of distribution (paper)\n20 prompts"
        bars.append(drawing.level_bar(label, paper["out_of_distribution"], None, paper=True))
    return bars


def _safety_bars(part: dict[str, Any], rater: str) -> list[Bar]:
    bars = []
    for subset, rated in (("all sensitive prompts", part), ("malicious prompts", part.get("malicious") or {})):
        for source, share in (rated.get("safe_share") or {}).items():
            counts, interval = rated["sources"][source], rated["ci"][source]
            label = (
                f"{source}: {subset}\n{counts['safe_per_labels']} safe, {rated['declined_share'][source]:.0f}% "
                f"declined, answers {counts['chars']:.0f} chars"
            )
            whiskers = [(share, *interval)] if interval else []
            bars.append(Bar(label, _safe_segments(share), whiskers))
    if rater == "human":
        paper = PAPER_STUDIES["safety"]
        bars.append(Bar(f"LIMA (paper): {paper['safe_per_labels']}", _safe_segments(paper["safe_share"]), paper=True))
        malicious = paper["malicious"]
        label = f"LIMA, malicious (paper): {malicious['safe_per_labels']}"
        bars.append(Bar(label, _safe_segments(malicious["safe_share"]), paper=True))
    return bars


def _safe_segments(share: float) -> list[tuple[float | None, str]]:
    return [(share, SAFETY_COLOURS["safe"]), (100 - share, SAFETY_COLOURS["unsafe"])]


def _interval(interval: list[float] | None) -> str:
    return f" ({interval[0]:.0f}–{interval[1]:.0f})" if interval else ""
