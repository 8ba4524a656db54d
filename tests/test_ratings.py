"""The ratings store on real SQLite files: contract 3, ownership, durability across kill -9, and many threads."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO

from demo.ratings import NotAllowed, Store


@pytest.fixture
def store(tmp_path: Path):
    store = Store(tmp_path / "ratings.db")
    yield store
    store.close()


def start(store: Store, conversation: str = "c1", session: str = "s1") -> None:
    store.ensure_conversation(conversation, session, "lima-1000", "lima-1030", blind=True, rater="ann")


def answer(store: Store, side: str = "a", turn_index: int = 1, conversation: str = "c1", session: str = "s1", **kw):
    model = {"a": "lima-1000", "b": "lima-1030"}.get(side, "lima-1000")
    texts = {"user_text": f"question {turn_index}", "assistant_text": f"{model} answers {turn_index}"}
    timing = {"decoding": {"temperature": 0.7}, "started_at": time.time(), "first_token_s": 0.05}
    return store.add_turn(conversation, session, side, turn_index, model, **{**texts, **timing, **kw})


def rows(path: Path, sql: str) -> list[tuple]:
    """Read through a second connection: what another process (the report, a backup) would see."""
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


# -- contract 3 -------------------------------------------------------------------------------------------------
def test_a_second_rating_replaces_the_first_and_both_are_logged(store):
    start(store)
    turn = answer(store, user_text="What is LIMA?", assistant_text="A 65B LLaMa fine-tuned on 1,000 examples.")
    store.rate(turn.id, "fail", "s1", "ann")
    store.rate(turn.id, "excellent", "s1", "ann")

    assert rows(store.path, "SELECT turn_id, rater, rating FROM ratings") == [(turn.id, "ann", "excellent")]
    log = rows(store.path, "SELECT turn_id, rater, rating FROM rating_log ORDER BY seq")
    assert log == [(turn.id, "ann", "fail"), (turn.id, "ann", "excellent")]
    (view,) = rows(
        store.path,
        "SELECT conversation_id, side, turn_index, model, user_text, assistant_text, rating, rater, first_at,"
        " updated_at, decoding FROM rated_turns",
    )
    assert view[:4] == ("c1", "a", 1, "lima-1000")  # which turn, and which model gave it
    assert view[4:8] == ("What is LIMA?", "A 65B LLaMa fine-tuned on 1,000 examples.", "excellent", "ann")
    first_at, updated_at = view[8:10]
    first_logged, last_logged = (at for (at,) in rows(store.path, "SELECT at FROM rating_log ORDER BY seq"))
    assert (first_at, updated_at) == (first_logged, last_logged) and first_at <= updated_at
    assert view[10] == '{"temperature": 0.7}'
    assert store.ratings("c1") == {turn.id: "excellent"} == store.ratings_of([turn.id])
    assert store.conversation("c1")["rater"] == "ann"


def test_a_rater_is_a_session_and_a_typed_name_replaces_nobodys_rating(store):
    start(store)
    turn = answer(store)
    store.rate(turn.id, "pass", "s1", "ann")
    store.grant_review("r1", "c1", "bob")
    store.rate(turn.id, "fail", "r1", "bob")
    store.rate(turn.id, "excellent", "r1", "ann")  # a reviewer typing the owner's name: still the reviewer's row
    current = rows(store.path, "SELECT session, rater, rating, by_owner FROM ratings ORDER BY session")
    assert current == [("r1", "ann", "excellent", 0), ("s1", "ann", "pass", 1)]
    assert rows(store.path, "SELECT count(*) FROM rating_log") == [(3,)]
    assert rows(store.path, "SELECT session FROM rating_log ORDER BY seq") == [("s1",), ("r1",), ("r1",)]
    # The owner sees their own ratings only; a reviewer's are theirs.
    assert store.ratings("c1") == {turn.id: "pass"} == store.ratings_of([turn.id])
    assert store.ratings_of([turn.id], session="r1") == {turn.id: "excellent"}
    store.rate(turn.id, "fail", "s1", "ann b.")  # the owner renames: the same row, the new name
    assert rows(store.path, "SELECT rater, rating FROM ratings WHERE session = 's1'") == [("ann b.", "fail")]


def test_an_old_database_keyed_by_name_moves_to_sessions(tmp_path: Path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the schema before sessions keyed ratings (and before by_owner)
        db.executescript(
            "CREATE TABLE conversations (id TEXT PRIMARY KEY, session TEXT NOT NULL, rater TEXT NOT NULL DEFAULT '',"
            " model_a TEXT NOT NULL, model_b TEXT NOT NULL, blind INTEGER NOT NULL, opener_id TEXT,"
            " created_at REAL NOT NULL, verdict TEXT, verdict_at REAL);"
            "CREATE TABLE turns (id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, side TEXT NOT NULL,"
            " turn_index INTEGER NOT NULL, attempt INTEGER NOT NULL, model TEXT NOT NULL, user_text TEXT NOT NULL,"
            " assistant_text TEXT NOT NULL, status TEXT NOT NULL, error TEXT, decoding TEXT NOT NULL,"
            " started_at REAL NOT NULL, first_token_s REAL, finished_at REAL NOT NULL);"
            "CREATE TABLE ratings (turn_id TEXT NOT NULL, rater TEXT NOT NULL, rating TEXT NOT NULL,"
            " first_at REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (turn_id, rater));"
            "CREATE TABLE rating_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, turn_id TEXT NOT NULL,"
            " rater TEXT NOT NULL, rating TEXT NOT NULL, at REAL NOT NULL);"
            "CREATE TABLE verdict_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, conversation_id TEXT NOT NULL,"
            " rater TEXT NOT NULL, verdict TEXT NOT NULL, at REAL NOT NULL);"
            "CREATE VIEW rated_turns AS SELECT t.conversation_id, r.rating, r.rater FROM ratings r"
            " JOIN turns t ON t.id = r.turn_id;"
            "INSERT INTO conversations VALUES ('c1', 's1', 'ann', 'x', 'y', 1, NULL, 1.0, NULL, NULL);"
            "INSERT INTO turns VALUES ('t1', 'c1', 'a', 1, 1, 'x', 'q', 'a', 'complete', NULL, '{}', 1, 0.1, 2);"
            "INSERT INTO ratings VALUES ('t1', 'ann', 'pass', 3.0, 3.0);"
            "INSERT INTO rating_log (turn_id, rater, rating, at) VALUES ('t1', 'ann', 'pass', 3.0);"
        )
    store = Store(path)
    try:
        assert rows(path, "SELECT turn_id, session, rater, rating, by_owner FROM ratings") == [
            ("t1", "s1", "ann", "pass", 1)
        ]
        assert rows(path, "SELECT rating, rater FROM rated_turns") == [("pass", "ann")]
        assert store.ratings("c1") == {"t1": "pass"}
        store.rate("t1", "excellent", "s1", "ann")
        assert rows(path, "SELECT rating FROM ratings") == [("excellent",)]
    finally:
        store.close()


def test_turns_keep_attempts_per_side_and_turn(tmp_path: Path):
    store = Store(tmp_path / "ratings.db", rate_every_turn=False)  # regenerate without rating first
    start(store)
    start(store, "c2")
    made = [answer(store, "a", 1), answer(store, "a", 1), answer(store, "a", 2), answer(store, "b", 1)]
    made.append(answer(store, "a", 1, conversation="c2"))
    made.append(answer(store, "a", 1))
    assert [t.attempt for t in made] == [1, 2, 1, 1, 1, 3]
    stored = store.turns("c1")
    order = [(t.side, t.turn_index, t.attempt) for t in stored]
    assert order == [("a", 1, 1), ("a", 1, 2), ("a", 1, 3), ("a", 2, 1), ("b", 1, 1)]
    assert stored[-1].assistant_text == "lima-1030 answers 1" and stored[-1].status == "complete"
    with pytest.raises(ValueError, match="side must be one of"):
        answer(store, "c")


# -- what a session may touch -----------------------------------------------------------------------------------
def test_a_session_touches_only_its_own_conversations_and_turns(store):
    start(store, "mine", "s1")
    start(store, "theirs", "s2")
    theirs = answer(store, conversation="theirs", session="s2")
    mine = answer(store, conversation="mine", session="s1")
    for forged in (theirs.id, "0" * 32, "' OR 1=1 --"):
        with pytest.raises(NotAllowed, match="does not belong to your session"):
            store.rate(forged, "pass", "s1", "ann")
    with pytest.raises(NotAllowed):
        answer(store, conversation="theirs", session="s1")
    with pytest.raises(NotAllowed):
        answer(store, conversation="nobodys", session="s1")
    with pytest.raises(NotAllowed):
        store.set_verdict("theirs", "a", "s1", "ann")
    with pytest.raises(NotAllowed):
        store.set_opener("theirs", "s1", "opener-3")
    with pytest.raises(NotAllowed):  # the id is taken: another session cannot adopt it
        start(store, "theirs", "s1")
    store.rate(mine.id, "pass", "s1", "ann")
    assert rows(store.path, "SELECT turn_id FROM rating_log") == [(mine.id,)]
    assert store.conversation("theirs")["session"] == "s2" and store.conversation("theirs")["opener_id"] is None


def test_both_sides_may_race_to_create_the_conversation(store):
    barrier, errors = threading.Barrier(2), []

    def side():
        barrier.wait()
        try:
            start(store, "c1", "s1")
        except Exception as err:  # a failure must reach the assertion below, not die with the thread
            errors.append(err)

    threads = [threading.Thread(target=side) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    start(store, "c1", "s1")  # and again later: still fine
    assert rows(store.path, "SELECT id, session FROM conversations") == [("c1", "s1")]


def test_a_failed_turn_cannot_be_rated(store):
    start(store)
    failed = answer(store, assistant_text="half an", status="error", error="the server answered 500")
    with pytest.raises(NotAllowed, match="ended in an error"):
        store.rate(failed.id, "fail", "s1", "ann")
    assert rows(store.path, "SELECT count(*) FROM rating_log") == [(0,)]


def test_an_unknown_rating_is_a_value_error(store):
    start(store)
    turn = answer(store)
    for bad in ("great", "", "PASS", None):
        with pytest.raises(ValueError, match="rating must be one of fail, pass, excellent"):
            store.rate(turn.id, bad, "s1", "ann")
    assert rows(store.path, "SELECT count(*) FROM rating_log") == [(0,)]


# -- verdicts ---------------------------------------------------------------------------------------------------
def test_a_verdict_needs_every_shown_answer_rated_and_is_final(store):
    start(store)
    a, b = answer(store, "a"), answer(store, "b")
    failed_b = answer(store, "b", 2, status="error", error="timeout")  # an error: nothing to rate
    with pytest.raises(NotAllowed, match=r"rate every answer before the verdict \(still unrated: A 1, B 1\)"):
        store.set_verdict("c1", "a", "s1", "ann")
    store.rate(a.id, "pass", "s1", "ann")
    with pytest.raises(NotAllowed, match=r"still unrated: B 1\)"):
        store.set_verdict("c1", "a", "s1", "ann")
    with pytest.raises(NotAllowed):
        store.rate(failed_b.id, "pass", "s1", "ann")
    store.rate(b.id, "excellent", "s1", "ann")
    assert store.rated_sides("c1") == {"a", "b"} and store.unrated("c1") == []
    with pytest.raises(ValueError, match="verdict must be one of a, b, tie"):
        store.set_verdict("c1", "left", "s1", "ann")

    store.set_verdict("c1", "b", "s1", "ann")
    conversation = store.conversation("c1")
    assert conversation["verdict"] == "b" and conversation["verdict_at"] > conversation["created_at"]
    # Final: no second verdict, no owner rating, no further turn; a reviewer's second opinion is still welcome.
    with pytest.raises(NotAllowed, match="already has its verdict"):
        store.set_verdict("c1", "tie", "s1", "ann")
    with pytest.raises(NotAllowed, match="its ratings are final"):
        store.rate(b.id, "fail", "s1", "ann")
    with pytest.raises(NotAllowed, match="has its verdict"):
        answer(store, "a", 2)
    store.grant_review("r1", "c1", "bob")
    store.rate(b.id, "fail", "r1", "bob")
    assert store.conversation("c1")["verdict"] == "b" and store.ratings("c1")[b.id] == "excellent"
    log = rows(store.path, "SELECT conversation_id, rater, verdict FROM verdict_log ORDER BY seq")
    assert log == [("c1", "ann", "b")]


def test_an_answer_is_rated_before_it_is_regenerated(store):
    start(store)
    first = answer(store, "a")
    with pytest.raises(NotAllowed, match="rate this answer before regenerating it"):
        answer(store, "a")
    store.rate(first.id, "fail", "s1", "ann")
    second = answer(store, "a")  # the fail stays in the store, rated
    assert second.attempt == 2 and store.unrated("c1") == [("a", 1)]  # the new answer, shown now, is unrated
    answer(store, "b", status="error", error="timeout")
    assert answer(store, "b").attempt == 2  # retrying an error needs no rating: there was no answer to rate


def test_two_racing_verdicts_store_one(store):
    start(store)
    for side in "ab":
        store.rate(answer(store, side).id, "pass", "s1", "ann")
    barrier, outcomes = threading.Barrier(2), []

    def judge(verdict: str) -> None:
        barrier.wait()
        try:
            store.set_verdict("c1", verdict, "s1", "ann")
            outcomes.append(verdict)
        except NotAllowed as err:
            outcomes.append(str(err))

    threads = [threading.Thread(target=judge, args=(v,)) for v in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = store.conversation("c1")["verdict"]
    assert sorted(outcomes) == sorted([stored, "this conversation already has its verdict: verdicts are final"])
    assert rows(store.path, "SELECT verdict FROM verdict_log") == [(stored,)]  # the loser is not logged


# -- listeners --------------------------------------------------------------------------------------------------
def test_listeners_run_after_the_commit_and_outside_the_lock(store):
    start(store)
    a, b = answer(store, "a"), answer(store, "b")
    seen = []

    def listener(kind: str, record: dict) -> None:
        # committed: a second connection sees it; outside the lock: the store itself can still be read
        committed = rows(store.path, "SELECT count(*) FROM rating_log")[0][0]
        seen.append((kind, record, committed, store.rated_sides("c1")))

    store.listeners.append(listener)
    worker = threading.Thread(target=lambda: [store.rate(t.id, "pass", "s1", "ann") for t in (a, b)])
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "a listener called inside the store's lock deadlocks"
    store.set_verdict("c1", "a", "s1", "ann")
    assert [(kind, committed, sides) for kind, _, committed, sides in seen] == [
        ("rating", 1, {"a"}),
        ("rating", 2, {"a", "b"}),
        ("verdict", 2, {"a", "b"}),
    ]
    first = seen[0][1]  # a self-contained record: enough for the Hub mirror to stand alone
    assert {k: first[k] for k in ("turn_id", "rater", "rating", "conversation_id", "side", "model")} == {
        "turn_id": a.id,
        "rater": "ann",
        "rating": "pass",
        "conversation_id": "c1",
        "side": "a",
        "model": "lima-1000",
    }
    assert first["assistant_text"] == "lima-1000 answers 1" and first["second_opinion"] is False
    assert seen[2][1]["conversation_id"] == "c1" and seen[2][1]["verdict"] == "a"


# -- durability and concurrency ---------------------------------------------------------------------------------
WRITER = textwrap.dedent(
    """
    import sys, time
    from demo.protocol import RATINGS
    from demo.ratings import Store

    store = Store(sys.argv[1])
    store.ensure_conversation("c1", "s1", "lima-1000", "lima-1030", True)
    turn = store.add_turn("c1", "s1", "a", 1, "lima-1000", "q", "a", {}, time.time(), None)
    print("TURN", turn.id, flush=True)
    for i in range(100000):
        store.rate(turn.id, RATINGS[i % 3], "s1", f"rater-{i}")
        print("ACK", i, flush=True)
    """
)


def test_every_acknowledged_rating_survives_kill_9(tmp_path):
    path = tmp_path / "ratings.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    try:
        turn_id = child.stdout.readline().split()[1]
        for line in child.stdout:
            acknowledged = int(line.split()[1])
            if acknowledged >= 40:
                child.send_signal(signal.SIGKILL)  # right after the UI would have said "saved"
                break
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    printed = [int(line.split()[1]) for line in child.stdout]  # what it said before the signal landed
    child.stdout.close()
    printed_last = max([acknowledged, *printed])

    store = Store(path)  # reopening recovers the WAL
    try:
        raters = {row[0] for row in rows(path, f"SELECT rater FROM rating_log WHERE turn_id = '{turn_id}'")}
        assert {f"rater-{i}" for i in range(acknowledged + 1)} <= raters
        assert len(raters) <= printed_last + 2  # nothing beyond the one rating in flight when it died
        assert rows(path, "PRAGMA integrity_check") == [("ok",)]
        assert rows(path, "SELECT count(*) FROM rating_log")[0][0] == len(raters)
        (current,) = rows(path, "SELECT rater FROM ratings")  # the session's one current rating: the last logged
        assert current == rows(path, "SELECT rater FROM rating_log ORDER BY seq DESC LIMIT 1")[0]
        assert rows(path, "PRAGMA journal_mode") == [("wal",)]
    finally:
        store.close()


def test_eight_threads_lose_and_duplicate_nothing(store):
    start(store)
    turns = [answer(store, "ab"[i % 2], i // 2 + 1) for i in range(50)]
    calls = []
    store.listeners.append(lambda kind, record: calls.append(record))
    errors = []

    for n in range(4):  # four reviewing sessions, one name each
        store.grant_review(f"r{n}", "c1", f"rater-{n}")

    def rater(n: int) -> None:
        try:
            for i, turn in enumerate(turns):  # threads n and n + 4 race on the same (turn, session) rows
                store.rate(turn.id, ("fail", "pass", "excellent")[(n + i) % 3], f"r{n % 4}", f"rater-{n % 4}")
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=rater, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert rows(store.path, "SELECT count(*) FROM rating_log") == [(400,)]
    assert [record["kind"] for record in calls] == ["review"] * 4 + ["rating"] * 400
    assert rows(store.path, "SELECT count(*) FROM events WHERE kind = 'rating'") == [(400,)]
    current = rows(store.path, "SELECT turn_id, rater, rating FROM rated_turns")
    assert len(current) == len({(turn_id, rater) for turn_id, rater, _ in current}) == 4 * 50
    # the current view holds, for each (turn, rater), the last value its log recorded
    last_logged = rows(
        store.path,
        "SELECT turn_id, rater, rating FROM rating_log WHERE seq IN (SELECT max(seq) FROM rating_log"
        " GROUP BY turn_id, rater)",
    )
    assert sorted(current) == sorted(last_logged)


def test_review_hands_out_only_peoples_judged_arena_conversations(store):
    for cid, purpose in (("auto", "autoplay"), ("epochs", "checkpoints"), ("c1", "arena")):
        store.ensure_conversation(cid, f"s-{cid}", "lima-1030", "lima-1000", blind=True, rater="ann", purpose=purpose)
        for side in "ab":
            turn = store.add_turn(cid, f"s-{cid}", side, 1, "m", "hi", "hello", {}, 1.0, 0.1)
            store.rate(turn.id, "pass", f"s-{cid}", "ann")
        store.set_verdict(cid, "tie", f"s-{cid}", "ann")
    assert store.assign_review("r1", "bob") == "c1"
    assert store.assign_review("r1", "bob") is None  # the other two are a model's and an epoch comparison
