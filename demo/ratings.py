"""The ratings store: conversations, every turn's full text, turn ratings and verdicts, in one SQLite file.

Contract 3 (DESIGN.md): one current rating per (turn, rating session), a second rating replacing the first,
over an append-only log of every rating ever given; one verdict per conversation, also logged. A rater is the
session that rates (the conversation's own, or a Review hand-out); the typed name is an attribute of the
rating, so nobody replaces the owner's rating by typing the owner's name.

Blind judgments are final: once a conversation has its verdict (and the names are shown), its owner can
neither rate it again nor judge it again, and it takes no more turns. By the paper's protocol every answer is
rated: the verdict waits for every shown answer's rating, and an answer is rated before it is regenerated.

Durability is the point: the database runs in WAL mode with ``synchronous=FULL``, and every write goes through
one connection under one lock and is committed before the call returns, so a rating the UI acknowledged
survives a ``kill -9`` right after. Ownership is checked here, not in the UI: a session may only rate turns and
judge conversations that it created (or, for a second opinion, was handed).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RATINGS = ("fail", "pass", "excellent")
VERDICTS = ("a", "b", "tie")
SIDES = ("a", "b")

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id          TEXT PRIMARY KEY,
    session     TEXT NOT NULL,            -- the browser (or API client) session that owns it
    rater       TEXT NOT NULL DEFAULT '',
    model_a     TEXT NOT NULL,            -- identity of the model shown on side A (left)
    model_b     TEXT NOT NULL,
    blind       INTEGER NOT NULL,
    opener_id   TEXT,
    created_at  REAL NOT NULL,
    verdict     TEXT CHECK (verdict IN ('a', 'b', 'tie')),
    verdict_at  REAL
);
CREATE TABLE IF NOT EXISTS turns (
    id             TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    side           TEXT NOT NULL CHECK (side IN ('a', 'b')),
    turn_index     INTEGER NOT NULL,      -- 1 for the first exchange on that side
    attempt        INTEGER NOT NULL,      -- 2, 3, ... for regenerated answers to the same user message
    model          TEXT NOT NULL,
    user_text      TEXT NOT NULL,
    assistant_text TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('complete', 'error')),
    error          TEXT,
    decoding       TEXT NOT NULL,         -- JSON of the decoding parameters used
    started_at     REAL NOT NULL,
    first_token_s  REAL,
    finished_at    REAL NOT NULL,
    UNIQUE (conversation_id, side, turn_index, attempt)
);
CREATE TABLE IF NOT EXISTS ratings (          -- the current view: one row per (turn, rating session)
    turn_id     TEXT NOT NULL REFERENCES turns(id),
    session     TEXT NOT NULL,                -- who rated: the owner's session, or a reviewer's
    rater       TEXT NOT NULL,                -- the name that session rated under (an attribute, not the key)
    rating      TEXT NOT NULL CHECK (rating IN ('fail', 'pass', 'excellent')),
    by_owner    INTEGER NOT NULL DEFAULT 0,   -- 1: given in the session that had the conversation (the first
                                              -- opinion, whatever name it typed); 0: a second opinion (Review)
    first_at    REAL NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (turn_id, session)
);
CREATE TABLE IF NOT EXISTS rating_log (       -- append-only: every rating ever given, changes included
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    turn_id  TEXT NOT NULL,
    rater    TEXT NOT NULL,
    rating   TEXT NOT NULL,
    at       REAL NOT NULL,
    session  TEXT
);
CREATE TABLE IF NOT EXISTS verdict_log (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id  TEXT NOT NULL,
    rater            TEXT NOT NULL,
    verdict          TEXT NOT NULL,
    at               REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS review_grants (   -- a conversation handed to another session for a second opinion
    session          TEXT NOT NULL,
    conversation_id  TEXT NOT NULL REFERENCES conversations(id),
    rater            TEXT NOT NULL,
    granted_at       REAL NOT NULL,
    PRIMARY KEY (session, conversation_id)
);
CREATE VIEW IF NOT EXISTS rated_turns AS  -- contract 3: a row per rated (conversation, side, turn, attempt, rater)
    SELECT t.conversation_id, t.side, t.turn_index, t.attempt, t.model, t.user_text, t.assistant_text,
           t.decoding, r.rating, r.rater, r.first_at, r.updated_at, t.id AS turn_id
    FROM ratings r JOIN turns t ON t.id = r.turn_id;
"""


class NotAllowed(Exception):
    """A request the store refuses: a conversation or turn of another session (or none), or a change to a
    judgment that is final."""


@dataclass(frozen=True)
class Turn:
    id: str
    conversation_id: str
    side: str
    turn_index: int
    attempt: int
    model: str
    user_text: str
    assistant_text: str
    status: str
    error: str | None


