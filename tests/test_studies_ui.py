"""The Studies tab through the real app: a rater works through a pairwise, an absolute and a safety study in a real
browser (answers pre-generated into the database, blind order drawn by the server, ratings stored with their study
and none of it reaching Figure 7), and the API (``/study_next``, ``/study_rate``) refuses an item not handed out, a
value off the scale, and a public arena's session that has not accepted the notice."""

from __future__ import annotations

from pathlib import Path

import pytest
import test_browser
import test_consent
from conftest import CHROMIUM
from gradio_client import Client
from tgi_server import Behaviour

from demo.ratings import Store
from demo.report import build_report
from demo.studies import store as studies
from demo.studies.records import AbsoluteRating, PairwiseJudgment, SafetyLabel, Study

browser = test_browser.browser  # the module's chromium, shared by this module's tests
arena = test_consent.arena  # a public app over TGI look-alikes, on a free port

DECODING = {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.2, "max_new_tokens": 32}
STUDIES = (
    Study("fig1", "pairwise", "lima", ("lima", "gpt4")),
    Study("fig3", "absolute", "lima", ("lima",)),
    Study("safety", "safety", "lima", ("lima",)),
)
ARENA_KEYS = ("conversations", "turns", "models", "verdicts", "automatic", "agreement")


def text_of(study: str, prompt: int, source: str) -> str:
    """An answer's text, naming no source: the page must not show which model wrote it."""
    return f"Reply {'XY'[source != 'lima']}{prompt} to {study}, with <b>markup</b>."


def prepared(db: Path, prompts: int = 2) -> None:
    """Each study defined and answered (as ``python -m demo.studies generate`` leaves it), before the app starts."""
    store = Store(db)
    for study in STUDIES:
        studies.define(store, study, DECODING, "dialogues/test.jsonl")
        for n in range(prompts):
            one = {"id": f"p{n}", "prompt": f"Question {n} of {study.name}?", "kind": "advice", "malicious": n == 0}
            for source in study.sources:
                timing = {"decoding": DECODING, "started_at": 1.0, "first_token_s": 0.1}
                studies.add_answer(store, study.name, one, source, text_of(study.name, n, source), timing)
    store.close()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_a_rater_rates_each_kind_of_study_blind_and_it_is_stored_with_its_study(browser, tmp_path):
    prepared(tmp_path / "ratings.db")
    before = build_report(tmp_path / "ratings.db")
    app = test_browser.Arena(tmp_path, Behaviour(reply="a"), Behaviour(reply="b"))
    try:
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        page.goto(app.url)
        page.fill("#rater input, #rater textarea", "alice")
        page.get_by_role("tab", name="Studies").click()
        seen = page.locator("#study-progress:has-text('0 of 2 rated')")
        seen.wait_for(timeout=15_000)
        shown = page.inner_text("#study-answer-a") + page.inner_text("#study-answer-b")
        assert "Question" in page.inner_text("#study-prompt") and "Reply X" in shown and "Reply Y" in shown
        assert "lima" not in shown + page.inner_text("#tab-studies") and "gpt4" not in page.content()
        assert "<b>markup</b>" in shown  # the answer's HTML shown as text
        first = "X" if "Reply X" in page.inner_text("#study-answer-a") else "Y"
        page.click("#study-rate-a")
        page.wait_for_selector("#study-progress:has-text('1 of 2 rated')")
        page.click("#study-rate-tie")
        page.wait_for_selector("#study-prompt:has-text('rated every item')")

        page.locator("#study-picker label", has_text="fig3").click()
        page.wait_for_selector("#study-absolute:visible")
        assert "excellent response" in page.inner_text("#study-absolute")  # LIMA's scale, explained
        assert not page.locator("#study-answer-b").is_visible()
        for level in ("excellent", "fail"):
            page.click(f"#study-rate-{level}")
        page.wait_for_selector("#study-progress:has-text('2 of 2 rated')")

        page.locator("#study-picker label", has_text="safety").click()
        page.wait_for_selector("#study-safety:visible")
        page.click("#study-rate-safe")  # the "declined" question unanswered: refused, nothing stored
        page.wait_for_selector("#study-note:has-text('declined the request')")
        for label, declined in (("safe", "yes"), ("unsafe", "no")):
            page.locator("#study-declined label", has_text=declined).click()
            page.click(f"#study-rate-{label}")
            page.wait_for_selector(f"#study-progress:has-text('{('safe', 'unsafe').index(label) + 1} of 2 rated')")
        records = list(studies.records(app.store))
    finally:
        app.close()
    pairwise = [r for r in records if isinstance(r, PairwiseJudgment)]
    assert [r.rater for r in pairwise] == ["alice", "alice"] and {r.baseline for r in pairwise} == {"gpt4"}
    assert pairwise[0].outcome == ("win" if first == "X" else "loss") and pairwise[1].outcome == "tie"
    assert sorted(r.rating for r in records if isinstance(r, AbsoluteRating)) == ["excellent", "fail"]
    labels = sorted((r.safe, r.declined) for r in records if isinstance(r, SafetyLabel))
    assert labels == [(False, False), (True, True)]
    after = build_report(tmp_path / "ratings.db")
    assert all(after[key] == before[key] for key in ARENA_KEYS)  # nothing of a study reaches Figure 7
    assert after["studies"]["fig1"]["human"]["per_baseline"]  # but it reaches its own figure


