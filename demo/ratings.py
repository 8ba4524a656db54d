"""The ratings store: conversations, every turn's full text, turn ratings and verdicts, in one SQLite file.

Contract 3 (DESIGN.md): one current rating per (turn, rating session), a second rating replacing the first,
over an append-only log of every rating ever given; one verdict per conversation, also logged. A rater is the
session that rates (the conversation's own, or a Review hand-out); the typed name is an attribute of the
rating, so nobody replaces the owner's rating by typing the owner's name.

Blind judgments are final: once a conversation has its verdict (and the names are shown), its owner can
neither rate it again nor judge it again, and it takes no more turns. By the paper's protocol every answer is
rated: the verdict waits for every shown answer's rating, and an answer is rated before it is regenerated.

A model judge (``demo.judge``) rates in a session of its own, ``judge:<model>``: a second opinion through a review
grant on a person's conversations, the owner of the ones it played itself (``autoplay``). Its answers are kept
whole in ``judgments``, each committed with the rating read from it.

Durability is the point: the database runs in WAL mode with ``synchronous=FULL``, and every write goes through
one connection under one lock and is committed before the call returns, so a rating the UI acknowledged
survives a ``kill -9`` right after. Ownership is checked here, not in the UI: a session may only rate turns and
judge conversations that it created (or, for a second opinion, was handed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from demo import protocol

# Read by the report (``from demo.ratings import JUDGE_PREFIX``); declared once, in ``protocol``.
from demo.protocol import JUDGE_PREFIX, ORDERS, PURPOSES, RATINGS, SIDES, VERDICTS
from demo.studies import tables as study_tables

log = logging.getLogger(__name__)

# The scale's names come from ``protocol`` (a database made before a level was added keeps its old CHECK).
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS conversations (
    id          TEXT PRIMARY KEY,
    session     TEXT NOT NULL,            -- the browser (or API client) session that owns it
    rater       TEXT NOT NULL DEFAULT '',
    model_a     TEXT NOT NULL,            -- identity of the model shown on side A (left)
    model_b     TEXT NOT NULL,
    blind       INTEGER NOT NULL,
    opener_id   TEXT,
    purpose     TEXT NOT NULL DEFAULT 'arena',  -- arena (a rater's), autoplay (a judge's), checkpoints (epochs)
    created_at  REAL NOT NULL,
    verdict     TEXT CHECK (verdict IN ('a', 'b', 'tie')),
    verdict_at  REAL
);
CREATE INDEX IF NOT EXISTS conversations_by_session ON conversations (session);
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
    rating      TEXT NOT NULL CHECK (rating IN ({", ".join(f"'{name}'" for name in RATINGS)})),
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
CREATE TABLE IF NOT EXISTS judgments (      -- a model judge's answers, kept whole beside the rating read from them
    id            TEXT PRIMARY KEY,
    subject_kind  TEXT NOT NULL CHECK (subject_kind IN ('turn', 'conversation')),
    subject_id    TEXT NOT NULL,              -- the turn's id, or the conversation's
    judge         TEXT NOT NULL,              -- judge:<model>
    "order"       TEXT CHECK ("order" IN ('ab', 'ba')),  -- conversations: 'ba' showed side b as "A"; turns: NULL
    prompt        TEXT NOT NULL,              -- exactly what the judge was sent (its messages, as JSON)
    raw_answer    TEXT NOT NULL,
    parsed        TEXT,                       -- the rating, or the verdict in the conversation's own sides (the
                                              -- order undone); NULL: unparsable, never guessed
    at            REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS judgments_by_judge ON judgments (judge, subject_id);
CREATE TABLE IF NOT EXISTS events (          -- every write above, as the self-contained event it applied
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    id    TEXT NOT NULL UNIQUE,
    kind  TEXT NOT NULL,
    at    REAL NOT NULL,
    body  TEXT NOT NULL                       -- the event as JSON (what the Hub mirror pushes)
);
CREATE TABLE IF NOT EXISTS redactions (     -- conversations taken down: their texts and names are withheld
    conversation_id  TEXT PRIMARY KEY,
    reason           TEXT NOT NULL DEFAULT '',
    at               REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS mirror_cursor (   -- how far each mirror folder has copied the events
    folder  TEXT PRIMARY KEY,
    seq     INTEGER NOT NULL
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
        self._db.executescript(SCHEMA + study_tables.SCHEMA)  # an older database gains the study tables here
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'ratings_by_name'").fetchone():
            self._copy_ratings_by_name()
        # Called with (kind, event) for every committed event, outside the lock (the mirror wakes on them).
        self.listeners: list[Callable[[str, dict], None]] = []

    def _migrate(self) -> None:
        """A database from before ratings were keyed by session: set its ratings table aside for the copy."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(ratings)")}
        if columns and "session" not in columns:
            self._db.execute("DROP VIEW IF EXISTS rated_turns")
            if "by_owner" not in columns:  # from before second opinions existed: all were the owner's
                self._db.execute("ALTER TABLE ratings ADD COLUMN by_owner INTEGER NOT NULL DEFAULT 1")
            self._db.execute("ALTER TABLE ratings RENAME TO ratings_by_name")
        if columns and "purpose" not in {row[1] for row in self._db.execute("PRAGMA table_info(conversations)")}:
            self._db.execute("ALTER TABLE conversations ADD COLUMN purpose TEXT NOT NULL DEFAULT 'arena'")
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

    # -- the one write path: events ----------------------------------------------------------------------
    def _commit(self, plan: Callable[[sqlite3.Connection, float], list[dict]]) -> list[dict]:
        """Run ``plan`` (checks, then the events to record) in one immediate transaction; apply and log its
        events, commit, then tell the listeners. The checks and the write see the same state, so a race
        between two requests cannot slip past a check."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                events = plan(self._db, time.time())
                for event in events:
                    self._record(event)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        self._notify(events)
        return events

    def _record(self, event: dict) -> None:
        _apply(self._db, event)
        self._db.execute(
            "INSERT INTO events (id, kind, at, body) VALUES (?, ?, ?, ?)",
            (event["id"], event["kind"], event["at"], json.dumps(event, ensure_ascii=False, sort_keys=True)),
        )

    def replay(self, events: list[dict]) -> int:
        """Apply events recorded elsewhere (a mirror being rebuilt), in the order given, in one transaction;
        an event whose id is already here is skipped. They passed the store's checks when first recorded.
        Returns how many were applied."""
        applied = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for event in events:
                    if self._db.execute("SELECT 1 FROM events WHERE id = ?", (event["id"],)).fetchone():
                        continue
                    self._record(event)
                    applied += 1
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return applied

    def _one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _notify(self, events: list[dict]) -> None:
        """Outside the lock, after the commit: a listener that fails cannot undo or fail a committed write."""
        for event in events:
            for listener in self.listeners:
                try:
                    listener(event["kind"], event)
                except Exception:
                    log.exception(
                        "a ratings listener failed on a %s event (the write itself is committed)", event["kind"]
                    )

    # -- the event log, read back --------------------------------------------------------------------------
    def events_after(self, seq: int, limit: int = 500) -> list[tuple[int, str]]:
        """(seq, JSON) of the logged events after ``seq``, oldest first, as they may be published now: an event
        of a conversation taken down comes without its texts and names (the log itself keeps them)."""
        with self._lock:
            rows = self._db.execute("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
            rows = rows.fetchall()
            hidden = _taken_down_in(self._db)
        if not hidden:
            return [(row["seq"], row["body"]) for row in rows]
        return [(row["seq"], _published(row["body"], hidden)) for row in rows]

    def last_event(self) -> int:
        row = self._one("SELECT COALESCE(MAX(seq), 0) AS seq FROM events")
        return int(row["seq"]) if row else 0

    def mirror_cursor(self, folder: str) -> int | None:
        row = self._one("SELECT seq FROM mirror_cursor WHERE folder = ?", (folder,))
        return None if row is None else int(row["seq"])

    def set_mirror_cursor(self, folder: str, seq: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO mirror_cursor (folder, seq) VALUES (?, ?)"
                " ON CONFLICT (folder) DO UPDATE SET seq = excluded.seq",
                (folder, seq),
            )

    def is_empty(self) -> bool:
        return self._one("SELECT 1 FROM conversations UNION ALL SELECT 1 FROM events LIMIT 1") is None

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
        purpose: str = "arena",
    ) -> None:
        """Create the conversation if it is new (both sides may race to do so); refuse another session's id.
        ``purpose``: ``arena`` (a person's), ``autoplay`` (played and judged by a model), ``checkpoints`` (two
        epochs compared on a dev prompt); only ``arena`` ones make the report's human figures."""
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")

        def plan(db: sqlite3.Connection, now: float) -> list[dict]:
            row = db.execute("SELECT session FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            if row is not None:
                if row[0] != session:
                    raise NotAllowed("this conversation does not belong to your session")
                return []
            return [
                _event(
                    "conversation",
                    now,
                    conversation_id=conversation_id,
                    session=session,
                    rater=rater,
                    model_a=model_a,
                    model_b=model_b,
                    blind=bool(blind),
                    opener_id=opener_id,
                    purpose=purpose,
                )
            ]

        self._commit(plan)

    def set_opener(self, conversation_id: str, session: str, opener_id: str | None) -> None:
        def plan(db: sqlite3.Connection, now: float) -> list[dict]:
            _owned_in(db, conversation_id, session)
            judged = db.execute("SELECT verdict FROM conversations WHERE id = ?", (conversation_id,)).fetchone()[0]
            if judged is not None:  # a verdict is final: nothing of the conversation changes after it
                raise NotAllowed("this conversation has its verdict: it no longer changes")
            return [_event("opener", now, conversation_id=conversation_id, opener_id=opener_id)]

        self._commit(plan)

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

        texts = {"model": model, "user_text": user_text, "assistant_text": assistant_text, "error": error}
        timing = {"decoding": decoding, "started_at": started_at, "first_token_s": first_token_s}

        def plan(db: sqlite3.Connection, now: float) -> list[dict]:
            _owned_in(db, conversation_id, session)
            judged = db.execute("SELECT verdict FROM conversations WHERE id = ?", (conversation_id,))
            row = db.execute(
                "SELECT t.attempt, t.status, EXISTS (SELECT 1 FROM ratings r WHERE r.turn_id = t.id AND"
                " r.by_owner = 1) FROM turns t WHERE t.conversation_id = ? AND t.side = ? AND t.turn_index = ?"
                " ORDER BY t.attempt DESC LIMIT 1",
                (conversation_id, side, turn_index),
            ).fetchone()
            refusal = _turn_refusal(judged.fetchone()[0] is not None, row, self.rate_every_turn)
            if refusal is not None:
                raise NotAllowed(refusal)
            turn = {"conversation_id": conversation_id, "side": side, "turn_index": turn_index, "status": status}
            attempt = (row[0] if row else 0) + 1
            return [_event("turn", now, turn_id=uuid.uuid4().hex, attempt=attempt, **turn, **texts, **timing)]

        (event,) = self._commit(plan)
        return Turn(id=event["turn_id"], **{key: event[key] for key in Turn.__dataclass_fields__ if key != "id"})

    # -- ratings and verdicts ------------------------------------------------------------------------------
    def rate(self, turn_id: str, rating: str, session: str, rater: str) -> None:
        """Store a rating; the same rater rating the same turn again replaces the current value."""
        if rating not in RATINGS:
            raise ValueError(f"rating must be one of {', '.join(RATINGS)}, got {rating!r}")
        self._commit(lambda db, now: _rating_events(db, now, str(turn_id), rating, session, rater))

    def set_verdict(self, conversation_id: str, verdict: str, session: str, rater: str, busy: bool = False) -> None:
        """The conversation's verdict, once ``protocol.verdict_refusal`` allows it; ``busy``: an answer is still
        streaming (the caller knows, the store does not)."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")

        def plan(db: sqlite3.Connection, now: float) -> list[dict]:
            _owned_in(db, conversation_id, session)
            conv = db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            refusal = protocol.verdict_refusal(
                judged=conv["verdict"] is not None,  # of two racing verdicts, the second sees the first here
                unrated=_unrated_in(db, conversation_id),
                rated_sides=_rated_sides_in(db, conversation_id),
                rate_every_turn=self.rate_every_turn,
                busy=busy,
            )
            if refusal is not None:
                raise NotAllowed(refusal)
            winner = "tie" if verdict == "tie" else conv[f"model_{verdict}"]
            return [
                _event(
                    "verdict",
                    now,
                    conversation_id=conversation_id,
                    session=session,
                    rater=rater,
                    verdict=verdict,
                    winner=winner,
                    model_a=conv["model_a"],
                    model_b=conv["model_b"],
                    blind=bool(conv["blind"]),
                )
            ]

        self._commit(plan)

    def assign_review(self, session: str, rater: str) -> str | None:
        """Hand this session a stored conversation to rate again: judged by someone else (so its owner's
        ratings are final), not theirs, not yet reviewed by this rater; drawn at random. None when there is
        nothing left to review."""
        row = self._one(
            "SELECT c.id FROM conversations c WHERE c.session != ? AND c.rater != ? AND c.rater != ''"
            " AND c.verdict IS NOT NULL AND c.purpose = 'arena'"  # people review people's conversations
            " AND EXISTS (SELECT 1 FROM turns t JOIN ratings r ON r.turn_id = t.id WHERE t.conversation_id = c.id)"
            " AND NOT EXISTS (SELECT 1 FROM review_grants g WHERE g.conversation_id = c.id AND g.rater = ?)"
            " AND NOT EXISTS (SELECT 1 FROM redactions x WHERE x.conversation_id = c.id)"  # nothing left to read
            " ORDER BY random() LIMIT 1",
            (session, rater, rater),
        )
        if row is None:
            return None
        self.grant_review(session, row["id"], rater)
        return row["id"]

    def grant_review(self, session: str, conversation_id: str, rater: str) -> None:
        """Let this session rate the turns of that conversation, as a second opinion."""

        def plan(db: sqlite3.Connection, now: float) -> list[dict]:
            granted = db.execute(
                "SELECT 1 FROM review_grants WHERE session = ? AND conversation_id = ?", (session, conversation_id)
            ).fetchone()
            if granted:
                return []
            return [_event("review", now, session=session, conversation_id=conversation_id, rater=rater)]

        self._commit(plan)

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

    # -- takedown ------------------------------------------------------------------------------------------
    def redact(self, conversation_id: str, reason: str = "") -> bool:
        """Take a conversation down: a ``redaction`` event after which its texts (messages, answers, a judge's
        prompt and answer) and its raters' typed names are withheld from the tables, every report and export, and
        every event published from now on. The log keeps the original events (history is not rewritten); its
        ratings keep counting, under a pseudonym. False when it was already taken down.

        The id of a prompt study's answer takes that answer down the same way (a ``study_redaction`` event): its
        text is withheld and the people who rated an item holding it are named by a pseudonym; its length and
        every rating of it keep counting in the study's figures."""

        def plan(db: sqlite3.Connection, now: float) -> list[dict]:
            if db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is None:
                return _study_redaction(db, now, conversation_id, reason, self.path)
            if db.execute("SELECT 1 FROM redactions WHERE conversation_id = ?", (conversation_id,)).fetchone():
                return []
            return [_event("redaction", now, conversation_id=conversation_id, reason=reason)]

        return bool(self._commit(plan))

    def redactions(self) -> dict[str, str]:
        """The conversations taken down, with the reason given, oldest first."""
        rows = self._all("SELECT conversation_id, reason FROM redactions ORDER BY at")
        return {row["conversation_id"]: row["reason"] for row in rows}

    # -- a model judge -------------------------------------------------------------------------------------
    def judge_turn(self, turn_id: str, judge: str, prompt: str, raw_answer: str, parsed: str | None) -> None:
        """A judge's answer about one turn, and the rating read from it (none when unparsable), in one commit:
        a crash never leaves a rating without the answer it came from, nor an answer whose rating was lost.
        The judge rates in its own session (``judge``): the conversation's owner for autoplay, else a second
        opinion through a review grant."""
        if parsed is not None and parsed not in RATINGS:
            raise ValueError(f"a turn's judgment must be one of {', '.join(RATINGS)} or None, got {parsed!r}")

        def plan(db: sqlite3.Connection, now: float) -> list[dict]:
            events = [_judgment_event(db, now, "turn", str(turn_id), judge, None, prompt, raw_answer, parsed)]
            if parsed is not None:
                events += _rating_events(db, now, str(turn_id), parsed, judge, judge)
            return events

        self._commit(plan)

    def record_judgment(
        self, conversation_id: str, judge: str, order: str, prompt: str, raw_answer: str, parsed: str | None
    ) -> None:
        """A judge's pairwise answer about a conversation shown in ``order``; ``parsed`` is in the conversation's
        own sides. A judgment only: it is nobody's verdict."""
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        if parsed is not None and parsed not in VERDICTS:
            raise ValueError(f"a verdict judgment must be one of {', '.join(VERDICTS)} or None, got {parsed!r}")
        self._commit(
            lambda db, now: [
                _judgment_event(db, now, "conversation", conversation_id, judge, order, prompt, raw_answer, parsed)
            ]
        )

    def judgments(self, judge: str | None = None, subject_id: str | None = None) -> list[dict]:
        """Every judgment (of one judge, about one turn or conversation), oldest first."""
        wanted = {"judge": judge, "subject_id": subject_id}
        where = " AND ".join(f"{column} = ?" for column, value in wanted.items() if value is not None)
        args = tuple(value for value in wanted.values() if value is not None)
        sql = "SELECT * FROM judgments" + (f" WHERE {where}" if where else "") + " ORDER BY at, rowid"
        return [dict(row) for row in self._all(sql, args)]

    def unjudged_turns(self, judge: str) -> list[Turn]:
        """What a judge has left to rate: the answer shown now (the latest attempt, if it completed) of every
        turn of every judged arena conversation that this judge has no judgment of yet, oldest first."""
        rows = self._all(
            "SELECT t.id, t.conversation_id, t.side, t.turn_index, t.attempt, t.model, t.user_text,"
            " t.assistant_text, t.status, t.error FROM turns t JOIN conversations c ON c.id = t.conversation_id"
            " WHERE c.purpose = 'arena' AND c.verdict IS NOT NULL AND t.status = 'complete'"
            " AND t.attempt = (SELECT MAX(u.attempt) FROM turns u WHERE u.conversation_id = t.conversation_id"
            " AND u.side = t.side AND u.turn_index = t.turn_index)"
            " AND NOT EXISTS (SELECT 1 FROM judgments j WHERE j.judge = ? AND j.subject_kind = 'turn'"
            " AND j.subject_id = t.id)"
            " ORDER BY c.created_at, c.id, t.side, t.turn_index",
            (judge,),
        )
        return [Turn(**dict(row)) for row in rows]

    def unjudged_conversations(self, judge: str) -> list[tuple[str, list[str]]]:
        """(conversation id, the orders still to ask) of every judged arena conversation that this judge has
        not compared in both orders yet, oldest first."""
        rows = self._all(
            'SELECT c.id, (SELECT group_concat(j."order") FROM judgments j WHERE j.judge = ? AND'
            " j.subject_kind = 'conversation' AND j.subject_id = c.id) AS done FROM conversations c"
            " WHERE c.purpose = 'arena' AND c.verdict IS NOT NULL ORDER BY c.created_at, c.id",
            (judge,),
        )
        pending = []
        for row in rows:
            done = set((row["done"] or "").split(","))
            missing = [order for order in ORDERS if order not in done]
            if missing:
                pending.append((row["id"], missing))
        return pending

    def shown_turns(self, conversation_id: str) -> list[Turn]:
        """Each turn's answer as shown now: its latest attempt, if that completed (a failed one is left out, as
        the model never saw it), by side and turn index."""
        latest: dict[tuple[str, int], Turn] = {}
        for turn in self.turns(conversation_id):  # ordered by attempt: the last one wins
            latest[(turn.side, turn.turn_index)] = turn
        return [latest[key] for key in sorted(latest) if latest[key].status == "complete"]

    # -- reading -------------------------------------------------------------------------------------------
    def rated_sides(self, conversation_id: str) -> set[str]:
        """The sides with a turn their owner rated."""
        with self._lock:
            return _rated_sides_in(self._db, conversation_id)

    def knows_session(self, session: str) -> bool:
        """Whether this session started a conversation here or was granted one for review (``demo.direct_calls``)."""
        with self._lock:
            row = self._db.execute(
                "SELECT EXISTS (SELECT 1 FROM conversations WHERE session = ?)"
                " OR EXISTS (SELECT 1 FROM review_grants WHERE session = ?)",
                (session, session),
            ).fetchone()
        return bool(row[0])

    def unrated(self, conversation_id: str) -> list[tuple[str, int]]:
        """(side, turn index) of every answer shown now (the latest attempt of each turn, if it completed) that
        its owner has not rated."""
        with self._lock:
            return _unrated_in(self._db, conversation_id)

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


# -- events: what each write is, and how it lands in the tables ---------------------------------------------
EVENT_SCHEMA = 1  # the version of the event records below; a reader refuses a newer one


def _event(kind: str, at: float, **fields: object) -> dict:
    return {"schema": EVENT_SCHEMA, "id": uuid.uuid4().hex, "kind": kind, "at": at, **fields}


def _turn_refusal(judged: bool, last: sqlite3.Row | None, rate_every_turn: bool) -> str | None:
    """``protocol``'s rule for the turn being stored, with the facts read from the store: a first answer is a
    new turn; another is a regenerated answer, so the last one must be rated (a fail must not vanish)."""
    if last is None:
        return protocol.turn_refusal(judged=judged, busy=False, turns=0, turn_limit=None)
    return protocol.regenerate_refusal(
        judged=judged,
        busy=False,
        has_turn=True,
        last_complete=last[1] == "complete",
        last_rated=bool(last[2]),
        rate_every_turn=rate_every_turn,
    )


def _rating_events(db: sqlite3.Connection, now: float, turn_id: str, rating: str, session: str, rater: str) -> list:
    """The checks of a rating and its event: the turn is this session's (or handed to it), it completed, and an
    owner's judgment is not final yet."""
    row = db.execute(
        "SELECT t.status, t.side, t.turn_index, t.attempt, t.model, t.user_text, t.assistant_text,"
        " c.session, c.id, c.verdict, EXISTS (SELECT 1 FROM review_grants g WHERE g.session = ? AND"
        " g.conversation_id = c.id) AS granted FROM turns t JOIN conversations c ON c.id = t.conversation_id"
        " WHERE t.id = ?",
        (session, turn_id),
    ).fetchone()
    if row is None or (row["session"] != session and not row["granted"]):
        raise NotAllowed("this turn does not belong to your session")
    if row["status"] != "complete":
        raise NotAllowed("a turn that ended in an error cannot be rated; retry it first")
    owner = row["session"] == session
    if owner and row["verdict"] is not None:
        raise NotAllowed("this conversation has its verdict and the names are shown: its ratings are final")
    return [
        _event(
            "rating",
            now,
            turn_id=turn_id,
            session=session,
            rater=rater,
            rating=rating,
            by_owner=owner,
            second_opinion=not owner,
            conversation_id=row["id"],
            **{k: row[k] for k in ("side", "turn_index", "attempt", "model", "user_text", "assistant_text")},
        )
    ]


def _study_redaction(db: sqlite3.Connection, now: float, answer_id: str, reason: str, path: Path) -> list[dict]:
    if db.execute("SELECT 1 FROM study_answers WHERE id = ?", (answer_id,)).fetchone() is None:
        raise NotAllowed(f"no conversation {answer_id!r} (nor study answer) in {path}")
    if db.execute("SELECT 1 FROM study_redactions WHERE answer_id = ?", (answer_id,)).fetchone():
        return []
    return [_event("study_redaction", now, answer_id=answer_id, reason=reason)]


def _judgment_event(
    db: sqlite3.Connection,
    now: float,
    subject_kind: str,
    subject_id: str,
    judge: str,
    order: str | None,
    prompt: str,
    raw_answer: str,
    parsed: str | None,
) -> dict:
    if not judge.startswith(JUDGE_PREFIX) or len(judge) == len(JUDGE_PREFIX):
        raise ValueError(f"a judge is named {JUDGE_PREFIX}<model>, got {judge!r}")
    table = "turns" if subject_kind == "turn" else "conversations"
    if db.execute(f"SELECT 1 FROM {table} WHERE id = ?", (subject_id,)).fetchone() is None:
        raise NotAllowed(f"no {subject_kind} {subject_id!r} to judge")
    return _event(
        "judgment",
        now,
        judgment_id=uuid.uuid4().hex,
        subject_kind=subject_kind,
        subject_id=subject_id,
        judge=judge,
        order=order,
        prompt=prompt,
        raw_answer=raw_answer,
        parsed=parsed,
    )


def _apply(db: sqlite3.Connection, event: dict) -> None:
    """The tables' change that one event stands for: the same code for a live write and for a rebuild, so a
    database rebuilt from the events is the one that recorded them."""
    kind = event["kind"]
    if kind not in _APPLY:
        raise ValueError(f"unknown event kind {kind!r}")
    _APPLY[kind](db, event, event["at"])
    # A conversation taken down stays so whatever comes after (a late turn, or a rebuild whose files interleave):
    # what the event just wrote is withheld too.
    conversation_id = _conversation_of(db, event)
    if conversation_id and kind != "redaction" and _is_taken_down(db, conversation_id):
        _withhold(db, conversation_id)
    answers = study_tables.answers_of(event)
    if answers and (hidden := study_tables.taken_down(db).intersection(answers)):
        _register_pseudonym(db)
        for answer_id in sorted(hidden):
            study_tables.withhold(db, answer_id, REDACTED)


def _insert(db: sqlite3.Connection, table: str, row: dict) -> None:
    columns = ", ".join(f'"{column}"' for column in row)
    db.execute(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))


