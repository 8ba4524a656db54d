"""The arena through its real API (gradio_client against the launched app), and `python demo/app.py` itself."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from gradio_client import Client
from tgi_server import Behaviour, TGIServer, free_port

from demo import app, ratings
from serving import backends

DECODING = (0.7, 0.9, 1.2, 64)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The app (turn limit 2, not blind) over two TGI-protocol servers; yields its URL and database path."""
    servers = [TGIServer(Behaviour(reply=f"Answer from {n}.")).start() for n in ("zero", "dialogue")]
    db = tmp_path / "ratings.db"
    store = ratings.Store(db)
    models = [backends.make_backend(f"{n}={s.url}") for n, s in zip(("zero", "dialogue"), servers, strict=True)]
    demo = app.build(models, store, blind=False, turn_limit=2)
    demo.queue()
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", db
    demo.close()
    for server in servers:
        server.stop()
    store.close()


def send(client: Client, side: str, text: str) -> list:
    return client.predict(text, *DECODING, "rater", api_name=f"/send_{side}")


def test_a_rating_by_a_forged_or_foreign_turn_id_is_refused(served):
    url, db = served
    owner, intruder = Client(url, verbose=False), Client(url, verbose=False)
    owner.predict(api_name="/new_conversation")
    send(owner, "a", "hello")
    turn_id = owner.predict(api_name="/conversation")["turns"][0]["turn_id"]
    intruder.predict(api_name="/new_conversation")
    for forged in (turn_id, "0" * 32):
        with pytest.raises(Exception, match="does not belong to your session"):
            intruder.predict(forged, "fail", "mallory", api_name="/rate")
    with pytest.raises(Exception, match="rating must be one of"):
        owner.predict(turn_id, "great", "rater", api_name="/rate")
    assert owner.predict(turn_id, "pass", "rater", api_name="/rate") == "saved"
    assert ratings.Store(db).ratings_of([turn_id]) == {turn_id: "pass"}


def test_input_over_the_size_limit_and_turns_past_the_limit_are_refused(served):
    url, _ = served
    client = Client(url, verbose=False)
    client.predict(api_name="/new_conversation")
    assert send(client, "a", "x" * 5000) == []  # refused with a warning: nothing sent, nothing stored
    send(client, "a", "one")
    send(client, "a", "two")
    chat = send(client, "a", "three")  # turn limit 2
    assert len(chat) == 4
    turns = client.predict(api_name="/conversation")["turns"]
    assert [t["turn_index"] for t in turns] == [1, 2]


def test_regenerating_makes_a_new_turn_and_the_old_rating_stays_with_the_old_text(served):
    url, _ = served
    client = Client(url, verbose=False)
    client.predict(api_name="/new_conversation")
    send(client, "b", "hello")
    first = client.predict(api_name="/conversation")["turns"][0]["turn_id"]
    client.predict(first, "fail", "rater", api_name="/rate")
    chat = client.predict("", *DECODING, "rater", api_name="/again_b")
    assert len(chat) == 2  # the regenerated answer replaces the old one on screen
    turns = client.predict(api_name="/conversation")["turns"]
    assert [(t["turn_index"], t["attempt"]) for t in turns] == [(1, 1), (1, 2)]
    assert client.predict(api_name="/conversation")["ratings"] == {first: "fail"}
    with pytest.raises(Exception, match=r"rate every answer before the verdict \(still unrated: B 1\)"):
        client.predict("rater", api_name="/verdict_tie")


def test_a_turn_at_the_papers_settings_is_applied_by_tgi_with_penalty_1_2_and_stored_as_sent(tmp_path: Path):
    """Through the real app: the TGI look-alike applies what TGI's router would, and the turn says what was sent."""
    with TGIServer(Behaviour(reply="Answer.")) as tgi:
        store = ratings.Store(tmp_path / "ratings.db")
        models = [backends.make_backend(f"{n}={tgi.url}") for n in ("zero", "dialogue")]
        demo = app.build(models, store, blind=False)
        demo.queue()
        port = free_port()
        demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            client.predict(api_name="/new_conversation")
            send(client, "a", "hello")
        finally:
            demo.close()
        (applied,) = tgi.applied
    assert applied["repetition_penalty"] == pytest.approx(1.2)
    assert (applied["temperature"], applied["top_p"], applied["max_new_tokens"]) == (0.7, 0.9, 64)
    with sqlite3.connect(tmp_path / "ratings.db") as db:
        (stored,) = [json.loads(row[0]) for row in db.execute("SELECT decoding FROM turns")]
    assert stored["server"] == "tgi 3.3.7" and stored["penalty_scope"] == "context"
    assert stored["sent"]["presence_penalty"] == pytest.approx(-0.8) and stored["repetition_penalty"] == 1.2