def test_the_api_refuses_an_item_not_handed_out_and_a_value_off_the_scale(tmp_path):
    prepared(tmp_path / "ratings.db", prompts=1)
    app = test_browser.Arena(tmp_path, Behaviour(reply="a"), Behaviour(reply="b"))
    try:
        owner, intruder = Client(app.url, verbose=False), Client(app.url, verbose=False)
        shown = owner.predict("fig3", "ann", api_name="/study_next")
        assert shown["kind"] == "absolute" and (shown["rated"], shown["total"]) == (0, 1)
        assert "lima" not in str(shown)  # blind through the API too
        item = shown["item"]["id"]
        with pytest.raises(Exception, match="not handed to your session"):
            intruder.predict("fig3", item, "pass", "", "mallory", api_name="/study_rate")
        with pytest.raises(Exception, match="one of fail, pass, excellent"):
            owner.predict("fig3", item, "great", "", "ann", api_name="/study_rate")
        with pytest.raises(Exception, match="belongs to study 'fig3'"):
            owner.predict("fig1", item, "a", "", "ann", api_name="/study_rate")
        with pytest.raises(Exception, match="yes, no, or empty"):
            owner.predict("fig3", item, "pass", "maybe", "ann", api_name="/study_rate")
        with pytest.raises(Exception, match="no study 'nope'"):
            owner.predict("nope", "ann", api_name="/study_next")
        done = owner.predict("fig3", item, "pass", "", "ann", api_name="/study_rate")
        assert done["item"] is None and done["rated"] == 1
        ratings = [r for r in studies.records(app.store) if isinstance(r, AbsoluteRating)]
    finally:
        app.close()
    assert [(r.rating, r.rater) for r in ratings] == [("pass", "ann")]


@pytest.fixture
def studied(tmp_path: Path) -> None:
    prepared(tmp_path / "ratings.db", prompts=1)


def test_a_public_arena_refuses_study_ratings_until_the_session_accepts(studied, arena):
    url, db = arena  # ``studied`` is asked for first: the studies are in the database before the app starts
    carol = Client(url, verbose=False)
    with pytest.raises(Exception, match="accept it before"):
        carol.predict("safety", "carol", api_name="/study_next")
    with pytest.raises(Exception, match="accept it before"):
        carol.predict("safety", "0" * 20, "safe", "yes", "carol", api_name="/study_rate")
    store = Store(db)
    assert store._one("SELECT COUNT(*) FROM study_shown")[0] == 0  # nothing handed out, nothing stored
    carol.predict(api_name="/consent")
    item = carol.predict("safety", "carol", api_name="/study_next")["item"]["id"]
    done = carol.predict("safety", item, "unsafe", "no", "carol", api_name="/study_rate")
    assert done["rated"] == 1
    assert [(r.safe, r.declined) for r in studies.records(store) if isinstance(r, SafetyLabel)] == [(False, False)]
    store.close()
