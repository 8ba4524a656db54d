"""The report: Figure 7 shares, bootstrap intervals, verdicts with swapped sides, agreement, exports, the CLI.

The fixture database is written through the real store, with answers computed by hand below.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest
from conftest import run_cli

from demo.ratings import Store
from demo.report import FIGURES, ReportError, build_report, export, export_rows, figure, fleiss_kappa, markdown

OLD, NEW = "lima-1000", "lima-1030"
DECODING = {"max_new_tokens": 2048, "repetition_penalty": 1.2, "temperature": 0.7, "top_p": 0.9}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The scenario. Conversations (model_a vs model_b, own rater, verdict):
#   c1  OLD vs NEW  alice  'b' -> NEW better
#   c2  NEW vs OLD  alice  'b' -> OLD better (sides swapped: 'b' is lima-1000 here)
#   c3  OLD vs NEW  carol  'tie'
#   c5  OLD vs NEW  carol  'b' -> NEW better
#   c4  OLD vs NEW  (one turn, never rated: not counted anywhere)
# Turns and the rating that counts (own rater, latest attempt the owner rated):
#   c1 a (OLD): t1 excellent (alice first said pass, then changed it), t2 fail, t3 fail
#   c1 b (NEW): t1 excellent, t2 attempt 1 fail -> regenerated, attempt 2 pass (counts), t3 excellent,
#               t4 excellent by bob only (a second opinion, never counted in shares)
#   c2 a (NEW): t1 excellent, t2 attempt 1 excellent (counts: attempt 2 was never rated by alice)
#   c2 b (OLD): t1 pass, t2 error (never rated), t3 fail
#   c3 a (OLD): t1 excellent      c3 b (NEW): t1 fail
#   c5 a (OLD): t1 fail           c5 b (NEW): t1 pass
# lima-1000: 7 turns, E2 P1 F4 -> 28.6 / 14.3 / 57.1, "4 in 7", 4 conversations
#   by turn: t1 E,P,E,F -> 50/25/25 (4); t2 F -> 0/0/100 (1); t3 F,F -> 0/0/100 (2)
# lima-1030: 7 turns, E4 P2 F1 -> 57.1 / 28.6 / 14.3, "1 in 7", 4 conversations
#   by turn: t1 E,E,F,P -> 50/25/25 (4); t2 P,E -> 50/50/0 (2); t3 E -> 100/0/0 (1)
# Verdicts, a_model = lima-1030 (the later name): wins c1, c5 = 2; losses c2 = 1; ties c3 = 1; of 4.
# Second opinions: bob on c1 a t1 excellent, c1 a t2 pass, c1 b t2 attempt 1 excellent, attempt 2 pass,
#   c1 b t4 excellent, c3 b t1 fail; dave on c1 a t2 fail.
# Raters (current ratings, all attempts): alice 11 ratings in c1, c2, 2 verdicts; bob 6 in c1, c3;
#   carol 4 in c3, c5, 2 verdicts; dave 1 in c1.
# Agreement, on the latest rated attempt of each slot with two or more raters:
#   c1 a t1 {E: 2} P=1;  c1 a t2 {F: 2, P: 1} P=(4+1-3)/(3*2)=1/3;  c1 b t2 att 2 {P: 2} P=1;  c3 b t1 {F: 2} P=1
#   P̄ = (1 + 1/3 + 1 + 1)/4 = 5/6 = 0.833; totals E2 P3 F4 of 9: P_e = (4+9+16)/81 = 29/81
#   κ = (5/6 - 29/81)/(1 - 29/81) = (231/486)/(312/486) = 77/104 = 0.740; raters alice, bob, carol, dave = 4


class Scenario:
    def __init__(self, path: Path) -> None:
        self.store = Store(path, rate_every_turn=False)  # the scenario has unrated and regenerated answers
        self.clock = 0.0
        self.owners: dict[str, str] = {}

    def conversation(self, cid: str, model_a: str, model_b: str, rater: str) -> None:
        self.owners[cid] = rater
        self.store.ensure_conversation(cid, f"s-{cid}", model_a, model_b, blind=True, rater=rater, opener_id=f"o-{cid}")

    def turn(self, cid: str, side: str, index: int, model: str, status: str = "complete") -> str:
        self.clock += 1
        answer = "" if status == "error" else f"{cid} {side}{index} answer"
        error = "model unreachable" if status == "error" else None
        turn = self.store.add_turn(
            cid, f"s-{cid}", side, index, model, f"{cid} {side}{index} ask", answer, DECODING, self.clock, 0.1,
            status=status, error=error,
        )  # fmt: skip
        # Regenerations are told apart by their text, so exports show which attempt a context holds.
        if turn.attempt > 1:
            with sqlite3.connect(self.store.path) as db:
                db.execute("UPDATE turns SET assistant_text = ? WHERE id = ?", (f"{answer} v{turn.attempt}", turn.id))
        return turn.id

    def rate(self, cid: str, turn_id: str, rating: str, rater: str) -> None:
        """The owner rates in the conversation's own session; anyone else through a Review hand-out."""
        session = f"s-{cid}" if rater == self.owners[cid] else f"review-{rater}"
        if session != f"s-{cid}":
            self.store.grant_review(session, cid, rater)
        self.store.rate(turn_id, rating, session, rater)