def test_arena_latency_benchmark_prints_its_json_line():
    result = run_cli("bench/arena_latency.py", "--tokens", "6", "--reps", "1", "--fast", "0.01", "--slow", "0.02")
    assert result.returncode == 0, result.stderr[-2000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("turn_s_both", "turn_s_slowest_alone", "ratio", "first_token_overhead_ms", "ratio_with_ratings"):
        assert key in line
    assert line["turn_s_both"] >= line["turn_s_slowest_alone"] * 0.5 > 0
    assert line["ratings_per_s"] > 0 and line["rating_sessions"] == 1  # ratings were written while both streamed
    served = line["transformers_serve"]  # the same run against the real transformers serve, one server per side
    assert served["turn_s_both"] > 0 and served["first_token_server_ms"] > 0 and served["max_new_tokens"] == 16


# ----------------------------------------------------------------------------- python demo/app.py itself


def launch(env: dict[str, str], log: Path, cwd: Path = REPO) -> subprocess.Popen:
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, str(REPO / "demo" / "app.py")], cwd=cwd, env=full, stdout=out, stderr=subprocess.STDOUT
        )


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float) -> float:
    started = time.time()
    while time.time() - started < timeout:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return time.time() - started
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the app did not answer within {timeout} s: {log.read_text()[-2000:]}")


def test_with_no_models_the_app_trains_the_first_launch_pair_then_opens_and_answers(tmp_path):
    """The real first launch, started from a folder that is not the repository, with a relative runs/: it trains
    the pair once, serves each model's selected epoch, and the next launch serves them without training."""
    runs, port = tmp_path / "runs", free_port()
    env = {
        "LIMA_ARENA_RUNS": "runs",  # relative: to the folder the app is started from
        "LIMA_ARENA_FIRST_LAUNCH_RECIPE": "test",
        "LIMA_ARENA_PORT": str(port),
        "LIMA_ARENA_DB": str(tmp_path / "ratings.db"),
    }
    url = f"http://127.0.0.1:{port}/"
    for launch_no in (1, 2):
        log = tmp_path / f"launch{launch_no}.log"
        process = launch(env, log, cwd=tmp_path)
        try:
            wait_until_up(url, process, log, timeout=240)
            client = Client(url, verbose=False)
            client.predict(api_name="/new_conversation")
            for side in "ab":
                chat = client.predict("Hello there", 0.7, 0.9, 1.2, 16, "rater", api_name=f"/send_{side}")
                assert chat[-1]["role"] == "assistant" and "⚠️" not in json.dumps(chat)
            models = {t["side"] for t in client.predict(api_name="/conversation")["turns"]}
            assert models == {"a", "b"}
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        trained_now = "training the test pair first" in log.read_text()
        assert trained_now == (launch_no == 1), log.read_text()[-2000:]
        for model in ("lima-1000", "lima-1030"):  # each side is the run's selected epoch, a whole servable folder
            run_dir = runs / "test" / model
            side = run_dir / (run_dir / "selected").read_text().strip()
            assert (side / "config.json").is_file() and (side / "tokenizer.json").is_file()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT while started with SIGINT ignored"])
