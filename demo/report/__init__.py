"""The report: the ratings database summed up like the paper's Figure 7, plus verdicts, agreement and exports.

Pure computation over a read-only SQLite connection, so it can run beside a live arena. What counts:

- **Turn shares** (Figure 7): for each (conversation, side, turn index), the latest attempt that the
  conversation's own rater rated; that rating counts once, for the model that wrote it, whatever side it sat on.
  Second opinions (the same turn rated by other raters) do not move the shares; they feed ``agreement``.
- **Confidence intervals**: 95 % percentile bootstrap that resamples *conversations* with replacement, since
  the turns of one conversation are not independent (a model that derails tends to stay derailed).
- **Verdicts**: one per judged conversation, credited to the model that sat on the winning side.
- **Decoding**: a conversation whose two sides ran different decoding (another temperature, top-p, penalty or
  token cap, a penalty over another scope, or a server that may have ignored a setting) is flagged in
  ``decoding_mismatch``: its verdict compares more than the models.
- **Model judges** (``python -m demo.judge``, raters named ``judge:<model>``): their ratings of a person's turns
  are second opinions that move none of the human figures, human agreement included; ``agreement.judges`` sets
  each judge against the conversations' own raters (Cohen's kappa on the turns both rated). Conversations a judge
  played and judged by itself (``autoplay``) are summed up apart, under ``automatic``.

``python -m demo.report --db ratings.db [--json] [--out DIR] [--a-model NAME]`` prints the summary;
``python -m demo.report export --db ratings.db --format jsonl|csv|hf --out PATH`` writes every rating with its turn.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sqlite3
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from demo.ratings import JUDGE_PREFIX

RATINGS = ("excellent", "pass", "fail")  # the order of Figure 7's segments, best first
TABLES = ("conversations", "turns", "ratings", "verdict_log")
EXPORT_FORMATS = ("jsonl", "csv", "hf")

# Figure 7 and section 4.3 of arXiv 2305.11206: 10 live conversations, each turn rated by the authors.
PAPER: dict[str, Any] = {
    "zero-shot": {"excellent": 45.2, "pass": 19.1, "fail": 35.7, "fails_per_turns": "15 in 42"},
    "dialogue": {"excellent": 76.1, "pass": 21.7, "fail": 2.2, "fails_per_turns": "1 in 46"},
    "verdicts": {"better": 7, "tied": 3, "of": 10},
}
PAPER_BARS = {"zero-shot": "LIMA zero-shot (paper)", "dialogue": "LIMA dialogue (paper)"}
COLORS = {"excellent": "#2e7d32", "pass": "#f9a825", "fail": "#c62828"}


class ReportError(Exception):
    """Input the report cannot use (a missing or foreign database, an unknown model or format): one line to show."""


# -- reading the database ------------------------------------------------------------------------------------
def connect(db_path: str | Path) -> sqlite3.Connection:
    """Open the ratings database read-only; refuse a missing file or one without the store's tables."""
    path = Path(db_path)
    if not path.is_file():
        raise ReportError(f"no ratings database at {path}: pass --db with the file the arena writes (ratings.db)")
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        present = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        db.close()
        raise ReportError(f"{path} is not a SQLite database ({exc})") from None
    missing = [table for table in TABLES if table not in present]
    if missing:
        db.close()
        raise ReportError(f"{path} is not a ratings database (no table {', '.join(missing)})")
    return db


def _read_all(db_path: str | Path) -> tuple[dict, list[sqlite3.Row], dict[str, str], list[sqlite3.Row], dict, list]:
    """Conversations by id, every current rating joined to its turn, who gave each current verdict, every
    turn's side and decoding, every rating ever given by (turn, rater name), in order, and every model judge's
    judgment with the conversation it is about, in order."""
    db = connect(db_path)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        judgments = []
        if "judgments" in tables:  # a database from before model judges has none
            judgments = db.execute(
                'SELECT j.subject_kind, j.subject_id, j.judge, j."order" AS position, j.parsed,'
                " COALESCE(t.conversation_id, j.subject_id) AS conversation_id FROM judgments j"
                " LEFT JOIN turns t ON j.subject_kind = 'turn' AND t.id = j.subject_id ORDER BY j.at, j.rowid"
            ).fetchall()
        decodings = db.execute("SELECT conversation_id, side, decoding FROM turns ORDER BY rowid").fetchall()
        conversations = {row["id"]: row for row in db.execute("SELECT * FROM conversations")}
        columns = {row[1] for row in db.execute("PRAGMA table_info(ratings)")}
        # A database written before `by_owner` existed: the owner's ratings are those under the conversation's name.
        by_owner = "r.by_owner" if "by_owner" in columns else "(r.rater = c.rater)"
        # Who rated: the rating session (a database from before sessions keyed ratings: the name).
        who = "r.session" if "session" in columns else "r.rater"
        rated = db.execute(
            "SELECT t.conversation_id, t.side, t.turn_index, t.attempt, t.model, r.turn_id, r.rater, r.rating,"
            f" {who} AS who, {by_owner} AS by_owner, r.updated_at, c.verdict_at FROM ratings r"
            " JOIN turns t ON t.id = r.turn_id JOIN conversations c ON c.id = t.conversation_id"
        ).fetchall()
        history: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)
        for entry in db.execute("SELECT turn_id, rater, rating, at FROM rating_log ORDER BY seq"):
            history[entry["turn_id"], entry["rater"]].append((entry["at"], entry["rating"]))
        # The log, in order, ends with the verdict the conversation holds now.
        log = db.execute("SELECT conversation_id, rater FROM verdict_log ORDER BY seq")
        verdict_by = {row["conversation_id"]: row["rater"] for row in log}
    except sqlite3.DatabaseError as exc:
        raise ReportError(f"cannot read {db_path}: {exc}") from None
    finally:
        db.close()
    return conversations, rated, verdict_by, decodings, history, judgments


