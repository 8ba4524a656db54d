"""The ratings as a dataset: every current rating (every rater, every attempt) with its turn, what the model saw
before it, and the conversation's verdict, as JSONL, CSV or a ``datasets`` folder (optionally pushed to the Hub)."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from demo.report.reading import ReportError, connect
from demo.report.studies import KIND_OF
from demo.studies.records import Answer, PairwiseJudgment
from demo.studies.store import records_at

EXPORT_FORMATS = ("jsonl", "csv", "hf")
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
        row = dict(r)
        context = _context(latest[r["conversation_id"], r["side"]], r["turn_index"])
        row.update(rated_at=row.pop("updated_at"), context=context, decoding=json.loads(row["decoding"] or "{}"))
        rows.append({field: row[field] for field in EXPORT_FIELDS})
    return rows


def study_rows(records: Iterable[object]) -> list[dict]:
    """The prompt studies as a dataset: one row per rating record (``demo.studies.records``) with its kind and,
    where the records include the answers, the texts rated (``answer`` for one source, ``model_answer`` and
    ``baseline_answer`` for a pair)."""
    records = list(records)
    texts = {(r.study, r.prompt_id, r.source): r.text for r in records if isinstance(r, Answer)}
    rows = []
    for record in records:
        if type(record) not in KIND_OF:  # a study's definition or an answer: the texts above, not a rating
            continue
        row = {"kind": KIND_OF[type(record)], **asdict(record)}
        if isinstance(record, PairwiseJudgment):
            row["model_answer"] = texts.get((record.study, record.prompt_id, record.model))
            row["baseline_answer"] = texts.get((record.study, record.prompt_id, record.baseline))
        else:
            row["answer"] = texts.get((record.study, record.prompt_id, record.source))
        rows.append(row)
    return rows


def _context(earlier: dict[int, sqlite3.Row], index: int) -> list[dict[str, str]]:
    """The messages before turn ``index``, from each earlier turn's latest attempt that completed."""
    context = []
    for before in sorted(i for i in earlier if i < index):
        if earlier[before]["status"] == "complete":
            context += [
                {"role": "user", "content": earlier[before]["user_text"]},
                {"role": "assistant", "content": earlier[before]["assistant_text"]},
            ]
    return context


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
        _write_jsonl(rows, out)
    elif fmt == "csv":
        _write_csv(rows, out)
    else:
        _write_dataset(rows, out, push_to_hub, token)
    studied = study_rows(records_at(db_path))
    if studied and fmt != "hf":  # another shape of row: a file of its own beside the ratings
        (_write_jsonl if fmt == "jsonl" else _write_study_csv)(studied, studies_path(out))
    return out


def studies_path(out: Path) -> Path:
    """Where an export writes the prompt studies' ratings: beside the arena's, ``NAME-studies.EXT``."""
    return out.with_name(f"{out.stem}-studies{out.suffix}")


def _write_jsonl(rows: list[dict], out: Path) -> None:
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# A spreadsheet reads a cell that starts with one of these as a formula (OWASP, "CSV Injection"): it could fetch a
# URL (=HYPERLINK, =WEBSERVICE, =IMPORTXML) or run a command (DDE) when the export is opened.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")


def inert(cell: object) -> object:
    """A CSV cell a spreadsheet shows as the text it is: one that could start a formula gets a leading ``'``
    (which spreadsheets hide); numbers are left as numbers."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
        return "'" + cell
    return cell


def _write_csv(rows: list[dict], out: Path) -> None:
    with out.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=EXPORT_FIELDS)
        writer.writeheader()
        for row in rows:
            cells = {**row, "context": json.dumps(row["context"], ensure_ascii=False)}
            cells["decoding"] = json.dumps(row["decoding"], sort_keys=True)
            writer.writerow({field: inert(value) for field, value in cells.items()})


def _write_study_csv(rows: list[dict], out: Path) -> None:
    fields = list(dict.fromkeys(field for row in rows for field in row))  # pairwise and single-answer rows differ
    with out.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({field: inert(value) for field, value in row.items()})


def _write_dataset(rows: list[dict], out: Path, push_to_hub: str | None, token: str | None) -> None:
    import datasets  # heavy: only for this format

    dataset = datasets.Dataset.from_list(rows)
    dataset.save_to_disk(str(out))
    if push_to_hub:
        try:
            dataset.push_to_hub(push_to_hub, private=True, token=token)
        except Exception as exc:  # no network, a rejected token, a repo we may not write: all one line
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ReportError(f"saved {out}, but pushing it to {push_to_hub} failed: {reason}") from None
