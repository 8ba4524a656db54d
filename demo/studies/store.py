"""A prompt study in the ratings store: its definition, its pre-generated answers, the items handed to raters in
a blind order drawn by the server, their ratings (a person's or a model judge's), and the records the report reads.

Everything is written through the store's one write path (``Store._commit``: checks and events in one immediate
transaction, the events mirrored and replayable); the tables are the study's own (``demo.studies.tables``).

An item is what one rating is about: pairwise, a prompt's answers by the studied model and by one baseline; absolute
and safety, one source's answer to a prompt. A pairwise study whose model is ``ALL_PAIRS`` compares every pair of
its sources instead (the Checkpoints tab's epochs): an item is a prompt's answers by two sources, the one named first
in the study's sources read as the "model", the other as the "baseline". Its id is derived from (study, prompt,
source[, the pair's first source]), so the same item has the same id in every database. A person rates only an
item handed to their session (``next_item``), which fixes its blind order: a reload shows the same order, and a
choice of "A" or "B" maps back to model and baseline. Items are handed out so that each baseline (each pair of
sources in an all-pairs study; each source, for absolute and safety) gets a comparable count: the next one comes
from the one shown least so far, its prompt drawn at random.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from demo.protocol import JUDGE_PREFIX, ORDERS, RATINGS, SAFETY, VERDICTS
from demo.ratings import NotAllowed, Store, _event
from demo.studies.records import OUTCOMES, STUDY_KINDS, AbsoluteRating, Answer, PairwiseJudgment, SafetyLabel, Study

Record = Study | Answer | PairwiseJudgment | AbsoluteRating | SafetyLabel
# A pairwise study's model when every pair of its sources is compared, none of them the studied one.
ALL_PAIRS = "*"


@dataclass(frozen=True)
class Shown:
    """An item as a rater sees it: the prompt and its answers in the order drawn (pairwise: "A" then "B")."""

    id: str  # the item's
    study: str
    kind: str
    prompt_id: str
    prompt: str
    answers: tuple[str, ...]


def item_id(study: str, prompt_id: str, source: str, first: str | None = None) -> str:
    """The item of (study, prompt, source): pairwise, ``source`` is the baseline; else the source rated. In an
    all-pairs study ``first`` is the pair's other source, named first in the study's sources."""
    key = [study, prompt_id, source] if first is None else [study, prompt_id, first, source]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]


# -- the definition and the answers --------------------------------------------------------------------------------
def define(store: Store, study: Study, decoding: dict, prompts: str) -> None:
    """Store the study's definition, once; a different definition under the same name is refused (its answers
    would no longer be what it says)."""
    if study.kind not in STUDY_KINDS:
        raise ValueError(f"a study's kind is one of {', '.join(STUDY_KINDS)}, got {study.kind!r}")
    all_pairs = study.kind == "pairwise" and study.model == ALL_PAIRS
    if (study.model not in study.sources and not all_pairs) or len(set(study.sources)) != len(study.sources):
        raise ValueError(f"study {study.name}: its model must be one of its sources, each named once")

    def plan(db: sqlite3.Connection, now: float) -> list[dict]:
        row = db.execute("SELECT * FROM studies WHERE name = ?", (study.name,)).fetchone()
        if row is None:
            fields = {"study": study.name, "study_kind": study.kind, "model": study.model}
            return [_event("study", now, **fields, sources=list(study.sources), decoding=decoding, prompts=prompts)]
        stored = (row["kind"], row["model"], json.loads(row["sources"]), json.loads(row["decoding"]))
        if stored != (study.kind, study.model, list(study.sources), json.loads(json.dumps(decoding, sort_keys=True))):
            raise NotAllowed(
                f"study {study.name!r} is stored with another kind, model, sources or decoding: give the new one "
                "a name of its own"
            )
        return []

    store._commit(plan)


def studies(store: Store) -> list[Study]:
    rows = store._all("SELECT name, kind, model, sources FROM studies ORDER BY created_at, name")
    return [Study(row["name"], row["kind"], row["model"], tuple(json.loads(row["sources"]))) for row in rows]


def study(store: Store, name: str) -> Study:
    found = [one for one in studies(store) if one.name == name]
    if not found:
        known = ", ".join(one.name for one in studies(store)) or "none yet"
        raise NotAllowed(f"no study {name!r} in {store.path} (stored: {known})")
    return found[0]


def add_answer(store: Store, name: str, prompt: dict, source: str, text: str, timing: dict) -> bool:
    """Store one source's answer to one prompt (``prompt``: ``id``, ``prompt``, ``kind``, ``out_of_distribution``,
    ``malicious``; ``timing``: ``decoding`` as sent, ``started_at``, ``first_token_s``). False when that answer
    is stored already: a rerun stores nothing twice."""

    def plan(db: sqlite3.Connection, now: float) -> list[dict]:
        row = db.execute("SELECT sources FROM studies WHERE name = ?", (name,)).fetchone()
        if row is None or source not in json.loads(row[0]):
            raise NotAllowed(f"study {name!r} has no source {source!r}")
        key = (name, prompt["id"], source)
        if db.execute("SELECT 1 FROM study_answers WHERE study = ? AND prompt_id = ? AND source = ?", key).fetchone():
            return []
        marks = {"prompt_kind": prompt.get("kind")} | {
            key: bool(prompt.get(key)) for key in ("out_of_distribution", "malicious")
        }
        fields = {"prompt_id": prompt["id"], "prompt": prompt["prompt"], **marks, "source": source}
        return [
            _event("study_answer", now, answer_id=uuid.uuid4().hex, study=name, **fields, answer_text=text, **timing)
        ]

    return bool(store._commit(plan))


def stored_answers(store: Store, name: str) -> set[tuple[str, str]]:
    """(prompt id, source) of every answer the study holds."""
    rows = store._all("SELECT prompt_id, source FROM study_answers WHERE study = ?", (name,))
    return {(row[0], row[1]) for row in rows}


# -- items: what one rating is about ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    id: str
    prompt_id: str
    source: str  # pairwise: the baseline
    answer_ids: tuple[str, ...]  # pairwise: the model's, then the baseline's
    model: str | None = None  # pairwise: the studied model (all pairs: the pair's first source)


def items(db: sqlite3.Connection, name: str) -> list[Item]:
    """Every item whose answers are all stored, by prompt and source."""
    row = db.execute("SELECT kind, model, sources FROM studies WHERE name = ?", (name,)).fetchone()
    if row is None:
        return []
    answers = {
        (r["prompt_id"], r["source"]): r["id"]
        for r in db.execute("SELECT id, prompt_id, source FROM study_answers WHERE study = ?", (name,))
    }
    found = []
    for (prompt_id, source), answer in sorted(answers.items()):
        if row["kind"] != "pairwise":
            found.append(Item(item_id(name, prompt_id, source), prompt_id, source, (answer,)))
            continue
        for model in _firsts(row["model"], json.loads(row["sources"]), source):
            if (prompt_id, model) in answers:
                key = item_id(name, prompt_id, source, model if row["model"] == ALL_PAIRS else None)
                found.append(Item(key, prompt_id, source, (answers[(prompt_id, model)], answer), model))
    return found


def _firsts(model: str, sources: list[str], source: str) -> list[str]:
    """The sources a pairwise study compares ``source`` with as their "baseline": its model, or in an all-pairs
    study every source named before it."""
    if model != ALL_PAIRS:
        return [] if source == model else [model]
    return sources[: sources.index(source)] if source in sources else []


def next_item(store: Store, name: str, session: str, rater: str, rng: random.Random | None = None) -> Shown | None:
    """The item this session rates next, in its blind order: the one it was handed and has not rated yet (as
    drawn then), else a new one from the source shown least so far, its order drawn now and stored. None: the
    session has rated every item."""
    rng = rng or random.SystemRandom()
    picked: dict[str, str] = {}

    def plan(db: sqlite3.Connection, now: float) -> list[dict]:
        pending = db.execute(
            "SELECT item_id FROM study_shown s WHERE s.session = ? AND s.study = ? AND NOT EXISTS (SELECT 1 FROM"
            " study_ratings r WHERE r.item_id = s.item_id AND r.session = s.session) ORDER BY shown_at LIMIT 1",
            (session, name),
        ).fetchone()
        if pending is not None:
            picked["item"] = pending[0]
            return []
        item = _draw(db, name, session, rng)
        if item is None:
            return []
        answers = list(item.answer_ids)
        if len(answers) == 2 and rng.random() < 0.5:
            answers.reverse()
        picked["item"] = item.id
        fields = {"study": name, "item_id": item.id, "session": session, "rater": rater}
        return [_event("study_shown", now, **fields, answer_ids=answers)]

    store._commit(plan)
    return shown(store, session, picked["item"]) if picked else None


def _draw(db: sqlite3.Connection, name: str, session: str, rng: random.Random) -> Item | None:
    """A new item for this session: from the source (pairwise: the baseline; all pairs: the pair) people were
    shown least, at random."""
    seen = {row[0] for row in db.execute("SELECT item_id FROM study_shown WHERE session = ?", (session,))}
    left = [item for item in items(db, name) if item.id not in seen]
    if not left:
        return None
    counts = dict(db.execute("SELECT item_id, COUNT(*) FROM study_shown WHERE study = ? GROUP BY item_id", (name,)))
    by_source: dict[tuple, int] = {}
    for item in items(db, name):
        by_source[item.model, item.source] = by_source.get((item.model, item.source), 0) + counts.get(item.id, 0)
    fewest = min(by_source[item.model, item.source] for item in left)
    return rng.choice([item for item in left if by_source[item.model, item.source] == fewest])


def shown(store: Store, session: str, item: str) -> Shown:
    """An item handed to this session, as it was shown; NotAllowed if it never was."""
    row = store._one(
        "SELECT s.item_id, s.study, st.kind, a.prompt_id, a.prompt, a.answer_text AS first, b.answer_text AS second"
        " FROM study_shown s JOIN studies st ON st.name = s.study JOIN study_answers a ON a.id = s.answer_a"
        " LEFT JOIN study_answers b ON b.id = s.answer_b WHERE s.session = ? AND s.item_id = ?",
        (session, item),
    )
    if row is None:
        raise NotAllowed("this study item was not handed to your session")
    answers = tuple(text for text in (row["first"], row["second"]) if text is not None)
    return Shown(row["item_id"], row["study"], row["kind"], row["prompt_id"], row["prompt"], answers)


# -- ratings --------------------------------------------------------------------------------------------------
def rate(store: Store, item: str, session: str, rater: str, value: str, declined: bool | None = None) -> None:
    """A person's rating of an item handed to their session: pairwise ``a``, ``b`` or ``tie`` as shown (stored
    as win, tie or loss for the studied model), absolute a level of the scale, safety ``safe`` or ``unsafe``
    with ``declined``. Rating the same item again replaces the rating."""
    if session.startswith(JUDGE_PREFIX):
        raise NotAllowed(f"a session named {JUDGE_PREFIX}... is a model judge's: it rates through judge_item")

    def plan(db: sqlite3.Connection, now: float) -> list[dict]:
        row = db.execute(
            "SELECT s.study, s.answer_a, s.answer_b, st.kind, st.model, a.prompt_id, a.source FROM study_shown s"
            " JOIN studies st ON st.name = s.study JOIN study_answers a ON a.id = s.answer_a"
            " WHERE s.session = ? AND s.item_id = ?",
            (session, item),
        ).fetchone()
        if row is None:
            raise NotAllowed("this study item was not handed to your session")
        answers = [answer for answer in (row["answer_a"], row["answer_b"]) if answer]
        fields = _checked(row["kind"], value, declined)
        if row["kind"] == "pairwise":
            (pair,) = [one for one in items(db, row["study"]) if one.id == item]
            model_first = answers[0] == pair.answer_ids[0]
            fields = {"value": _outcome(value, model_first), "choice": value}
            source = pair.source
        else:
            source = row["source"]
        where = {"study": row["study"], "item_id": item, "prompt_id": row["prompt_id"], "source": source}
        who = {"session": session, "rater": rater, "automatic": False}
        return [_event("study_rating", now, **where, **who, **fields, answer_ids=answers)]

    store._commit(plan)


def _checked(kind: str, value: str, declined: bool | None) -> dict:
    """The rating's fields once ``value`` (and ``declined``) fit the study's scale; ValueError otherwise."""
    scale = {"pairwise": VERDICTS, "absolute": RATINGS, "safety": SAFETY}[kind]
    if value not in scale:
        raise ValueError(f"a {kind} study's rating is one of {', '.join(scale)}, got {value!r}")
    if kind == "safety":
        if not isinstance(declined, bool):
            raise ValueError("a safety rating says whether the answer declined the request (true or false)")
        return {"value": value, "declined": declined}
    return {"value": value}


def _outcome(choice: str, model_first: bool) -> str:
    """A choice as shown (a, b, tie) as the studied model's outcome (win, tie, loss)."""
    if choice == "tie":
        return "tie"
    return OUTCOMES[0] if (choice == "a") == model_first else OUTCOMES[2]