def test_the_app_stops_cleanly_on_sigterm_and_on_sigint_even_when_started_ignoring_it(tmp_path, how: str):
    """Docker and Spaces send SIGTERM; a background job of a non-interactive shell starts with SIGINT ignored."""
    with TGIServer(Behaviour(reply="Hi.")) as a, TGIServer(Behaviour(reply="Hello.")) as b:
        port, log = free_port(), tmp_path / "app.log"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "LIMA_ARENA_LEFT": f"x={a.url}",
            "LIMA_ARENA_RIGHT": f"y={b.url}",
            "LIMA_ARENA_PORT": str(port),
            "LIMA_ARENA_DB": str(tmp_path / "ratings.db"),
            "LIMA_ARENA_MIRROR_DIR": str(tmp_path / "mirror"),
        }
        ignore = how != "SIGTERM"

        def start_ignoring_sigint() -> None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "demo/app.py"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=start_ignoring_sigint if ignore else None,
            )  # fmt: skip
        try:
            wait_until_up(f"http://127.0.0.1:{port}/", process, log, timeout=120)
            started = time.time()
            process.send_signal(signal.SIGINT if ignore else signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log.read_text()[-2000:]
            assert time.time() - started < 15
        finally:
            if process.poll() is None:
                process.kill()
    assert f"stopping on {'SIGINT' if ignore else 'SIGTERM'}" in log.read_text()


def test_bad_settings_are_one_line_and_exit_2(tmp_path):
    result = run_cli("demo/app.py", "--port", "nope")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --port: 'nope' is not a valid value for port"]
    bad_yaml = tmp_path / "arena.yaml"
    bad_yaml.write_text("lefty: runs/x\n")
    result = run_cli("demo/app.py", "--config", str(bad_yaml))
    assert result.returncode == 2 and "unknown setting 'lefty'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # a side that cannot work stops the start, naming its flag, before anything serves
    result = run_cli("demo/app.py", "--left", "/nonexistent", "--right", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --left /nonexistent: no such folder: pass a trained model folder (runs/<recipe>/<model>/epoch-N), "
        "a Hub id, or a server URL"
    ]
    dead = "http://127.0.0.1:9"  # nothing listens there: the start-up probe warns, then the database error ends it
    result = run_cli("demo/app.py", "--left", dead, "--right", dead, "--db", "/proc/no-such-dir/x.db")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot open the ratings database")


def test_review_second_opinions_feed_agreement_and_results_and_export_work_through_the_api(served, tmp_path):
    url, _ = served
    alice, bob = Client(url, verbose=False), Client(url, verbose=False)
    alice.predict(api_name="/new_conversation")
    for side in "ab":
        send(alice, side, "hello")
    turns = {t["side"]: t["turn_id"] for t in alice.predict(api_name="/conversation")["turns"]}
    alice.predict(turns["a"], "excellent", "alice", api_name="/rate")
    alice.predict(turns["b"], "fail", "alice", api_name="/rate")
    alice.predict("alice", api_name="/verdict_a")

    # alice cannot review her own conversation; bob is handed it, blind, and rates both turns.
    assert alice.predict("alice", api_name="/review_next")[1] == []
    note, handed = bob.predict("bob", api_name="/review_next")
    assert {t["turn_id"] for t in handed} == set(turns.values()) and "rate every answer" in note
    bob.predict(turns["a"], "excellent", "bob", api_name="/rate")
    bob.predict(turns["b"], "pass", "bob", api_name="/rate")

    *_, summary, report = bob.predict("", api_name="/results")  # open locally: no admin token configured
    assert report["models"] == {} and report["comparison"] is None  # rated with the names shown: apart
    shown = report["unblinded"]
    assert shown["models"]["zero"]["excellent"] == 100.0 and shown["models"]["dialogue"]["fail"] == 100.0
    assert shown["verdicts"]["wins"] + shown["verdicts"]["losses"] == 1
    assert report["agreement"]["turns"] == 2 and report["agreement"]["raw"] == 0.5
    assert set(report["raters"]) == {"alice", "bob"}
    assert "zero" in summary
    exported = Path(bob.predict("", "jsonl", api_name="/export"))
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert {(r["rater"], r["rating"]) for r in rows} == {
        ("alice", "excellent"),
        ("alice", "fail"),
        ("bob", "excellent"),
        ("bob", "pass"),
    }


@pytest.mark.parametrize("how", ["normal", "kill", "mirror-fails"])
def test_ratings_load_benchmark_prints_its_json_line(how: str):
    args = ["bench/ratings_load.py", "--raters", "3", "--ratings", "8", "--think", "0", "--procs", "2"]
    result = run_cli(*args, *([] if how == "normal" else [f"--{how}"]))
    assert result.returncode == 0, result.stderr[-2000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("ratings_sent", "ratings_stored", "duplicates", "lost", "p50_ms", "p99_ms"):
        assert key in line
    assert line["lost"] == 0 and line["duplicates"] == 0
    # half the ratings went by plain HTTP, and the app measured each of those itself
    assert line["server_p50_ms"] <= line["server_p99_ms"] and line["client_p50_ms"] <= line["client_p99_ms"]
    if how == "kill":
        assert line["lost_after_kill"] == 0 and 0 < line["acknowledged_before_kill"] < 24
        assert 0 < line["server_ratings"] <= 12
    else:
        assert line["ratings_sent"] == line["ratings_stored"] == 24 and line["server_ratings"] == 12
    if how == "mirror-fails":
        assert line["acknowledged_while_mirror_failed"] > 0
        assert (line["mirror_lost"], line["mirror_duplicates"]) == (0, 0) and line["mirror_events"] > 24
