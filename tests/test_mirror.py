"""The event log and its Hub copy: every write is one self-contained event, the mirror copies them in order and
retries a folder that fails, and a database rebuilt from the copy is the one that wrote it (through the real
app: collect, stop with SIGTERM, delete the database, rebuild; the report's JSON is the same)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from gradio_client import Client
from hub_server import HubServer
from test_app import DECODING, launch, wait_until_up
from tgi_server import Behaviour, TGIServer, free_port

from demo import mirror, ratings, settings
from demo.ratings import EVENT_SCHEMA, Store

TABLES = ("conversations", "turns", "ratings", "rating_log", "verdict_log", "review_grants", "events")


def dump(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table, as SQLite holds it."""
    db = sqlite3.connect(path)
    try:
        return {table: db.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall() for table in TABLES}
    finally:
        db.close()


def collect(store: Store) -> None:
    """Two conversations the way the app writes them: turns (a regenerated one, a failed one), ratings changed
    before the verdict, verdicts, and a second opinion through Review."""
    store.ensure_conversation("c1", "s1", "lima-1030", "lima-1000", blind=True, opener_id="open-3")
    turns = {}
    for side, model in (("a", "lima-1030"), ("b", "lima-1000")):
        turns[side] = store.add_turn("c1", "s1", side, 1, model, "hi", f"hello from {model}", {"t": 0.7}, 1.0, 0.1)
    store.rate(turns["a"].id, "pass", "s1", "ann")
    store.rate(turns["a"].id, "excellent", "s1", "ann")
    store.rate(turns["b"].id, "fail", "s1", "ann")
    again = store.add_turn("c1", "s1", "b", 1, "lima-1000", "hi", "hello again", {"t": 0.7}, 2.0, 0.2)
    store.rate(again.id, "pass", "s1", "ann")
    store.add_turn("c1", "s1", "a", 2, "lima-1030", "more", "", {"t": 0.7}, 3.0, None, "error", "timeout")
    store.set_verdict("c1", "a", "s1", "ann")
    store.ensure_conversation("c2", "s2", "lima-1000", "lima-1030", blind=False)
    store.set_opener("c2", "s2", None)
    for side, model in (("a", "lima-1000"), ("b", "lima-1030")):
        turn = store.add_turn("c2", "s2", side, 1, model, "yo", "hey", {"t": 0.7}, 4.0, 0.3)
        store.rate(turn.id, "pass", "s2", "bo")
    store.set_verdict("c2", "tie", "s2", "bo")
    store.grant_review("r1", "c1", "cy")
    store.rate(turns["a"].id, "fail", "r1", "cy")


def test_every_write_is_one_self_contained_event_and_a_rebuild_is_the_same_database(tmp_path: Path):
    store = Store(tmp_path / "ratings.db")
    copy = mirror.JsonlMirror(tmp_path / "mirror", store)
    collect(store)
    copy.stop()
    events = [json.loads(line) for line in copy.path.read_text().splitlines()]
    first = ["conversation", "turn", "turn", "rating", "rating", "rating", "turn", "rating", "turn", "verdict"]
    second = ["conversation", "opener", "turn", "rating", "turn", "rating", "verdict", "review", "rating"]
    assert [e["kind"] for e in events] == [*first, *second]
    assert {e["schema"] for e in events} == {EVENT_SCHEMA} and len({e["id"] for e in events}) == len(events)
    verdict = events[9]  # names the models, the winner and whether it was blind: it stands alone
    assert (verdict["winner"], verdict["model_a"], verdict["model_b"], verdict["blind"]) == (
        "lima-1030",
        "lima-1030",
        "lima-1000",
        True,
    )
    turn = events[1]
    assert (turn["decoding"], turn["started_at"], turn["first_token_s"], turn["assistant_text"]) == (
        {"t": 0.7},
        1.0,
        0.1,
        "hello from lima-1030",
    )
    assert events[-1]["second_opinion"] is True and events[-1]["by_owner"] is False
    original = dump(store.path)
    store.close()

    rebuilt = Store(tmp_path / "rebuilt.db")
    summary = mirror.rebuild([tmp_path / "mirror"], rebuilt)
    rebuilt.close()
    assert (summary["applied"], summary["duplicates"], summary["unreadable"]) == (len(events), 0, [])
    assert dump(tmp_path / "rebuilt.db") == original  # every table, row for row, the log's order included


