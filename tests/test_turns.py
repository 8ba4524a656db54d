"""A turn of the arena as a stream of events (``arena.play_turn``), without Gradio: a scripted backend that speaks
the backend interface, a real SQLite store, and the real limits. Every refusal changes nothing, in memory or in
the store; a conversation that started over receives nothing more; a server warming up is asked again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from demo import arena, limits, protocol, ratings, retry
from serving import backends

DECODING = backends.Decoding(max_new_tokens=32)


class Scripted:
    """A backend answering from a script, one entry per call of ``stream``: text chunks, ``backends.Waiting``
    notes, an ``asyncio.Event`` to wait for (the test holds the answer there), or an exception to raise."""

    def __init__(self, name: str, *scripts: list, url: str = "") -> None:
        self.name, self.url = name, url
        self.scripts = list(scripts)
        self.asked: list[list[dict]] = []  # the messages of each call

    async def stream(self, messages: list[dict], decoding: backends.Decoding) -> AsyncIterator[str]:
        self.asked.append(messages)
        script = self.scripts.pop(0) if self.scripts else [f"answer {len(self.asked)}"]
        for item in script:
            await asyncio.sleep(0)
            if isinstance(item, asyncio.Event):
                await item.wait()
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    def decoding_record(self, decoding: backends.Decoding) -> dict:
        return {**decoding.as_dict(), "server": "scripted"}


class Sleeps:
    """The retry policy's wait, recorded instead of slept."""

    def __init__(self) -> None:
        self.waited: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waited.append(seconds)


@pytest.fixture
def store(tmp_path: Path):
    store = ratings.Store(tmp_path / "ratings.db")
    yield store
    store.close()


def conversation(blind: bool = False) -> arena.Conversation:
    return arena.new_conversation(blind, configured=("left", "right"))


def play(conv: arena.Conversation, side: str, message: str | None, backend, store, **kwargs) -> list:
    """Every event of one turn, in order."""

    async def collect() -> list:
        return [
            event
            async for event in arena.play_turn(
                conv, side, message, backend=backend, decoding=DECODING, store=store, session="s1", rater="ann",
                **kwargs,
            )
        ]  # fmt: skip

    return asyncio.run(collect())


def kinds(events: list) -> list[str]:
    return [type(event).__name__ for event in events]


def stored(store: ratings.Store, conv: arena.Conversation) -> list[tuple]:
    return [(t.side, t.turn_index, t.attempt, t.user_text, t.status) for t in store.turns(conv.id)]


def snapshot(conv: arena.Conversation) -> list:
    return [(key, [vars(t).copy() for t in side.turns], side.busy) for key, side in conv.sides.items()]


# -- a turn that goes through --------------------------------------------------------------------------------
def test_a_turn_streams_its_chunks_and_is_stored(store):
    conv = conversation()
    model = Scripted("left", [backends.Waiting("waiting for the model"), "Hel", "lo.", backends.Waiting("late")])
    events = play(conv, "a", "  hi  ", model, store)
    assert kinds(events) == ["Started", "Waiting", "Chunk", "Chunk", "Stored"]  # a note after text is dropped
    assert events[0].user == "hi" and [e.answer for e in events[2:4]] == ["Hel", "Hello."]
    turn = events[-1].turn
    assert (turn.side, turn.turn_index, turn.attempt, turn.assistant_text) == ("a", 1, 1, "Hello.")
    assert conv.sides["a"].rateable() == ((1, turn.id, "Hello."),) and not conv.sides["a"].busy
    record = store.conversation(conv.id)
    assert (record["model_a"], record["model_b"], record["session"], record["purpose"]) == (
        "left",
        "right",
        "s1",
        "arena",
    )
    assert model.asked == [[{"role": "user", "content": "hi"}]]


# -- every refusal changes nothing -----------------------------------------------------------------------------
def test_a_regenerate_refused_by_the_hourly_limit_leaves_history_and_store_unchanged(store):
    now = [1000.0]
    caps = limits.Limits(turns_per_hour=1, clock=lambda: now[0])
    conv, model = conversation(), Scripted("left")
    play(conv, "a", "first", model, store, caps=caps, keys=["session:s1"])
    first = conv.sides["a"].turns[0].turn_id
    store.rate(first, "fail", "s1", "ann")
    before, rows = snapshot(conv), stored(store, conv)

    events = play(conv, "a", "", model, store, regenerate=True, caps=caps, keys=["session:s1"])
    assert kinds(events) == ["Refused"] and events[0].limit and "answers per hour" in events[0].reason
    assert snapshot(conv) == before and stored(store, conv) == rows  # the rated answer is still the history
    assert len(model.asked) == 1

    now[0] += 3601  # the next message, once the hour has passed, is the next turn: not an attempt of the rated one
    (*_, done) = play(conv, "a", "second", model, store, caps=caps, keys=["session:s1"])
    assert (done.turn.turn_index, done.turn.attempt, done.turn.user_text) == (2, 1, "second")
    assert store.ratings(conv.id) == {first: "fail"}
    assert model.asked[-1][:2] == [{"role": "user", "content": "first"}, {"role": "assistant", "content": "answer 1"}]