# What makes two turns' decoding the same: the rater's setting, and what the server made of it.
DECODING_KEYS = ("temperature", "top_p", "repetition_penalty", "max_new_tokens", "penalty_scope", "may_ignore")


def _canonical(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True)


def _decoding_mismatch(decodings: list[sqlite3.Row]) -> list[dict]:
    """Conversations whose sides ran different decoding, with each side's distinct settings."""
    by_side: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in decodings:
        try:
            stored = json.loads(row["decoding"] or "{}")
        except ValueError:
            stored = {}
        setting = {key: stored.get(key) for key in DECODING_KEYS}
        if setting not in by_side[row["conversation_id"]][row["side"]]:
            by_side[row["conversation_id"]][row["side"]].append(setting)
    flagged = []
    for conversation_id, sides in by_side.items():
        a, b = sides.get("a", []), sides.get("b", [])
        if a and b and sorted(map(_canonical, a)) != sorted(map(_canonical, b)):
            flagged.append({"conversation": conversation_id, "a": a, "b": b})
    return sorted(flagged, key=lambda item: item["conversation"])


# -- arithmetic ----------------------------------------------------------------------------------------------
def _pct(part: int, whole: int) -> float:
    return round(100 * part / whole, 1) if whole else 0.0


def _shares(ratings: Iterable[str]) -> dict[str, Any]:
    counts = Counter(ratings)
    total = sum(counts.values())
    return {"turns": total, **{name: _pct(counts[name], total) for name in RATINGS}}


def _bootstrap(per_conversation: list[Counter], resamples: int, seed: int) -> dict[str, list[float] | None]:
    """95 % percentile intervals of the excellent and fail shares, resampling conversations with replacement."""
    if len(per_conversation) < 2:
        return {"excellent": None, "fail": None}
    counts = np.array([[c[name] for name in RATINGS] for c in per_conversation], dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(counts), size=(resamples, len(counts)))
    sums = counts[picks].sum(axis=1)  # (resamples, 3): the ratings of each resampled set of conversations
    shares = 100 * sums / sums.sum(axis=1, keepdims=True)
    intervals = {}
    for column, name in enumerate(RATINGS):
        low, high = np.percentile(shares[:, column], [2.5, 97.5])
        intervals[name] = [round(float(low), 1), round(float(high), 1)]
    return {"excellent": intervals["excellent"], "fail": intervals["fail"]}


def sign_test(wins: int, losses: int) -> float | None:
    """Two-sided exact sign test of wins against losses (ties left out): the chance of a split at least this
    uneven if neither model were better. The paper's 7 better, 0 worse gives 0.016."""
    n = wins + losses
    if n == 0:
        return None
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return round(min(1.0, 2 * tail), 4)


