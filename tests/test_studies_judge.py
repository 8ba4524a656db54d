"""``python -m demo.judge study`` against a scripted judge on loopback (the TGI look-alike choosing each reply from
the messages it was sent, as tests/test_judge.py's): pairwise items in both orders (a judge that prefers whatever it
reads first gets a tie), absolute on the three levels, safety with "declined"; stored as the judge's, automatic,
apart from people's; an unparsable answer stored and counted, never guessed; a second run asks nothing."""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import run_cli
from test_judge import JUDGE, one_line_error
from test_studies import DECODING
from tgi_server import Behaviour, TGIServer

from demo.ratings import Store
from demo.studies import store as studies
from demo.studies.records import AbsoluteRating, PairwiseJudgment, SafetyLabel, Study

PAIRWISE = Study("fig1", "pairwise", "lima", ("lima", "b1", "b2"))
ABSOLUTE = Study("fig3", "absolute", "lima", ("lima",))
SAFETY = Study("safe", "safety", "lima", ("lima",))
ANSWERS = {  # (study, prompt id, source): the answer
    ("fig1", "p1", "lima"): "L" * 10, ("fig1", "p1", "b1"): "x" * 5, ("fig1", "p1", "b2"): "y" * 20,
    ("fig1", "p2", "lima"): "L" * 10, ("fig1", "p2", "b1"): "z" * 10, ("fig1", "p2", "b2"): "w" * 30,
    ("fig3", "p1", "lima"): "an excellent answer", ("fig3", "p2", "lima"): "garble",
    ("safe", "p1", "lima"): "I refuse to help with that.", ("safe", "p2", "lima"): "Sure, here is how.",
}  # fmt: skip


def between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def reply(messages: list[dict]) -> str:
    """A judge that prefers the longer answer (the first shown when they are as long), rates "excellent" what
    says so and "pass" the rest (nothing at all for "garble"), and calls a refusal safe and declined."""
    asked = messages[-1]["content"]
    if "<<<answer A>>>" in asked:
        a, b = between(asked, "<<<answer A>>>", "<<<end"), between(asked, "<<<answer B>>>", "<<<end")
        return "Compared.\nVerdict: " + ("B" if len(b) > len(a) else "A")
    answer = between(asked, "<<<answer>>>", "<<<end of answer>>>")
    if "Safety:" in asked:
        return "Read.\nSafety: safe\nDeclined: yes" if "refuse" in answer else "Read.\nSafety: unsafe\nDeclined: no"
    if answer == "garble":
        return "I cannot say."
    return "Read.\nRating: " + ("excellent" if "excellent" in answer else "pass")


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    db = tmp_path_factory.mktemp("studies") / "ratings.db"
    store = Store(db)
    for study in (PAIRWISE, ABSOLUTE, SAFETY):
        studies.define(store, study, DECODING, "test.jsonl")
    timing = {"decoding": DECODING, "started_at": 1.0, "first_token_s": None}
    for (name, prompt_id, source), text in ANSWERS.items():
        marks = {"id": prompt_id, "prompt": f"Request {prompt_id}", "out_of_distribution": prompt_id == "p2"}
        studies.add_answer(store, name, {**marks, "malicious": prompt_id == "p1"}, source, text, timing)
    item = studies.next_item(store, "fig1", "person", "ann")  # a person's rating, counted apart
    studies.rate(store, item.id, "person", "ann", "tie")
    store.close()
    with TGIServer(Behaviour(reply_for=reply, first_token_delay_s=0.4)) as server:  # long enough to overlap
        first = run_cli("-m", "demo.judge", "study", "--db", str(db), "--judge", server.url)
        again = run_cli("-m", "demo.judge", "study", "--db", str(db), "--judge", server.url, "--study", "fig1")
        unknown = run_cli("-m", "demo.judge", "study", "--db", str(db), "--judge", server.url, "--study", "nope")
        requests, peak = len(server.requests), server.peak_in_flight
    store = Store(db)
    records = list(studies.records(store))
    store.close()
    return {
        "db": db,
        "first": first,
        "again": again,
        "unknown": unknown,
        "requests": requests,
        "records": records,
        "peak": peak,
    }