def _fields(event: dict, *keys: str) -> dict:
    return {key: event[key] for key in keys}


def _apply_conversation(db: sqlite3.Connection, event: dict, at: float) -> None:
    row = _fields(event, "session", "rater", "model_a", "model_b", "opener_id")
    row |= {"blind": int(event["blind"]), "purpose": event.get("purpose", "arena"), "created_at": at}
    _insert(db, "conversations", {"id": event["conversation_id"], **row})


def _apply_opener(db: sqlite3.Connection, event: dict, at: float) -> None:
    db.execute("UPDATE conversations SET opener_id = ? WHERE id = ?", (event["opener_id"], event["conversation_id"]))


def _apply_turn(db: sqlite3.Connection, event: dict, at: float) -> None:
    row = _fields(event, "conversation_id", "side", "turn_index", "attempt", "model", "user_text", "assistant_text")
    row |= _fields(event, "status", "error", "started_at", "first_token_s")
    row |= {"decoding": json.dumps(event["decoding"], sort_keys=True), "finished_at": at}
    _insert(db, "turns", {"id": event["turn_id"], **row})


def _apply_rating(db: sqlite3.Connection, event: dict, at: float) -> None:
    turn_id, session, rater, rating = event["turn_id"], event["session"], event["rater"], event["rating"]
    db.execute(
        "INSERT INTO rating_log (turn_id, rater, rating, at, session) VALUES (?, ?, ?, ?, ?)",
        (turn_id, rater, rating, at, session),
    )
    db.execute(
        "INSERT INTO ratings (turn_id, session, rater, rating, by_owner, first_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (turn_id, session) DO UPDATE SET"
        " rating = excluded.rating, rater = excluded.rater, updated_at = excluded.updated_at",
        (turn_id, session, rater, rating, int(event["by_owner"]), at, at),
    )
    # the conversation's rater is the name its owner rates under (typed late, or changed)
    db.execute(
        "UPDATE conversations SET rater = ? WHERE id = ? AND session = ?", (rater, event["conversation_id"], session)
    )