def test_a_folder_that_fails_then_recovers_loses_and_duplicates_nothing(tmp_path: Path):
    store = Store(tmp_path / "ratings.db")
    folder = tmp_path / "mirror"
    copy = mirror.JsonlMirror(folder, store, retry_s=(0.05, 0.2))
    store.ensure_conversation("c1", "s1", "x", "y", blind=True)
    wait_for(lambda: copy.behind() == 0)
    folder.rename(tmp_path / "away")
    folder.write_text("not a folder")  # every append now fails: NotADirectoryError
    a = store.add_turn("c1", "s1", "a", 1, "x", "hi", "hello", {}, 1.0, 0.1)
    store.rate(a.id, "pass", "s1", "ann")  # acknowledged: SQLite committed it; the copy is not the rater's problem
    wait_for(lambda: copy.failing is not None)
    assert copy.behind() == 2
    time.sleep(0.3)  # a few retries fail
    folder.unlink()
    (tmp_path / "away").rename(folder)
    wait_for(lambda: copy.behind() == 0)
    assert copy.failing is None
    copy.stop()
    lines = [json.loads(line) for line in copy.path.read_text().splitlines()]
    assert [e["kind"] for e in lines] == ["conversation", "turn", "rating"]
    stored = [json.loads(body) for _, body in store.events_after(0)]
    assert lines == stored
    store.close()


def test_stop_copies_what_is_left_and_a_restart_resumes_at_its_bookmark(tmp_path: Path):
    store = Store(tmp_path / "ratings.db")
    folder = tmp_path / "mirror"
    copy = mirror.JsonlMirror(folder, store, retry_s=(60.0, 60.0))  # no retry before stop()
    store.ensure_conversation("c1", "s1", "x", "y", blind=True)
    wait_for(lambda: copy.behind() == 0)
    folder.rename(tmp_path / "away")
    folder.write_text("")
    store.ensure_conversation("c2", "s2", "x", "y", blind=True)
    wait_for(lambda: copy.failing is not None)
    folder.unlink()
    (tmp_path / "away").rename(folder)
    copy.stop()  # the folder is back; the retry is a minute away; stop copies it now
    assert copy.behind() == 0
    store.ensure_conversation("c3", "s3", "x", "y", blind=True)  # after the mirror stopped: the database has it
    again = mirror.JsonlMirror(folder, store)  # the next process writes its own file, from the bookmark
    wait_for(lambda: again.behind() == 0)
    again.stop()
    copied = [json.loads(line)["conversation_id"] for p in sorted(folder.glob("events-*.jsonl"), key=os.path.getmtime)
              for line in p.read_text().splitlines()]  # fmt: skip
    assert copied == ["c1", "c2", "c3"]
    store.close()


