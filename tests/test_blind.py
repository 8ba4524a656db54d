"""Ratings a paper could cite, in a real browser and through the public API: blind judgments stay blind and
final, a conversation owns its streams, and Review shows hostile text inert."""

from __future__ import annotations

import threading
import time
import urllib.request
from http.server import ThreadingHTTPServer

import pytest
from conftest import CHROMIUM
from gradio_client import Client
from test_browser import (  # noqa: F401  (browser, arena_factory: fixtures)
    _Pixel,
    arena_factory,
    browser,
    last_answer,
    open_page,
    rate,
    send_slowly,
    stored,
)
from tgi_server import Behaviour

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")

DECODING = (0.7, 0.9, 1.2, 64)


def judged_through_the_api(url: str, verdict: str = "tie") -> Client:
    """A rater's whole conversation through the API: a turn per side, both rated, a verdict."""
    client = Client(url, verbose=False)
    client.predict(api_name="/new_conversation")
    for side in "ab":
        client.predict("Hello there", *DECODING, "alice", api_name=f"/send_{side}")
    for turn in client.predict(api_name="/conversation")["turns"]:
        assert client.predict(turn["turn_id"], "pass", "alice", api_name="/rate") == "saved"
    client.predict("alice", api_name=f"/verdict_{verdict}")
    return client


def test_after_the_verdict_the_controls_are_disabled_and_the_store_refuses_late_changes(browser, arena_factory):
    arena = arena_factory(Behaviour(reply="First answer."), Behaviour(reply="Second answer."))
    page = open_page(browser, arena)
    page.fill("#rater input, #rater textarea", "alice")
    page.fill("#input-both textarea", "Hello")
    page.click("#send-both")
    page.wait_for_selector("#rate-a-1", timeout=15_000)
    page.wait_for_selector("#rate-b-1", timeout=15_000)
    rate(page, "a", 1, "pass")
    assert page.is_disabled("#verdict-tie")  # B is not rated yet: every answer is rated first
    rate(page, "b", 1, "fail")
    page.wait_for_selector("#verdict-tie:not([disabled])", timeout=10_000)
    page.click("#verdict-tie")
    page.wait_for_selector("#verdict-note:has-text('Verdict saved')", timeout=10_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#rate-a-1 input, #rate-b-1 input')].every(i => i.disabled)",
        timeout=10_000,
    )
    assert page.is_disabled("#verdict-a") and page.is_disabled("#verdict-b")

    # The same through the public API, where no control can be disabled: the store refuses.
    client = judged_through_the_api(arena.url)
    turn_id = client.predict(api_name="/conversation")["turns"][1]["turn_id"]
    with pytest.raises(Exception, match="its ratings are final"):
        client.predict(turn_id, "excellent", "alice", api_name="/rate")
    with pytest.raises(Exception, match="already has its verdict"):
        client.predict("alice", api_name="/verdict_b")
    verdicts = stored(arena.db, "SELECT verdict FROM conversations WHERE verdict IS NOT NULL")
    assert sorted(verdicts) == [("tie",), ("tie",)]
    ratings_now = stored(arena.db, "SELECT rating FROM ratings WHERE turn_id = ?", (turn_id,))
    assert ratings_now == [("pass",)]


def test_a_new_conversation_mid_stream_leaves_the_new_one_clean(browser, arena_factory):
    arena, page = send_slowly(browser, arena_factory, 60)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#chat-a .message.bot')].some(m => m.innerText.includes('word3'))",
        timeout=15_000,
    )
    page.click("#new-conversation")
    # the new conversation and its redraw reach the page (seconds on a loaded machine), then nothing of the old
    # one comes back: were its streams still running, they would write into the new panes within this second
    page.wait_for_function(
        "() => !document.querySelector('#chat-a .message.bot, #chat-b .message.bot')", timeout=15_000
    )
    time.sleep(1.0)
    assert last_answer(page, "a") == "" and last_answer(page, "b") == ""
    for server in arena.servers:
        server.behaviour = Behaviour(reply="A fresh answer.")
    page.fill("#input-both textarea", "A new start.")
    page.click("#send-both")
    page.wait_for_selector("#chat-a .message.bot:has-text('A fresh answer.')", timeout=15_000)
    page.wait_for_selector("#chat-b .message.bot:has-text('A fresh answer.')", timeout=15_000)
    time.sleep(0.5)
    for server in arena.servers:  # the model saw only the new conversation
        assert server.requests[-1]["messages"] == [{"role": "user", "content": "A new start."}]
        assert len(server.requests) == 2
    assert page.locator("#chat-a .message.user").count() == 1
    rows = stored(arena.db, "SELECT conversation_id, side, turn_index, user_text, status, error FROM turns")
    new = [row for row in rows if row[3] == "A new start."]
    assert sorted((side, index, status) for _, side, index, _, status, _ in new) == [
        ("a", 1, "complete"),
        ("b", 1, "complete"),
    ]
    old = [row for row in rows if row[3] == "Count slowly."]
    assert {row[0] for row in old}.isdisjoint({row[0] for row in new})  # nothing of the old in the new one
    assert all(status == "error" and "new conversation" in error for *_, status, error in old)


