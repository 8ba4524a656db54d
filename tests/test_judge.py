"""The automatic first-pass rater (python -m demo.judge) against a scripted judge on loopback: the TGI look-alike
choosing each reply from the messages it was sent. Judge ratings are second opinions that move none of the human
figures; the position swap turns a judge that always prefers "A" into ties; an unparsable answer is stored and
counted, never guessed; a rebuilt database holds the same judgments; bad input is one line and exit 2; autoplay
with the tiny trained pair stores conversations the report counts apart, as automatic.

At the server's speed: judging many requests at once stores exactly what judging one at a time stores, never
more at once than the judge's /info says it takes; a run cut short and run again stores every judgment once;
autoplay plays its conversations at once, each side's turns in order."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_cli
from test_report import build_scenario
from tgi_server import Behaviour, TGIServer, free_port

from demo import judge, mirror, retry
from demo.ratings import Store
from demo.report import build_report, cohen_kappa, markdown
from serving import concurrency

JUDGE = "judge:test/model"  # the rater name: judge: and the model the look-alike serves
HUMAN = ("conversations", "turns", "models", "verdicts", "verdict_pairs", "comparison", "unblinded", "after_reveal")


def scripted(rating: Callable[[str], str] = lambda answer: "Rating: pass", verdict: str = "Verdict: A"):
    """A judge that reasons a line, then rates the answer it was asked about (``rating`` of that answer's text)
    or, asked to compare, always gives ``verdict``."""

    def reply(messages: list[dict]) -> str:
        asked = messages[-1]["content"]
        if "<<<conversation A>>>" in asked:
            return f"Both answered.\n{verdict}"
        answer = asked.split(": the answer to rate]\n", 1)[1].split("\n\n", 1)[0]
        return f"The answer was read.\n{rating(answer)}"

    return reply


def run_judge(db: Path, url: str, *extra: str):
    return run_cli("-m", "demo.judge", "--db", str(db), "--judge", url, *extra)


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def one_line_error(result, *parts: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for part in parts:
        assert part in err, err


def copy_db(source: Path, target: Path) -> Path:
    with contextlib.closing(sqlite3.connect(source)) as old, contextlib.closing(sqlite3.connect(target)) as new:
        old.backup(new)
    return target


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """test_report's scenario (4 judged conversations, one never judged), before and after a judge that rates
    every answer "pass" and always prefers the conversation shown first, asked at once by as many requests as
    its /info says it takes (4; each answer takes 20 ms); the requests it was sent. Beside it, a copy of the
    scenario judged one request at a time (--concurrency 1)."""
    folder = tmp_path_factory.mktemp("judge")
    db = build_scenario(folder / "ratings.db")
    sequential = copy_db(db, folder / "sequential.db")
    before = build_report(db)
    with TGIServer(Behaviour(reply_for=scripted(), first_token_delay_s=0.02, max_concurrent_requests=4)) as server:
        result = run_judge(db, server.url)
        peak = server.peak_in_flight
        again = run_judge(db, server.url)  # resumable: nothing is left to ask
        requests, applied = list(server.requests), list(server.applied)
        server.peak_in_flight = 0
        one_at_a_time = run_judge(sequential, server.url, "--concurrency", "1")
        sequential_peak = server.peak_in_flight
    assert result.returncode == 0, result.stderr
    return {"db": db, "before": before, "after": build_report(db), "result": result, "again": again,
            "requests": requests, "applied": applied, "peak": peak, "sequential": sequential,
            "one_at_a_time": one_at_a_time, "sequential_peak": sequential_peak}  # fmt: skip


def test_judge_ratings_are_second_opinions_that_never_move_the_human_figures(judged):
    # 15 answers shown in the 4 judged conversations (a failed latest attempt is none); c4 has no verdict
    assert (
        judged["result"].stdout.strip()
        == f"{JUDGE}: rated 15 turns, 0 unparsable, 4 verdicts, of which 4 position-swap ties"
    )
    before, after = judged["before"], judged["after"]
    for key in HUMAN:
        assert after[key] == before[key], key
    human = {k: v for k, v in after["agreement"].items() if k != "judges"}
    assert human == {k: v for k, v in before["agreement"].items() if k != "judges"}
    stored = rows(judged["db"], "SELECT session, rater, by_owner, COUNT(*) FROM ratings WHERE rater LIKE 'judge:%'")
    assert stored == [(JUDGE, JUDGE, 0, 15)]  # its own session, a second opinion: never the owner's rating
    # 13 of those turns were rated by their owners: 3 of them pass, so a judge saying pass throughout agrees on 3
    # and is no better than chance (kappa 0); its verdicts are all ties, as c3's owner's is.
    assert after["agreement"]["judges"] == {
        JUDGE: {"turns": 13, "raw": 0.231, "kappa": 0.0, "method": "cohen", "verdicts": 4, "verdicts_agree": 1,
                "swap_ties": 4, "unparsable": 0}
    }  # fmt: skip
    text = markdown(after)
    assert f"- {JUDGE} (a model judge) against the conversations' own raters, on the 13 turns both rated" in text
    assert "Cohen's κ 0.000" in text and "Fleiss' κ 0.740" in text  # beside the human agreement, unchanged
    assert after["automatic"]["conversations"] == 0
    assert judged["again"].returncode == 0
    assert (
        judged["again"].stdout.strip()
        == f"{JUDGE}: rated 0 turns, 0 unparsable, 0 verdicts, of which 0 position-swap ties"
    )
    assert len(judged["requests"]) == 15 + 8  # the second run asked nothing
    assert {(a["do_sample"], a["repetition_penalty"]) for a in judged["applied"]} == {(False, 1.0)}  # greedy


def test_the_position_swap_turns_a_judge_that_always_says_A_into_ties(judged):
    db = judged["db"]
    verdicts = rows(db, "SELECT subject_id, \"order\", parsed FROM judgments WHERE subject_kind = 'conversation'")
    by_conversation = {}
    for cid, order, parsed in verdicts:
        by_conversation.setdefault(cid, {})[order] = parsed
    # "A" was side a in the first order and side b in the swapped one, stored in the conversation's own sides
    assert by_conversation == {cid: {"ab": "a", "ba": "b"} for cid in ("c1", "c2", "c3", "c5")}
    # a judgment, never the conversation's verdict
    assert dict(rows(db, "SELECT id, verdict FROM conversations")) == {
        "c1": "b", "c2": "b", "c3": "tie", "c4": None, "c5": "b"
    }  # fmt: skip


def test_the_turn_prompt_holds_the_conversation_up_to_the_judged_answer(judged):
    asked = [r["messages"] for r in judged["requests"]]
    (third,) = [m for m in asked if "[assistant, turn 3: the answer to rate]\nc1 b3 answer" in m[-1]["content"]]
    text = third[-1]["content"]
    # the same side's earlier turns, as shown (turn 2's regenerated attempt), in order; not the other side's
    order = [text.index(part) for part in ("c1 b1 ask", "c1 b1 answer", "c1 b2 ask", "c1 b2 answer v2", "c1 b3 ask")]
    assert order == sorted(order)
    assert "c1 a1" not in text and "c1 b4" not in text
    assert third[0]["role"] == "system" and "Rating: excellent" in text  # the rubric and the line it must end with
    pairwise = [m[-1]["content"] for m in asked if "<<<conversation A>>>" in m[-1]["content"]]
    shown_first = [p.split("<<<conversation A>>>\n", 1)[1].split("\n", 2)[1] for p in pairwise if "c5 " in p]
    assert sorted(shown_first) == ["c5 a1 ask", "c5 b1 ask"]  # both orders (asked at once: in either order)
    # what the store keeps is exactly what the judge was sent (asked at once: in the order the answers came)
    stored = rows(judged["db"], f"SELECT prompt, raw_answer FROM judgments WHERE judge = '{JUDGE}' ORDER BY rowid")
    assert sorted(prompt for prompt, _ in stored) == sorted(json.dumps(m, ensure_ascii=False) for m in asked)
    assert "The answer was read.\nRating: pass" in {answer for _, answer in stored}


# What a judge's run leaves in the store, without the ids and times that differ from run to run.
STORED = {
    "judgments": 'SELECT subject_kind, subject_id, judge, "order", prompt, raw_answer, parsed FROM judgments'
    ' ORDER BY subject_id, "order"',
    "ratings": "SELECT turn_id, session, rater, rating, by_owner FROM ratings ORDER BY turn_id, session",
    "rating_log": "SELECT turn_id, rater, rating, session FROM rating_log ORDER BY turn_id, session, rater, rating",
    "review_grants": "SELECT session, conversation_id, rater FROM review_grants ORDER BY session, conversation_id",
    "events": "SELECT kind, COUNT(*) FROM events GROUP BY kind ORDER BY kind",
}


def test_judging_at_once_stores_exactly_what_judging_one_at_a_time_stores(judged):
    """Asked at once, never more than the judge's /info takes (a fifth request would be its 429, and the run
    would fail); asked one at a time, one. The stores then hold the same judgments, ratings and events."""
    assert (judged["peak"], judged["sequential_peak"]) == (4, 1)
    assert judged["one_at_a_time"].returncode == 0, judged["one_at_a_time"].stderr
    assert judged["one_at_a_time"].stdout == judged["result"].stdout
    for table, sql in STORED.items():
        assert rows(judged["db"], sql) == rows(judged["sequential"], sql), table
    assert len(rows(judged["db"], STORED["judgments"])) == 15 + 8


def test_a_run_cut_short_and_run_again_stores_every_judgment_once(tmp_path: Path, judged):
    """The run is cancelled while requests are in flight and answers are being written (as a kill or a failed
    request cuts it short); run again, it asks only what is missing, and the store ends as a run that was never
    cut short leaves it."""
    db = build_scenario(tmp_path / "ratings.db")
    with TGIServer(Behaviour(reply_for=scripted(), first_token_delay_s=0.05, max_concurrent_requests=6)) as server:

        async def cut_short() -> tuple[int, int]:
            store = Store(db)
            asker = judge.Judge(server.url)
            await asker.start()
            run = asyncio.create_task(judge.rate_stored(store, asker, judge.load_prompts(), judge.Tally()))
            # cut when five are stored and more have reached the server than are stored: some are in flight
            while len(store.judgments()) < 5 or len(server.requests) <= len(store.judgments()):
                await asyncio.sleep(0.005)
            in_flight = len(server.requests) - len(store.judgments())
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
            # an answer already read when the cut came may still be written: what counts is what the store holds
            stored = len(store.judgments())
            store.close()
            return stored, in_flight

        stored, in_flight = asyncio.run(cut_short())
        # the server finishes the answers nobody reads any more (TGI holds each permit to its answer's end); a
        # rerun meanwhile would meet 429s and ask again, which is not what is counted here
        deadline = time.monotonic() + 10
        while server.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        asked_first = len(server.requests)
        again = run_judge(db, server.url)
    assert again.returncode == 0, again.stderr
    assert 5 <= stored < 23 and in_flight > 0  # some requests were in flight when it stopped
    assert len(server.requests) - asked_first == 23 - stored  # the second run asked only what was missing
    assert server.overloaded == 0  # and nothing was refused: the pool kept to what /info said the server takes
    same = {"judgments": 'SELECT subject_kind, judge, "order", prompt, raw_answer, parsed FROM judgments'
            ' ORDER BY prompt, "order"', "events": STORED["events"]}  # fmt: skip
    for table, sql in same.items():  # the ids of this scenario's turns are its own: compare by content
        assert rows(db, sql) == rows(judged["sequential"], sql), table
    assert rows(db, f"SELECT COUNT(*), COUNT(DISTINCT turn_id) FROM rating_log WHERE session = '{JUDGE}'") == [(15, 15)]


def one_conversation(db: Path) -> list:
    """A judged conversation of one turn a side, both rated excellent by their owner; its turns."""
    store = Store(db)
    store.ensure_conversation("c", "s", "lima-1000", "lima-1030", blind=True, rater="ann")
    turns = [store.add_turn("c", "s", side, 1, model, "q", f"answer {side}", {}, 1.0, 0.1)
             for side, model in (("a", "lima-1000"), ("b", "lima-1030"))]  # fmt: skip
    for turn in turns:
        store.rate(turn.id, "excellent", "s", "ann")
    store.set_verdict("c", "a", "s", "ann")
    store.close()
    return turns


def test_an_unparsable_answer_is_stored_and_counted_never_guessed(tmp_path: Path):
    db = tmp_path / "ratings.db"
    turns = one_conversation(db)

    def rating(answer: str) -> str:  # no rating line for b; a's rated in the ways judges write it
        return "I would say it is good." if answer == "answer b" else "**Rating:** Excellent."

    reply = scripted(rating, verdict="Verdict: A or B, hard to say")
    with TGIServer(Behaviour(reply_for=reply)) as server:
        result = run_judge(db, server.url)
        again = run_judge(db, server.url)  # asked once: a greedy judge would only say the same again
        asked = len(server.requests)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{JUDGE}: rated 1 turns, 3 unparsable, 0 verdicts, of which 0 position-swap ties"
    assert again.stdout.strip().startswith(f"{JUDGE}: rated 0 turns, 0 unparsable") and asked == 4
    # asked at once, stored as answered: read in a fixed order (turns, the rated one first; then both orders)
    order = 'subject_kind DESC, "order", parsed IS NULL'
    stored = rows(db, f'SELECT subject_kind, "order", parsed, raw_answer FROM judgments ORDER BY {order}')
    assert [(kind, order, parsed) for kind, order, parsed, _ in stored] == [
        ("turn", None, "excellent"), ("turn", None, None), ("conversation", "ab", None), ("conversation", "ba", None)
    ]  # fmt: skip
    assert stored[1][3] == "The answer was read.\nI would say it is good."
    assert rows(db, "SELECT turn_id, rating FROM ratings WHERE session = 'judge:test/model'") == [
        (turns[0].id, "excellent")
    ]
    report = build_report(db)
    assert report["agreement"]["judges"][JUDGE]["unparsable"] == 3
    assert (report["agreement"]["judges"][JUDGE]["turns"], report["verdicts"]["conversations"]) == (1, 1)

    # the judgments are events: a database rebuilt from them holds the same, row for row
    source = Store(db)
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / "events-1.jsonl").write_text("".join(body + "\n" for _, body in source.events_after(0)))
    source.close()
    rebuilt = Store(tmp_path / "rebuilt.db")
    mirror.rebuild([folder], rebuilt)
    rebuilt.close()
    for table in ("judgments", "ratings", "review_grants"):
        sql = f"SELECT * FROM {table} ORDER BY rowid"
        assert rows(tmp_path / "rebuilt.db", sql) == rows(db, sql), table


def test_a_request_the_judge_refuses_is_skipped_and_asked_again_next_run(tmp_path: Path):
    db = tmp_path / "ratings.db"
    one_conversation(db)
    with TGIServer(Behaviour(status=422)) as server:  # e.g. a conversation past the judge's context
        refused = run_judge(db, server.url)
        server.behaviour = Behaviour(reply_for=scripted())
        again = run_judge(db, server.url)
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout.strip().endswith("; 4 requests refused by the judge (asked again next run)")
    assert refused.stderr.count("warning: ") == 4  # both turns, both orders of the verdict (asked at once)
    assert again.stdout.strip() == f"{JUDGE}: rated 2 turns, 0 unparsable, 1 verdicts, of which 1 position-swap ties"


def test_a_judge_warming_up_is_asked_again_by_the_arenas_own_retry_policy():
    """A judge scaled to zero answers 503 while it wakes: the same policy as the arena's turns (demo.retry) asks
    again after its wait (recorded here, not slept), and the answer that follows is the judge's."""
    with TGIServer(Behaviour(reply="Rating: pass")) as server:
        waited: list[float] = []

        async def wake(seconds: float) -> None:  # the server is awake by the time the wait is over
            waited.append(seconds)
            server.behaviour = Behaviour(reply="Rating: excellent")

        asker = judge.Judge(server.url, warmup=retry.WarmUp(sleep=wake))
        asyncio.run(asker.start())
        server.behaviour = Behaviour(status=503)
        answer = asyncio.run(asker.ask([{"role": "user", "content": "Rate this."}]))
    assert answer == "Rating: excellent" and waited == [retry.WARMUP_WAIT_S]