def test_a_regenerate_of_an_unrated_answer_is_refused_and_the_next_turn_is_the_next_index(store):
    conv, model = conversation(), Scripted("left")
    play(conv, "b", "first", model, store)
    before, rows = snapshot(conv), stored(store, conv)
    events = play(conv, "b", None, model, store, regenerate=True)
    assert kinds(events) == ["Refused"] and events[0].reason == protocol.regenerate_refusal(
        judged=False, busy=False, has_turn=True, last_complete=True, last_rated=False, rate_every_turn=True
    )
    assert snapshot(conv) == before and stored(store, conv) == rows
    play(conv, "b", "second", model, store)
    assert stored(store, conv) == [("b", 1, 1, "first", "complete"), ("b", 2, 1, "second", "complete")]


def test_a_rated_answer_regenerates_as_the_next_attempt_and_leaves_the_models_history(store):
    conv, model = conversation(), Scripted("left")
    play(conv, "a", "first", model, store)
    store.rate(conv.sides["a"].turns[0].turn_id, "pass", "s1", "ann")
    (*_, done) = play(conv, "a", "ignored", model, store, regenerate=True)
    assert (done.turn.turn_index, done.turn.attempt, done.turn.user_text) == (1, 2, "first")
    assert model.asked[-1] == [{"role": "user", "content": "first"}]  # the old answer is not in the history
    assert [t.assistant for t in conv.sides["a"].turns] == ["answer 2"]


@pytest.mark.parametrize(
    "case",
    ["judged", "busy", "turn limit", "empty message", "long message", "nothing to regenerate", "unknown side"],
)
def test_every_refusal_is_decided_before_anything_changes(store, case: str):
    conv, model = conversation(), Scripted("left")
    play(conv, "a", "first", model, store, turn_limit=1 if case == "turn limit" else 8)
    message, side, regenerate = "hello", "a", False
    if case == "judged":
        conv.verdict = "tie"
    elif case == "busy":
        conv.sides["a"].busy = True
    elif case == "empty message":
        message = "  \n"
    elif case == "long message":
        message = "x" * (protocol.MAX_MESSAGE_CHARS + 1)
    elif case == "nothing to regenerate":
        side, regenerate = "b", True
    before, rows = snapshot(conv), stored(store, conv)
    if case == "unknown side":
        with pytest.raises(KeyError):
            play(conv, "c", message, model, store)
    else:
        events = play(
            conv, side, message, model, store, regenerate=regenerate, turn_limit=1 if case == "turn limit" else 8
        )
        assert kinds(events) == ["Refused"] and not events[0].limit
        expected = {
            "judged": "has its verdict",
            "busy": "still answering",
            "turn limit": "limit of 1 turns",
            "empty message": "type a message first",
            "long message": "limited to 4000 characters",
            "nothing to regenerate": "nothing to regenerate yet",
        }[case]
        assert expected in events[0].reason
    assert snapshot(conv) == before and stored(store, conv) == rows and len(model.asked) == 1


def test_a_limit_is_not_counted_for_a_turn_a_rule_refuses(store):
    caps = limits.Limits(turns_per_hour=2)
    conv = conversation()
    conv.verdict = "a"
    play(conv, "a", "hello", Scripted("left"), store, caps=caps, keys=["session:s1"])
    assert caps.turns.used("session:s1") == 0


# -- a conversation that started over ----------------------------------------------------------------------
def test_a_stream_of_a_conversation_that_started_over_writes_nothing(store):
    conv, hold = conversation(), asyncio.Event()
    model = Scripted("left", ["partial ", hold, "rest"])

    async def scenario() -> list:
        events = []
        turn = arena.play_turn(
            conv, "a", "hello", backend=model, decoding=DECODING, store=store, session="s1", rater="ann"
        )
        async for event in turn:
            events.append(event)
            if isinstance(event, arena.Chunk):
                old_id = conv.id
                conv.restart(configured=("left", "right"))  # the rater starts a new conversation mid-answer
                hold.set()
        return events, old_id

    events, old_id = asyncio.run(scenario())
    assert kinds(events) == ["Started", "Chunk"]  # nothing after the new start
    assert store.turns(old_id) == [] and store.turns(conv.id) == []
    assert conv.id != old_id and conv.generation == 1
    assert all(side.turns == [] and not side.busy for side in conv.sides.values())