def _comparison(counted: list[dict], verdicts: dict, resamples: int, seed: int) -> dict | None:
    """The paper's comparison of the main pair: the difference in excellent and fail shares (first model minus
    second, percentage points) with 95 % intervals from resampling the conversations where both were rated,
    and a sign test on the verdicts."""
    first, second = verdicts.get("a_model"), verdicts.get("b_model")
    if not first or not second:
        return None
    per_conversation: dict[str, dict[str, Counter]] = defaultdict(lambda: {first: Counter(), second: Counter()})
    for row in counted:
        if row["model"] in (first, second):
            per_conversation[row["conversation_id"]][row["model"]][row["rating"]] += 1
    paired = [c for c in per_conversation.values() if sum(c[first].values()) and sum(c[second].values())]
    result: dict[str, Any] = {
        "a_model": first,
        "b_model": second,
        "conversations": len(paired),
        "sign_test_p": sign_test(verdicts["wins"], verdicts["losses"]),
    }
    if not paired:
        return {**result, "excellent_diff": None, "excellent_diff_ci": None, "fail_diff": None, "fail_diff_ci": None}
    counts = np.array([[[c[m][name] for name in RATINGS] for m in (first, second)] for c in paired], dtype=float)

    def diff(sample: np.ndarray) -> np.ndarray:  # (..., conversations, 2, 3) -> (..., 3) share differences
        sums = sample.sum(axis=-3)
        shares = 100 * sums / sums.sum(axis=-1, keepdims=True)
        return shares[..., 0, :] - shares[..., 1, :]

    point = diff(counts)
    for column, name in enumerate(RATINGS):
        if name in ("excellent", "fail"):
            result[f"{name}_diff"] = round(float(point[column]), 1)
            result[f"{name}_diff_ci"] = None
    if len(paired) >= 2:
        picks = np.random.default_rng(seed).integers(0, len(paired), size=(resamples, len(paired)))
        resampled = diff(counts[picks])
        for column, name in enumerate(RATINGS):
            if name in ("excellent", "fail"):
                low, high = np.percentile(resampled[:, column], [2.5, 97.5])
                result[f"{name}_diff_ci"] = [round(float(low), 1), round(float(high), 1)]
    return result


def fleiss_kappa(items: list[Counter]) -> tuple[float | None, float | None]:
    """Observed agreement P̄ and Fleiss' kappa, generalised to a varying number of raters per item.

    P_i = (Σ_j n_ij² − n_i) / (n_i (n_i − 1)); p_j = Σ_i n_ij / Σ_i n_i; P_e = Σ_j p_j²;
    κ = (P̄ − P_e) / (1 − P_e), undefined (None) when every rating falls in one category.
    """
    items = [item for item in items if sum(item.values()) >= 2]
    if not items:
        return None, None
    observed = []
    for item in items:
        n = sum(item.values())
        observed.append((sum(v * v for v in item.values()) - n) / (n * (n - 1)))
    p_bar = sum(observed) / len(observed)
    totals = sum(items, Counter())
    grand = sum(totals.values())
    p_e = sum((v / grand) ** 2 for v in totals.values())
    kappa = None if p_e >= 1 else (p_bar - p_e) / (1 - p_e)
    return p_bar, kappa


def cohen_kappa(pairs: list[tuple[str, str]]) -> tuple[float | None, float | None]:
    """Observed agreement p_o and Cohen's kappa of two raters over the same items, one (first, second) pair each.

    p_e = Σ_k (first's share of k) · (second's share of k); κ = (p_o − p_e) / (1 − p_e), undefined (None) when both
    put every item in the same one category."""
    if not pairs:
        return None, None
    n = len(pairs)
    p_o = sum(first == second for first, second in pairs) / n
    firsts, seconds = Counter(first for first, _ in pairs), Counter(second for _, second in pairs)
    p_e = sum(firsts[k] * seconds[k] for k in firsts) / (n * n)
    return p_o, None if p_e >= 1 else (p_o - p_e) / (1 - p_e)


def swap_verdict(ab: str | None, ba: str | None) -> tuple[str | None, bool]:
    """A judge's verdict on a conversation from its two pairwise answers (each in the conversation's own sides:
    shown in order, then with the sides swapped) and whether it is a tie because they disagree. A judge that
    prefers whatever it reads first gets a tie, not a winner. An unparsable answer leaves no verdict."""
    if ab is None or ba is None:
        return None, False
    if ab == ba:
        return ab, False
    return "tie", True


def _is_judge(who: object) -> bool:
    return str(who).startswith(JUDGE_PREFIX)


def _pairwise(judgments: list[sqlite3.Row]) -> dict[tuple[str, str], tuple[str | None, bool]]:
    """(judge, conversation) -> ``swap_verdict`` of its latest answer in each order, where it gave both."""
    orders: dict[tuple[str, str], dict[str, str | None]] = defaultdict(dict)
    for row in judgments:  # in order: a later answer in the same order replaces an earlier one
        if row["subject_kind"] == "conversation":
            orders[row["judge"], row["subject_id"]][row["position"]] = row["parsed"]
    return {key: swap_verdict(o["ab"], o["ba"]) for key, o in orders.items() if "ab" in o and "ba" in o}