def _apply_verdict(db: sqlite3.Connection, event: dict, at: float) -> None:
    db.execute(
        "INSERT INTO verdict_log (conversation_id, rater, verdict, at) VALUES (?, ?, ?, ?)",
        (event["conversation_id"], event["rater"], event["verdict"], at),
    )
    db.execute(
        "UPDATE conversations SET verdict = ?, verdict_at = ?, rater = CASE WHEN rater = '' THEN ? ELSE rater END"
        " WHERE id = ?",
        (event["verdict"], at, event["rater"], event["conversation_id"]),
    )


def _apply_review(db: sqlite3.Connection, event: dict, at: float) -> None:
    _insert(db, "review_grants", {**_fields(event, "session", "conversation_id", "rater"), "granted_at": at})


def _apply_judgment(db: sqlite3.Connection, event: dict, at: float) -> None:
    row = _fields(event, "subject_kind", "subject_id", "judge", "order", "prompt", "raw_answer", "parsed")
    _insert(db, "judgments", {"id": event["judgment_id"], **row, "at": at})


def _apply_redaction(db: sqlite3.Connection, event: dict, at: float) -> None:
    db.execute(
        "INSERT OR IGNORE INTO redactions (conversation_id, reason, at) VALUES (?, ?, ?)",
        (event["conversation_id"], event.get("reason") or "", at),
    )
    _withhold(db, event["conversation_id"])