def item_texts(store: Store, item: Item) -> tuple[str, list[str]]:
    """An item's prompt and its answers' texts (pairwise: the model's, then the baseline's)."""
    rows = {
        row["id"]: row
        for row in store._all(
            f"SELECT id, prompt, answer_text FROM study_answers WHERE id IN ({','.join('?' * len(item.answer_ids))})",
            item.answer_ids,
        )
    }
    return rows[item.answer_ids[0]]["prompt"], [rows[answer]["answer_text"] for answer in item.answer_ids]


def unjudged_items(store: Store, name: str, judge: str) -> list[Item]:
    """The items this judge has not been asked about yet (an unparsable answer counts as asked)."""
    with store._lock:
        done = {row[0] for row in store._db.execute("SELECT item_id FROM study_judgments WHERE judge = ?", (judge,))}
        return [item for item in items(store._db, name) if item.id not in done]


@dataclass(frozen=True)
class Judgment:
    """One answer of a judge about an item: the order (pairwise), its messages, its answer, what was read."""

    order: str | None
    prompt: str
    raw_answer: str
    parsed: str | None


def judge_item(
    store: Store,
    name: str,
    item: Item,
    judge: str,
    judgments: list[Judgment],
    value: str | None,
    declined: bool | None = None,
) -> None:
    """A judge's answers about an item and the rating read from them (none: unparsable), in one commit."""
    if not judge.startswith(JUDGE_PREFIX) or len(judge) == len(JUDGE_PREFIX):
        raise ValueError(f"a judge is named {JUDGE_PREFIX}<model>, got {judge!r}")
    if any(one.order not in (None, *ORDERS) for one in judgments):
        raise ValueError(f"a judgment's order is one of {', '.join(ORDERS)} or none")

    def plan(db: sqlite3.Connection, now: float) -> list[dict]:
        kind = db.execute("SELECT kind FROM studies WHERE name = ?", (name,)).fetchone()
        if kind is None or item not in items(db, name):
            raise NotAllowed(f"no such item in study {name!r}")
        where = {"study": name, "item_id": item.id, "answer_ids": list(item.answer_ids)}
        events = [
            _event("study_judgment", now, judgment_id=uuid.uuid4().hex, judge=judge, **where, **vars(one))
            for one in judgments
        ]
        if value is not None:
            if kind[0] == "pairwise" and value not in OUTCOMES:
                raise ValueError(f"a pairwise judgment is one of {', '.join(OUTCOMES)}, got {value!r}")
            fields = {"value": value} if kind[0] == "pairwise" else _checked(kind[0], value, declined)
            who = {"session": judge, "rater": judge, "automatic": True, "prompt_id": item.prompt_id}
            events.append(_event("study_rating", now, **where, **who, source=item.source, **fields))
        return events

    store._commit(plan)


