"""Consent on a public arena, through the real app: before a first message the page says what is stored and
published, where and under which licence; sending is refused on the server (API included) until the session
accepts, and a refusal stores nothing. A private (loopback) arena needs no acceptance."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS
from gradio_client import Client
from tgi_server import Behaviour, TGIServer, free_port

from demo import app, mirror, ratings, results
from serving import backends

DECODING = (0.7, 0.9, 1.2, 64)
REPO_ID = "someone/lima-arena-ratings"


def counts(db: Path) -> tuple[int, int, int]:
    with sqlite3.connect(db) as con:
        return tuple(
            con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("conversations", "turns", "events")
        )


@pytest.fixture
def arena(tmp_path: Path, request) -> Iterator[tuple[str, Path]]:
    """The app over two TGI-protocol servers, public (``request.param``: True) or private; its URL and database."""
    public = getattr(request, "param", True)
    servers = {n: TGIServer(Behaviour(reply=f"Answer from {n}.")).start() for n in ("zero", "dialogue")}
    store = ratings.Store(tmp_path / "ratings.db")
    admin = results.Admin(token="t", public=public)
    sides = [backends.make_backend(f"{n}={server.url}") for n, server in servers.items()]
    demo = app.build(sides, store, blind=False, admin=admin, dataset_repo=REPO_ID)
    port = free_port()
    demo.queue().launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", store.path
    finally:
        demo.close()
        store.close()
        for server in servers.values():
            server.stop()


def test_a_public_arena_refuses_every_message_until_the_session_accepts_and_stores_nothing(arena):
    url, db = arena
    carol = Client(url, verbose=False)
    carol.predict(api_name="/new_conversation")
    for api in ("/send_a", "/send_b", "/again_a"):
        with pytest.raises(Exception, match="accept it before your first message"):
            carol.predict("my secret first message", *DECODING, "carol", api_name=api)
    assert counts(db) == (0, 0, 0)  # the refusals stored nothing, not even the conversation

    carol.predict(api_name="/consent")
    carol.predict("hello", *DECODING, "carol", api_name="/send_a")
    carol.predict("hello", *DECODING, "carol", api_name="/send_b")
    carol.predict(api_name="/new_conversation")  # once per session: a new conversation needs no new acceptance
    carol.predict("again", *DECODING, "carol", api_name="/send_a")
    assert counts(db)[:2] == (2, 3)

    # Another session that never accepts cannot send, whatever the first one did.
    dave = Client(url, verbose=False)
    dave.predict(api_name="/new_conversation")
    with pytest.raises(Exception, match="accept it before your first message"):
        dave.predict("hello", *DECODING, "dave", api_name="/send_a")
    assert counts(db)[:2] == (2, 3)


@pytest.mark.parametrize("arena", [False], indirect=True)
def test_a_private_arena_needs_no_acceptance(arena):
    url, db = arena
    client = Client(url, verbose=False)
    client.predict(api_name="/new_conversation")
    client.predict("hello", *DECODING, "me", api_name="/send_a")
    assert counts(db)[:2] == (1, 1)


def test_the_notice_names_what_is_published_the_dataset_and_its_licence(arena):
    url, _ = arena
    with urllib.request.urlopen(f"{url}config", timeout=10) as response:
        config = json.load(response)
    (notice,) = [c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "consent-notice"]
    for what in ("your messages", "answers", "ratings", "the name you type", "CC BY 4.0"):
        assert what in notice, what
    assert f"[{REPO_ID}](https://huggingface.co/datasets/{REPO_ID})" in notice
    assert mirror.LICENCE[2] in notice


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_in_a_browser_the_notice_shows_and_sending_works_only_after_accepting(arena):
    from playwright.sync_api import sync_playwright

    url, db = arena
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1400})
            page.goto(url)
            page.wait_for_selector("#consent-notice:has-text('CC BY 4.0')", timeout=30_000)
            assert REPO_ID in page.inner_text("#consent-notice")
            page.fill("#input-both textarea", "before accepting")
            page.click("#send-both")
            page.wait_for_selector("text=accept it before your first message", timeout=15_000)
            assert counts(db)[1] == 0
            page.click("#consent-accept")
            page.wait_for_selector("#consent-notice", state="hidden", timeout=10_000)
            page.fill("#input-both textarea", "after accepting")
            page.click("#send-both")
            page.wait_for_selector("#rate-a-1", timeout=15_000)
            page.wait_for_selector("#rate-b-1", timeout=15_000)
        finally:
            browser.close()
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT DISTINCT user_text FROM turns").fetchall() == [("after accepting",)]
