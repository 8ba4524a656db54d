"""Reading the ratings database: read-only, so the report can run beside a live arena's writer."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from common.cli import UserError

TABLES = ("conversations", "turns", "ratings", "verdict_log")
# What makes two turns' decoding the same: the rater's setting, and what the server made of it.
DECODING_KEYS = ("temperature", "top_p", "repetition_penalty", "max_new_tokens", "penalty_scope", "may_ignore")


class ReportError(UserError):
    """Input the report cannot use (a missing or foreign database, an unknown model or format): one line to show."""


class Tables(NamedTuple):
    """What the report reads, once."""

    conversations: dict[str, sqlite3.Row]  # by id
    rated: list[sqlite3.Row]  # every current rating joined to its turn and conversation
    verdict_by: dict[str, str]  # who gave each current verdict
    decodings: list[sqlite3.Row]  # every turn's side and decoding
    history: dict[tuple[str, str], list[tuple[float, str]]]  # (turn, rater name) -> every rating ever, in order
    judgments: list[sqlite3.Row]  # every model judge's judgment with the conversation it is about, in order
    taken_down: set[str]  # the conversations taken down (``redact``): their texts are withheld, ratings count


def connect(db_path: str | Path) -> sqlite3.Connection:
    """Open the ratings database read-only; refuse a missing file or one without the store's tables."""
    path = Path(db_path)
    if not path.is_file():
        raise ReportError(f"no ratings database at {path}: pass --db with the file the arena writes (ratings.db)")
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        present = _tables(db)
    except sqlite3.DatabaseError as exc:
        db.close()
        raise ReportError(f"{path} is not a SQLite database ({exc})") from None
    missing = [table for table in TABLES if table not in present]
    if missing:
        db.close()
        raise ReportError(f"{path} is not a ratings database (no table {', '.join(missing)})")
    return db


def _tables(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def read_all(db_path: str | Path) -> Tables:
    """Everything the report counts, read in one connection that is closed before counting starts."""
    db = connect(db_path)
    try:
        return _read(db)
    except sqlite3.DatabaseError as exc:
        raise ReportError(f"cannot read {db_path}: {exc}") from None
    finally:
        db.close()


def _read(db: sqlite3.Connection) -> Tables:
    judgments = []
    if "judgments" in _tables(db):  # a database from before model judges has none
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
        f" length(t.assistant_text) AS chars, {who} AS who, {by_owner} AS by_owner, r.updated_at, c.verdict_at"
        " FROM ratings r"
        " JOIN turns t ON t.id = r.turn_id JOIN conversations c ON c.id = t.conversation_id"
    ).fetchall()
    history: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)
    for entry in db.execute("SELECT turn_id, rater, rating, at FROM rating_log ORDER BY seq"):
        history[entry["turn_id"], entry["rater"]].append((entry["at"], entry["rating"]))
    # The log, in order, ends with the verdict the conversation holds now.
    log = db.execute("SELECT conversation_id, rater FROM verdict_log ORDER BY seq")
    verdict_by = {row["conversation_id"]: row["rater"] for row in log}
    taken_down: set[str] = set()
    if "redactions" in _tables(db):  # a database from before takedowns has none
        taken_down = {row[0] for row in db.execute("SELECT conversation_id FROM redactions")}
    return Tables(conversations, rated, verdict_by, decodings, history, judgments, taken_down)


def decoding_mismatch(decodings: list[sqlite3.Row]) -> list[dict]:
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


def _canonical(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True)