def test_a_rebuild_drops_duplicates_skips_torn_lines_and_names_a_bad_line(tmp_path: Path):
    store = Store(tmp_path / "ratings.db")
    copy = mirror.JsonlMirror(tmp_path / "mirror", store)
    collect(store)
    copy.stop()
    original = dump(store.path)
    store.close()
    folder = tmp_path / "mirror"
    lines = copy.path.read_text().splitlines()
    (folder / "events-copy.jsonl").write_text("\n".join(lines[:5]) + '\n{"schema": 1, "id": "to')  # a torn write
    (folder / "ratings-old.jsonl").write_text('{"kind": "rating", "turn_id": "t", "rating": "pass"}\n')  # schema 0

    rebuilt = Store(tmp_path / "rebuilt.db")
    summary = mirror.rebuild([folder], rebuilt)
    assert (summary["duplicates"], summary["legacy"]) == (5, 1)
    assert summary["unreadable"] == [f"{folder / 'events-copy.jsonl'}:6"]
    line = mirror.describe(summary)
    assert "5 duplicates dropped" in line and "1 unreadable lines skipped" in line and "\n" not in line
    with pytest.raises(mirror.MirrorError, match="already holds ratings"):
        mirror.rebuild([folder], rebuilt)
    rebuilt.close()
    assert dump(tmp_path / "rebuilt.db") == original

    bad = tmp_path / "bad"
    bad.mkdir()
    newer = {**json.loads(lines[0]), "schema": EVENT_SCHEMA + 1}
    (bad / "events-x.jsonl").write_text(lines[0] + "\n" + json.dumps(newer) + "\n")
    with pytest.raises(mirror.MirrorError, match=r"events-x.jsonl:2: event schema 2 is newer than this arena's \(1\)"):
        mirror.read_events(bad)
    no_text = {k: v for k, v in json.loads(lines[1]).items() if k != "assistant_text"}
    (bad / "events-x.jsonl").write_text(json.dumps(no_text) + "\n")
    with pytest.raises(mirror.MirrorError, match=r"events-x.jsonl:1: turn event has no 'assistant_text'"):
        mirror.read_events(bad)


def test_report_from_mirror_errors_are_one_line(tmp_path: Path):
    (tmp_path / "db.sqlite").touch()
    for source, message in (
        (str(tmp_path / "nothing-here"), "not a mirror folder, nor a dataset repo id"),
        (str(tmp_path), "no .jsonl files to rebuild from"),
    ):
        result = run_cli("-m", "demo.report", "--from-mirror", source, "--db", str(tmp_path / "new.db"))
        assert result.returncode == 2
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the mirror")
        time.sleep(0.02)