def _judge_agreement(rated, counted, judgments, conversations) -> dict[str, dict[str, Any]]:
    """Each model judge against the conversations' own raters on a person's (arena) conversations: Cohen's
    kappa on the turns both rated (the owner's rating as it counts above), its position-swapped verdicts
    against the owner's, and how many of its answers could not be read."""
    owner = {row["turn_id"]: row["rating"] for row in counted}
    pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rated:
        if _is_judge(row["who"]) and not row["by_owner"] and row["conversation_id"] in conversations:
            mine = pairs[row["who"]]  # a judge with no turn in common with an owner still gets its line
            if row["turn_id"] in owner:
                mine.append((owner[row["turn_id"]], row["rating"]))
    verdicts: dict[str, list[tuple[str | None, bool, str]]] = defaultdict(list)
    for (judge, cid), (verdict, swapped) in _pairwise(judgments).items():
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
            "raw": None if raw is None else round(raw, 3),
            "kappa": None if kappa is None else round(kappa, 3),
            "method": "cohen",
            "verdicts": len(decided),
            "verdicts_agree": sum(v == human for v, _, human in decided),
            "swap_ties": sum(s for _, s, _ in decided),
            "unparsable": unparsable[judge],
        }
    return result


# -- the report ----------------------------------------------------------------------------------------------
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


def _purpose(conversation: sqlite3.Row) -> str:
    # sqlite3.Row: `in` looks at the values, keys() at the columns; a database from before purposes: all arena
    return conversation["purpose"] if "purpose" in conversation.keys() else "arena"  # noqa: SIM118


def _verdicts_of(some: dict[str, sqlite3.Row], every: dict[str, sqlite3.Row], a_model: str | None):
    """``_verdicts`` of a subset: a model judged only outside it has an empty tally here, not an error."""
    if a_model is not None and not _judges(some, a_model) and _judges(every, a_model):
        return _empty_verdicts(a_model), []
    return _verdicts(some, a_model)


def _judges(conversations: dict[str, sqlite3.Row], model: str) -> bool:
    return any(c["verdict"] and model in (c["model_a"], c["model_b"]) for c in conversations.values())


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
        shares = _shares(row["rating"] for row in mine)
        fails = sum(row["rating"] == "fail" for row in mine)
        intervals = _bootstrap(list(per_conversation.values()), resamples, seed)
        models[model] = {
            **shares,
            "excellent_ci": intervals["excellent"],
            "fail_ci": intervals["fail"],
            "fails": fails,
            "fails_per_turns": f"{fails} in {shares['turns']}",
            "conversations": len(per_conversation),
            "by_turn": {str(index): _shares(by_turn[index]) for index in sorted(by_turn)},
        }
    return models


def build_report(db_path: str | Path, a_model: str | None = None, resamples: int = 2000, seed: int = 0) -> dict:
    """Everything the summary, the figure and ``--json`` show, as one JSON-ready dict."""
    if resamples < 1:
        raise ReportError(f"resamples must be at least 1, got {resamples}")
    conversations, rated, verdict_by, decodings, history, judgments = _read_all(db_path)

    # Group the current ratings by turn slot: (conversation, side, turn index) -> attempt -> rater -> rating.
    slots: dict[tuple[str, str, int], dict[int, dict[str, sqlite3.Row]]] = defaultdict(lambda: defaultdict(dict))
    for row in rated:
        slots[row["conversation_id"], row["side"], row["turn_index"]][row["attempt"]][row["who"]] = row

    # The counted rating of each slot: the latest attempt its conversation's own rater rated.
    counted: list[sqlite3.Row] = []
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
        people = {a: {w: r for w, r in by.items() if not _is_judge(w)} for a, by in attempts.items()}
        people = {a: by for a, by in people.items() if by}
        latest = people[max(people)] if people else {}
        if len(latest) >= 2:
            agreement_items.append(Counter(row["rating"] for row in latest.values()))
            agreement_raters.update(row["rater"] for row in latest.values())

    # Blind judgments: an owner's rating counts as it stood when the verdict showed the names. The store refuses
    # later changes; a database from before it did may hold some, which are counted here and set aside.
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
    counted = before

    # Only blind judgments make the comparison (the paper's protocol); conversations rated with the names shown
    # (--no-blind) are summed up apart and count toward nothing else.
    # Conversations of other purposes (a judge's autoplay, epoch comparisons) are not a person's arena ratings.
    every, counted_every = conversations, counted
    arena_ids = {cid for cid, conv in conversations.items() if _purpose(conv) == "arena"}
    conversations = {cid: conv for cid, conv in conversations.items() if cid in arena_ids}
    counted = [row for row in counted if row["conversation_id"] in arena_ids]
    blind_ids = {cid for cid, conv in conversations.items() if conv["blind"]}
    counted_blind = [row for row in counted if row["conversation_id"] in blind_ids]
    counted_open = [row for row in counted if row["conversation_id"] not in blind_ids]
    models = _models(counted_blind, resamples, seed)

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

    raw, kappa = fleiss_kappa(agreement_items)
    blind_conversations = {k: c for k, c in conversations.items() if k in blind_ids}
    open_conversations = {k: c for k, c in conversations.items() if k not in blind_ids}
    verdicts, verdict_pairs = _verdicts_of(blind_conversations, conversations, a_model)
    unblinded = {
        "conversations": len({row["conversation_id"] for row in counted_open}),
        "turns": len(counted_open),
        "models": _models(counted_open, resamples, seed),
        "verdicts": _verdicts_of(open_conversations, conversations, a_model)[0],
    }
    automatic = _automatic(every, counted_every, judgments, a_model, resamples, seed)
    return {
        "db": str(db_path),
        "counting": "each (conversation, side, turn) of a blind conversation once: its latest attempt rated by the"
        " conversation's own rater, as rated before the verdict showed the names (unblinded ones: apart)",
        "after_reveal": after_reveal,
        "bootstrap": {"resamples": resamples, "seed": seed, "unit": "conversation", "level": 95},
        "conversations": len({row["conversation_id"] for row in counted_blind}),
        "turns": len(counted_blind),
        "models": models,
        "verdicts": verdicts,
        "verdict_pairs": verdict_pairs,
        "comparison": _comparison(counted_blind, verdicts, resamples, seed),
        "unblinded": unblinded,
        "automatic": automatic,
        "raters": {name: raters[name] for name in sorted(raters)},
        "agreement": {
            "turns": len(agreement_items),
            "raters": len(agreement_raters),
            "raw": None if raw is None else round(raw, 3),
            "kappa": None if kappa is None else round(kappa, 3),
            "method": "fleiss",
            "judges": _judge_agreement(rated, counted, judgments, conversations),
        },
        "decoding_mismatch": _decoding_mismatch(decodings),
        "paper": PAPER,
    }


