"""Limits on a public arena, through the real API: a session's N+1th answer in an hour is refused with when it
resets, nothing is stored for it, its earlier turns and ratings stay, and other sessions are unaffected."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from gradio_client import Client
from tgi_server import Behaviour, TGIServer, free_port

from demo import app, limits, ratings, results, settings
from serving import backends

DECODING = (0.7, 0.9, 1.2, 64)


@pytest.fixture
def capped(tmp_path: Path):
    servers = [TGIServer(Behaviour(reply=f"Answer from {n}.")).start() for n in ("zero", "dialogue")]
    store = ratings.Store(tmp_path / "ratings.db")
    models = [backends.make_backend(f"{n}={s.url}") for n, s in zip(("zero", "dialogue"), servers, strict=True)]
    caps = limits.Limits(turns_per_hour=3, ratings_per_minute=2, tokens_per_hour=None)
    demo = app.build(models, store, blind=False, caps=caps, admin=results.Admin(token="t", public=True))
    demo.queue()
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", tmp_path / "ratings.db"
    demo.close()
    for server in servers:
        server.stop()
    store.close()


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


def test_the_n_plus_first_turn_is_refused_stores_nothing_and_spares_other_sessions(capped):
    url, db = capped
    ann = Client(url, verbose=False)
    ann.predict(api_name="/new_conversation")
    ann.predict(api_name="/consent")  # a public arena: the notice accepted first
    for side in "aba":  # a send to both sides counts once per side
        ann.predict("hello", *DECODING, "ann", api_name=f"/send_{side}")
    first = ann.predict(api_name="/conversation")["turns"][0]["turn_id"]
    assert ann.predict(first, "pass", "ann", api_name="/rate") == "saved"
    with pytest.raises(Exception, match=r"You reached 3 answers per hour; try again in 60 min"):
        ann.predict("one more", *DECODING, "ann", api_name="/send_b")
    assert rows(db, "SELECT count(*) FROM turns") == [(3,)]  # nothing stored for the refused one
    assert rows(db, "SELECT rating FROM ratings") == [("pass",)]
    assert rows(db, "SELECT count(*) FROM turns WHERE user_text = 'one more'") == [(0,)]

    # Ratings per minute: the third within a minute is refused, the first two stand.
    second = ann.predict(api_name="/conversation")["turns"][1]["turn_id"]
    assert ann.predict(second, "excellent", "ann", api_name="/rate") == "saved"
    with pytest.raises(Exception, match=r"You reached 2 ratings per minute; try again in \d+ s"):
        ann.predict(second, "fail", "ann", api_name="/rate")
    assert sorted(rows(db, "SELECT rating FROM ratings")) == [("excellent",), ("pass",)]

    # Another session from the same address: on a public arena the client is counted too, so a new tab (or a
    # script opening sessions) does not reset the count. Other keys are unaffected (the window test below).
    bob = Client(url, verbose=False)
    bob.predict(api_name="/new_conversation")
    bob.predict(api_name="/consent")
    with pytest.raises(Exception, match="answers per hour"):
        bob.predict("hi", *DECODING, "bob", api_name="/send_a")


def test_a_regenerate_refused_by_the_limit_changes_nothing(capped):
    """The limit is checked before the answer being regenerated leaves the history: refused, the rated answer
    stays, nothing is stored, and the conversation reads as before."""
    url, db = capped
    ann = Client(url, verbose=False)
    ann.predict(api_name="/new_conversation")
    ann.predict(api_name="/consent")  # a public arena: the notice accepted first
    for side, text in (("a", "one"), ("b", "one"), ("a", "two")):
        ann.predict(text, *DECODING, "ann", api_name=f"/send_{side}")
    before = ann.predict(api_name="/conversation")
    last_a = [t["turn_id"] for t in before["turns"] if t["side"] == "a"][-1]
    assert ann.predict(last_a, "fail", "ann", api_name="/rate") == "saved"
    with pytest.raises(Exception, match=r"You reached 3 answers per hour"):
        ann.predict("", *DECODING, "ann", api_name="/again_a")
    after = ann.predict(api_name="/conversation")
    assert after["turns"] == before["turns"] and after["ratings"] == {last_a: "fail"}
    assert rows(db, "SELECT side, turn_index, attempt, user_text FROM turns ORDER BY side, turn_index") == [
        ("a", 1, 1, "one"),
        ("a", 2, 1, "two"),
        ("b", 1, 1, "one"),
    ]


def test_windows_slide_and_say_when_they_reset():
    now = [1000.0]
    caps = limits.Limits(turns_per_hour=2, ratings_per_minute=None, tokens_per_hour=100, clock=lambda: now[0])
    caps.start_turn(["session:s"])
    now[0] += 600
    caps.start_turn(["session:s"])
    with pytest.raises(limits.LimitReached, match="try again in 50 min"):  # the first leaves the hour at 3600 s
        caps.start_turn(["session:s"])
    caps.start_turn(["session:other"])  # other keys are unaffected
    now[0] += 3000
    caps.start_turn(["session:s"])  # the first one left the window
    caps.generated(100)
    with pytest.raises(limits.LimitReached, match="generated its 100 tokens for this hour"):
        caps.start_turn(["session:third"])
    assert limits.Limits().active is False and caps.active


def test_limits_are_off_locally_and_on_with_defaults_when_public():
    config = settings.parse([], environ={"LIMA_ARENA_MAX_TURNS_PER_HOUR": "5"})
    assert config.max_turns_per_hour == 5
    local, public = app.caps_for(config, public=False), app.caps_for(config, public=True)
    assert (local.turns_per_hour, local.ratings_per_minute) == (5, None)
    assert (public.turns_per_hour, public.ratings_per_minute) == (5, limits.PUBLIC_DEFAULTS["ratings_per_minute"])
    off = app.caps_for(settings.parse(["--max-turns-per-hour", "0"], environ={}), public=True)
    assert off.turns_per_hour is None  # 0 turns a public default off
    with pytest.raises(settings.SettingsError, match="max_ratings_per_minute must be 0"):
        settings.parse(["--max-ratings-per-minute", "-1"], environ={})


def test_a_window_keeps_few_keys_and_new_sessions_cannot_push_a_clients_count_out():
    """Memory is bounded (least recently used keys go first), and a refused turn makes no key: a script that opens
    session after session from one address is refused each time and never evicts its address's count."""
    caps = limits.Limits(turns_per_hour=2, max_keys=4)
    for n in range(2):
        caps.start_turn([f"session:s{n}", "address:203.0.113.7"])
    for n in range(1000):
        with pytest.raises(limits.LimitReached):
            caps.start_turn([f"session:new{n}", "address:203.0.113.7"])
    assert len(caps.turns) == 3 and caps.turns.used("address:203.0.113.7") == 2
    for n in range(10):  # other clients fill the window: the oldest keys go, never more than four are kept
        caps.start_turn([f"session:other{n}", f"address:198.51.100.{n}"])
    assert len(caps.turns) == 4