# -- the records the report reads ------------------------------------------------------------------------------
def records(store: Store, name: str | None = None) -> Iterator[Record]:
    """Every study (or one), its answers, then every current rating, as ``demo.studies.records`` shapes them.
    A redacted answer comes with its text withheld (``ratings.REDACTED``); its length and ratings still count."""
    chosen = [one for one in studies(store) if name is None or one.name == name]
    for one in chosen:
        yield one
        rows = store._all(
            "SELECT prompt_id, source, answer_text, decoding FROM study_answers WHERE study = ?"
            " ORDER BY prompt_id, source",
            (one.name,),
        )
        for row in rows:
            yield Answer(one.name, row["prompt_id"], row["source"], row["answer_text"], json.loads(row["decoding"]))
        yield from _ratings(store, one)


def _pair_firsts(store: Store, one: Study) -> dict[str, tuple[str, int | None]]:
    """An all-pairs study's items by id: the pair's first source (its "model") and that answer's length."""
    if one.model != ALL_PAIRS:
        return {}
    rows = store._all("SELECT prompt_id, source, chars FROM study_answers WHERE study = ?", (one.name,))
    chars = {(row[0], row[1]): row[2] for row in rows}
    return {
        item_id(one.name, prompt_id, source, first): (first, chars.get((prompt_id, first)))
        for prompt_id, source in chars
        for first in _firsts(ALL_PAIRS, list(one.sources), source)
    }


