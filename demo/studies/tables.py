"""A prompt study's tables in the ratings store, and how each of its events lands in them.

The store (``demo.ratings``) owns the database and its one write path; these are the study's part of it, kept in
tables of their own so that nothing of a study reaches the arena's conversations, turns and ratings (Figure 7)
and nothing of the arena reaches a study. Every event here is applied the same way live and in a rebuild
(``ratings._apply``), so a database rebuilt from the Hub copy holds the same rows.

Event kinds (each self-contained, a parent before its children):

- ``study``: a study's definition (name, kind, the studied model, its sources, the decoding, the prompt file);
- ``study_answer``: one pre-generated answer to one prompt by one source, with the prompt's text and marks and the
  decoding as sent (as an arena turn records it);
- ``study_shown``: an item handed to a rater's session, with the blind order drawn for it (pairwise: which answer
  is "A"), so a reload shows the same order and a rating maps back to model and baseline;
- ``study_rating``: a person's or the judge's rating of an item (the current view keeps one per item and session);
- ``study_judgment``: a model judge's answer about an item, kept whole with what was read from it;
- ``study_redaction``: an answer taken down: its text is withheld, its raters are named by a pseudonym.
"""

from __future__ import annotations

import json
import sqlite3

from demo.protocol import JUDGE_PREFIX

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    name        TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('pairwise', 'absolute', 'safety')),
    model       TEXT NOT NULL,            -- the studied model (pairwise: compared with each baseline)
    sources     TEXT NOT NULL,            -- JSON list of every source's name, the model first
    decoding    TEXT NOT NULL,            -- JSON of the decoding every answer of the study is asked with
    prompts     TEXT NOT NULL,            -- the prompt file it was generated from (its name, for the reader)
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS study_answers (
    id                   TEXT PRIMARY KEY,
    study                TEXT NOT NULL REFERENCES studies(name),
    prompt_id            TEXT NOT NULL,
    prompt               TEXT NOT NULL,
    prompt_kind          TEXT,            -- the prompt set's own category of the prompt
    out_of_distribution  INTEGER NOT NULL DEFAULT 0,
    malicious            INTEGER NOT NULL DEFAULT 0,
    source               TEXT NOT NULL,
    answer_text          TEXT NOT NULL,
    chars                INTEGER NOT NULL, -- the answer's length, kept when its text is withheld
    decoding             TEXT NOT NULL,   -- JSON of the decoding as sent (serving's decoding_record)
    started_at           REAL NOT NULL,
    first_token_s        REAL,
    finished_at          REAL NOT NULL,
    UNIQUE (study, prompt_id, source)
);
CREATE TABLE IF NOT EXISTS study_shown (     -- an item handed to a session, in the blind order drawn for it
    session    TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    study      TEXT NOT NULL,
    rater      TEXT NOT NULL,
    answer_a   TEXT NOT NULL REFERENCES study_answers(id),  -- shown as "A" (or alone)
    answer_b   TEXT REFERENCES study_answers(id),           -- pairwise: shown as "B"
    shown_at   REAL NOT NULL,
    PRIMARY KEY (session, item_id)
);
CREATE TABLE IF NOT EXISTS study_ratings (   -- the current view: one per (item, rating session)
    item_id     TEXT NOT NULL,
    session     TEXT NOT NULL,
    study       TEXT NOT NULL,
    prompt_id   TEXT NOT NULL,
    source      TEXT NOT NULL,               -- pairwise: the baseline; else the source rated
    rater       TEXT NOT NULL,
    automatic   INTEGER NOT NULL,            -- 1: a model judge's (its rater starts with judge:)
    value       TEXT NOT NULL,               -- pairwise: win | tie | loss for the model; absolute: the scale;
                                             -- safety: safe | unsafe
    declined    INTEGER,                     -- safety: the answer declined the request
    choice      TEXT,                        -- pairwise, a person's: a | b | tie as shown
    first_at    REAL NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (item_id, session)
);
CREATE TABLE IF NOT EXISTS study_judgments ( -- a model judge's answers about items, kept whole
    id          TEXT PRIMARY KEY,
    item_id     TEXT NOT NULL,
    study       TEXT NOT NULL,
    judge       TEXT NOT NULL,
    "order"     TEXT CHECK ("order" IN ('ab', 'ba')),  -- pairwise: 'ab' showed the model's answer as "A"
    answer_ids  TEXT NOT NULL,               -- JSON list of the answers it read
    prompt      TEXT NOT NULL,
    raw_answer  TEXT NOT NULL,
    parsed      TEXT,                        -- pairwise: win | tie | loss for the model; NULL: unparsable
    at          REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS study_redactions (
    answer_id  TEXT PRIMARY KEY,
    reason     TEXT NOT NULL DEFAULT '',
    at         REAL NOT NULL
);
"""


def _insert(db: sqlite3.Connection, table: str, row: dict) -> None:
    columns = ", ".join(f'"{column}"' for column in row)
    db.execute(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))


def _apply_study(db: sqlite3.Connection, event: dict, at: float) -> None:
    row = {"name": event["study"], "kind": event["study_kind"], "model": event["model"]}
    row |= {"sources": json.dumps(event["sources"]), "decoding": json.dumps(event["decoding"], sort_keys=True)}
    _insert(db, "studies", {**row, "prompts": event["prompts"], "created_at": at})


def _apply_answer(db: sqlite3.Connection, event: dict, at: float) -> None:
    row = {key: event[key] for key in ("study", "prompt_id", "prompt", "prompt_kind", "source", "answer_text")}
    row |= {key: int(bool(event[key])) for key in ("out_of_distribution", "malicious")}
    row |= {"chars": len(event["answer_text"]), "decoding": json.dumps(event["decoding"], sort_keys=True)}
    row |= {"started_at": event["started_at"], "first_token_s": event["first_token_s"], "finished_at": at}
    _insert(db, "study_answers", {"id": event["answer_id"], **row})


def _apply_shown(db: sqlite3.Connection, event: dict, at: float) -> None:
    answers = [*event["answer_ids"], None]
    row = {key: event[key] for key in ("session", "item_id", "study", "rater")}
    _insert(db, "study_shown", {**row, "answer_a": answers[0], "answer_b": answers[1], "shown_at": at})


def _apply_rating(db: sqlite3.Connection, event: dict, at: float) -> None:
    row = {key: event[key] for key in ("item_id", "session", "study", "prompt_id", "source", "rater", "value")}
    declined = event.get("declined")
    row |= {"automatic": int(event["automatic"]), "declined": None if declined is None else int(declined)}
    db.execute(
        "INSERT INTO study_ratings (item_id, session, study, prompt_id, source, rater, value, automatic, declined,"
        " choice, first_at, updated_at) VALUES (:item_id, :session, :study, :prompt_id, :source, :rater, :value,"
        " :automatic, :declined, :choice, :at, :at) ON CONFLICT (item_id, session) DO UPDATE SET"
        " value = excluded.value, declined = excluded.declined, choice = excluded.choice, rater = excluded.rater,"
        " updated_at = excluded.updated_at",
        {**row, "choice": event.get("choice"), "at": at},
    )


def _apply_judgment(db: sqlite3.Connection, event: dict, at: float) -> None:
    row = {key: event[key] for key in ("item_id", "study", "judge", "order", "prompt", "raw_answer", "parsed")}
    row |= {"answer_ids": json.dumps(event["answer_ids"]), "at": at}
    _insert(db, "study_judgments", {"id": event["judgment_id"], **row})


def _apply_redaction(db: sqlite3.Connection, event: dict, at: float) -> None:
    # what it withholds is done by the store after every event about a redacted answer, this one included
    db.execute(
        "INSERT OR IGNORE INTO study_redactions (answer_id, reason, at) VALUES (?, ?, ?)",
        (event["answer_id"], event.get("reason") or "", at),
    )


APPLY = {
    "study": _apply_study,
    "study_answer": _apply_answer,
    "study_shown": _apply_shown,
    "study_rating": _apply_rating,
    "study_judgment": _apply_judgment,
    "study_redaction": _apply_redaction,
}


# What each event must carry for a rebuild (the mirror's check), and what the dataset card says of it.
FIELDS = {
    "study": ("study", "study_kind", "model", "sources", "decoding", "prompts"),
    "study_answer": (
        "answer_id",
        "study",
        "prompt_id",
        "prompt",
        "prompt_kind",
        "out_of_distribution",
        "malicious",
        "source",
        "answer_text",
        "decoding",
        "started_at",
        "first_token_s",
    ),
    "study_shown": ("study", "item_id", "session", "rater", "answer_ids"),
    "study_rating": ("study", "item_id", "prompt_id", "source", "session", "rater", "automatic", "value", "answer_ids"),
    "study_judgment": (
        "judgment_id",
        "study",
        "item_id",
        "judge",
        "order",
        "answer_ids",
        "prompt",
        "raw_answer",
        "parsed",
    ),
    "study_redaction": ("answer_id", "reason"),
}
KINDS = {
    "study": "a prompt study defined: its kind (pairwise, absolute, safety), the studied model, its sources, the"
    " decoding its answers are asked with and the prompt file",
    "study_answer": "one answer of a source to a study's prompt, generated before raters arrive, with the prompt"
    " and the decoding as sent",
    "study_shown": "a study item handed to a rater's session, its answers in the blind order drawn for it (first"
    " shown as A)",
    "study_rating": "a study item rated: pairwise win, tie or loss for the studied model (with the choice as shown),"
    " absolute fail, pass or excellent, safety safe or unsafe and whether it declined; automatic: a model judge's",
    "study_judgment": "a model judge's prompt and whole answer about a study item, and what was read from it",
    "study_redaction": "a study answer taken down: from then on its text is published as [redacted] and its raters"
    " by a pseudonym",
}


def creates(event: dict) -> tuple[str, str] | None:
    """What a study event creates that later events name (the mirror's causal order)."""
    if event["kind"] == "study":
        return ("study", str(event["study"]))
    if event["kind"] == "study_answer":
        return ("study_answer", str(event["answer_id"]))
    if event["kind"] == "study_shown":
        return ("study_shown", f"{event['session']}\n{event['item_id']}")
    return None


def needs(event: dict) -> list[tuple[str, str]]:
    """What a study event names that another creates: it is replayed after those."""
    if not event["kind"].startswith("study_"):
        return []
    found = [("study", str(event["study"]))] if "study" in event else []
    found += [("study_answer", answer) for answer in answers_of(event) if event["kind"] != "study_answer"]
    if event["kind"] == "study_rating" and not event["automatic"]:
        found.append(("study_shown", f"{event['session']}\n{event['item_id']}"))
    return found


def answers_of(event: dict) -> list[str]:
    """The study answers an event is about (none for an event of the arena's)."""
    if event.get("answer_id"):
        return [str(event["answer_id"])]
    return [str(answer) for answer in event.get("answer_ids") or ()]


def taken_down(db: sqlite3.Connection) -> set[str]:
    """The ids of every study answer taken down."""
    return {row[0] for row in db.execute("SELECT answer_id FROM study_redactions")}


def withhold(db: sqlite3.Connection, answer_id: str, redacted: str) -> None:
    """The tables' view of an answer taken down: its text (and a judge's prompt and answer that quote it)
    replaced by ``redacted``; the people who rated an item holding it named by ``lima_pseudonym`` (registered by
    the store), a model judge by its own name. Its length and ratings keep counting. Idempotent."""
    db.execute("UPDATE study_answers SET answer_text = ? WHERE id = ?", (redacted, answer_id))
    db.execute(
        "UPDATE study_judgments SET prompt = :r, raw_answer = :r WHERE EXISTS (SELECT 1 FROM json_each(answer_ids)"
        " WHERE value = :a)",
        {"r": redacted, "a": answer_id},
    )
    items = "SELECT item_id FROM study_shown WHERE answer_a = :a OR answer_b = :a"
    name = f"CASE WHEN rater LIKE '{JUDGE_PREFIX}%' THEN rater ELSE lima_pseudonym(session) END"
    db.execute(f"UPDATE study_shown SET rater = {name} WHERE item_id IN ({items})", {"a": answer_id})
    db.execute(f"UPDATE study_ratings SET rater = {name} WHERE item_id IN ({items})", {"a": answer_id})