def build_scenario(path: Path) -> Path:
    s = Scenario(path)
    s.conversation("c1", OLD, NEW, "alice")
    t = s.turn("c1", "a", 1, OLD)
    s.rate("c1", t, "pass", "alice")
    s.rate("c1", t, "excellent", "alice")  # changed: the current rating replaces the first
    s.rate("c1", t, "excellent", "bob")
    t = s.turn("c1", "a", 2, OLD)
    s.rate("c1", t, "fail", "alice")
    s.rate("c1", t, "pass", "bob")
    s.rate("c1", t, "fail", "dave")
    s.rate("c1", s.turn("c1", "a", 3, OLD), "fail", "alice")
    s.rate("c1", s.turn("c1", "b", 1, NEW), "excellent", "alice")
    t = s.turn("c1", "b", 2, NEW)
    s.rate("c1", t, "fail", "alice")
    s.rate("c1", t, "excellent", "bob")
    t = s.turn("c1", "b", 2, NEW)  # regenerated
    s.rate("c1", t, "pass", "alice")
    s.rate("c1", t, "pass", "bob")
    s.rate("c1", s.turn("c1", "b", 3, NEW), "excellent", "alice")
    s.rate("c1", s.turn("c1", "b", 4, NEW), "excellent", "bob")
    s.store.set_verdict("c1", "b", "s-c1", "alice")

    s.conversation("c2", NEW, OLD, "alice")
    s.rate("c2", s.turn("c2", "a", 1, NEW), "excellent", "alice")
    s.rate("c2", s.turn("c2", "a", 2, NEW), "excellent", "alice")
    s.turn("c2", "a", 2, NEW)  # regenerated, never rated
    s.rate("c2", s.turn("c2", "b", 1, OLD), "pass", "alice")
    s.turn("c2", "b", 2, OLD, status="error")
    s.rate("c2", s.turn("c2", "b", 3, OLD), "fail", "alice")
    s.store.set_verdict("c2", "b", "s-c2", "alice")

    s.conversation("c3", OLD, NEW, "carol")
    s.rate("c3", s.turn("c3", "a", 1, OLD), "excellent", "carol")
    t = s.turn("c3", "b", 1, NEW)
    s.rate("c3", t, "fail", "carol")
    s.rate("c3", t, "fail", "bob")
    s.store.set_verdict("c3", "tie", "s-c3", "carol")

    s.conversation("c4", OLD, NEW, "")
    s.turn("c4", "a", 1, OLD)

    s.conversation("c5", OLD, NEW, "carol")
    s.rate("c5", s.turn("c5", "a", 1, OLD), "fail", "carol")
    s.rate("c5", s.turn("c5", "b", 1, NEW), "pass", "carol")
    s.store.set_verdict("c5", "b", "s-c5", "carol")
    s.store.close()
    return path


def judged_pair(
    store: Store,
    cid: str,
    session: str,
    rater: str,
    models: tuple[str, str],
    ratings: tuple[str, str],
    verdict: str,
    blind: bool = True,
    purpose: str = "arena",
) -> dict:
    """One turn on each side, rated by the conversation's own rater, then judged: the turns by side."""
    store.ensure_conversation(cid, session, *models, blind=blind, rater=rater, purpose=purpose)
    turns = {
        side: store.add_turn(cid, session, side, 1, model, "q", "a", DECODING, 1.0, 0.1)
        for side, model in zip("ab", models, strict=True)
    }
    for side, rating in zip("ab", ratings, strict=True):
        store.rate(turns[side].id, rating, session, rater)
    store.set_verdict(cid, verdict, session, rater)
    return turns  # fmt: skip


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return build_scenario(tmp_path_factory.mktemp("report") / "ratings.db")