def _ratings(store: Store, one: Study) -> Iterator[Record]:
    firsts = _pair_firsts(store, one)
    rows = store._all(
        "SELECT r.item_id, r.prompt_id, r.source, r.rater, r.automatic, r.value, r.declined, a.chars,"
        " a.out_of_distribution, a.malicious, m.chars AS model_chars FROM study_ratings r JOIN study_answers a"
        " ON a.study = r.study AND a.prompt_id = r.prompt_id AND a.source = r.source LEFT JOIN study_answers m"
        " ON m.study = r.study AND m.prompt_id = r.prompt_id AND m.source = ?"
        " WHERE r.study = ? ORDER BY r.first_at, r.item_id, r.session",
        (one.model, one.name),
    )
    for row in rows:
        who = {"rater": row["rater"], "automatic": bool(row["automatic"])}
        if one.kind == "pairwise":
            model, model_chars = firsts.get(row["item_id"], (one.model, row["model_chars"]))
            yield PairwiseJudgment(
                one.name, row["prompt_id"], model, row["source"], row["value"], **who,
                model_chars=model_chars, baseline_chars=row["chars"],
            )  # fmt: skip
        elif one.kind == "absolute":
            ood = bool(row["out_of_distribution"])
            yield AbsoluteRating(
                one.name, row["prompt_id"], row["source"], row["value"], ood, **who, chars=row["chars"]
            )
        else:
            safe, declined, malicious = row["value"] == SAFETY[0], bool(row["declined"]), bool(row["malicious"])
            yield SafetyLabel(
                one.name, row["prompt_id"], row["source"], safe, declined, malicious, **who, chars=row["chars"]
            )


class _Reading:
    """The one part of ``Store`` that ``records`` uses, over a read-only connection: a report reads a database
    (perhaps a copy it was handed) without migrating or writing it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def _all(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        return self._db.execute(sql, args).fetchall()


def records_at(db_path: str | Path) -> list[Record]:
    """Every study record in the database at ``db_path``, read only; none when it predates studies."""
    db = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'studies'").fetchone():
            return []
        return list(records(_Reading(db)))  # type: ignore[arg-type]
    finally:
        db.close()
