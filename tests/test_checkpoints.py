"""The Checkpoints tab: a run's epochs as the sources of a pairwise prompt study (``checkpoints:<run>``), every pair
of epochs compared on the dev prompts, blind (the order drawn and stored by the server), handed out evenly, stored
with the study (never in the arena's conversations or Figure 7), summed up per epoch (wins, ties, losses, a
Bradley–Terry score from three epochs judged, stop-at-EOT rate, mean length), and the chosen epoch written to the
run's `selected`."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest
from conftest import CHROMIUM, run_cli
from test_browser import browser  # noqa: F401  (the module's chromium, shared)
from tgi_server import Behaviour, TGIServer, free_port

from demo import app, checkpoints, ratings
from demo.report import build_report
from demo.studies import store as studies
from demo.studies.records import PairwiseJudgment

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")

PROMPTS = {"dev-01": "How do I bleed a radiator?", "dev-02": "What is a good first houseplant?"}


def write_dev_answers(run: Path, epochs: tuple[int, ...] = (2, 3), prompts: dict[str, str] = PROMPTS) -> None:
    """Dev answers in the `finetune dev` format for each kept epoch (epoch 3 stops at EOT more often)."""
    (run / "dev").mkdir(parents=True, exist_ok=True)
    for epoch in epochs:
        with (run / "dev" / f"epoch-{epoch}.jsonl").open("w") as out:
            for i, (pid, prompt) in enumerate(prompts.items()):
                record = {
                    "id": pid,
                    "prompt": prompt,
                    "answer": f"Epoch {epoch} says: answer {i} to <{prompt}>",
                    "epoch": epoch,
                    "model": run.name,
                    "decoding": {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.2, "max_new_tokens": 64},
                    "tokens": 10 * epoch + i,
                    "stopped_at_eot": epoch == 3 or i == 0,
                    "seconds": 0.5,
                    "source": "in-process",
                }
                out.write(json.dumps(record) + "\n")


@pytest.fixture
def run_dir(trained: Path, tmp_path: Path) -> Path:
    """A copy of the tiny dialogue run (its epoch folders are real saved models), with dev answers."""
    run = tmp_path / "runs" / "test" / "lima-1030"
    shutil.copytree(trained / "lima-1030", run)
    write_dev_answers(run)
    return run


def dev_only_run(tmp_path: Path, epochs: tuple[int, ...], prompts: int) -> checkpoints.Run:
    """A run folder holding only dev answers (what the tab reads): no model is loaded by the tab."""
    run = tmp_path / "lima-1030"
    write_dev_answers(run, epochs, {f"dev-{n:02d}": f"Question {n}?" for n in range(prompts)})
    (loaded,) = checkpoints.find_runs(run)
    return loaded


def test_find_runs_reads_a_run_or_a_recipe_folder_and_says_what_is_missing(run_dir: Path, tmp_path: Path):
    (one,) = checkpoints.find_runs(run_dir)
    assert one.epochs() == [2, 3] and one.label(2) == "lima-1030/epoch-2"
    assert [r.name for r in checkpoints.find_runs(run_dir.parent)] == ["lima-1030"]
    with pytest.raises(checkpoints.CheckpointError, match="run python -m finetune dev"):
        checkpoints.find_runs(tmp_path)
    (run_dir / "dev" / "epoch-2.jsonl").write_text('{"id": "x", "prompt": "p", "answer": "a"}\nnot json\n{}\n')
    with pytest.raises(checkpoints.CheckpointError, match=r"epoch-2.jsonl:2: not JSON"):
        checkpoints.find_runs(run_dir)


def test_the_app_refuses_a_checkpoints_folder_without_dev_answers_in_one_line(tmp_path: Path):
    result = run_cli("demo/app.py", "--left", "a=http://127.0.0.1:9", "--right", "b=http://127.0.0.1:9",
                     "--db", str(tmp_path / "r.db"), "--checkpoints", str(tmp_path))  # fmt: skip
    assert result.returncode == 2
    assert "no dev answers of two epochs or more" in result.stderr and "Traceback" not in result.stderr


def stored(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


@needs_chromium
def test_compare_two_epochs_blind_store_it_apart_and_serve_the_chosen_one(browser, run_dir: Path, tmp_path: Path):  # noqa: F811
    servers = [TGIServer(Behaviour(reply="Hi.")).start() for _ in range(2)]
    store = ratings.Store(tmp_path / "ratings.db")
    models = [backends_for(name, server) for name, server in zip(("zero", "dialogue"), servers, strict=True)]
    demo = app.build(models, store, checkpoint_runs=checkpoints.find_runs(run_dir))
    demo.queue()
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        page.goto(f"http://127.0.0.1:{port}/")
        page.fill("#rater input, #rater textarea", "erin")
        page.get_by_role("tab", name="Checkpoints").click()
        shown_a = []
        for done in range(len(PROMPTS)):  # both prompts of the one pair of epochs, each once
            page.wait_for_selector(f"#ckpt-progress:has-text('{done} of 2 rated')")
            a_text, b_text = page.inner_text("#ckpt-answer-a"), page.inner_text("#ckpt-answer-b")
            assert "epoch-" not in a_text.lower() + b_text.lower()  # blind: no epoch named beside an answer
            assert "Epoch 2" in a_text + b_text and "Epoch 3" in a_text + b_text
            assert "to <" in a_text and "to <" in b_text  # text in angle brackets is shown, not taken for HTML
            shown_a.append(2 if "Epoch 2" in a_text else 3)
            page.click("#ckpt-rate-a")
        page.wait_for_selector("#ckpt-prompt:has-text('rated every item')")

        assert stored(tmp_path / "ratings.db", "SELECT COUNT(*) FROM conversations") == [(0,)]  # apart from the arena
        rows = stored(tmp_path / "ratings.db", "SELECT study, choice, rater FROM study_ratings")
        assert rows == [("checkpoints:lima-1030", "a", "erin")] * 2
        table = {row["epoch"]: row for row in checkpoints.table(store, checkpoints.find_runs(run_dir)[0], rows[0][0])}
        assert [table[epoch]["win"] for epoch in (2, 3)] == [shown_a.count(2), shown_a.count(3)]  # A won each time
        assert [table[epoch]["loss"] for epoch in (2, 3)] == [shown_a.count(3), shown_a.count(2)]
        assert table[2]["score"] is None  # two epochs: no ranking to fit
        assert (table[2]["stopped_at_eot"], table[3]["stopped_at_eot"]) == (50.0, 100.0)
        assert (table[2]["mean_tokens"], table[3]["mean_tokens"]) == (20.5, 30.5)
        report = build_report(tmp_path / "ratings.db")
        assert report["turns"] == 0 and report["studies"]["checkpoints:lima-1030"]["human"]["judgments"] == 2

        page.wait_for_selector("#ckpt-table:has-text('epoch-2')")
        page.locator("#ckpt-epoch input").click()
        page.get_by_role("option", name="epoch-2").click()
        page.click("#ckpt-select")
        page.wait_for_selector("#ckpt-note:has-text('now serves epoch-2')")
        assert (run_dir / "selected").read_text().strip() == "epoch-2"
        page.close()
    finally:
        demo.close()
        for server in servers:
            server.stop()
        store.close()


def backends_for(name: str, server: TGIServer):
    from serving import backends

    return backends.make_backend(f"{name}={server.url}")


def test_the_tab_reads_what_finetune_dev_writes(trained: Path, tmp_path: Path):
    run = tmp_path / "lima-1000"
    shutil.copytree(trained / "lima-1000", run)
    prompts = tmp_path / "dev.jsonl"
    prompts.write_text("".join(json.dumps({"id": pid, "prompt": text}) + "\n" for pid, text in PROMPTS.items()))
    result = run_cli("-m", "finetune", "dev", str(run), "--prompts", str(prompts), "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr[-2000:]
    (loaded,) = checkpoints.find_runs(run)
    assert loaded.epochs() == [2, 3] and loaded.shared_prompts(2, 3) == list(PROMPTS)
    store = ratings.Store(tmp_path / "ratings.db")
    name = checkpoints.store_answers(store, loaded)
    assert checkpoints.store_answers(store, loaded) == name == "checkpoints:lima-1000"  # a rerun stores nothing twice
    assert len(studies.stored_answers(store, name)) == 4
    item = studies.next_item(store, name, "s1", "erin", random.Random(0))
    studies.rate(store, item.id, "s1", "erin", "a")
    (judgment,) = [r for r in studies.records(store, name) if isinstance(r, PairwiseJudgment)]
    assert (judgment.model, judgment.baseline, judgment.rater) == (loaded.label(2), loaded.label(3), "erin")
    rows = {row["epoch"]: row for row in checkpoints.table(store, loaded, name)}
    assert sorted(row["win"] + row["loss"] for row in rows.values()) == [1, 1] and rows[2]["answers"] == 2
    assert all(0 < row["mean_tokens"] <= 8 for row in rows.values())
    store.close()


def test_every_pair_of_epochs_is_handed_out_evenly(tmp_path: Path):
    run = dev_only_run(tmp_path, (2, 3, 4, 5), prompts=3)
    store = ratings.Store(tmp_path / "ratings.db")
    name = checkpoints.store_answers(store, run)
    labels = [run.label(epoch) for epoch in (2, 3, 4, 5)]
    pairs: Counter = Counter()
    rng = random.Random(7)
    for round_ in range(2):  # twelve sessions, one item each: every pair twice
        for n in range(6):
            session = f"s{round_}-{n}"
            item = studies.next_item(store, name, session, "r", rng)
            studies.rate(store, item.id, session, "r", "tie")
        judged = [r for r in studies.records(store, name) if isinstance(r, PairwiseJudgment)]
        pairs = Counter((r.model, r.baseline) for r in judged)
        assert pairs == {pair: round_ + 1 for pair in combinations(labels, 2)}  # model: the earlier epoch
    for session in ("alone-1", "alone-2"):  # one session goes on to every item, each once
        seen = set()
        while (item := studies.next_item(store, name, session, "r", rng)) is not None:
            assert item.id not in seen
            seen.add(item.id)
            studies.rate(store, item.id, session, "r", "b")
        assert len(seen) == 6 * 3
    store.close()


def test_the_table_ranks_three_epochs_or_more(tmp_path: Path):
    run = dev_only_run(tmp_path, (2, 3, 4), prompts=4)
    store = ratings.Store(tmp_path / "ratings.db")
    name = checkpoints.store_answers(store, run)
    for n in range(4):  # each rater prefers the later epoch, but for one tie per rater
        session = f"rater-{n}"
        while (item := studies.next_item(store, name, session, session, random.Random(n))) is not None:
            first, second = (int(text.split()[1]) for text in item.answers)
            choice = "tie" if item.prompt_id == f"dev-{n:02d}" else ("a" if first > second else "b")
            studies.rate(store, item.id, session, session, choice)
    rows = {row["epoch"]: row for row in checkpoints.table(store, run, name)}
    assert rows[4]["score"] > rows[3]["score"] > rows[2]["score"]
    for row in rows.values():
        low, high = row["interval"]
        assert low <= row["score"] <= high
        assert (row["win"] + row["tie"] + row["loss"], row["tie"]) == (4 * 4 * 2, 4 * 2)  # raters x prompts x others
    assert (rows[4]["win"], rows[2]["loss"]) == (24, 24)
    store.close()


def later_epoch_wins(messages: list[dict]) -> str:
    """A judge that prefers the answer of the later epoch, whichever side it is read on."""
    asked = messages[-1]["content"]
    epochs = [int(asked.split(f"<<<answer {side}>>>", 1)[1].split()[1]) for side in "AB"]
    return "Compared.\nVerdict: " + ("A" if epochs[0] > epochs[1] else "B")


def test_the_judge_judges_the_checkpoints_study_in_both_orders(tmp_path: Path):
    run = dev_only_run(tmp_path, (2, 3, 4), prompts=2)
    store = ratings.Store(tmp_path / "ratings.db")
    name = checkpoints.store_answers(store, run)
    store.close()
    with TGIServer(Behaviour(reply_for=later_epoch_wins)) as server:
        result = run_cli("-m", "demo.judge", "study", "--db", str(tmp_path / "ratings.db"), "--judge", server.url,
                         "--study", name)  # fmt: skip
        asked = len(server.requests)
    assert result.returncode == 0, result.stderr
    assert "rated 6 items, 0 unparsable" in result.stdout and asked == 6 * 2  # three pairs, two prompts, both orders
    store = ratings.Store(tmp_path / "ratings.db")
    judged = [r for r in studies.records(store, name) if isinstance(r, PairwiseJudgment)]
    assert {(r.model, r.baseline, r.outcome, r.automatic) for r in judged} == {
        (run.label(a), run.label(b), "loss", True) for a, b in combinations((2, 3, 4), 2)
    }  # the earlier epoch, the pair's "model", loses each time
    assert all(row["win"] + row["loss"] == 0 for row in checkpoints.table(store, run, name))  # people's only
    store.close()
