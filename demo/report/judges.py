"""Model judges (``python -m demo.judge``, raters named ``judge:<model>``): their verdicts from two orders, and how
well they agree with the conversations' own raters. Their ratings are second opinions that move none of the human
figures."""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from typing import Any

from demo.protocol import JUDGE_PREFIX
from demo.report.stats import cohen_kappa, rounded


def swap_verdict(ab: str | None, ba: str | None) -> tuple[str | None, bool]:
    """A judge's verdict on a conversation from its two pairwise answers (each in the conversation's own sides:
    shown in order, then with the sides swapped) and whether it is a tie because they disagree. A judge that
    prefers whatever it reads first gets a tie, not a winner. An unparsable answer leaves no verdict."""
    if ab is None or ba is None:
        return None, False
    if ab == ba:
        return ab, False
    return "tie", True


def is_judge(who: object) -> bool:
    return str(who).startswith(JUDGE_PREFIX)


def pairwise(judgments: list[sqlite3.Row]) -> dict[tuple[str, str], tuple[str | None, bool]]:
    """(judge, conversation) -> ``swap_verdict`` of its latest answer in each order, where it gave both."""
    orders: dict[tuple[str, str], dict[str, str | None]] = defaultdict(dict)
    for row in judgments:  # in order: a later answer in the same order replaces an earlier one
        if row["subject_kind"] == "conversation":
            orders[row["judge"], row["subject_id"]][row["position"]] = row["parsed"]
    return {key: swap_verdict(o["ab"], o["ba"]) for key, o in orders.items() if "ab" in o and "ba" in o}


def agreement(
    rated: list[sqlite3.Row], counted: list[dict], judgments: list[sqlite3.Row], conversations: dict
) -> dict[str, dict[str, Any]]:
    """Each model judge against the conversations' own raters on a person's (arena) conversations: Cohen's
    kappa on the turns both rated (the owner's rating as it counts), its position-swapped verdicts against the
    owner's, and how many of its answers could not be read."""
    owner = {row["turn_id"]: row["rating"] for row in counted}
    pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rated:
        if is_judge(row["who"]) and not row["by_owner"] and row["conversation_id"] in conversations:
            mine = pairs[row["who"]]  # a judge with no turn in common with an owner still gets its line
            if row["turn_id"] in owner:
                mine.append((owner[row["turn_id"]], row["rating"]))
    verdicts: dict[str, list[tuple[str | None, bool, str]]] = defaultdict(list)
    for (judge, cid), (verdict, swapped) in pairwise(judgments).items():
        if cid in conversations and conversations[cid]["verdict"]:
            verdicts[judge].append((verdict, swapped, conversations[cid]["verdict"]))
    unparsable = Counter(
        row["judge"] for row in judgments if row["parsed"] is None and row["conversation_id"] in conversations
    )
    result = {}
    for judge in sorted({*pairs, *verdicts, *unparsable}):
        raw, kappa = cohen_kappa(pairs[judge])
        decided = [(v, s, human) for v, s, human in verdicts[judge] if v is not None]
        result[judge] = {
            "turns": len(pairs[judge]),
            "raw": rounded(raw),
            "kappa": rounded(kappa),
            "method": "cohen",
            "verdicts": len(decided),
            "verdicts_agree": sum(v == human for v, _, human in decided),
            "swap_ties": sum(s for _, s, _ in decided),
            "unparsable": unparsable[judge],
        }
    return result