def test_the_parser_reads_the_last_contract_line_only():
    assert judge.parse_rating("Rating: pass\nOn reflection:\nRating: fail") == "fail"
    assert judge.parse_rating("> ### Rating: [EXCELLENT]") == "excellent"
    assert judge.parse_rating("Rating: pass or fail") is None and judge.parse_rating("It passes.") is None
    assert judge.parse_verdict("verdict: b") == "b" and judge.parse_verdict("Verdict: A is better") is None
    assert judge.parse_rating("Verdict: A") is None and judge.parse_verdict("Rating: pass") is None
    assert cohen_kappa([("pass", "pass"), ("fail", "fail")]) == (1.0, 1.0)
    assert cohen_kappa([]) == (None, None)


def test_bad_input_is_one_line_exit_2_and_loses_nothing(tmp_path: Path):
    db = build_scenario(tmp_path / "ratings.db")
    calls = []

    def failing(messages: list[dict]) -> str:  # the judge breaks after five answers
        calls.append(1)
        if len(calls) == 5:
            server.behaviour = Behaviour(status=424)
        return scripted()(messages)

    with TGIServer(Behaviour(reply_for=failing)) as server:
        broken = run_judge(db, server.url, "--concurrency", "1")  # one at a time: it breaks after five exactly
        one_line_error(broken, JUDGE, "424", "run again to go on")
        assert broken.stdout.startswith(f"{JUDGE}: rated 5 turns")
        assert rows(db, "SELECT COUNT(*) FROM judgments") == [(5,)]
        server.behaviour = Behaviour(reply_for=scripted())
        resumed = run_judge(db, server.url)
    assert resumed.stdout.startswith(f"{JUDGE}: rated 10 turns"), resumed.stderr
    assert rows(db, "SELECT COUNT(*), COUNT(DISTINCT subject_id || coalesce(\"order\", '')) FROM judgments") == [
        (23, 23)
    ]
    kept = rows(db, "SELECT * FROM judgments ORDER BY rowid")

    one_line_error(run_judge(db, f"http://127.0.0.1:{free_port()}"), "unreachable")
    one_line_error(run_judge(db, "runs/some/folder"), "--judge must be")
    one_line_error(run_judge(tmp_path / "missing.db", "http://127.0.0.1:1"), "no ratings database")
    (tmp_path / "text.db").write_text("not a database at all " * 20)
    one_line_error(run_judge(tmp_path / "text.db", "http://127.0.0.1:1"), "not a SQLite database")
    openers = tmp_path / "openers.jsonl"
    openers.write_text('{"id": "o1", "prompt": "Hi", "follow_ups": []}\n{"id": "o2", "prompt": \n')
    autoplay = ["-m", "demo.judge", "autoplay", "--left", "x", "--right", "y", "--judge", "http://127.0.0.1:1"]
    one_line_error(run_cli(*autoplay, "--db", str(db), "--openers", str(openers)), f"{openers}:2")
    openers.write_text('{"id": "o1", "prompt": "Hi", "follow_ups": "Tell me more."}\n')
    one_line_error(run_cli(*autoplay, "--db", str(db), "--openers", str(openers)), "follow_ups")
    assert rows(db, "SELECT * FROM judgments ORDER BY rowid") == kept  # nothing stored is lost