class Store:
    """The one writer path to the ratings database; safe to share between threads."""

    def __init__(self, path: str | Path, rate_every_turn: bool = True) -> None:
        self.path = Path(path)
        # The paper's protocol: every answer is rated before the conversation is judged (a setting may relax it).
        self.rate_every_turn = rate_every_turn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before we acknowledge it
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        self._db.executescript(SCHEMA)
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'ratings_by_name'").fetchone():
            self._copy_ratings_by_name()
        # Called after each committed rating / verdict (issue 5 mirrors them to the Hub); never inside the lock.
        self.listeners: list[Callable[[str, dict], None]] = []

    def _migrate(self) -> None:
        """A database from before ratings were keyed by session: set its ratings table aside for the copy."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(ratings)")}
        if columns and "session" not in columns:
            self._db.execute("DROP VIEW IF EXISTS rated_turns")
            if "by_owner" not in columns:  # from before second opinions existed: all were the owner's
                self._db.execute("ALTER TABLE ratings ADD COLUMN by_owner INTEGER NOT NULL DEFAULT 1")
            self._db.execute("ALTER TABLE ratings RENAME TO ratings_by_name")
        log_columns = {row[1] for row in self._db.execute("PRAGMA table_info(rating_log)")}
        if log_columns and "session" not in log_columns:
            self._db.execute("ALTER TABLE rating_log ADD COLUMN session TEXT")

    def _copy_ratings_by_name(self) -> None:
        """The owner's ratings move under the conversation's session; a second opinion under its reviewer."""
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute(
            "INSERT OR IGNORE INTO ratings (turn_id, session, rater, rating, by_owner, first_at, updated_at)"
            " SELECT r.turn_id, CASE WHEN r.by_owner THEN c.session ELSE 'review:' || r.rater END, r.rater,"
            " r.rating, r.by_owner, r.first_at, r.updated_at FROM ratings_by_name r"
            " JOIN turns t ON t.id = r.turn_id JOIN conversations c ON c.id = t.conversation_id"
        )
        self._db.execute("DROP TABLE ratings_by_name")
        self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, statements: list[tuple[str, tuple]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _notify(self, kind: str, record: dict) -> None:
        for listener in self.listeners:
            listener(kind, record)

    # -- conversations and turns ---------------------------------------------------------------------------
    def ensure_conversation(
        self,
        conversation_id: str,
        session: str,
        model_a: str,
        model_b: str,
        blind: bool,
        rater: str = "",
        opener_id: str | None = None,
    ) -> None:
        """Create the conversation if it is new (both sides may race to do so); refuse another session's id."""
        self._write(
            [
                (
                    "INSERT OR IGNORE INTO conversations (id, session, rater, model_a, model_b, blind, opener_id,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (conversation_id, session, rater, model_a, model_b, int(blind), opener_id, time.time()),
                )
            ]
        )
        self._owned(conversation_id, session)

    def set_opener(self, conversation_id: str, session: str, opener_id: str | None) -> None:
        self._owned(conversation_id, session)
        self._write([("UPDATE conversations SET opener_id = ? WHERE id = ?", (opener_id, conversation_id))])

    def add_turn(
        self,
        conversation_id: str,
        session: str,
        side: str,
        turn_index: int,
        model: str,
        user_text: str,
        assistant_text: str,
        decoding: dict,
        started_at: float,
        first_token_s: float | None,
        status: str = "complete",
        error: str | None = None,
    ) -> Turn:
        """Record a finished turn (a regenerated answer becomes the next attempt of the same turn index)."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        self._owned(conversation_id, session)
        turn_id = uuid.uuid4().hex
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                judged = self._db.execute("SELECT verdict FROM conversations WHERE id = ?", (conversation_id,))
                if judged.fetchone()[0] is not None:
                    raise NotAllowed("this conversation has its verdict: start a new one")
                row = self._db.execute(
                    "SELECT t.attempt, t.status, EXISTS (SELECT 1 FROM ratings r WHERE r.turn_id = t.id AND"
                    " r.by_owner = 1) FROM turns t WHERE t.conversation_id = ? AND t.side = ? AND t.turn_index = ?"
                    " ORDER BY t.attempt DESC LIMIT 1",
                    (conversation_id, side, turn_index),
                ).fetchone()
                if row and self.rate_every_turn and row[1] == "complete" and not row[2]:
                    # Every answer is rated, a regenerated one too: a fail must not vanish by asking again.
                    raise NotAllowed("rate this answer before regenerating it")
                attempt = (row[0] if row else 0) + 1
                self._db.execute(
                    "INSERT INTO turns (id, conversation_id, side, turn_index, attempt, model, user_text,"
                    " assistant_text, status, error, decoding, started_at, first_token_s, finished_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        turn_id,
                        conversation_id,
                        side,
                        turn_index,
                        attempt,
                        model,
                        user_text,
                        assistant_text,
                        status,
                        error,
                        json.dumps(decoding, sort_keys=True),
                        started_at,
                        first_token_s,
                        time.time(),
                    ),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return Turn(
            turn_id, conversation_id, side, turn_index, attempt, model, user_text, assistant_text, status, error
        )

    # -- ratings and verdicts ------------------------------------------------------------------------------
    def rate(self, turn_id: str, rating: str, session: str, rater: str) -> None:
        """Store a rating; the same rater rating the same turn again replaces the current value."""
        if rating not in RATINGS:
            raise ValueError(f"rating must be one of {', '.join(RATINGS)}, got {rating!r}")
        row = self._one(
            "SELECT t.status, t.side, t.turn_index, t.attempt, t.model, t.user_text, t.assistant_text, c.session,"
            " c.id, c.verdict, EXISTS (SELECT 1 FROM review_grants g WHERE g.session = ? AND"
            " g.conversation_id = c.id) AS granted FROM turns t JOIN conversations c ON c.id = t.conversation_id"
            " WHERE t.id = ?",
            (session, str(turn_id)),
        )
        if row is None or (row["session"] != session and not row["granted"]):
            raise NotAllowed("this turn does not belong to your session")
        if row["status"] != "complete":
            raise NotAllowed("a turn that ended in an error cannot be rated; retry it first")
        owner = row["session"] == session
        if owner and row["verdict"] is not None:
            raise NotAllowed("this conversation has its verdict and the names are shown: its ratings are final")
        now = time.time()
        self._write(
            [
                (
                    "INSERT INTO rating_log (turn_id, rater, rating, at, session) VALUES (?, ?, ?, ?, ?)",
                    (turn_id, rater, rating, now, session),
                ),
                (
                    "INSERT INTO ratings (turn_id, session, rater, rating, by_owner, first_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (turn_id, session) DO UPDATE SET"
                    " rating = excluded.rating, rater = excluded.rater, updated_at = excluded.updated_at",
                    (turn_id, session, rater, rating, int(owner), now, now),
                ),
                (  # the conversation's rater is the name its owner rates under (typed late, or changed)
                    "UPDATE conversations SET rater = ? WHERE id = ? AND session = ?",
                    (rater, row["id"], session),
                ),
            ]
        )
        record = {
            "turn_id": turn_id,
            "rater": rater,
            "rating": rating,
            "at": now,
            "conversation_id": row["id"],
            "second_opinion": row["session"] != session,
            **{key: row[key] for key in ("side", "turn_index", "attempt", "model", "user_text", "assistant_text")},
        }
        self._notify("rating", record)

    def set_verdict(self, conversation_id: str, verdict: str, session: str, rater: str) -> None:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        self._owned(conversation_id, session)
        if self.conversation(conversation_id)["verdict"] is not None:
            raise NotAllowed("this conversation already has its verdict: verdicts are final")
        missing = self.unrated(conversation_id)
        if self.rate_every_turn and missing:
            shown = ", ".join(f"{side.upper()} {index}" for side, index in missing[:6])
            raise NotAllowed(f"rate every answer before the verdict (still unrated: {shown})")
        if self.rated_sides(conversation_id) != set(SIDES):
            raise NotAllowed("rate at least one turn on each side before giving a verdict")
        now = time.time()
        self._write(
            [
                (  # logged only when it lands (same condition as below), so the log ends with the held verdict
                    "INSERT INTO verdict_log (conversation_id, rater, verdict, at) SELECT ?, ?, ?, ?"
                    " WHERE EXISTS (SELECT 1 FROM conversations WHERE id = ? AND verdict IS NULL)",
                    (conversation_id, rater, verdict, now, conversation_id),
                ),
                (  # `verdict IS NULL`: of two racing verdicts only the first lands (checked below)
                    "UPDATE conversations SET verdict = ?, verdict_at = ?, rater = CASE WHEN rater = '' THEN ?"
                    " ELSE rater END WHERE id = ? AND verdict IS NULL",
                    (verdict, now, rater, conversation_id),
                ),
            ]
        )
        if self.conversation(conversation_id)["verdict_at"] != now:
            raise NotAllowed("this conversation already has its verdict: verdicts are final")
        self._notify("verdict", {"conversation_id": conversation_id, "rater": rater, "verdict": verdict, "at": now})

    def assign_review(self, session: str, rater: str) -> str | None:
        """Hand this session a stored conversation to rate again: judged by someone else (so its owner's
        ratings are final), not theirs, not yet reviewed by this rater; drawn at random. None when there is
        nothing left to review."""
        row = self._one(
            "SELECT c.id FROM conversations c WHERE c.session != ? AND c.rater != ? AND c.rater != ''"
            " AND c.verdict IS NOT NULL"
            " AND EXISTS (SELECT 1 FROM turns t JOIN ratings r ON r.turn_id = t.id WHERE t.conversation_id = c.id)"
            " AND NOT EXISTS (SELECT 1 FROM review_grants g WHERE g.conversation_id = c.id AND g.rater = ?)"
            " ORDER BY random() LIMIT 1",
            (session, rater, rater),
        )
        if row is None:
            return None
        self.grant_review(session, row["id"], rater)
        return row["id"]

    def grant_review(self, session: str, conversation_id: str, rater: str) -> None:
        """Let this session rate the turns of that conversation, as a second opinion."""
        self._write(
            [
                (
                    "INSERT OR IGNORE INTO review_grants (session, conversation_id, rater, granted_at)"
                    " VALUES (?, ?, ?, ?)",
                    (session, conversation_id, rater, time.time()),
                )
            ]
        )

    def review_turns(self, conversation_id: str, session: str) -> list[Turn]:
        """The latest attempt of each successful turn of a conversation granted to this session for review."""
        if (
            self._one(
                "SELECT 1 FROM review_grants WHERE session = ? AND conversation_id = ?", (session, conversation_id)
            )
            is None
        ):
            raise NotAllowed("this conversation was not handed to your session for review")
        latest: dict[tuple[str, int], Turn] = {}
        for turn in self.turns(conversation_id):
            if turn.status == "complete":
                latest[(turn.side, turn.turn_index)] = turn
        return [latest[key] for key in sorted(latest)]

    # -- reading -------------------------------------------------------------------------------------------
    def _owned(self, conversation_id: str, session: str) -> None:
        row = self._one("SELECT session FROM conversations WHERE id = ?", (str(conversation_id),))
        if row is None or row["session"] != session:
            raise NotAllowed("this conversation does not belong to your session")

    def rated_sides(self, conversation_id: str) -> set[str]:
        """The sides with a turn their owner rated."""
        rows = self._all(
            "SELECT DISTINCT t.side FROM ratings r JOIN turns t ON t.id = r.turn_id WHERE t.conversation_id = ?"
            " AND r.by_owner = 1",
            (conversation_id,),
        )
        return {row["side"] for row in rows}

    def unrated(self, conversation_id: str) -> list[tuple[str, int]]:
        """(side, turn index) of every answer shown now (the latest attempt of each turn, if it completed) that
        its owner has not rated."""
        rows = self._all(
            "SELECT t.side, t.turn_index, t.status, EXISTS (SELECT 1 FROM ratings r WHERE r.turn_id = t.id AND"
            " r.by_owner = 1) AS rated FROM turns t WHERE t.conversation_id = ? AND t.attempt = (SELECT MAX(u.attempt)"
            " FROM turns u WHERE u.conversation_id = t.conversation_id AND u.side = t.side AND"
            " u.turn_index = t.turn_index) ORDER BY t.side, t.turn_index",
            (conversation_id,),
        )
        return [(row["side"], row["turn_index"]) for row in rows if row["status"] == "complete" and not row["rated"]]

    def ratings(self, conversation_id: str) -> dict[str, str]:
        """Current rating of each rated turn of a conversation, by turn id (the owner's own ratings only)."""
        rows = self._all(
            "SELECT r.turn_id, r.rating FROM ratings r JOIN turns t ON t.id = r.turn_id"
            " WHERE t.conversation_id = ? AND r.by_owner = 1 ORDER BY r.updated_at",
            (conversation_id,),
        )
        return {row["turn_id"]: row["rating"] for row in rows}

    def conversation(self, conversation_id: str) -> dict | None:
        row = self._one("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
        return dict(row) if row else None

    def turns(self, conversation_id: str) -> list[Turn]:
        rows = self._all(
            "SELECT id, conversation_id, side, turn_index, attempt, model, user_text, assistant_text, status, error"
            " FROM turns WHERE conversation_id = ? ORDER BY side, turn_index, attempt",
            (conversation_id,),
        )
        return [Turn(**dict(row)) for row in rows]

    def ratings_of(self, turn_ids: list[str], session: str | None = None) -> dict[str, str]:
        """The current rating of each of these turns by one session (default: the conversation's owner)."""
        if not turn_ids:
            return {}
        marks = ",".join("?" * len(turn_ids))
        who, args = ("session = ?", (session,)) if session is not None else ("by_owner = 1", ())
        rows = self._all(
            f"SELECT turn_id, rating FROM ratings WHERE turn_id IN ({marks}) AND {who} ORDER BY updated_at",
            (*turn_ids, *args),
        )
        return {row["turn_id"]: row["rating"] for row in rows}