def _automatic(every: dict, counted: list[dict], judgments: list, a_model: str | None, resamples: int, seed: int):
    """The autoplay conversations, played and judged by a model: the same shares and verdicts, counted apart."""
    ids = {cid for cid, conv in every.items() if _purpose(conv) == "autoplay"}
    played = {cid: every[cid] for cid in ids}
    rows = [row for row in counted if row["conversation_id"] in ids]
    swapped = [
        cid
        for (judge, cid), (_, swap) in _pairwise(judgments).items()
        if swap and cid in ids and judge == every[cid]["rater"]
    ]
    return {
        "conversations": len(ids),
        "turns": len(rows),
        "judges": sorted({conv["rater"] for conv in played.values() if conv["rater"]}),
        "models": _models(rows, resamples, seed),
        "verdicts": _verdicts_of(played, every, a_model)[0],
        "swap_ties": len(swapped),
        "unparsable": sum(row["parsed"] is None and row["conversation_id"] in ids for row in judgments),
    }


# -- Markdown ------------------------------------------------------------------------------------------------
def _cell(text: object) -> str:
    """Names come from raters and model folders: keep a stray pipe or newline from breaking the table."""
    return str(text).replace("|", "\\|").replace("\n", " ") or "(unnamed)"


def _ci(interval: list[float] | None) -> str:
    return f" ({interval[0]:.1f}–{interval[1]:.1f})" if interval else ""


def _setting(setting: dict) -> str:
    text = (
        f"temperature {setting['temperature']}, top-p {setting['top_p']}, penalty {setting['repetition_penalty']}"
        f" over {setting['penalty_scope'] or 'an unrecorded scope'}, at most {setting['max_new_tokens']} tokens"
    )
    return text + (f", may ignore {', '.join(setting['may_ignore'])}" if setting["may_ignore"] else "")


def _model_rows(models: dict, intervals: bool = True) -> list[str]:
    """One Figure 7 table row per model: conversations, shares (with their intervals), fails."""

    def ci(interval: list[float] | None) -> str:
        return _ci(interval) if intervals else ""

    return [
        f"| {_cell(name)} | {m['conversations']} | {m['excellent']:.1f} %{ci(m['excellent_ci'])} "
        f"| {m['pass']:.1f} % | {m['fail']:.1f} %{ci(m['fail_ci'])} | {m['fails_per_turns']} |"
        for name, m in models.items()
    ]