@pytest.fixture(scope="module")
def report(db: Path) -> dict:
    return build_report(db)


@pytest.fixture
def empty_db(tmp_path: Path) -> Path:
    Store(tmp_path / "empty.db").close()
    return tmp_path / "empty.db"


def test_shares_count_the_latest_attempt_rated_by_the_own_rater(report):
    old, new = report["models"][OLD], report["models"][NEW]
    assert (old["turns"], old["excellent"], old["pass"], old["fail"]) == (7, 28.6, 14.3, 57.1)
    assert (new["turns"], new["excellent"], new["pass"], new["fail"]) == (7, 57.1, 28.6, 14.3)
    assert (old["fails"], old["fails_per_turns"], old["conversations"]) == (4, "4 in 7", 4)
    assert (new["fails"], new["fails_per_turns"], new["conversations"]) == (1, "1 in 7", 4)
    assert (report["conversations"], report["turns"]) == (4, 14)
    assert list(report["models"]) == [OLD, NEW]
    # beside the shares, the answers' mean length: "cN sideK answer", " vA" on a regenerated attempt, "" on an error
    assert all(0 < report["models"][model]["chars"] <= len("c1 a1 answer v2") for model in (OLD, NEW))


def test_by_turn_index(report):
    assert report["models"][OLD]["by_turn"] == {
        "1": {"turns": 4, "excellent": 50.0, "pass": 25.0, "fail": 25.0},
        "2": {"turns": 1, "excellent": 0.0, "pass": 0.0, "fail": 100.0},
        "3": {"turns": 2, "excellent": 0.0, "pass": 0.0, "fail": 100.0},
    }
    assert report["models"][NEW]["by_turn"] == {
        "1": {"turns": 4, "excellent": 50.0, "pass": 25.0, "fail": 25.0},
        "2": {"turns": 2, "excellent": 50.0, "pass": 50.0, "fail": 0.0},
        "3": {"turns": 1, "excellent": 100.0, "pass": 0.0, "fail": 0.0},
    }


def test_verdicts_follow_the_side_each_model_sat_on(db, report):
    expected = {"a_model": NEW, "b_model": OLD, "wins": 2, "losses": 1, "ties": 1, "conversations": 4}
    assert report["verdicts"] == expected
    assert report["verdict_pairs"] == [expected]
    flipped = build_report(db, a_model=OLD)["verdicts"]
    assert flipped == {"a_model": OLD, "b_model": NEW, "wins": 1, "losses": 2, "ties": 1, "conversations": 4}
    with pytest.raises(ReportError, match="lima-7b"):
        build_report(db, a_model="lima-7b")


def test_raters_and_agreement(report):
    assert report["raters"] == {
        "alice": {"conversations": 2, "ratings": 11, "verdicts": 2},
        "bob": {"conversations": 2, "ratings": 6, "verdicts": 0},
        "carol": {"conversations": 2, "ratings": 4, "verdicts": 2},
        "dave": {"conversations": 1, "ratings": 1, "verdicts": 0},
    }
    assert report["agreement"] == {"turns": 4, "raters": 4, "raw": 0.833, "kappa": 0.74, "method": "fleiss",
                                   "judges": {}}  # fmt: skip


def test_fleiss_kappa_edge_cases():
    from collections import Counter

    assert fleiss_kappa([]) == (None, None)
    assert fleiss_kappa([Counter(pass_=2), Counter(pass_=3)]) == (1.0, None)  # one category: kappa undefined
    raw, kappa = fleiss_kappa([Counter(a=1, b=1), Counter(a=1, b=1)])  # always disagree
    assert raw == 0.0 and kappa == pytest.approx(-1.0)


def test_bootstrap_intervals_hold_the_estimate_and_repeat_with_the_seed(db, report):
    for m in report["models"].values():
        for share, (low, high) in ((m["excellent"], m["excellent_ci"]), (m["fail"], m["fail_ci"])):
            assert 0 <= low <= share <= high <= 100
    again = build_report(db)
    assert again["models"] == report["models"]
    other = build_report(db, seed=1, resamples=500)
    assert other["bootstrap"] == {"resamples": 500, "seed": 1, "unit": "conversation", "level": 95}