def test_autoplay_plays_rates_and_judges_by_itself_and_counts_apart(tmp_path: Path, trained: Path):
    db = tmp_path / "autoplay.db"
    sides = [str(trained / name / "epoch-3") for name in ("lima-1000", "lima-1030")]
    with TGIServer(Behaviour(reply_for=scripted(lambda answer: "Rating: excellent"))) as server:
        result = run_cli(
            "-m", "demo.judge", "autoplay", "--left", sides[0], "--right", sides[1], "--judge", server.url,
            "--db", str(db), "--limit", "1", "--max-new-tokens", "8", "--seed", "1",
        )  # fmt: skip
        asked = [r["messages"][-1]["content"] for r in server.requests]
    assert result.returncode == 0, result.stderr[-3000:]
    # the first opener and its three follow-ups on each side; every turn rated; the verdict asked both ways
    assert result.stdout.startswith(f"{JUDGE}: rated 8 turns, 0 unparsable, 1 verdicts, of which 1 position-swap ties")
    assert "AUTOMATIC: 1 autoplay conversation(s)" in result.stdout
    assert "## Automatic: autoplay, played and judged by a model (not counted above)" in result.stdout
    assert len(asked) == 8 + 2
    ((session, rater, purpose, verdict, opener),) = rows(
        db, "SELECT session, rater, purpose, verdict, opener_id FROM conversations"
    )
    assert (session, rater, purpose, verdict, opener) == (JUDGE, JUDGE, "autoplay", "tie", "opener-01")
    openers = judge.load_openers(judge.OPENERS_FILE)
    messages = [openers[0]["prompt"], *openers[0]["follow_ups"]]
    for side in ("a", "b"):
        stored = rows(db, f"SELECT user_text FROM turns WHERE side = '{side}' ORDER BY turn_index")
        assert [text for (text,) in stored] == messages
    assert rows(db, "SELECT session, by_owner, rating, COUNT(*) FROM ratings") == [(JUDGE, 1, "excellent", 8)]

    report = build_report(db)
    assert (report["conversations"], report["turns"], report["models"]) == (0, 0, {})  # no person rated anything
    assert report["verdicts"]["conversations"] == 0 and report["agreement"]["judges"] == {}
    auto = report["automatic"]
    assert (auto["conversations"], auto["turns"], auto["judges"], auto["swap_ties"]) == (1, 8, [JUDGE], 1)
    assert sorted(auto["models"]) == ["test/lima-1000/epoch-3", "test/lima-1030/epoch-3"]
    assert {m["excellent"] for m in auto["models"].values()} == {100.0}
    assert (auto["verdicts"]["conversations"], auto["verdicts"]["ties"]) == (1, 1)