def test_blind_mode_names_no_model_path_or_url_before_the_verdict(browser, arena_factory):
    arena = arena_factory(
        Behaviour(reply="Zeta speaks.", model_id="org/hidden-zeta-id"),
        Behaviour(reply="Omega speaks.", model_id="org/hidden-omega-id", die_after_tokens=1),
    )
    secrets = ["zero", "dialogue", "hidden-zeta-id", "hidden-omega-id", *(s.url for s in arena.servers)]
    secrets += [f":{s.port}" for s in arena.servers]
    page = open_page(browser, arena)
    page.fill("#input-both textarea", "Hello")
    page.click("#send-both")
    page.wait_for_selector("#rate-a-1, #rate-b-1", timeout=15_000)
    # One server dies mid-answer (which side it serves is drawn): its error is shown without naming it.
    page.wait_for_selector("#chat-a :text('broke'), #chat-b :text('broke')", timeout=15_000)
    broken = "a" if "broke" in last_answer(page, "a") else "b"
    assert f"the connection to model {broken.upper()} broke" in last_answer(page, broken)
    dom = page.content()
    with urllib.request.urlopen(arena.url + "config", timeout=10) as response:
        config = response.read().decode()
    client = Client(arena.url, verbose=False)
    answers = [str(client.predict(api_name="/new_conversation"))]
    answers.append(str(client.predict("Hi", *DECODING, "bob", api_name="/send_a")))
    answers.append(str(client.predict("Hi", *DECODING, "bob", api_name="/send_b")))
    answers.append(str(client.predict(api_name="/conversation")))
    for where, text in [("page", dom), ("/config", config), *(("API", a) for a in answers)]:
        leaked = [secret for secret in secrets if secret in text]
        assert not leaked, f"{where} names {leaked}"
    assert "2 sides ready" in page.inner_text("#status") or "1 of 2 sides ready" in page.inner_text("#status")
    # The store keeps the full error for whoever debugs the server.
    errors = [e for (e,) in stored(arena.db, "SELECT error FROM turns WHERE status = 'error'")]
    assert errors and all(arena.servers[1].url in e for e in errors)


def test_review_renders_a_hostile_fenced_answer_inert(browser, arena_factory):
    pixel = ThreadingHTTPServer(("127.0.0.1", 0), _Pixel)
    hits_before = len(_Pixel.hits)
    threading.Thread(target=pixel.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{pixel.server_port}"
    hostile = f'```\n<img src="{base}/fenced.png">\n```\n\n<img src="{base}/after.png"> and ![x]({base}/md.png) end'
    arena = arena_factory(Behaviour(reply=hostile), Behaviour(reply=hostile))
    judged_through_the_api(arena.url)  # Review hands out judged conversations only
    page = open_page(browser, arena)
    page.fill("#rater input, #rater textarea", "bob")
    page.get_by_role("tab", name="Review").click()
    page.click("#review-next")
    page.wait_for_selector(".review-rating", timeout=15_000)
    time.sleep(1.0)
    pixel.shutdown()
    assert _Pixel.hits[hits_before:] == []  # nothing of the answer was fetched
    assert page.locator(f"img[src*='{pixel.server_port}']").count() == 0
    body = page.inner_text("body")
    assert f'<img src="{base}/fenced.png">' in body  # the fenced code, shown as code
