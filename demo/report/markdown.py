"""The report as Markdown: one function per section, each a list of lines, in the order a reader wants them."""

from __future__ import annotations

import html
import re

from demo.protocol import BEST_FIRST, SIDES
from demo.report.paper import PAPER_BARS

SHARE_COLUMNS = " | ".join(BEST_FIRST)  # the scale, best first, as Figure 7 stacks it
MODEL_COLUMNS = f"| conversations | {SHARE_COLUMNS} | fails | mean length (chars) |"
_MARKUP = re.compile(r"([\\`*\[\]|!])")


def markdown(report: dict) -> str:
    """A readable summary: Figure 7 beside the paper's bars, verdicts, turn depth, raters, agreement."""
    sections = (
        _intro, _turn_ratings, _verdicts, _by_turn, _unblinded, _automatic, _studies, _raters, _decoding, _agreement,
        _after_reveal, _taken_down,
    )  # fmt: skip
    return "\n".join(line for section in sections for line in section(report)) + "\n"


# -- pieces --------------------------------------------------------------------------------------------------
def _text(text: object) -> str:
    """Names come from raters, model folders and servers: shown as typed, never as markup. ``<``, ``>`` and ``&``
    become entities (no HTML, whatever the renderer); the characters that open a link, an image, code or a table
    cell are backslash-escaped (CommonMark); line breaks become spaces. Opened in a browser or a Markdown viewer,
    the report then runs nothing and loads nothing."""
    flat = " ".join(str(text).splitlines())
    return _MARKUP.sub(r"\\\1", html.escape(flat, quote=False))


def _cell(text: object) -> str:
    return _text(text) or "(unnamed)"


def _ci(interval: list[float] | None) -> str:
    return f" ({interval[0]:.1f}–{interval[1]:.1f})" if interval else ""


def _shares(row: dict, intervals: bool = True) -> str:
    """One cell per level of the scale, best first, each with its interval where the row has one (a level the
    row lacks, e.g. the paper's bars for a level the paper did not use, is a dash)."""
    cells = []
    for level in BEST_FIRST:
        share = row.get(level)
        cell = "–" if share is None else f"{share:.1f} %"
        cells.append(cell + (_ci(row.get(f"{level}_ci")) if intervals else ""))
    return " | ".join(cells)


def _setting(setting: dict) -> str:
    text = (
        f"temperature {setting['temperature']}, top-p {setting['top_p']}, penalty {setting['repetition_penalty']}"
        f" over {setting['penalty_scope'] or 'an unrecorded scope'}, at most {setting['max_new_tokens']} tokens"
    )
    return _text(text + (f", may ignore {', '.join(setting['may_ignore'])}" if setting["may_ignore"] else ""))


def _model_table(models: dict, heading: str = "model", intervals: bool = True) -> list[str]:
    """Figure 7 as a table, one row per model: conversations, shares (with their intervals), fails."""

    def ci(interval: list[float] | None) -> str:
        return _ci(interval) if intervals else ""

    return [f"| {heading} {MODEL_COLUMNS}", "|---" + "|---:" * (len(BEST_FIRST) + 3) + "|"] + [
        f"| {_cell(name)} | {m['conversations']} | {_shares(m, intervals)} | {m['fails_per_turns']}"
        f" | {m['chars']:.0f} |"
        for name, m in models.items()
    ]


def _tally(v: dict) -> str:
    return (
        f"{_cell(v['a_model'])} better in {v['wins']}, {_cell(v['b_model'])} better in {v['losses']}, "
        f"tied in {v['ties']}"
    )


# -- sections ------------------------------------------------------------------------------------------------
def _intro(report: dict) -> list[str]:
    if report["turns"]:
        line = (
            f"{report['conversations']} blind conversations, {report['turns']} rated turns. Each turn counts once: its "
            "latest attempt rated by the conversation's own rater. In brackets: 95 % bootstrap intervals over "
            f"conversations ({report['bootstrap']['resamples']} resamples, seed {report['bootstrap']['seed']})."
        )
    elif report["unblinded"]["turns"]:
        line = "No blind ratings yet (unblinded ones are summed up apart, below). The paper's bars:"
    elif report["automatic"]["conversations"]:
        line = "No ratings by people yet (a model judge's automatic ones are summed up apart, below). The paper's bars:"
    else:
        line = "No ratings yet: rate some turns in the arena, then run the report again. The paper's bars:"
    return ["# LIMA multi-turn arena: report", "", line]