# -- through the real app ---------------------------------------------------------------------------------------
def test_collect_through_the_app_delete_the_database_rebuild_and_the_report_is_the_same(tmp_path: Path):
    servers = [TGIServer(Behaviour(reply=f"Answer from {n}.")).start() for n in ("zero", "dialogue")]
    db, folder = tmp_path / "ratings.db", tmp_path / "mirror"
    env = {
        "LIMA_ARENA_LEFT": f"lima-1000={servers[0].url}",
        "LIMA_ARENA_RIGHT": f"lima-1030={servers[1].url}",
        "LIMA_ARENA_DB": str(db),
        "LIMA_ARENA_MIRROR_DIR": str(folder),
    }

    def run_app(log: Path, work) -> str:
        port = free_port()
        process = launch({**env, "LIMA_ARENA_PORT": str(port)}, log)
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_until_up(url, process, log, timeout=120)
            work(url)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log.read_text()[-2000:]
        finally:
            if process.poll() is None:
                process.kill()
        return log.read_text()

    def rate_two_conversations(url: str) -> None:
        for rater, verdict in (("ann", "a"), ("bo", "tie")):
            client = Client(url, verbose=False)
            client.predict(api_name="/new_conversation")
            for side in "ab":
                client.predict("hello", *DECODING, rater, api_name=f"/send_{side}")
            client.predict("and then?", *DECODING, rater, api_name="/send_a")
            for i, turn in enumerate(client.predict(api_name="/conversation")["turns"]):
                client.predict(turn["turn_id"], ("excellent", "pass", "fail")[i % 3], rater, api_name="/rate")
            client.predict("and then?", *DECODING, rater, api_name="/send_b")
            last = client.predict(api_name="/conversation")["turns"][-1]["turn_id"]
            client.predict(last, "pass", rater, api_name="/rate")
            client.predict(rater, api_name=f"/verdict_{verdict}")
        reviewer = Client(url, verbose=False)
        _, handed = reviewer.predict("cy", api_name="/review_next")
        for turn in handed:
            reviewer.predict(turn["turn_id"], "pass", "cy", api_name="/rate")

    def report() -> dict:
        result = run_cli("-m", "demo.report", "--db", str(db), "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    try:
        run_app(tmp_path / "first.log", rate_two_conversations)
        first = report()
        assert first["turns"] == 8 and first["verdicts"]["conversations"] == 2
        assert first["agreement"]["turns"] > 0  # the reviewer's second opinions are in it
        tables = dump(db)
        (copied,) = folder.glob("events-*.jsonl")
        assert len(copied.read_text().splitlines()) == len(tables["events"])  # SIGTERM left nothing behind

        for leftover in tmp_path.glob("ratings.db*"):
            leftover.unlink()
        result = run_cli("-m", "demo.report", "--from-mirror", str(folder), "--db", str(db), "--json")
        assert result.returncode == 0, result.stderr
        assert f"rebuilt {len(tables['events'])} events from 1 files of {folder} into {db}" in result.stderr
        assert json.loads(result.stdout) == first
        assert dump(db) == tables

        # A restart on an empty disk (a Space) rebuilds the database itself, then goes on recording.
        for leftover in tmp_path.glob("ratings.db*"):
            leftover.unlink()
        log = run_app(tmp_path / "second.log", lambda url: None)
        assert f"rebuilt {len(tables['events'])} events" in log
        assert report() == first
        assert len(list(folder.glob("events-*.jsonl"))) == 1  # the restored events were not copied again
    finally:
        for server in servers:
            server.stop()


# -- clocks, failed restores and hard crashes -------------------------------------------------------------------
def parents_first(db: Path) -> None:
    """Every event in the database's log comes after the events that create what it names."""
    con = sqlite3.connect(db)
    try:
        bodies = [json.loads(body) for (body,) in con.execute("SELECT body FROM events ORDER BY seq")]
    finally:
        con.close()
    created: set[tuple[str, str]] = set()
    for event in bodies:
        for need in mirror._needs(event):
            assert need in created, f"{event['kind']} {event['id']} replayed before its {need}"
        if (made := mirror._creates(event)) is not None:
            created.add(made)


def rows_without_seq(tables: dict[str, list[tuple]]) -> dict[str, list[str]]:
    """Each table's rows as a sorted list, without the sequence numbers that record the order of arrival."""
    with_seq = ("rating_log", "verdict_log", "events")
    return {name: sorted(str(row[1:] if name in with_seq else row) for row in rows) for name, rows in tables.items()}


def test_two_hosts_with_skewed_clocks_rebuild_parents_first_and_drop_nothing(tmp_path: Path, monkeypatch):
    """Host A records; host B (a restart elsewhere, its clock an hour behind A's) restores from A's files and
    records on, into A's conversations too (a second opinion through Review) and its own. Rebuilt from both
    hosts' files, every event is there once, after its parents, and the report is B's."""
    host_a = Store(tmp_path / "a.db")
    copy_a = mirror.JsonlMirror(tmp_path / "a", host_a)
    collect(host_a)
    copy_a.stop()
    host_a.close()

    real = time.time
    monkeypatch.setattr(ratings.time, "time", lambda: real() - 3600)
    host_b = Store(tmp_path / "b.db")
    mirror.rebuild([tmp_path / "a"], host_b)
    host_b.set_mirror_cursor(str((tmp_path / "b").resolve()), host_b.last_event())
    copy_b = mirror.JsonlMirror(tmp_path / "b", host_b)
    host_b.grant_review("r2", "c2", "dee")  # A's conversation, B's clock
    (turn,) = [t for t in host_b.review_turns("c2", "r2") if t.side == "a"]
    host_b.rate(turn.id, "excellent", "r2", "dee")
    host_b.ensure_conversation("c3", "s3", "lima-1030", "lima-1000", blind=True)
    for side, model in (("a", "lima-1030"), ("b", "lima-1000")):
        answer = host_b.add_turn("c3", "s3", side, 1, model, "hey", "hello", {"t": 0.7}, real() - 3600, 0.1)
        host_b.rate(answer.id, "pass", "s3", "eve")
    host_b.set_verdict("c3", "tie", "s3", "eve")
    copy_b.stop()
    host_b.close()
    monkeypatch.undo()
    written = dump(tmp_path / "b.db")
    b_events = [json.loads(line) for line in copy_b.path.read_text().splitlines()]
    a_events = [json.loads(line) for line in copy_a.path.read_text().splitlines()]
    assert len(b_events) == 8 and max(e["at"] for e in b_events) < min(e["at"] for e in a_events)

    for order in ([tmp_path / "a", tmp_path / "b"], [tmp_path / "b", tmp_path / "a"]):
        db = tmp_path / f"rebuilt-{order[0].name}.db"
        rebuilt = Store(db)
        summary = mirror.rebuild(order, rebuilt)
        rebuilt.close()
        assert summary["applied"] == len(written["events"]) and summary["duplicates"] == 0
        assert rows_without_seq(dump(db)) == rows_without_seq(written)  # the same rows, some in another order
        parents_first(db)


def start_and_fail(env: dict[str, str]) -> subprocess.CompletedProcess:
    """Start the app; it must stop by itself (a serving app is killed by the timeout, and the test fails)."""
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, "demo/app.py"], cwd=REPO, env=full, capture_output=True, text=True, timeout=120
    )


