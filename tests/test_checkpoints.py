"""The Checkpoints tab in a real browser: two epochs' dev answers side by side, blind, rated on the arena's
scale, stored as `checkpoints` conversations that never touch the arena's report, summed up per epoch, and the
chosen epoch written to the run's `selected`."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import CHROMIUM, run_cli
from test_browser import browser  # noqa: F401  (the module's chromium, shared)
from tgi_server import Behaviour, TGIServer, free_port

from demo import app, checkpoints, ratings
from demo.report import build_report
from serving import backends

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")

PROMPTS = {"dev-01": "How do I bleed a radiator?", "dev-02": "What is a good first houseplant?"}


def write_dev_answers(run: Path) -> None:
    """Dev answers in the `finetune dev` format for each kept epoch (epoch 3 stops at EOT more often)."""
    (run / "dev").mkdir(exist_ok=True)
    for epoch in (2, 3):
        with (run / "dev" / f"epoch-{epoch}.jsonl").open("w") as out:
            for i, (pid, prompt) in enumerate(PROMPTS.items()):
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


def test_compare_two_epochs_blind_store_it_apart_and_serve_the_chosen_one(browser, run_dir: Path, tmp_path: Path):  # noqa: F811
    servers = [TGIServer(Behaviour(reply="Hi.")).start() for _ in range(2)]
    store = ratings.Store(tmp_path / "ratings.db")
    models = [backends.make_backend(f"{n}={s.url}") for n, s in zip(("zero", "dialogue"), servers, strict=True)]
    demo = app.build(models, store, checkpoint_runs=checkpoints.find_runs(run_dir))
    demo.queue()
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        page.goto(f"http://127.0.0.1:{port}/")
        page.fill("#rater input, #rater textarea", "erin")
        page.get_by_role("tab", name="Checkpoints").click()
        for _ in PROMPTS:  # both prompts of the one pair of epochs, each once
            page.click("#ckpt-next")
            page.wait_for_selector("#ckpt-answer-a:has-text('says: answer')")
            a_text, b_text = page.inner_text("#ckpt-answer-a"), page.inner_text("#ckpt-answer-b")
            assert "epoch-" not in a_text.lower() and "Epoch 2" in a_text + b_text and "Epoch 3" in a_text + b_text
            assert "to <" in a_text and "to <" in b_text  # text in angle brackets is shown, not taken for HTML
            page.locator("#ckpt-rate-a label", has_text="excellent").click()
            page.locator("#ckpt-rate-b label", has_text="fail").click()
            page.click("#ckpt-save")
            page.wait_for_selector("#ckpt-note:has-text('Saved. A was epoch')")
        page.click("#ckpt-next")
        page.wait_for_selector("#ckpt-note:has-text('You have compared every pair')")

        with sqlite3.connect(tmp_path / "ratings.db") as db:
            rows = db.execute(
                "SELECT c.purpose, c.opener_id, t.side, t.model, r.rating, r.rater FROM conversations c JOIN turns t"
                " ON t.conversation_id = c.id JOIN ratings r ON r.turn_id = t.id ORDER BY c.created_at, t.side"
            ).fetchall()
        assert {row[0] for row in rows} == {"checkpoints"} and {row[1] for row in rows} == set(PROMPTS)
        assert [(side, rating) for _, _, side, _, rating, _ in rows] == [("a", "excellent"), ("b", "fail")] * 2
        assert {row[5] for row in rows} == {"erin"}
        table = {row["epoch"]: row for row in checkpoints.table(store, checkpoints.find_runs(run_dir)[0])}
        assert table[2]["rated"] == table[3]["rated"] == 2
        assert table[2]["excellent"] + table[3]["excellent"] == 100.0  # A rated excellent, B fail: whoever sat on A
        assert (table[2]["stopped_at_eot"], table[3]["stopped_at_eot"]) == (50.0, 100.0)
        assert (table[2]["mean_tokens"], table[3]["mean_tokens"]) == (20.5, 30.5)
        assert build_report(tmp_path / "ratings.db")["turns"] == 0  # the arena's figures never see them

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
    pid, a, b = checkpoints.draw(store, loaded, "s1", random.Random(0))
    checkpoints.record(store, loaded, "s1", "erin", pid, (a, b), ("pass", "fail"))
    rows = {row["epoch"]: row for row in checkpoints.table(store, loaded)}
    assert rows[a]["pass"] == 100.0 and rows[b]["fail"] == 100.0 and rows[a]["answers"] == 2
    assert all(0 < row["mean_tokens"] <= 8 for row in rows.values())
    store.close()
