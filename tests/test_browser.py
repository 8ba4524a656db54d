"""The arena in a real browser: Debian's chromium, headless, driven by Playwright, against two real servers that
speak TGI's streaming protocol on loopback."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS
from tgi_server import Behaviour, TGIServer, free_port

from demo import app, ratings
from serving import backends

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium), as the README's test command does"
)

REPLY_A = "Paris is the capital of France and its largest city by far, on the Seine."
REPLY_B = "The capital of France is Paris, home to about two million people."


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Arena:
    """The real app on a free port, its two sides served by TGI-protocol servers, its store a real SQLite file."""

    def __init__(self, tmp_path: Path, a: Behaviour, b: Behaviour, blind: bool = True) -> None:
        self.servers = [TGIServer(a).start(), TGIServer(b).start()]
        self.db = tmp_path / "ratings.db"
        self.store = ratings.Store(self.db)
        names = ("zero", "dialogue")
        models = [backends.make_backend(f"{name}={s.url}") for name, s in zip(names, self.servers, strict=True)]
        self.demo = app.build(models, self.store, blind=blind, max_new_tokens=256)
        self.demo.queue()
        self.port = free_port()
        self.demo.launch(server_port=self.port, prevent_thread_lock=True, quiet=True)
        self.url = f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self.demo.close()
        for server in self.servers:
            server.stop()
        self.store.close()


@pytest.fixture
def arena_factory(tmp_path: Path) -> Iterator:
    made: list[Arena] = []

    def make(a: Behaviour, b: Behaviour, **kwargs) -> Arena:
        made.append(Arena(tmp_path, a, b, **kwargs))
        return made[-1]

    yield make
    for arena in made:
        arena.close()


def open_page(browser, arena: Arena):
    page = browser.new_page(viewport={"width": 1300, "height": 1400})
    page.goto(arena.url)
    page.wait_for_selector("#status:has-text('ready'), #status:has-text('right')", timeout=30_000)
    return page


def last_answer(page, side: str) -> str:
    bots = page.locator(f"#chat-{side} .message.bot")
    return bots.last.inner_text() if bots.count() else ""


# Records in the page, at every change of the DOM, the text of each pane's last answer when it differs from the
# last one recorded: what a person would have seen, however slowly a test's own polling runs on a loaded machine.
WATCH_ANSWERS = """() => {
  window.lastAnswers = {a: [], b: []};
  const record = () => {
    for (const side of ['a', 'b']) {
      const bots = document.querySelectorAll(`#chat-${side} .message.bot`);
      const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
      const seen = window.lastAnswers[side];
      if (seen[seen.length - 1] !== text) seen.push(text);
    }
  };
  new MutationObserver(record).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def rate(page, side: str, turn: int, value: str) -> None:
    page.locator(f"#rate-{side}-{turn} label", has_text=value).click()


def stored(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(sql, args).fetchall()


def test_a_rater_talks_rates_every_turn_judges_and_it_is_all_stored(browser, arena_factory):
    arena = arena_factory(
        Behaviour(reply=REPLY_A, token_delay_s=0.06, model_id="org/zero"),
        Behaviour(reply=REPLY_B, token_delay_s=0.09, model_id="org/dialogue"),
    )
    page = open_page(browser, arena)
    page.fill("#rater input, #rater textarea", "alice")
    opener = app.load_openers()[0]
    page.locator("#openers button").first.click()  # an evaluation opener, one click: prompt + planned follow-ups
    page.wait_for_selector("#follow-ups:has-text('Planned follow-ups')")
    assert page.input_value("#input-both textarea") == opener["prompt"]
    assert opener["follow_ups"][0][:40] in page.inner_text("#follow-ups")
    page.fill("#input-both textarea", "What is the capital of France?")
    page.evaluate(WATCH_ANSWERS)  # every text each pane shows, recorded in the page as it renders
    page.click("#send-both")

    # Both panes stream: each shows a partial answer before the whole of it.
    replies = {REPLY_A, REPLY_B}
    page.wait_for_function(
        "replies => ['a', 'b'].every(s => window.lastAnswers[s].some(t => replies.includes(t)))",
        arg=sorted(replies),
        timeout=20_000,
    )
    seen = page.evaluate("() => window.lastAnswers")
    for s in "ab":
        partial = [t for t in seen[s] if t and t != "…" and t not in replies]
        assert partial, f"side {s} never showed a partial answer: {seen[s]}"
        assert any(t in replies for t in seen[s])
    assert {last_answer(page, "a").strip(), last_answer(page, "b").strip()} == replies

    # Rate both sides' turn, change one rating; the verdict unlocks only when both sides have a rating.
    page.wait_for_selector("#rate-a-1")
    page.wait_for_selector("#rate-b-1")
    assert page.is_disabled("#verdict-a")
    rate(page, "a", 1, "pass")
    rate(page, "b", 1, "fail")
    rate(page, "a", 1, "excellent")
    page.wait_for_selector("#verdict-b:not([disabled])", timeout=10_000)
    assert "Model A" in page.inner_text("#label-a") and "zero" not in page.inner_text("#label-a") + page.inner_text(
        "#label-b"
    ), "names must stay hidden until the verdict"
    page.click("#verdict-b")
    page.wait_for_selector("#verdict-note:has-text('Verdict saved')", timeout=10_000)
    names = page.inner_text("#label-a") + page.inner_text("#label-b")
    assert "zero" in names and "dialogue" in names, names

    page.reload()
    page.wait_for_selector("#status:has-text('ready'), #status:has-text('right')", timeout=30_000)
    conversation_id, model_a, model_b, verdict, rater = stored(
        arena.db, "SELECT id, model_a, model_b, verdict, rater FROM conversations"
    )[0]
    assert verdict == "b" and rater == "alice"
    assert stored(arena.db, "SELECT opener_id FROM conversations") == [(opener["id"],)]
    current = dict(
        stored(arena.db, "SELECT side, rating FROM rated_turns WHERE conversation_id = ?", (conversation_id,))
    )
    assert current == {"a": "excellent", "b": "fail"}
    assert len(stored(arena.db, "SELECT * FROM rating_log")) == 3
    texts = dict(stored(arena.db, "SELECT model, assistant_text FROM turns"))
    assert texts == {"zero": REPLY_A, "dialogue": REPLY_B}
    assert {model_a, model_b} == {"zero", "dialogue"}


def test_a_side_whose_server_dies_mid_turn_shows_its_error_while_the_other_finishes(browser, arena_factory):
    slow_words = " ".join(f"word{i}" for i in range(40))
    arena = arena_factory(
        Behaviour(reply=slow_words, token_delay_s=0.1, model_id="org/zero"),
        Behaviour(reply=slow_words, token_delay_s=0.1, model_id="org/dialogue"),
        blind=False,  # A is the left model, served by servers[0]
    )
    page = open_page(browser, arena)
    page.fill("#input-both textarea", "Count for me.")
    page.click("#send-both")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#chat-a .message.bot')].some(m => m.innerText.includes('word3'))",
        timeout=15_000,
    )
    arena.servers[0].stop()  # killed mid-answer

    page.wait_for_selector("#chat-a :text('broke')", timeout=15_000)
    assert page.inner_text("#again-a").strip() == "↻ Retry"
    page.wait_for_function(
        "() => [...document.querySelectorAll('#chat-b .message.bot')].some(m => m.innerText.includes('word39'))",
        timeout=20_000,
    )
    page.wait_for_selector("#rate-b-1", timeout=10_000)
    assert page.locator("#rate-a-1").count() == 0, "an errored turn gets no rating control"

    arena.servers[0].start()  # back up: the retry answers on the dead side
    arena.servers[0].behaviour = Behaviour(reply="Back again.", model_id="org/zero")
    page.click("#again-a")
    page.wait_for_selector("#chat-a .message.bot:has-text('Back again.')", timeout=15_000)
    page.wait_for_selector("#rate-a-1", timeout=10_000)
    statuses = stored(arena.db, "SELECT side, attempt, status FROM turns ORDER BY side, attempt")
    assert statuses == [("a", 1, "error"), ("a", 2, "complete"), ("b", 1, "complete")]


class _Pixel(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Pixel.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_html_and_script_from_a_model_or_a_rater_never_run_or_load(browser, arena_factory):
    pixel = ThreadingHTTPServer(("127.0.0.1", 0), _Pixel)
    threading.Thread(target=pixel.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{pixel.server_port}"
    evil = (
        f"Sure. <script>alert('model')</script> <img src={base}/img onerror=alert('img')> "
        f"![tracker]({base}/md.png) <iframe src={base}/frame></iframe> `<b>code</b>` done."
    )
    arena = arena_factory(Behaviour(reply=evil), Behaviour(reply=evil))
    page = open_page(browser, arena)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.fill("#input-both textarea", f"<img src={base}/user onerror=alert('user')> hi")
    page.click("#send-both")
    page.wait_for_selector("#chat-a .message.bot:has-text('done.')", timeout=15_000)
    page.wait_for_selector("#chat-b .message.bot:has-text('done.')", timeout=15_000)
    time.sleep(1.0)
    pixel.shutdown()
    assert dialogs == [] and _Pixel.hits == []
    shown = last_answer(page, "a")
    assert "<script>" in shown and "<b>code</b>" in shown  # shown as text, not run
    assert page.locator("#chat-a img[src*='127.0.0.1'], #chat-a iframe, #chat-a script").count() == 0


def send_slowly(browser, arena_factory, words: int) -> tuple[Arena, object]:
    """An arena whose two servers answer `words` words at 0.1 s each, and a page that has just sent to both."""
    slow = " ".join(f"word{i}" for i in range(words))
    arena = arena_factory(Behaviour(reply=slow, token_delay_s=0.1), Behaviour(reply=slow, token_delay_s=0.1))
    page = open_page(browser, arena)
    page.fill("#input-both textarea", "Count slowly.")
    page.click("#send-both")
    return arena, page


def test_send_to_both_streams_both_sides_at_the_same_time_in_the_browser(browser, arena_factory):
    """Gradio's page runs one trigger's listeners one after another: both sides must still stream at once."""
    arena, page = send_slowly(browser, arena_factory, 30)
    page.wait_for_function(
        "() => ['a', 'b'].every(s => [...document.querySelectorAll(`#chat-${s} .message.bot`)]"
        ".some(m => m.innerText.includes('word5') && !m.innerText.includes('word29')))",
        timeout=10_000,
    )  # both half-way at one moment: they overlap (one after the other, B would start at word29 of A)
    for server in arena.servers:
        assert [body["messages"] for body in server.requests] == [[{"role": "user", "content": "Count slowly."}]]


@pytest.mark.parametrize("width", [1300, 390])
def test_each_rating_control_names_the_answer_it_rates_at_desktop_and_phone_width(
    browser, arena_factory, tmp_path: Path, width: int
):
    arena = arena_factory(Behaviour(reply="Alpha answers first."), Behaviour(reply="Beta answers second."))
    page = browser.new_page(viewport={"width": width, "height": 1400})
    page.goto(arena.url)
    page.wait_for_selector("#status:has-text('ready')", timeout=30_000)
    for message in ("One?", "Two?"):
        page.fill("#input-both textarea", message)
        page.click("#send-both")
        turn = 1 if message == "One?" else 2
        page.wait_for_selector(f"#rate-a-{turn}", timeout=15_000)
        page.wait_for_selector(f"#rate-b-{turn}", timeout=15_000)
    page.screenshot(path=str(tmp_path / f"arena-{width}.png"), full_page=True)
    for side in "ab":
        answer = last_answer(page, side).strip()
        for turn in (1, 2):
            control = page.locator(f"#rate-{side}-{turn}")
            label = control.inner_text()
            assert f"turn {turn}" in label and answer.split()[0] in label  # the answer's first words, quoted
            box = control.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= width + 1, (side, turn, box)
            assert control.locator("label", has_text="excellent").is_visible()
    overflow = page.evaluate("() => document.scrollingElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the page scrolls sideways by {overflow} px at {width} px"
    page.close()
