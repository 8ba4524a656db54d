"""Which ratings count, and the tallies built on them: ``build_report`` sums the database up as one JSON-ready dict.

- **Turn shares** (Figure 7): for each (conversation, side, turn index), the latest attempt that the
  conversation's own rater rated; that rating counts once, for the model that wrote it, whatever side it sat on.
  Second opinions (the same turn rated by other raters) do not move the shares; they feed ``agreement``.
- **Blind judgments**: an owner's rating counts as it stood when the verdict showed the names; conversations
  rated with the names shown (``--no-blind``) are summed up apart, under ``unblinded``.
- **Verdicts**: one per judged conversation, credited to the model that sat on the winning side.
- **Purposes**: only a person's ``arena`` conversations make the human figures; a model judge's ``autoplay`` ones
  are summed up apart, under ``automatic``.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from demo.report import judges
from demo.report.paper import PAPER
from demo.report.reading import ReportError, Tables, decoding_mismatch, read_all
from demo.report.stats import LEVEL, difference, fleiss_kappa, rounded, share_intervals, shares, sign_test
from demo.report.studies import Record, studies_section
from demo.studies.store import records_at as study_records

COUNTING = (
    "each (conversation, side, turn) of a blind conversation once: its latest attempt rated by the"
    " conversation's own rater, as rated before the verdict showed the names (unblinded ones: apart)"
)


def build_report(
    db_path: str | Path,
    a_model: str | None = None,
    resamples: int = 2000,
    seed: int = 0,
    studies: Iterable[Record] | None = None,
) -> dict:
    """Everything the summary, the figures and ``--json`` show, as one JSON-ready dict; ``studies``: the prompt
    studies' records (``demo.studies.records``), summed up under ``studies`` (``studies_section``); read from the
    same database when not given."""
    if resamples < 1:
        raise ReportError(f"resamples must be at least 1, got {resamples}")
    tables = read_all(db_path)
    if studies is None:
        studies = study_records(db_path)
    counted, agreement_items, agreement_raters = _count(tables.rated)
    counted, after_reveal = _as_rated_before_reveal(counted, tables.history)

    # Only blind judgments make the comparison (the paper's protocol); conversations rated with the names shown
    # are summed up apart and count toward nothing else. Conversations of other purposes (a judge's autoplay,
    # epoch comparisons) are not a person's arena ratings.
    arena = {cid: conv for cid, conv in tables.conversations.items() if _purpose(conv) == "arena"}
    blind = {cid: conv for cid, conv in arena.items() if conv["blind"]}
    unblinded = {cid: conv for cid, conv in arena.items() if not conv["blind"]}
    counted_arena = [row for row in counted if row["conversation_id"] in arena]
    counted_blind = [row for row in counted_arena if row["conversation_id"] in blind]
    counted_open = [row for row in counted_arena if row["conversation_id"] not in blind]
    verdicts, verdict_pairs = _verdicts_of(blind, arena, a_model)
    raw, kappa = fleiss_kappa(agreement_items)
    return {
        "db": str(db_path),
        "counting": COUNTING,
        "after_reveal": after_reveal,
        "bootstrap": {"resamples": resamples, "seed": seed, "unit": "conversation", "level": LEVEL},
        "conversations": len({row["conversation_id"] for row in counted_blind}),
        "turns": len(counted_blind),
        "models": _models(counted_blind, resamples, seed),
        "verdicts": verdicts,
        "verdict_pairs": verdict_pairs,
        "comparison": _comparison(counted_blind, verdicts, resamples, seed),
        "unblinded": {
            "conversations": len({row["conversation_id"] for row in counted_open}),
            "turns": len(counted_open),
            "models": _models(counted_open, resamples, seed),
            "verdicts": _verdicts_of(unblinded, arena, a_model)[0],
        },
        "automatic": _automatic(tables, counted, a_model, resamples, seed),
        "raters": _raters(tables.rated, arena, tables.verdict_by),
        "agreement": {
            "turns": len(agreement_items),
            "raters": len(agreement_raters),
            "raw": rounded(raw),
            "kappa": rounded(kappa),
            "method": "fleiss",
            "judges": judges.agreement(tables.rated, counted_arena, tables.judgments, arena),
        },
        "decoding_mismatch": decoding_mismatch(tables.decodings),
        "taken_down": {
            "conversations": len(tables.taken_down),
            "turns": sum(row["conversation_id"] in tables.taken_down for row in counted_arena),
            "ratings": "counted, under a pseudonym per rater; texts and typed names withheld",
        },
        "paper": PAPER,
        "studies": studies_section(studies, resamples, seed),
    }


# -- which rating counts -------------------------------------------------------------------------------------
def _count(rated: list[sqlite3.Row]) -> tuple[list[dict], list[Counter], set[str]]:
    """The counted rating of each turn slot (the latest attempt its conversation's own rater rated), and the
    slots two or more people rated (for agreement) with who rated them."""
    # (conversation, side, turn index) -> attempt -> who -> rating
    slots: dict[tuple[str, str, int], dict[int, dict[str, sqlite3.Row]]] = defaultdict(lambda: defaultdict(dict))
    for row in rated:
        slots[row["conversation_id"], row["side"], row["turn_index"]][row["attempt"]][row["who"]] = row
    counted: list[dict] = []
    agreement_items: list[Counter] = []
    agreement_raters: set[str] = set()
    for attempts in slots.values():
        # The owner's rating: given in the session that had the conversation (under whatever name it typed).
        own = [attempt for attempt, by_rater in attempts.items() if any(r["by_owner"] for r in by_rater.values())]
        if own:
            mine = [r for r in attempts[max(own)].values() if r["by_owner"]]
            counted.append(dict(max(mine, key=lambda r: r["updated_at"])))
        # Human agreement: the latest attempt a person rated, if two or more did. A model judge's ratings are
        # left out before anything is chosen, so they can move neither the numbers nor which attempt counts.
        people = {a: {w: r for w, r in by.items() if not judges.is_judge(w)} for a, by in attempts.items()}
        people = {a: by for a, by in people.items() if by}
        latest = people[max(people)] if people else {}
        if len(latest) >= 2:
            agreement_items.append(Counter(row["rating"] for row in latest.values()))
            agreement_raters.update(row["rater"] for row in latest.values())
    return counted, agreement_items, agreement_raters


def _as_rated_before_reveal(counted: list[dict], history: dict) -> tuple[list[dict], int]:
    """Each owner's rating as it stood when the verdict showed the names, and how many changed after. The store
    refuses later changes; a database from before it did may hold some, which are set aside here."""
    after_reveal = 0
    before: list[dict] = []
    for row in counted:
        reveal = row["verdict_at"]
        if reveal is not None and row["updated_at"] > reveal:
            after_reveal += 1
            earlier = [rating for at, rating in history.get((row["turn_id"], row["rater"]), []) if at <= reveal]
            if not earlier:
                continue
            row["rating"] = earlier[-1]
        before.append(row)
    return before, after_reveal


def _purpose(conversation: sqlite3.Row) -> str:
    # sqlite3.Row: `in` looks at the values, keys() at the columns; a database from before purposes: all arena
    return conversation["purpose"] if "purpose" in conversation.keys() else "arena"  # noqa: SIM118


# -- tallies -------------------------------------------------------------------------------------------------
def _models(counted: list[dict], resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Each model's shares (with intervals over conversations), fails, and shares by turn index."""
    models: dict[str, dict[str, Any]] = {}
    for model in sorted({row["model"] for row in counted}):
        mine = [row for row in counted if row["model"] == model]
        per_conversation: dict[str, Counter] = defaultdict(Counter)
        by_turn: dict[int, list[str]] = defaultdict(list)
        for row in mine:
            per_conversation[row["conversation_id"]][row["rating"]] += 1
            by_turn[row["turn_index"]].append(row["rating"])
        overall = shares(row["rating"] for row in mine)
        fails = sum(row["rating"] == "fail" for row in mine)
        intervals = share_intervals(list(per_conversation.values()), resamples, seed)
        models[model] = {
            **overall,
            "excellent_ci": intervals["excellent"],
            "fail_ci": intervals["fail"],
            "fails": fails,
            "fails_per_turns": f"{fails} in {overall['turns']}",
            "conversations": len(per_conversation),
            "by_turn": {str(index): shares(by_turn[index]) for index in sorted(by_turn)},
            # people and judges favour longer answers: a model's shares are read beside its answers' length
            "chars": round(sum(row["chars"] for row in mine) / len(mine), 1),
        }
    return models


def _comparison(counted: list[dict], verdicts: dict, resamples: int, seed: int) -> dict | None:
    """The paper's comparison of the main pair: the difference in excellent and fail shares (first model minus
    second, percentage points) with intervals from resampling the conversations where both were rated, and a sign
    test on the verdicts."""
    first, second = verdicts.get("a_model"), verdicts.get("b_model")
    if not first or not second:
        return None
    per_conversation: dict[str, dict[str, Counter]] = defaultdict(lambda: {first: Counter(), second: Counter()})
    for row in counted:
        if row["model"] in (first, second):
            per_conversation[row["conversation_id"]][row["model"]][row["rating"]] += 1
    paired = [(c[first], c[second]) for c in per_conversation.values() if c[first].total() and c[second].total()]
    result: dict[str, Any] = {
        "a_model": first,
        "b_model": second,
        "conversations": len(paired),
        "sign_test_p": sign_test(verdicts["wins"], verdicts["losses"]),
    }
    if not paired:
        return {**result, "excellent_diff": None, "excellent_diff_ci": None, "fail_diff": None, "fail_diff_ci": None}
    return {**result, **difference(paired, resamples, seed)}


def _raters(rated: list[sqlite3.Row], conversations: dict, verdict_by: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per rater name: the conversations rated in, current ratings, and verdicts given (arena conversations)."""
    raters: dict[str, dict[str, int]] = defaultdict(lambda: {"conversations": 0, "ratings": 0, "verdicts": 0})
    rated_conversations: dict[str, set[str]] = defaultdict(set)
    for row in rated:
        raters[row["rater"]]["ratings"] += 1
        rated_conversations[row["rater"]].add(row["conversation_id"])
    for rater, convs in rated_conversations.items():
        raters[rater]["conversations"] = len(convs)
    for conversation_id, conv in conversations.items():
        if conv["verdict"]:
            raters[verdict_by.get(conversation_id, conv["rater"])]["verdicts"] += 1
    return {name: raters[name] for name in sorted(raters)}


# -- verdicts ------------------------------------------------------------------------------------------------
def _empty_verdicts(a_model: str | None = None) -> dict[str, Any]:
    return {"a_model": a_model, "b_model": None, "wins": 0, "losses": 0, "ties": 0, "conversations": 0}


def _verdicts(conversations: dict[str, sqlite3.Row], a_model: str | None) -> tuple[dict, list[dict]]:
    """The verdict tally of every pair of models; the main one is the pair judged most often (with a_model)."""
    by_pair: dict[tuple[str, str], list[sqlite3.Row]] = defaultdict(list)
    for conv in conversations.values():
        if conv["verdict"] and conv["model_a"] != conv["model_b"]:  # a model against itself credits no one
            by_pair[tuple(sorted((conv["model_a"], conv["model_b"])))].append(conv)
    pairs = []
    for pair, convs in sorted(by_pair.items(), key=lambda item: (-len(item[1]), item[0])):
        # The later identity in sorted order is "a": lima-1030, the dialogue model, against lima-1000.
        first = a_model if a_model in pair else pair[1]
        second = pair[0] if first == pair[1] else pair[1]
        winners = Counter(
            "tie" if c["verdict"] == "tie" else c["model_a"] if c["verdict"] == "a" else c["model_b"] for c in convs
        )
        pairs.append(
            {
                "a_model": first,
                "b_model": second,
                "wins": winners[first],
                "losses": winners[second],
                "ties": winners["tie"],
                "conversations": len(convs),
            }
        )
    if a_model is None:
        return (pairs[0] if pairs else _empty_verdicts()), pairs
    main = [p for p in pairs if p["a_model"] == a_model]
    if not main and pairs:
        judged = sorted({name for p in pairs for name in (p["a_model"], p["b_model"])})
        raise ReportError(f"no judged conversation involves {a_model!r}; judged models: {', '.join(judged)}")
    return (main[0] if main else _empty_verdicts(a_model)), pairs


def _verdicts_of(some: dict[str, sqlite3.Row], every: dict[str, sqlite3.Row], a_model: str | None):
    """``_verdicts`` of a subset: a model judged only outside it has an empty tally here, not an error."""
    if a_model is not None and not _judged(some, a_model) and _judged(every, a_model):
        return _empty_verdicts(a_model), []
    return _verdicts(some, a_model)


def _judged(conversations: dict[str, sqlite3.Row], model: str) -> bool:
    return any(c["verdict"] and model in (c["model_a"], c["model_b"]) for c in conversations.values())


# -- automatic -----------------------------------------------------------------------------------------------
def _automatic(tables: Tables, counted: list[dict], a_model: str | None, resamples: int, seed: int) -> dict[str, Any]:
    """The autoplay conversations, played and judged by a model: the same shares and verdicts, counted apart."""
    every = tables.conversations
    played = {cid: conv for cid, conv in every.items() if _purpose(conv) == "autoplay"}
    rows = [row for row in counted if row["conversation_id"] in played]
    swapped = [
        cid
        for (judge, cid), (_, swap) in judges.pairwise(tables.judgments).items()
        if swap and cid in played and judge == every[cid]["rater"]
    ]
    return {
        "conversations": len(played),
        "turns": len(rows),
        "judges": sorted({conv["rater"] for conv in played.values() if conv["rater"]}),
        "models": _models(rows, resamples, seed),
        "verdicts": _verdicts_of(played, every, a_model)[0],
        "swap_ties": len(swapped),
        "unparsable": sum(row["parsed"] is None and row["conversation_id"] in played for row in tables.judgments),
    }
