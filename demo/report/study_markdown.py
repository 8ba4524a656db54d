"""The prompt studies in the summary: one section per study, people's ratings and a model judge's apart, each table
beside the paper's numbers where its text gives them."""

from __future__ import annotations

from typing import Any

from demo.protocol import BEST_FIRST
from demo.report.markdown import SHARE_COLUMNS, _cell, _ci
from demo.report.paper import PAPER_STUDIES
from demo.studies.records import OUTCOMES

FIGURE = {"pairwise": "Figure 1", "absolute": "Figure 3", "safety": "safety study"}
PARTS = {"human": "People", "automatic": "Automatic (a model judge; counted apart, never mixed with people's)"}


def studies(report: dict) -> list[str]:
    found = report.get("studies") or {}
    if not found:
        return []
    lines = [
        "",
        "## Prompt studies (the paper's Figures 1 and 3, and its safety study)",
        "",
        "Every rating of a study's item counts once. In brackets: 95 % bootstrap intervals over prompts.",
    ]
    for name, study in found.items():
        lines += ["", f"### Study {_cell(name)}: {study['kind']} (cf. the paper's {FIGURE[study['kind']]})"]
        if study["answers"]:
            said = [
                f"{_cell(s)} {a['answers']} ({a['chars']:.0f} chars on average)" for s, a in study["answers"].items()
            ]
            lines += ["", "Answers generated: " + ", ".join(said) + "."]
        for part in PARTS:
            lines += ["", f"**{PARTS[part]}**", "", *TABLES[study["kind"]](study[part], part)]
        if study["agreement"]["items"]:
            both = study["agreement"]
            lines += ["", f"The judge said what people said in {both['agree']} % of {both['pairs']} (person, judge)"
                      f" pairs of labels, on the {both['items']} items both rated."]  # fmt: skip
        methods = [
            f"- {what.replace('_', ' ')}: {how}" for what, how in study["methods"].items() if what != "intervals"
        ]
        lines += ["", *methods] if methods else []
    return lines


def _pairwise(part: dict[str, Any], who: str) -> list[str]:
    if not part["judgments"]:
        lines = ["No judgments yet."]
    else:
        lines = [
            "| model vs baseline | judgments | win | tie | loss | equivalent or better | length-controlled"
            " preference | chars (model / baseline) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in part["per_baseline"].values():
            shares = " | ".join(f"{e[o]:.1f} %{_ci(e['ci'][o])}" for o in OUTCOMES)
            lc = e["length_controlled"]
            lines.append(
                f"| {_cell(e['model'])} vs {_cell(e['baseline'])} | {e['judgments']} | {shares} | "
                f"{e['win_or_tie']:.1f} % | {lc['preference']:.1f} %{_ci(lc['ci'])} | "
                f"{e['model_chars']:.0f} / {e['baseline_chars']:.0f} |"
            )
    if part["ranking"]:
        lines += [
            "",
            "| rank | model | Bradley–Terry score | interval | judgments | chars |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for rank, r in enumerate(part["ranking"], 1):
            interval = f"{r['interval'][0]:.0f}–{r['interval'][1]:.0f}" if r["interval"] else "–"
            cells = f"{r['score']:.0f} | {interval} | {r['judgments']} | {r['chars']:.0f}"
            lines.append(f"| {rank} | {_cell(r['model'])} | {cells} |")
    paper = PAPER_STUDIES["pairwise"][who]
    if paper:
        said = ", ".join(f"{name} {p['win_or_tie']:.0f} %" for name, p in paper.items())
        lines += ["", f"Paper (Figure 1): LIMA's answer equivalent or better than {said}."]
    return lines


def _absolute(part: dict[str, Any], who: str) -> list[str]:
    if not part["ratings"] and not part["out_of_distribution"]["ratings"]:
        return ["No ratings yet."]
    lines = [f"| source | ratings | {SHARE_COLUMNS} | fails | chars |", "|---" + "|---:" * (len(BEST_FIRST) + 3) + "|"]
    for apart, rated in (("", part), (" (out of distribution)", part["out_of_distribution"])):
        for source, s in rated["shares"].items():
            shares = " | ".join(f"{s[level]:.1f} %{_ci(rated['ci'][source][level])}" for level in BEST_FIRST)
            lines.append(
                f"| {_cell(source)}{apart} | {s['ratings']} | {shares} | {s['fails_per_ratings']} | {s['chars']:.0f} |"
            )
    if who == "human":
        paper = PAPER_STUDIES["absolute"]
        for apart, p in (("", paper["in_distribution"]), (" (out of distribution)", paper["out_of_distribution"])):
            shares = " | ".join(f"{p[level]:.1f} %" for level in BEST_FIRST)
            count = p["fails_per_ratings"].split(" in ")[-1]
            lines.append(f"| LIMA (paper){apart} | {count} | {shares} | {p['fails_per_ratings']} | – |")
    return lines


def _safety(part: dict[str, Any], who: str) -> list[str]:
    if not part["labels"]:
        return ["No labels yet."]
    lines = ["| source | labels | safe | declined | malicious: safe | chars |", "|---|---:|---:|---:|---:|---:|"]
    malicious = part["malicious"]
    for source, share in part["safe_share"].items():
        counts = part["sources"][source]
        bad = "–"
        if source in malicious["safe_share"]:
            bad = f"{malicious['sources'][source]['safe_per_labels']}: {malicious['safe_share'][source]:.1f} %"
            bad += _ci(malicious["ci"][source])
        lines.append(
            f"| {_cell(source)} | {counts['labels']} | {share:.1f} %{_ci(part['ci'][source])} | "
            f"{part['declined_share'][source]:.1f} % | {bad} | {counts['chars']:.0f} |"
        )
    if who == "human":
        p = PAPER_STUDIES["safety"]
        m = p["malicious"]
        lines.append(
            f"| LIMA (paper) | 30 | {p['safe_share']:.1f} % | – | {m['safe_per_labels']}: {m['safe_share']:.1f} % | – |"
        )
    return lines


TABLES = {"pairwise": _pairwise, "absolute": _absolute, "safety": _safety}