def _turn_ratings(report: dict) -> list[str]:
    paper = report["paper"]
    lines = ["", "## Turn ratings (the paper's Figure 7)", "", *_model_table(report["models"])]
    for key, label in PAPER_BARS.items():
        bar = paper[key]
        lines.append(f"| {label} | {paper['verdicts']['of']} | {_shares(bar)} | {bar['fails_per_turns']} | – |")
    return lines


def _verdicts(report: dict) -> list[str]:
    lines = ["", "## Verdicts", ""]
    v = report["verdicts"]
    if v["conversations"]:
        lines.append(f"{_tally(v)} (of {v['conversations']} judged conversations).")
        for p in report["verdict_pairs"]:
            if p != v:
                lines.append(
                    f"- also {_cell(p['a_model'])} vs {_cell(p['b_model'])}: better in {p['wins']}, worse in "
                    f"{p['losses']}, tied in {p['ties']} (of {p['conversations']})"
                )
    else:
        lines.append("No verdicts yet.")
    pv = report["paper"]["verdicts"]
    lines += ["", f"Paper: the dialogue model better in {pv['better']} of {pv['of']}, tied in {pv['tied']}."]
    c = report["comparison"]
    if c and c["excellent_diff"] is not None:
        p_value = "no decided verdicts" if c["sign_test_p"] is None else f"sign test p = {c['sign_test_p']:.3g}"
        lines += [
            "",
            f"**{_cell(c['a_model'])} minus {_cell(c['b_model'])}**, over the {c['conversations']} conversations "
            f"where both were rated: excellent {c['excellent_diff']:+.1f} points{_ci(c['excellent_diff_ci'])}, "
            f"fail {c['fail_diff']:+.1f} points{_ci(c['fail_diff_ci'])}; verdicts: {p_value} (ties left out).",
        ]
    return lines


def _by_turn(report: dict) -> list[str]:
    if not report["models"]:
        return []
    lines = ["", "## By turn", "", "Multi-turn failures grow with depth: the shares at each turn index."]
    for name, m in report["models"].items():
        header = f"| turn | turns | {SHARE_COLUMNS} |"
        lines += ["", f"**{_cell(name)}**", "", header, "|---:" * (len(BEST_FIRST) + 2) + "|"]
        for index, t in m["by_turn"].items():
            lines.append(f"| {index} | {t['turns']} | {_shares(t, intervals=False)} |")
    return lines


def _unblinded(report: dict) -> list[str]:
    u = report["unblinded"]
    if not u["turns"]:
        return []
    lines = [
        "",
        "## Unblinded conversations (not counted above)",
        "",
        f"{u['conversations']} conversations, {u['turns']} rated turns, rated with the names shown "
        "(`--no-blind`): they count toward nothing above.",
        "",
        *_model_table(u["models"], intervals=False),
    ]
    if u["verdicts"]["conversations"]:
        lines += ["", f"Verdicts: {_tally(u['verdicts'])}."]
    return lines


def _automatic(report: dict) -> list[str]:
    auto = report["automatic"]
    if not auto["conversations"]:
        return []
    judges = ", ".join(_cell(name) for name in auto["judges"]) or "a model judge"
    lines = [
        "",
        "## Automatic: autoplay, played and judged by a model (not counted above)",
        "",
        f"{auto['conversations']} autoplay conversations, {auto['turns']} turns rated by {judges}: the evaluation "
        "openers played on both sides and every turn and verdict given by a model, each verdict asked in both "
        "orders. Automatic figures, not a person's ratings: they count toward nothing above.",
        "",
        *_model_table(auto["models"], heading="model (automatic)"),
    ]
    av = auto["verdicts"]
    if av["conversations"]:
        lines += [
            "",
            f"Automatic verdicts: {_tally(av)} (of {av['conversations']}; {auto['swap_ties']} of the ties are "
            "the two orders disagreeing).",
        ]
    else:
        lines += ["", "No automatic verdicts yet."]
    if auto["unparsable"]:
        lines += ["", f"{auto['unparsable']} judge answer(s) had no rating or verdict line: stored, not counted."]
    return lines