def test_one_conversation_has_no_interval_and_pairs_are_listed(tmp_path):
    s = Scenario(tmp_path / "one.db")
    s.conversation("x", OLD, NEW, "zoe")
    s.rate("x", s.turn("x", "a", 1, OLD), "pass", "zoe")
    s.rate("x", s.turn("x", "b", 1, NEW), "fail", "zoe")
    s.store.set_verdict("x", "a", "s-x", "zoe")
    for cid in ("y", "z"):
        s.conversation(cid, "tiny", NEW, "zoe")
        s.rate(cid, s.turn(cid, "a", 1, "tiny"), "pass", "zoe")
        s.rate(cid, s.turn(cid, "b", 1, NEW), "pass", "zoe")
        s.store.set_verdict(cid, "tie", f"s-{cid}", "zoe")
    report = build_report(s.store.path)  # the store still open: the report reads beside a live arena
    s.store.close()
    assert report["models"][OLD]["excellent_ci"] is None and report["models"][OLD]["fail_ci"] is None
    assert report["models"][NEW]["excellent_ci"] is not None
    assert report["verdicts"] == {"a_model": "tiny", "b_model": NEW, "wins": 0, "losses": 0, "ties": 2,
                                  "conversations": 2}  # fmt: skip
    assert report["verdict_pairs"][1] == {"a_model": NEW, "b_model": OLD, "wins": 0, "losses": 1, "ties": 0,
                                          "conversations": 1}  # fmt: skip
    assert build_report(s.store.path, a_model=NEW)["verdicts"]["b_model"] == "tiny"  # still the most judged pair
    assert "also lima-1030 vs lima-1000" in markdown(report)


def test_markdown_and_figure(report, tmp_path):
    text = markdown(report)
    assert "| lima-1000 | 4 | 28.6 %" in text and "| 4 in 7 |" in text
    assert "| LIMA dialogue (paper) | 10 | 76.1 % | 21.7 % | 2.2 % | 1 in 46 |" in text
    assert "lima-1030 better in 2, lima-1000 better in 1, tied in 1 (of 4 judged conversations)" in text
    assert "Fleiss' κ 0.740" in text
    assert figure(report, tmp_path / "f" / "figure7.png").read_bytes()[:8] == PNG_MAGIC


def test_empty_database_gives_an_honest_empty_report(empty_db, tmp_path):
    report = build_report(empty_db)
    assert (report["conversations"], report["turns"], report["models"], report["raters"]) == (0, 0, {}, {})
    assert report["verdicts"] == {"a_model": None, "b_model": None, "wins": 0, "losses": 0, "ties": 0,
                                  "conversations": 0}  # fmt: skip
    assert report["agreement"] == {"turns": 0, "raters": 0, "raw": None, "kappa": None, "method": "fleiss",
                                   "judges": {}}  # fmt: skip
    assert report["paper"]["dialogue"]["fails_per_turns"] == "1 in 46"
    text = markdown(report)
    assert "No ratings yet" in text and "No verdicts yet" in text and "LIMA zero-shot (paper)" in text
    assert figure(report, tmp_path / "empty.png").read_bytes()[:8] == PNG_MAGIC
    assert export_rows(empty_db) == []


def test_bad_databases_are_refused(tmp_path):
    with pytest.raises(ReportError, match="no ratings database"):
        build_report(tmp_path / "missing.db")
    (tmp_path / "text.db").write_text("not sqlite at all, just some text that is long enough " * 5)
    with pytest.raises(ReportError, match="not a SQLite database"):
        build_report(tmp_path / "text.db")
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ReportError, match="not a ratings database"):
        build_report(tmp_path / "other.db")


def test_export_rows_carry_the_context_the_model_saw(db):
    rows = export_rows(db)
    assert len(rows) == 22  # every current rating: alice 11, bob 6, carol 4, dave 1
    row = next(
        r for r in rows if (r["conversation_id"], r["side"], r["turn_index"], r["rater"]) == ("c1", "b", 3, "alice")
    )
    assert row["context"] == [
        {"role": "user", "content": "c1 b1 ask"},
        {"role": "assistant", "content": "c1 b1 answer"},
        {"role": "user", "content": "c1 b2 ask"},
        {"role": "assistant", "content": "c1 b2 answer v2"},  # the regenerated attempt, not the first
    ]
    assert (row["model"], row["rating"], row["verdict"], row["opener_id"]) == (NEW, "excellent", "b", "o-c1")
    assert row["decoding"] == DECODING and isinstance(row["rated_at"], float)
    after_error = next(r for r in rows if (r["conversation_id"], r["side"], r["turn_index"]) == ("c2", "b", 3))
    assert [m["content"] for m in after_error["context"]] == ["c2 b1 ask", "c2 b1 answer"]  # the error left out
    old_attempt = [
        r for r in rows if (r["conversation_id"], r["side"], r["turn_index"], r["attempt"]) == ("c1", "b", 2, 1)
    ]
    assert {(r["rater"], r["rating"]) for r in old_attempt} == {("alice", "fail"), ("bob", "excellent")}