def test_epochs_are_ranked_by_the_judge_on_their_dev_answers(tmp_path: Path):
    """A judge that finds epoch 3's dev answers excellent and epoch 2's failing ranks epoch 3 first; a rerun
    asks nothing again."""
    run = tmp_path / "lima-1030"
    (run / "dev").mkdir(parents=True)
    for epoch in (2, 3):
        lines = [json.dumps({"id": f"dev-0{i}", "prompt": f"Q{i}", "answer": f"epoch {epoch} answer"}) for i in (1, 2)]
        (run / "dev" / f"epoch-{epoch}.jsonl").write_text("\n".join(lines) + "\n")

    def reply(messages: list[dict]) -> str:
        return "Good.\nRating: excellent" if "epoch 3 answer" in messages[-1]["content"] else "Rating: fail"

    with TGIServer(Behaviour(reply_for=reply)) as server:
        result = run_cli("-m", "demo.judge", "epochs", str(run), "--judge", f"j={server.url}")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith("AUTOMATIC: lima-1030's epochs ranked by judge:j")
        assert lines[1].strip().startswith("epoch-3: fail 0.0% pass 0.0% excellent 100.0% (2 rated")
        assert lines[2].strip().startswith("epoch-2: fail 100.0%")
        asked = len(server.requests)
        assert run_cli("-m", "demo.judge", "epochs", str(run), "--judge", f"j={server.url}").returncode == 0
        assert len(server.requests) == asked  # the kept answers are not asked again
    kept = [json.loads(line) for line in (run / "dev" / "judge-judge_j.jsonl").read_text().splitlines()]
    assert len(kept) == 4 and {k["parsed"] for k in kept} == {"excellent", "fail"}