def test_each_study_is_judged_once_and_said_in_a_line(judged):
    assert judged["first"].returncode == 0, judged["first"].stderr
    assert judged["first"].stdout.splitlines() == [
        f"{JUDGE}: study fig1: rated 4 items, 0 unparsable, of which 1 position-swap ties",
        f"{JUDGE}: study fig3: rated 1 items, 1 unparsable",
        f"{JUDGE}: study safe: rated 2 items, 0 unparsable",
    ]
    assert judged["again"].stdout.strip() == f"{JUDGE}: study fig1: rated 0 items, 0 unparsable"
    assert judged["requests"] == 4 * 2 + 2 + 2  # pairwise items twice, the others once; the second run asked nothing
    assert judged["peak"] >= 4  # several items, each in both orders, in flight at once (at most fig1's 4 x 2)
    one_line_error(judged["unknown"], "no study 'nope'", "fig1, fig3, safe")


def test_pairwise_in_both_orders_from_the_models_side_apart_from_people(judged):
    pairs = [r for r in judged["records"] if isinstance(r, PairwiseJudgment)]
    automatic = {(r.prompt_id, r.baseline): r.outcome for r in pairs if r.automatic}
    # longer wins in both orders; as long: "A" each time, so the orders disagree and it is a tie
    assert automatic == {("p1", "b1"): "win", ("p1", "b2"): "loss", ("p2", "b1"): "tie", ("p2", "b2"): "loss"}
    assert {r.rater for r in pairs if r.automatic} == {JUDGE}
    assert [(r.rater, r.outcome) for r in pairs if not r.automatic] == [("ann", "tie")]
    with sqlite3.connect(judged["db"]) as conn:
        orders = conn.execute(
            "SELECT \"order\", parsed FROM study_judgments WHERE study = 'fig1' ORDER BY at"
        ).fetchall()
        arena = conn.execute("SELECT COUNT(*) FROM ratings").fetchone()[0]
    # each order's own reading, as the model's outcome: p2 against b1 is the one where the two disagree
    expected = [("ab", "win"), ("ba", "win")] + [("ab", "loss"), ("ba", "loss")] * 2 + [("ab", "win"), ("ba", "loss")]
    assert sorted(orders) == sorted(expected)
    assert arena == 0  # nothing of a study in the arena's ratings


def test_absolute_and_safety_ratings_and_an_unparsable_answer_kept_but_not_counted(judged):
    absolute = [r for r in judged["records"] if isinstance(r, AbsoluteRating)]
    assert [(r.prompt_id, r.rating, r.out_of_distribution, r.automatic) for r in absolute] == [
        ("p1", "excellent", False, True)
    ]
    with sqlite3.connect(judged["db"]) as conn:
        kept = conn.execute("SELECT raw_answer, parsed FROM study_judgments WHERE study = 'fig3' AND parsed IS NULL")
        assert kept.fetchall() == [("I cannot say.", None)]  # stored, never guessed
    labels = {r.prompt_id: (r.safe, r.declined, r.malicious, r.automatic) for r in judged["records"]
              if isinstance(r, SafetyLabel)}  # fmt: skip
    assert labels == {"p1": (True, True, True, True), "p2": (False, False, False, True)}


def test_a_rebuild_puts_parents_first_whatever_the_clocks(judged, tmp_path):
    from demo import mirror

    with sqlite3.connect(judged["db"]) as conn:
        events = [json.loads(body) for (body,) in conn.execute("SELECT body FROM events ORDER BY seq")]
    # another host wrote the ratings and judgments, its clock far behind: they must still come after what they name
    later = {"study_rating", "study_judgment"}
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name, chosen in (
        ("a", [e for e in events if e["kind"] not in later]),
        ("b", [e for e in events if e["kind"] in later]),
    ):
        lines = [json.dumps({**e, "at": e["at"] - 1000 * (name == "b")}) + "\n" for e in chosen]
        (folder / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8")
    rebuilt = Store(tmp_path / "rebuilt.db")
    assert mirror.rebuild([folder], rebuilt)["applied"] == len(events)
    again = list(studies.records(rebuilt))
    rebuilt.close()
    # the same records (the judge's ratings first now: their clock said so)
    assert sorted(map(repr, again)) == sorted(map(repr, judged["records"]))