_APPLY = {
    "conversation": _apply_conversation,
    "opener": _apply_opener,
    "turn": _apply_turn,
    "rating": _apply_rating,
    "verdict": _apply_verdict,
    "review": _apply_review,
    "judgment": _apply_judgment,
    "redaction": _apply_redaction,
    **study_tables.APPLY,  # a prompt study's events (demo/studies/tables.py), in tables of their own
}
# A kind added later (judgment, redaction) keeps the schema at 1: an older reader names it as unknown instead of
# misreading it.
EVENT_KINDS = tuple(_APPLY)


def _owned_in(db: sqlite3.Connection, conversation_id: str, session: str) -> None:
    row = db.execute("SELECT session FROM conversations WHERE id = ?", (str(conversation_id),)).fetchone()
    if row is None or row[0] != session:
        raise NotAllowed("this conversation does not belong to your session")


def _rated_sides_in(db: sqlite3.Connection, conversation_id: str) -> set[str]:
    rows = db.execute(
        "SELECT DISTINCT t.side FROM ratings r JOIN turns t ON t.id = r.turn_id WHERE t.conversation_id = ?"
        " AND r.by_owner = 1",
        (conversation_id,),
    ).fetchall()
    return {row[0] for row in rows}


def _unrated_in(db: sqlite3.Connection, conversation_id: str) -> list[tuple[str, int]]:
    rows = db.execute(
        "SELECT t.side, t.turn_index, t.status, EXISTS (SELECT 1 FROM ratings r WHERE r.turn_id = t.id AND"
        " r.by_owner = 1) AS rated FROM turns t WHERE t.conversation_id = ? AND t.attempt = (SELECT MAX(u.attempt)"
        " FROM turns u WHERE u.conversation_id = t.conversation_id AND u.side = t.side AND"
        " u.turn_index = t.turn_index) ORDER BY t.side, t.turn_index",
        (conversation_id,),
    ).fetchall()
    return [(row[0], row[1]) for row in rows if row[2] == "complete" and not row[3]]