def _studies(report: dict) -> list[str]:
    from demo.report.study_markdown import studies  # it writes with this module's cells

    return studies(report)


def _raters(report: dict) -> list[str]:
    if not report["raters"]:
        return ["", "## Raters", "", "No raters yet."]
    lines = ["", "## Raters", "", "| rater | conversations | ratings | verdicts |", "|---|---:|---:|---:|"]
    for name, r in report["raters"].items():
        lines.append(f"| {_cell(name)} | {r['conversations']} | {r['ratings']} | {r['verdicts']} |")
    return lines


def _decoding(report: dict) -> list[str]:
    mixed = report["decoding_mismatch"]
    if not mixed:
        return ["", "## Decoding", "", "Both sides of every conversation ran the same decoding."]
    lines = [
        "",
        "## Decoding",
        "",
        f"{len(mixed)} conversation(s) ran different decoding on their two sides; their verdicts compare the "
        "settings as well as the models:",
    ]
    for item in mixed:
        sides = "; ".join(f"{side.upper()}: " + " / ".join(map(_setting, item[side])) for side in SIDES)
        lines.append(f"- {_cell(item['conversation'])}: {sides}")
    return lines


def _agreement(report: dict) -> list[str]:
    a = report["agreement"]
    lines = ["", "## Agreement", ""]
    if a["turns"]:
        kappa = "undefined (every rating in one category)" if a["kappa"] is None else f"{a['kappa']:.3f}"
        lines.append(
            f"On {a['turns']} turns rated by two or more of {a['raters']} raters: observed agreement "
            f"{a['raw']:.3f}, Fleiss' κ {kappa}."
        )
    else:
        lines.append("No turn has two raters yet: agreement needs second opinions on the same turns.")
    if a["judges"]:
        lines.append("")
    return lines + [_judge_line(name, j) for name, j in a["judges"].items()]


def _judge_line(name: str, j: dict) -> str:
    if j["turns"]:
        kappa = "undefined (one category throughout)" if j["kappa"] is None else f"{j['kappa']:.3f}"
        line = (
            f"- {_cell(name)} (a model judge) against the conversations' own raters, on the {j['turns']} turns "
            f"both rated: observed agreement {j['raw']:.3f}, Cohen's κ {kappa}."
        )
    else:
        line = f"- {_cell(name)} (a model judge): no turn rated by both it and the conversation's own rater yet."
    if j["verdicts"]:
        line += (
            f" Its verdicts (both orders) match the rater's in {j['verdicts_agree']} of {j['verdicts']} "
            f"conversations ({j['swap_ties']} ties from the two orders disagreeing)."
        )
    if j["unparsable"]:
        line += f" {j['unparsable']} of its answers were unparsable (stored, not counted)."
    return line


def _after_reveal(report: dict) -> list[str]:
    if not report["after_reveal"]:
        return []
    return [
        "",
        f"{report['after_reveal']} rating(s) were changed after their conversation's verdict showed the names "
        "(a database from before verdicts were final): they count as they stood at the verdict.",
    ]


def _taken_down(report: dict) -> list[str]:
    gone = report.get("taken_down")
    if not gone or not gone["conversations"]:
        return []
    return [
        "",
        "## Taken down",
        "",
        f"{gone['conversations']} conversation(s) taken down (`python -m demo.report redact`): their messages, "
        f"answers and typed names are withheld here, in exports and in what is published from now on. Their "
        f"{gone['turns']} counted rating(s) still count above, under a pseudonym per rater: a rating is a judgment "
        "of a model's answer, not the rater's words, and dropping it would let a takedown move the figures.",
    ]