def hub_env(endpoint: str, tmp_path: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": endpoint, "HF_TOKEN": "hf_test", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf")}


def test_a_restore_that_fails_stops_the_start_naming_file_line_and_reason(tmp_path: Path):
    sides = {
        "LIMA_ARENA_LEFT": f"zero=http://127.0.0.1:{free_port()}",
        "LIMA_ARENA_RIGHT": "dialogue=http://127.0.0.1:9",
    }
    folder = tmp_path / "mirror"
    store = Store(tmp_path / "first.db")
    copy = mirror.JsonlMirror(folder, store)
    collect(store)
    copy.stop()
    store.close()
    lines = copy.path.read_text().splitlines()
    orphan = {**json.loads(lines[3]), "id": "x" * 32, "turn_id": "no-such-turn"}  # a rating of a turn no file has
    copy.path.write_text("\n".join([*lines[:5], json.dumps(orphan), *lines[5:]]) + "\n")
    db = tmp_path / "ratings.db"
    env = {**sides, "LIMA_ARENA_DB": str(db), "LIMA_ARENA_MIRROR_DIR": str(folder), "LIMA_ARENA_PORT": str(free_port())}

    bad_line = start_and_fail(env)
    assert bad_line.returncode == 2, bad_line.stderr[-2000:]
    last = bad_line.stderr.strip().splitlines()[-1]
    assert last == (
        f"error: cannot restore the ratings database {db}: {copy.path}:6: rating event names turn no-such-turn,"
        " which no file holds"
    ), bad_line.stderr[-2000:]
    assert Store(db).is_empty()  # nothing half-restored: the next start tries again

    unreachable = start_and_fail(
        {**env, **hub_env(f"http://127.0.0.1:{free_port()}", tmp_path), "LIMA_ARENA_DATASET_REPO": "me/ratings"}
    )
    assert unreachable.returncode == 2, unreachable.stderr[-2000:]
    last = unreachable.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot restore the ratings database {db}: cannot download dataset repo me/ratings:")