# -- a server warming up ---------------------------------------------------------------------------------------
def warming() -> backends.BackendError:
    return backends.BackendError("the server is warming up or unavailable (503)", warming_up=True, status=503)


def test_a_server_warming_up_is_asked_again_and_each_retry_is_an_event(store):
    sleeps = Sleeps()
    model = Scripted("left", [backends.Waiting("queued"), warming()], [warming()], ["Awake."])
    conv = conversation()
    events = play(conv, "a", "hello", model, store, warmup=retry.WarmUp(sleep=sleeps))
    assert kinds(events) == ["Started", "Waiting", "Retrying", "Retrying", "Chunk", "Stored"]
    assert events[2].note == "the server is warming up or unavailable (503) · retrying in 5 s (1/6)"
    assert events[3].note.endswith("(2/6)") and sleeps.waited == [5.0, 5.0]
    assert len(model.asked) == 3 and stored(store, conv) == [("a", 1, 1, "hello", "complete")]


def test_a_503_after_the_answer_began_and_retries_running_out_are_failures(store):
    sleeps = Sleeps()
    conv = conversation()
    mid_answer = Scripted("left", ["Half", warming()])
    events = play(conv, "a", "one", mid_answer, store, warmup=retry.WarmUp(sleep=sleeps))
    assert kinds(events) == ["Started", "Chunk", "Failed"] and sleeps.waited == []
    asleep = Scripted("left", *[[warming()]] * 3)
    events = play(conv, "b", "two", asleep, store, warmup=retry.WarmUp(retries=2, sleep=sleeps))
    assert kinds(events) == ["Started", "Retrying", "Retrying", "Failed"] and len(asleep.asked) == 3
    assert [(t.side, t.status, t.assistant_text) for t in store.turns(conv.id)] == [
        ("a", "error", "Half"),
        ("b", "error", ""),
    ]


# -- failures ---------------------------------------------------------------------------------------------------
def test_a_failure_is_stored_whole_shown_without_names_when_blind_and_retried_without_a_rating(store):
    conv = conversation(blind=True)
    url = "http://10.0.0.5:8081"
    model = Scripted("left", [backends.BackendError(f"cannot reach {url}: is the server running?")], url=url)
    (*_, failed) = play(conv, "a", "hello", model, store)
    assert isinstance(failed, arena.Failed) and failed.error == "cannot reach model A: is the server running?"
    assert url in failed.turn.error and conv.sides["a"].turns[0].error == failed.error
    assert conv.sides["a"].rateable() == () and conv.sides["a"].history() == []
    (*_, done) = play(conv, "a", None, model, store, regenerate=True)  # a failure needs no rating to be retried
    assert isinstance(done, arena.Stored) and (done.turn.turn_index, done.turn.attempt) == (1, 2)


def test_an_unexpected_error_is_that_sides_failure(store):
    model = Scripted("left", ["a", RuntimeError("boom\nmore")])
    (*_, failed) = play(conversation(), "a", "hello", model, store)
    assert isinstance(failed, arena.Failed) and failed.error == "unexpected error: boom"


def test_a_verdict_stored_while_a_side_answers_refuses_that_turn_and_it_leaves_the_side(tmp_path: Path):
    store = ratings.Store(tmp_path / "ratings.db", rate_every_turn=False)
    conv, hold = conversation(), asyncio.Event()
    model = Scripted("left", ["one"], ["two"], ["late", hold])
    for side in "ab":
        (*_, done) = play(conv, side, "first", model, store)
        store.rate(done.turn.id, "pass", "s1", "ann")

    async def scenario() -> list:
        events = []
        async for event in arena.play_turn(
            conv, "a", "second", backend=model, decoding=DECODING, store=store, session="s1", rater="ann"
        ):
            events.append(event)
            if isinstance(event, arena.Chunk):
                await asyncio.to_thread(store.set_verdict, conv.id, "tie", "s1", "ann")  # through the API
                hold.set()
        return events

    events = asyncio.run(scenario())
    assert kinds(events) == ["Started", "Chunk", "Refused"] and "has its verdict" in events[-1].reason
    assert [t.user for t in conv.sides["a"].turns] == ["first"] and not conv.sides["a"].busy
    assert len(store.turns(conv.id)) == 2
    store.close()