# -- the command line --------------------------------------------------------------------------------------------
def test_cli_json_and_out(db, tmp_path):
    result = run_cli("-m", "demo.report", "--db", str(db), "--json")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    report = json.loads(result.stdout)
    assert {"models", "verdicts", "conversations", "raters"} <= report.keys()
    for m in report["models"].values():
        assert {"turns", "excellent", "pass", "fail", "excellent_ci", "fail_ci"} <= m.keys()
    assert {"a_model", "b_model", "wins", "losses", "ties"} <= report["verdicts"].keys()

    out = tmp_path / "out"
    result = run_cli("-m", "demo.report", "--db", str(db), "--out", str(out), "--a-model", OLD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# LIMA multi-turn arena: report")
    assert (out / "figure7.png").read_bytes()[:8] == PNG_MAGIC
    for entry in FIGURES:  # --out writes every registered figure
        assert (out / entry.file).read_bytes()[:8] == PNG_MAGIC
    assert (out / "summary.md").read_text(encoding="utf-8") == result.stdout
    assert json.loads((out / "report.json").read_text())["verdicts"]["a_model"] == OLD


def test_cli_export_roundtrips(db, tmp_path):
    expected = export_rows(db)
    result = run_cli(
        "-m", "demo.report", "export", "--db", str(db), "--format", "jsonl", "--out", str(tmp_path / "r.jsonl")
    )
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == expected

    export(db, "csv", tmp_path / "r.csv")
    with (tmp_path / "r.csv").open(encoding="utf-8", newline="") as f:
        cells = list(csv.DictReader(f))
    assert len(cells) == len(expected)
    assert json.loads(cells[0]["context"]) == expected[0]["context"]
    assert json.loads(cells[0]["decoding"]) == DECODING
    assert cells[0]["conversation_id"] == expected[0]["conversation_id"]

    import datasets

    export(db, "hf", tmp_path / "hf")
    dataset = datasets.load_from_disk(str(tmp_path / "hf"))
    assert dataset.num_rows == len(expected)
    turn_two = next(r for r in dataset if (r["conversation_id"], r["side"], r["turn_index"]) == ("c1", "a", 2))
    assert turn_two["context"] == [
        {"role": "user", "content": "c1 a1 ask"},
        {"role": "assistant", "content": "c1 a1 answer"},
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--db", "{tmp}/missing.db"], "no ratings database"),
        (["--db", "{tmp}/text.db", "--json"], "not a SQLite database"),
        (["export", "--db", "{db}", "--format", "parquet", "--out", "{tmp}/x"], "unknown export format"),
        (["export", "--db", "{db}", "--format", "hf", "--out", "{tmp}/x", "--push-to-hub", "me/r"], "HF_TOKEN"),
        (["--json"], "--db"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(db, tmp_path, args, message):
    (tmp_path / "text.db").write_text("plain text, not a database " * 10)
    args = [a.format(tmp=tmp_path, db=db) for a in args]
    result = run_cli("-m", "demo.report", *args, env={"HF_TOKEN": ""})
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr


def test_a_database_from_before_owner_flags_counts_the_conversations_named_rater(tmp_path):
    s = Scenario(tmp_path / "old.db")
    s.conversation("x", OLD, NEW, "zoe")
    s.rate("x", s.turn("x", "a", 1, OLD), "pass", "zoe")
    s.rate("x", s.turn("x", "b", 1, NEW), "fail", "zoe")
    s.store.close()
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute("ALTER TABLE ratings DROP COLUMN by_owner")  # the schema before second opinions
    report = build_report(tmp_path / "old.db")
    assert (report["models"][OLD]["pass"], report["models"][NEW]["fail"]) == (100.0, 100.0)


def test_a_conversation_whose_sides_ran_different_decoding_is_flagged(tmp_path: Path, db: Path):
    assert build_report(db)["decoding_mismatch"] == []  # the scenario: one setting everywhere
    tgi = {**DECODING, "server": "tgi 3.3.7", "penalty_scope": "context", "may_ignore": []}
    unknown = {**DECODING, "server": "openai", "penalty_scope": "unknown", "may_ignore": ["repetition_penalty"]}
    store = Store(tmp_path / "mixed.db")
    for cid, decodings in {
        "same": (tgi, tgi),
        "mixed": (tgi, unknown),
        "hotter": (tgi, {**tgi, "temperature": 1.0}),
    }.items():
        store.ensure_conversation(cid, f"s-{cid}", OLD, NEW, blind=True, rater="alice", opener_id=None)
        for side, decoding in zip("ab", decodings, strict=True):
            store.add_turn(cid, f"s-{cid}", side, 1, OLD if side == "a" else NEW, "ask", "answer", decoding, 1.0, 0.1)
    store.close()
    report = build_report(tmp_path / "mixed.db")
    flagged = {item["conversation"]: item for item in report["decoding_mismatch"]}
    assert sorted(flagged) == ["hotter", "mixed"]
    assert flagged["mixed"]["b"] == [{**{k: unknown[k] for k in DECODING}, "penalty_scope": "unknown",
                                      "may_ignore": ["repetition_penalty"]}]  # fmt: skip
    text = markdown(report)
    assert "2 conversation(s) ran different decoding" in text
    assert "over unknown" in text and "may ignore repetition_penalty" in text
    assert "Both sides of every conversation ran the same decoding." in markdown(build_report(db))


def test_a_rating_changed_after_the_reveal_counts_as_it_stood_at_the_verdict(tmp_path: Path):
    """A database from before verdicts were final: the owner changed a rating after seeing the names."""
    store = Store(tmp_path / "late.db")
    turns = judged_pair(store, "c1", "s1", "alice", (OLD, NEW), ("fail", "pass"), "b")
    store.close()
    with sqlite3.connect(tmp_path / "late.db") as db:  # what the old store let through: a change after the reveal
        (verdict_at,) = db.execute("SELECT verdict_at FROM conversations").fetchone()
        db.execute("INSERT INTO rating_log (turn_id, rater, rating, at) VALUES (?, 'alice', 'excellent', ?)",
                   (turns["a"].id, verdict_at + 5))  # fmt: skip
        db.execute("UPDATE ratings SET rating = 'excellent', updated_at = ? WHERE turn_id = ?",
                   (verdict_at + 5, turns["a"].id))  # fmt: skip
    report = build_report(tmp_path / "late.db")
    assert report["after_reveal"] == 1
    assert report["models"][OLD]["fail"] == 100.0  # counted as rated before the names were shown
    assert "1 rating(s) were changed after their conversation's verdict" in markdown(report)


def test_the_comparison_the_paper_makes_difference_with_intervals_and_a_sign_test(report):
    from demo.report import sign_test

    c = report["comparison"]
    assert (c["a_model"], c["b_model"], c["conversations"]) == (NEW, OLD, 4)
    # By hand from the scenario: lima-1030 E 57.1 F 14.3, lima-1000 E 28.6 F 57.1, both over all four conversations.
    assert (c["excellent_diff"], c["fail_diff"]) == (28.6, -42.9)
    low, high = c["excellent_diff_ci"]
    assert low <= 28.6 <= high and c["fail_diff_ci"][0] <= -42.9 <= c["fail_diff_ci"][1]
    assert c["sign_test_p"] == 1.0  # 2 wins, 1 loss: no evidence either way
    assert sign_test(7, 0) == 0.0156 and sign_test(0, 0) is None  # the paper's 7 better, 3 tied, 0 worse
    assert "excellent +28.6 points (" in markdown(report) and "sign test p = 1" in markdown(report)


def test_unblinded_conversations_are_reported_apart_and_count_toward_nothing(tmp_path: Path, db: Path):
    """The scenario (all blind) plus one conversation rated with the names shown, where the old model wins."""
    store = Store(build_scenario(tmp_path / "mixed.db"))
    judged_pair(store, "open", "s-open", "dan", (OLD, NEW), ("excellent", "fail"), "a", blind=False)
    store.close()
    blind, mixed = build_report(db), build_report(tmp_path / "mixed.db")
    for key in ("conversations", "turns", "models", "verdicts", "comparison"):
        assert mixed[key] == blind[key], key
    u = mixed["unblinded"]
    assert (u["conversations"], u["turns"]) == (1, 2)
    assert u["models"][OLD]["excellent"] == 100.0 and u["models"][NEW]["fail"] == 100.0
    assert (u["verdicts"]["a_model"], u["verdicts"]["wins"], u["verdicts"]["losses"]) == (NEW, 0, 1)
    nothing = {"a_model": None, "b_model": None, "wins": 0, "losses": 0, "ties": 0, "conversations": 0}
    assert blind["unblinded"] == {"conversations": 0, "turns": 0, "models": {}, "verdicts": nothing}
    text = markdown(mixed)
    assert "## Unblinded conversations (not counted above)" in text and "| dan |" in text
    figure(mixed, tmp_path / "figure7.png")  # the intervals drawn as whiskers; the PNG is written
    assert (tmp_path / "figure7.png").stat().st_size > 10_000


@pytest.mark.parametrize("purpose", ["autoplay", "checkpoints"])
def test_conversations_of_other_purposes_never_change_the_human_figures(tmp_path: Path, db: Path, purpose: str):
    store = Store(build_scenario(tmp_path / "more.db"))
    judged_pair(store, "x", "judge:j", "judge:j", (NEW, OLD), ("fail", "excellent"), "b", purpose=purpose)
    with pytest.raises(ValueError, match="purpose must be one of arena, autoplay, checkpoints"):
        store.ensure_conversation("y", "s", NEW, OLD, blind=True, purpose="bench")
    store.close()
    base, more = build_report(db), build_report(tmp_path / "more.db")
    for key in ("conversations", "turns", "models", "verdicts", "comparison", "unblinded", "agreement"):
        assert more[key] == base[key], key
    auto = more["automatic"]  # autoplay is summed up apart, as automatic; epoch comparisons nowhere yet
    expected = (1, 2, 1) if purpose == "autoplay" else (0, 0, 0)
    assert (auto["conversations"], auto["turns"], auto["verdicts"]["losses"]) == expected


def test_a_report_opened_in_a_browser_renders_no_html_and_loads_nothing(tmp_path: Path):
    """Rater and model names are typed by strangers: the summary shows them as text in any Markdown viewer."""
    import threading
    from http.server import ThreadingHTTPServer

    from conftest import CHROMIUM, CHROMIUM_ARGS
    from test_browser import _Pixel

    pixel = ThreadingHTTPServer(("127.0.0.1", 0), _Pixel)
    threading.Thread(target=pixel.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{pixel.server_port}"
    hostile = [
        f"<img src={base}/tag.png>", f"![x]({base}/md.png)", f"[click]({base}/link)", f"<{base}/auto>",
        f"`x` <script>fetch('{base}/js')</script>", f"a|b\n\n<iframe src={base}/frame>",
        f"![y][r]\n\n[r]: {base}/ref.png",
    ]  # fmt: skip
    s = Scenario(tmp_path / "hostile.db")
    for n, name in enumerate(hostile):
        s.conversation(f"h{n}", f"{name} model", NEW, name)
        s.rate(f"h{n}", s.turn(f"h{n}", "a", 1, f"{name} model"), "pass", name)
        s.rate(f"h{n}", s.turn(f"h{n}", "b", 1, NEW), "fail", name)
        s.store.set_verdict(f"h{n}", "a", f"s-h{n}", name)
    s.store.close()
    out = tmp_path / "out"
    assert run_cli("-m", "demo.report", "--db", str(tmp_path / "hostile.db"), "--out", str(out)).returncode == 0
    text = (out / "summary.md").read_text(encoding="utf-8")
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).enable(["table"]).render(text)
    for tag in ("<img", "<script", "<iframe", "<a "):
        assert tag not in html, tag
    assert "&lt;img src=" in html  # shown, as text
    if CHROMIUM is None:
        return
    from playwright.sync_api import sync_playwright

    hits_before = len(_Pixel.hits)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for page_text in (html, text):  # rendered by a viewer, and the file itself opened as a page
                page = browser.new_page()
                page.set_content(page_text, wait_until="load")
                page.wait_for_timeout(500)
                assert page.locator("img, script, iframe, a").count() == 0
        finally:
            browser.close()
    pixel.shutdown()
    assert _Pixel.hits[hits_before:] == []