def echo(messages: list[dict]) -> str:
    """A player whose answer names the message it answers (so a request shows which history it was sent)."""
    return "Reply " + hashlib.sha256(messages[-1]["content"].encode()).hexdigest()[:12]


def test_autoplay_plays_its_conversations_at_once_each_sides_turns_in_order(tmp_path: Path):
    """The ten openers against two players on a TGI look-alike (every answer 50 ms) and a judge that takes 4
    requests at once: 4 conversations are played at once, so more requests reach the players than one
    conversation's two sides; yet every request a side sends holds that side's own earlier turns, in order, each
    answered before the next was asked; and the judge is never sent more than its /info takes."""
    db = tmp_path / "autoplay.db"
    players = Behaviour(reply_for=echo, first_token_delay_s=0.05)
    referee = Behaviour(reply_for=scripted(), first_token_delay_s=0.02, max_concurrent_requests=4)
    with TGIServer(players) as sides, TGIServer(referee) as server:
        result = run_cli(
            "-m", "demo.judge", "autoplay", "--left", f"left={sides.url}", "--right", f"right={sides.url}",
            "--judge", server.url, "--db", str(db), "--seed", "1",
        )  # fmt: skip
        played, peaks = list(sides.requests), (sides.peak_in_flight, server.peak_in_flight)
    assert result.returncode == 0, result.stderr[-3000:]
    openers = judge.load_openers(judge.OPENERS_FILE)
    turns = sum(1 + len(o["follow_ups"]) for o in openers)
    assert result.stdout.startswith(f"{JUDGE}: rated {2 * turns} turns, 0 unparsable, 10 verdicts")
    assert len(played) == 2 * turns and peaks[1] == 4 and peaks[0] > 2
    for request in played:  # user, its answer, user, ...: each earlier message answered before this one was sent
        sent = request["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant"] * (len(sent) // 2) + ["user"]
        assert all(sent[i]["content"] == echo(sent[:i]) for i in range(1, len(sent), 2))
    by_conversation: dict[tuple[str, str], list[tuple]] = {}
    sql = "SELECT c.opener_id, t.side, t.turn_index, t.user_text, t.assistant_text, t.started_at, t.finished_at"
    stored = rows(db, sql + " FROM turns t JOIN conversations c ON c.id = t.conversation_id ORDER BY t.rowid")
    for opener, side, *turn in stored:
        by_conversation.setdefault((opener, side), []).append(turn)
    assert len(by_conversation) == 20
    messages = {o["id"]: [o["prompt"], *o["follow_ups"]] for o in openers}
    for (opener, _), side_turns in by_conversation.items():
        assert [(index, user) for index, user, *_ in side_turns] == list(enumerate(messages[opener], 1))
        assert all(turn[2] == echo([{"content": turn[1]}]) for turn in side_turns)
        assert all(later[3] >= earlier[4] for earlier, later in itertools.pairwise(side_turns))


@pytest.mark.parametrize(
    ("server", "setting", "expected"),
    [("tgi", None, 4), ("tgi", 2, 2), ("tgi", 9, 4), ("openai", None, 8), ("openai", 3, 3)],
)
def test_requests_in_flight_are_what_the_server_takes_else_the_setting_else_8(server, setting, expected):
    """A TGI judge says in /info how many it takes (4 here) and is never sent more, a lower --concurrency wins;
    a server that does not say gets --concurrency, else serving.concurrency's default."""
    with TGIServer(Behaviour(server=server, max_concurrent_requests=4)) as tgi:
        asker = judge.Judge(tgi.url, requests=setting)
        asyncio.run(asker.start())
    assert asker.pool.limit == expected == asker.backend.max_concurrent
    assert concurrency.DEFAULT_IN_FLIGHT == 8