def markdown(report: dict) -> str:
    """A readable summary: Figure 7 beside the paper's bars, verdicts, turn depth, raters, agreement."""
    paper = report["paper"]
    lines = ["# LIMA multi-turn arena: report", ""]
    if report["turns"]:
        lines += [
            f"{report['conversations']} blind conversations, {report['turns']} rated turns. Each turn counts once: its "
            "latest attempt rated by the conversation's own rater. In brackets: 95 % bootstrap intervals over "
            f"conversations ({report['bootstrap']['resamples']} resamples, seed {report['bootstrap']['seed']}).",
        ]
    elif report["unblinded"]["turns"]:
        lines += ["No blind ratings yet (unblinded ones are summed up apart, below). The paper's bars:"]
    elif report["automatic"]["conversations"]:
        lines += [
            "No ratings by people yet (a model judge's automatic ones are summed up apart, below). The paper's bars:"
        ]
    else:
        lines += ["No ratings yet: rate some turns in the arena, then run the report again. The paper's bars:"]
    lines += [
        "",
        "## Turn ratings (the paper's Figure 7)",
        "",
        "| model | conversations | excellent | pass | fail | fails |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += _model_rows(report["models"])
    for key, label in PAPER_BARS.items():
        bar = paper[key]
        lines.append(
            f"| {label} | {paper['verdicts']['of']} | {bar['excellent']:.1f} % | {bar['pass']:.1f} % "
            f"| {bar['fail']:.1f} % | {bar['fails_per_turns']} |"
        )

    lines += ["", "## Verdicts", ""]
    v = report["verdicts"]
    if v["conversations"]:
        lines.append(
            f"{_cell(v['a_model'])} better in {v['wins']}, {_cell(v['b_model'])} better in {v['losses']}, "
            f"tied in {v['ties']} (of {v['conversations']} judged conversations)."
        )
        others = [p for p in report["verdict_pairs"] if p != v]
        for p in others:
            lines.append(
                f"- also {_cell(p['a_model'])} vs {_cell(p['b_model'])}: better in {p['wins']}, worse in "
                f"{p['losses']}, tied in {p['ties']} (of {p['conversations']})"
            )
    else:
        lines.append("No verdicts yet.")
    pv = paper["verdicts"]
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

    if report["models"]:
        lines += ["", "## By turn", "", "Multi-turn failures grow with depth: the shares at each turn index.", ""]
        for name, m in report["models"].items():
            lines += [f"**{_cell(name)}**", "", "| turn | turns | excellent | pass | fail |", "|---:" * 5 + "|"]
            for index, t in m["by_turn"].items():
                lines.append(
                    f"| {index} | {t['turns']} | {t['excellent']:.1f} % | {t['pass']:.1f} % | {t['fail']:.1f} % |"
                )
            lines.append("")
        lines.pop()

    u = report["unblinded"]
    if u["turns"]:
        lines += [
            "",
            "## Unblinded conversations (not counted above)",
            "",
            f"{u['conversations']} conversations, {u['turns']} rated turns, rated with the names shown "
            "(`--no-blind`): they count toward nothing above.",
            "",
            "| model | conversations | excellent | pass | fail | fails |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += _model_rows(u["models"], intervals=False)
        uv = u["verdicts"]
        if uv["conversations"]:
            lines += [
                "",
                f"Verdicts: {_cell(uv['a_model'])} better in {uv['wins']}, {_cell(uv['b_model'])} better in "
                f"{uv['losses']}, tied in {uv['ties']}.",
            ]

    auto = report["automatic"]
    if auto["conversations"]:
        judges = ", ".join(_cell(name) for name in auto["judges"]) or "a model judge"
        lines += [
            "",
            "## Automatic: autoplay, played and judged by a model (not counted above)",
            "",
            f"{auto['conversations']} autoplay conversations, {auto['turns']} turns rated by {judges}: the evaluation "
            "openers played on both sides and every turn and verdict given by a model, each verdict asked in both "
            "orders. Automatic figures, not a person's ratings: they count toward nothing above.",
            "",
            "| model (automatic) | conversations | excellent | pass | fail | fails |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += _model_rows(auto["models"])
        av = auto["verdicts"]
        if av["conversations"]:
            lines += [
                "",
                f"Automatic verdicts: {_cell(av['a_model'])} better in {av['wins']}, {_cell(av['b_model'])} better in "
                f"{av['losses']}, tied in {av['ties']} (of {av['conversations']}; {auto['swap_ties']} of the ties are "
                "the two orders disagreeing).",
            ]
        else:
            lines += ["", "No automatic verdicts yet."]
        if auto["unparsable"]:
            lines += ["", f"{auto['unparsable']} judge answer(s) had no rating or verdict line: stored, not counted."]

    lines += ["", "## Raters", ""]
    if report["raters"]:
        lines += ["| rater | conversations | ratings | verdicts |", "|---|---:|---:|---:|"]
        for name, r in report["raters"].items():
            lines.append(f"| {_cell(name)} | {r['conversations']} | {r['ratings']} | {r['verdicts']} |")
    else:
        lines.append("No raters yet.")

    lines += ["", "## Decoding", ""]
    mixed = report["decoding_mismatch"]
    if mixed:
        lines.append(
            f"{len(mixed)} conversation(s) ran different decoding on their two sides; their verdicts compare the "
            "settings as well as the models:"
        )
        for item in mixed:
            sides = "; ".join(f"{side.upper()}: " + " / ".join(map(_setting, item[side])) for side in ("a", "b"))
            lines.append(f"- `{_cell(item['conversation'])}`: {sides}")
    else:
        lines.append("Both sides of every conversation ran the same decoding.")

    a = report["agreement"]
    lines += ["", "## Agreement", ""]
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
    for name, j in a["judges"].items():
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
        lines.append(line)
    if report["after_reveal"]:
        lines += [
            "",
            f"{report['after_reveal']} rating(s) were changed after their conversation's verdict showed the names "
            "(a database from before verdicts were final): they count as they stood at the verdict.",
        ]
    return "\n".join(lines) + "\n"


# -- the figure ----------------------------------------------------------------------------------------------
def figure(report: dict, path: str | Path) -> Path:
    """Figure 7 redrawn: a stacked horizontal bar per model of ours, then the paper's two bars, as a PNG."""
    # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    bars: list[tuple[str, dict[str, float], bool]] = []
    for name, m in report["models"].items():
        label = f"{name}\n{m['turns']} turns, {m['conversations']} conversations"
        if m["excellent_ci"]:
            label += f"\nCI excellent {m['excellent_ci'][0]:.0f}–{m['excellent_ci'][1]:.0f}"
            label += f", fail {m['fail_ci'][0]:.0f}–{m['fail_ci'][1]:.0f}"
        bars.append((label, m, False))
    for key, label in PAPER_BARS.items():
        turns = report["paper"][key]["fails_per_turns"].split(" in ")[-1]
        bars.append((f"{label}\n{turns} turns", report["paper"][key], True))

    fig = Figure(figsize=(10, 1.4 + 0.9 * len(bars)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    rows = range(len(bars))[::-1]  # ours on top, the paper's at the bottom
    for row, (_label, shares, is_paper) in zip(rows, bars, strict=True):
        style = {"alpha": 0.55, "hatch": "//"} if is_paper else {}
        left = 0.0
        for name in RATINGS:
            width = shares[name]
            ax.barh(row, width, left=left, color=COLORS[name], edgecolor="white", **style)
            if width >= 5:
                ax.text(left + width / 2, row, f"{width:.1f}%", ha="center", va="center", fontsize=9)
            elif width > 0:  # too narrow to hold its label: write it just above the bar
                ax.text(left + width / 2, row + 0.42, f"{width:.1f}%", ha="center", va="bottom", fontsize=7)
            left += width
        if not is_paper and shares.get("excellent_ci"):  # the 95 % intervals, where the segments meet
            ex, (ex_lo, ex_hi) = shares["excellent"], shares["excellent_ci"]
            edge, (fail_lo, fail_hi) = 100 - shares["fail"], shares["fail_ci"]
            for x, low, high in ((ex, ex_lo, ex_hi), (edge, 100 - fail_hi, 100 - fail_lo)):
                ax.errorbar(x, row, xerr=[[x - low], [high - x]], fmt="none", ecolor="black", capsize=4, lw=1)
    ax.set_yticks(list(rows), [label for label, _, _ in bars], fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of rated turns (%)")
    title = "Turn ratings, cf. LIMA Figure 7"
    if not report["models"]:
        unblinded = report.get("unblinded", {}).get("turns", 0)
        title += (
            f" (no blind ratings yet; {unblinded} unblinded turns are reported apart)"
            if unblinded
            else " (no ratings yet: only the paper's bars)"
        )
    ax.set_title(title, pad=24)
    legend = [Patch(color=COLORS[name], label=name) for name in RATINGS]
    legend.append(Patch(facecolor="white", edgecolor="grey", hatch="//", label="paper"))
    ax.legend(handles=legend, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=4, frameon=False, fontsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


# -- exports -------------------------------------------------------------------------------------------------
EXPORT_FIELDS = (
    "conversation_id", "side", "turn_index", "attempt", "model", "rater", "rating", "rated_at",
    "user_text", "assistant_text", "context", "decoding", "verdict", "opener_id",
)  # fmt: skip


def export_rows(db_path: str | Path) -> list[dict]:
    """One row per current rating (every rater, every attempt), with the turn, what the model saw before it, and
    the conversation's verdict: a dataset for studying raters and multi-turn failure."""
    db = connect(db_path)
    try:
        turns = db.execute(
            "SELECT conversation_id, side, turn_index, attempt, user_text, assistant_text, status FROM turns"
            " ORDER BY conversation_id, side, turn_index, attempt"
        ).fetchall()
        rated = db.execute(
            "SELECT t.conversation_id, t.side, t.turn_index, t.attempt, t.model, r.rater, r.rating,"
            " r.updated_at, t.user_text, t.assistant_text, t.decoding, c.verdict, c.opener_id"
            " FROM ratings r JOIN turns t ON t.id = r.turn_id JOIN conversations c ON c.id = t.conversation_id"
            " ORDER BY c.created_at, t.conversation_id, t.side, t.turn_index, t.attempt, r.rater"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise ReportError(f"cannot read {db_path}: {exc}") from None
    finally:
        db.close()
    # What the model saw: each earlier turn's latest attempt; a failed one is left out, as the arena does.
    latest: dict[tuple[str, str], dict[int, sqlite3.Row]] = defaultdict(dict)
    for turn in turns:  # ordered by attempt, so the last one written wins
        latest[turn["conversation_id"], turn["side"]][turn["turn_index"]] = turn
    rows = []
    for r in rated:
        earlier = latest[r["conversation_id"], r["side"]]
        context = []
        for index in sorted(i for i in earlier if i < r["turn_index"]):
            if earlier[index]["status"] == "complete":
                context += [
                    {"role": "user", "content": earlier[index]["user_text"]},
                    {"role": "assistant", "content": earlier[index]["assistant_text"]},
                ]
        row = dict(r)
        row.update(rated_at=row.pop("updated_at"), context=context, decoding=json.loads(row["decoding"] or "{}"))
        rows.append({field: row[field] for field in EXPORT_FIELDS})
    return rows


def export(db_path: str | Path, fmt: str, out: str | Path, push_to_hub: str | None = None) -> Path:
    """Write every rating as JSONL, CSV (context and decoding as JSON in their cells) or a datasets folder."""
    if fmt not in EXPORT_FORMATS:
        raise ReportError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    if push_to_hub and fmt != "hf":
        raise ReportError("--push-to-hub needs --format hf")
    token = os.environ.get("HF_TOKEN")
    if push_to_hub and not token:
        raise ReportError("HF_TOKEN is not set: export a Hub token with write access to push the dataset")
    rows = export_rows(db_path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with out.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        with out.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=EXPORT_FIELDS)
            writer.writeheader()
            for row in rows:
                cells = {**row, "context": json.dumps(row["context"], ensure_ascii=False)}
                writer.writerow({**cells, "decoding": json.dumps(row["decoding"], sort_keys=True)})
    else:
        import datasets

        dataset = datasets.Dataset.from_list(rows)
        dataset.save_to_disk(str(out))
        if push_to_hub:
            try:
                dataset.push_to_hub(push_to_hub, private=True, token=token)
            except Exception as exc:  # no network, a rejected token, a repo we may not write: all one line
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ReportError(f"saved {out}, but pushing it to {push_to_hub} failed: {reason}") from None
    return out


# -- command line --------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise ReportError(f"{message} (see python -m demo.report --help)")


def _report_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m demo.report",
        description="Sum up the ratings database like the paper's Figure 7. "
        "`python -m demo.report export --help` for the data export.",
    )
    parser.add_argument("--db", type=Path, required=True, help="the arena's SQLite ratings database")
    parser.add_argument(
        "--from-mirror",
        metavar="DIR_OR_REPO",
        action="append",
        help="first rebuild --db (a new file) from the event log: a mirror folder of events-*.jsonl files or a"
        " Hub dataset repo (owner/name, with HF_TOKEN); may be given more than once",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--out", type=Path, help="also write figure7.png, summary.md and report.json here")
    parser.add_argument(
        "--a-model", help="the model whose verdict wins are counted (default: the later name, e.g. lima-1030)"
    )
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    return parser


def _export_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m demo.report export", description="Write every rating with its turn and context.")
    parser.add_argument("--db", type=Path, required=True, help="the arena's SQLite ratings database")
    parser.add_argument("--format", required=True, help="jsonl | csv | hf (a datasets folder)")
    parser.add_argument("--out", type=Path, required=True, help="the file (jsonl, csv) or folder (hf) to write")
    parser.add_argument("--push-to-hub", metavar="REPO", help="with --format hf: also push, private, with HF_TOKEN")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["export"]:
            args = _export_parser().parse_args(argv[1:])
            out = export(args.db, args.format, args.out, args.push_to_hub)
            print(f"wrote {out}" + (f" and pushed {args.push_to_hub}" if args.push_to_hub else ""))
            return 0
        args = _report_parser().parse_args(argv)
        if args.from_mirror:
            from demo import mirror, ratings

            try:
                store = ratings.Store(args.db)
            except sqlite3.Error as exc:
                raise ReportError(f"cannot open {args.db}: {exc}") from None
            try:
                summary = mirror.rebuild(args.from_mirror, store, token=os.environ.get("HF_TOKEN"))
            except mirror.MirrorError as exc:
                raise ReportError(str(exc)) from None
            finally:
                store.close()
            print(f"{mirror.describe(summary)} into {args.db}", file=sys.stderr)
        report = build_report(args.db, a_model=args.a_model, resamples=args.resamples, seed=args.seed)
        summary = markdown(report)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            figure(report, args.out / "figure7.png")
            (args.out / "summary.md").write_text(summary, encoding="utf-8")
            (args.out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(json.dumps(report, ensure_ascii=False) if args.json else summary, end="\n" if args.json else "")
        return 0
    except (ReportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