# -- takedown: what a redaction withholds ---------------------------------------------------------------------
REDACTED = "[redacted]"  # in place of every text of a conversation taken down
TEXTS = ("user_text", "assistant_text", "answer_text", "error", "prompt", "raw_answer")  # what its events may carry


def pseudonym(session: str | None) -> str:
    """The name a rater of a conversation taken down is counted under: stable per session, so one rater's
    ratings still count as one rater's (agreement, the raters table), and not the name they typed."""
    return "redacted-" + hashlib.sha256((session or "").encode()).hexdigest()[:8]


def _withhold(db: sqlite3.Connection, conversation_id: str) -> None:
    """The tables' view of a conversation taken down: its texts replaced, its raters' names pseudonymous (a
    model judge keeps its name: it is not a person). Idempotent."""
    _register_pseudonym(db)
    name = f"CASE WHEN rater LIKE '{JUDGE_PREFIX}%' THEN rater ELSE lima_pseudonym(session) END"
    turns = "SELECT id FROM turns WHERE conversation_id = :c"
    marker = {"c": conversation_id, "r": REDACTED}
    db.execute(
        "UPDATE turns SET user_text = :r, assistant_text = :r, error = CASE WHEN error IS NULL THEN NULL"
        " ELSE :r END WHERE conversation_id = :c",
        marker,
    )
    db.execute(
        "UPDATE judgments SET prompt = :r, raw_answer = :r WHERE (subject_kind = 'conversation' AND"
        f" subject_id = :c) OR (subject_kind = 'turn' AND subject_id IN ({turns}))",
        marker,
    )
    db.execute(f"UPDATE ratings SET rater = {name} WHERE turn_id IN ({turns})", marker)
    db.execute(f"UPDATE rating_log SET rater = {name} WHERE turn_id IN ({turns})", marker)
    db.execute(f"UPDATE review_grants SET rater = {name} WHERE conversation_id = :c", marker)
    db.execute(f"UPDATE conversations SET rater = {name} WHERE id = :c AND rater != ''", marker)
    owner = "(SELECT lima_pseudonym(session) FROM conversations WHERE id = :c)"  # the verdict is the owner's
    db.execute(f"UPDATE verdict_log SET rater = {owner} WHERE conversation_id = :c", marker)


