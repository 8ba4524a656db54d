"""A takedown end to end: conversations collected through the real app (its mirror copying every event), one of
them taken down with ``python -m demo.report redact``; then the report, both exports, a ``--from-mirror``
rebuild, Review and the mirror's newly written events withhold its texts and its rater's name, its ratings still
count, and the original events stay in the log. And an export opened in a spreadsheet runs no formula."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest
from conftest import run_cli
from gradio_client import Client
from tgi_server import Behaviour, TGIServer, free_port

from demo import app, mirror, ratings
from serving import backends

DECODING = (0.7, 0.9, 1.2, 64)
SECRET, NAME = "my phone is 555-0199", "Alice Secretname"  # what the taken-down conversation holds
FORMULA = '=HYPERLINK("http://x")'


def converse(url: str, rater: str, messages: tuple[str, str], verdict: str) -> str:
    """A rater's whole conversation through the API (a turn per side, both rated, a verdict); its id."""
    client = Client(url, verbose=False)
    client.predict(api_name="/new_conversation")
    for side, text in zip("ab", messages, strict=True):
        client.predict(text, *DECODING, rater, api_name=f"/send_{side}")
    stored = client.predict(api_name="/conversation")
    for turn in stored["turns"]:
        client.predict(turn["turn_id"], "pass" if turn["side"] == "a" else "fail", rater, api_name="/rate")
    client.predict(rater, api_name=f"/verdict_{verdict}")
    return stored["id"]


def collect(tmp_path: Path) -> tuple[Path, Path, str, str]:
    """Two judged conversations through the app, with a judge's second opinion on the first; the database, the
    mirror folder, and the two conversations' ids."""
    servers = [TGIServer(Behaviour(reply=f"Answer from {n}.")).start() for n in ("zero", "dialogue")]
    db, folder = tmp_path / "ratings.db", tmp_path / "mirror"
    store = ratings.Store(db)
    copier = mirror.JsonlMirror(folder, store)
    models = [backends.make_backend(f"{n}={s.url}") for n, s in zip(("zero", "dialogue"), servers, strict=True)]
    demo = app.build(models, store, blind=False)
    demo.queue()
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        taken = converse(url, NAME, (SECRET, f"{SECRET}, again"), "a")
        kept = converse(url, "bob", (FORMULA, "a kept question"), "b")
    finally:
        demo.close()
        for server in servers:
            server.stop()
    # A model judge's second opinion quotes the conversation in its prompt and answer.
    turn = store.shown_turns(taken)[0]
    store.grant_review("judge:tiny", taken, "judge:tiny")
    store.judge_turn(turn.id, "judge:tiny", f"Rate: {SECRET}", f"It says {SECRET}. Rating: pass", "pass")
    copier.stop()
    store.close()
    return db, folder, taken, kept


def cli(*args: str) -> str:
    result = run_cli("-m", "demo.report", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def tables(db: Path) -> str:
    """Every table the arena shows or exports from (all but the event log), as text."""
    with sqlite3.connect(db) as con:
        names = [n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'") if n != "events"]
        return json.dumps({n: con.execute(f"SELECT * FROM {n}").fetchall() for n in names})


def assert_withheld(text: str, where: str) -> None:
    assert SECRET not in text and NAME not in text, f"{where} still holds the taken-down conversation"


def test_a_conversation_taken_down_is_withheld_everywhere_its_ratings_count_and_history_stays(tmp_path: Path):
    db, folder, taken, kept = collect(tmp_path)
    before = json.loads(cli("--db", str(db), "--json"))
    assert NAME in before["raters"]

    said = cli("redact", "--db", str(db), "--conversation", taken, "--reason", "asked by the rater")
    assert f"conversation {taken} taken down" in said
    assert "already" in cli("redact", "--db", str(db), "--conversation", taken)  # once is enough
    refused = run_cli("-m", "demo.report", "redact", "--db", str(db), "--conversation", "nope")
    assert refused.returncode == 2 and "no conversation 'nope'" in refused.stderr

    # The report: the same figures (its ratings still count), its rater under a pseudonym, and it says so.
    after = json.loads(cli("--db", str(db), "--json"))
    assert (after["turns"], after["models"], after["verdicts"]) == (
        before["turns"],
        before["models"],
        before["verdicts"],
    )
    assert after["taken_down"]["conversations"] == 1 and after["taken_down"]["turns"] == 2
    summary = cli("--db", str(db))
    assert "## Taken down" in summary and "Their 2 counted rating(s) still count above" in summary
    assert_withheld(json.dumps(after) + summary, "the report")

    # Both exports: its rows are there (rated, redacted), the other conversation's texts untouched.
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"ratings.{fmt}"
        cli("export", "--db", str(db), "--format", fmt, "--out", str(out))
        exported = out.read_text(encoding="utf-8")
        assert_withheld(exported, f"the {fmt} export")
        assert ratings.REDACTED in exported and "a kept question" in exported
    assert_withheld(tables(db), "the database's tables")
    with sqlite3.connect(db) as con:  # history is not rewritten: the log keeps what was recorded
        assert any(SECRET in body for (body,) in con.execute("SELECT body FROM events WHERE kind = 'turn'"))

    # The mirror: the same folder gets the redaction; a new folder gets every event, published without the texts.
    fresh = tmp_path / "fresh"
    for target in (folder, fresh):
        store = ratings.Store(db)
        old = {p: p.read_text() for p in target.glob("*.jsonl")}
        copier = mirror.JsonlMirror(target, store)
        copier.stop()
        store.close()
        new = "".join(p.read_text()[len(old.get(p, "")) :] for p in target.glob("*.jsonl"))
        assert_withheld(new, f"the events newly written to {target.name}")
        assert '"kind": "redaction"' in new
    card = (fresh / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "redaction" in card and "## Consent" in card

    # Rebuilds, from the old folder (texts in its earlier lines) and from the new one: the same report, no texts.
    for source in (folder, fresh):
        rebuilt = tmp_path / f"from-{source.name}.db"
        rebuild_json = cli("--from-mirror", str(source), "--db", str(rebuilt), "--json")
        assert {**json.loads(rebuild_json), "db": None} == {**after, "db": None}
        assert_withheld(tables(rebuilt), f"the database rebuilt from {source.name}")
        # Review never hands it out again: only the kept conversation is left to review.
        store = ratings.Store(rebuilt)
        assert store.assign_review("reviewer", "cy") == kept and store.assign_review("reviewer", "cy") is None
        store.close()


def test_a_formula_in_a_message_opens_inert_in_a_spreadsheet(tmp_path: Path):
    db, _, _, kept = collect(tmp_path)
    out = tmp_path / "ratings.csv"
    cli("export", "--db", str(db), "--format", "csv", "--out", str(out))
    with out.open(encoding="utf-8", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["conversation_id"] == kept and row["side"] == "a"]
    assert [row["user_text"] for row in rows] == ["'" + FORMULA]
    for row in csv.DictReader(out.open(encoding="utf-8", newline="")):
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row.values()), row
    jsonl = tmp_path / "ratings.jsonl"  # JSON is read as data, never evaluated: kept as typed
    cli("export", "--db", str(db), "--format", "jsonl", "--out", str(jsonl))
    assert FORMULA in {json.loads(line)["user_text"] for line in jsonl.read_text().splitlines()}


@pytest.mark.parametrize("cell", ["+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "=cmd|' /C calc'!A0"])
def test_every_cell_a_spreadsheet_would_evaluate_is_prefixed(cell: str):
    from demo.report.export import inert

    assert inert(cell) == "'" + cell and inert("plain") == "plain" and inert(3) == 3