def test_the_push_interval_bounds_what_a_hard_crash_loses(tmp_path: Path):
    """Without persistent storage the Hub copy is what survives a lost container. Pushed every 2 s (the
    setting), a rating acknowledged more than that (and one upload) before a kill -9 survives the loss of the
    database and the mirror folder; the arena restarts from the repo and goes on."""
    servers = [TGIServer(Behaviour(reply=f"Answer from {n}.")).start() for n in ("zero", "dialogue")]
    hub = HubServer().start()
    db, every = tmp_path / "ratings.db", 2
    env = {
        "LIMA_ARENA_LEFT": f"lima-1000={servers[0].url}",
        "LIMA_ARENA_RIGHT": f"lima-1030={servers[1].url}",
        "LIMA_ARENA_DB": str(db),
        "LIMA_ARENA_DATASET_REPO": "me/ratings",
        "LIMA_ARENA_PUSH_EVERY": str(every),
        **hub_env(hub.url, tmp_path),
    }

    def start(log: Path):
        port = free_port()
        process = launch({**env, "LIMA_ARENA_PORT": str(port)}, log)
        wait_until_up(f"http://127.0.0.1:{port}/", process, log, timeout=120)
        return process, Client(f"http://127.0.0.1:{port}/", verbose=False)

    def wipe() -> None:  # the container is gone: the database, its journal and the mirror folder with it
        for path in tmp_path.glob("ratings.db*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    process = None
    try:
        process, client = start(tmp_path / "first.log")
        client.predict(api_name="/new_conversation")
        for side in "ab":
            client.predict("hello", *DECODING, "ann", api_name=f"/send_{side}")
        first, second = (t["turn_id"] for t in client.predict(api_name="/conversation")["turns"])
        assert client.predict(first, "excellent", "ann", api_name="/rate") == "saved"
        acknowledged = time.time()
        time.sleep(every + 1.5)  # the interval, and one upload to a loopback Hub
        assert client.predict(second, "fail", "ann", api_name="/rate") == "saved"
        process.kill()  # SIGKILL: no shutdown push
        process.wait()
        killed = time.time()
        wipe()
        assert killed - acknowledged > every

        process, client = start(tmp_path / "second.log")
        assert "rebuilt" in (tmp_path / "second.log").read_text()
        client.predict(api_name="/new_conversation")  # the restored arena goes on recording
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        con = sqlite3.connect(db)
        rated = dict(con.execute("SELECT turn_id, rating FROM rating_log").fetchall())
        con.close()
        assert rated.get(first) == "excellent"  # older than the interval: on the Hub before the crash
        pushes = hub.commit_times("me/ratings")
        assert pushes and pushes[-1] < killed  # restored from what was pushed before the kill
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        hub.stop()
        for server in servers:
            server.stop()


def test_a_space_with_persistent_storage_keeps_the_database_there_unless_told_otherwise(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(settings, "SPACE_STORAGE", tmp_path)
    space = {"SPACE_ID": "me/arena"}
    assert settings.parse([], environ=space).db == str(tmp_path / "ratings.db")
    assert settings.parse([], environ={}).db == "ratings.db"  # not a Space: a /data folder is nobody's storage
    assert settings.parse([], environ={**space, "LIMA_ARENA_DB": "env.db"}).db == "env.db"
    assert settings.parse(["--db", "cli.db"], environ={**space, "LIMA_ARENA_DB": "env.db"}).db == "cli.db"
    monkeypatch.setattr(settings, "SPACE_STORAGE", tmp_path / "absent")
    assert settings.parse([], environ=space).db == "ratings.db"  # a Space without it
    with pytest.raises(settings.SettingsError, match="push_every must be at least 1 second"):
        settings.parse(["--push-every", "0"], environ={})


def test_parts_and_a_shorter_copy_of_the_same_file_rebuild_in_their_order(tmp_path: Path, monkeypatch):
    """A mirror begins a new part when its file is full; the repo's copy of a file may be older (shorter) than the
    folder's. Read together, in any order, they are one stream: the same database, row for row."""
    monkeypatch.setattr(mirror, "PART_BYTES", 2000)
    store = Store(tmp_path / "ratings.db")
    copy = mirror.JsonlMirror(tmp_path / "folder", store)
    collect(store)
    copy.stop()
    store.close()
    parts = sorted((tmp_path / "folder").glob("events-*.jsonl"))
    assert len(parts) >= 3 and parts[-1] == copy.path and ".p0001." in parts[1].name
    older = tmp_path / "repo" / "events"
    older.mkdir(parents=True)
    first = parts[0].read_text().splitlines(keepends=True)
    (older / parts[0].name).write_text("".join(first[: len(first) // 2]))
    for index, sources in enumerate(
        ([tmp_path / "repo", tmp_path / "folder"], [tmp_path / "folder", tmp_path / "repo"])
    ):
        rebuilt = Store(tmp_path / f"rebuilt-{index}.db")
        summary = mirror.rebuild(sources, rebuilt)
        rebuilt.close()
        assert summary["duplicates"] == len(first) // 2
        assert dump(tmp_path / f"rebuilt-{index}.db") == dump(tmp_path / "ratings.db")