def _register_pseudonym(db: sqlite3.Connection) -> None:
    db.create_function("lima_pseudonym", 1, pseudonym, deterministic=True)


def _conversation_of(db: sqlite3.Connection, event: dict) -> str | None:
    """The conversation an event is about (a judgment of a turn: that turn's)."""
    if event.get("subject_kind") == "turn":
        row = db.execute("SELECT conversation_id FROM turns WHERE id = ?", (event["subject_id"],)).fetchone()
        return row[0] if row else None
    return event.get("conversation_id") or event.get("subject_id")


def _is_taken_down(db: sqlite3.Connection, conversation_id: str) -> bool:
    return db.execute("SELECT 1 FROM redactions WHERE conversation_id = ?", (conversation_id,)).fetchone() is not None


def _taken_down_in(db: sqlite3.Connection) -> set[str]:
    """The ids of every conversation taken down, of every turn of one and of every study answer taken down: what
    ``_published`` withholds."""
    rows = db.execute(
        "SELECT conversation_id FROM redactions UNION SELECT id FROM turns WHERE conversation_id IN"
        " (SELECT conversation_id FROM redactions)"
    )
    return {row[0] for row in rows} | study_tables.taken_down(db)


def _published(body: str, hidden: set[str]) -> str:
    """An event as it may be published: one about a conversation (or turn) in ``hidden`` without its texts, its
    raters' names pseudonymous; the redaction itself, and any other event, as logged."""
    event = json.loads(body)
    about = {event.get("conversation_id") or event.get("subject_id"), *study_tables.answers_of(event)}
    if event["kind"] in ("redaction", "study_redaction") or not about & hidden:
        return body
    for key in TEXTS:
        if event.get(key) is not None:
            event[key] = REDACTED
    if event.get("rater") and not str(event["rater"]).startswith(JUDGE_PREFIX):
        event["rater"] = pseudonym(event.get("session"))
    return json.dumps(event, ensure_ascii=False, sort_keys=True)
