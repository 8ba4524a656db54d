"""``python -m finetune dev``: every kept epoch answers the dev prompts, resumably, in-process or through a server.

Runs on the tiny trained pair of the `test` recipe (tests/conftest.py `trained`, epochs 2 and 3 kept).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import DIALOGUES, run_cli
from tgi_server import Behaviour, TGIServer, free_port

from finetune.dev import RECORD_KEYS, dev_answers
from serving.backends import Decoding

KEPT = [2, 3]  # the test recipe's keep_epochs
SUMMARY = re.compile(r"^epoch-(\d+): 5 answers, stopped at EOT \d+/5, mean \d+ tokens, \d+\.\d\d s per answer$")


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    """Five of the real dev prompts (multi-line code ones included), to keep the tests quick."""
    lines = (DIALOGUES / "dev.jsonl").read_text(encoding="utf-8").splitlines()
    path = tmp_path / "dev5.jsonl"
    path.write_text("\n".join([*lines[:3], *lines[17:19]]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A scratch copy of the dialogue model's run (its kept epochs), to write dev/ into."""
    target = tmp_path / "lima-1030"
    target.mkdir()
    for epoch in KEPT:
        shutil.copytree(trained / "lima-1030" / f"epoch-{epoch}", target / f"epoch-{epoch}")
    return target


def ids(prompts: Path) -> list[str]:
    return [json.loads(line)["id"] for line in prompts.read_text(encoding="utf-8").splitlines()]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_kept_epoch_answers_every_prompt_in_the_record_format(run, prompts):
    result = run_cli(
        "-m", "finetune", "dev", str(run), "--prompts", str(prompts), "--max-new-tokens", "12", "--batch-size", "4"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (run / "dev").iterdir()) == [f"epoch-{n}.jsonl" for n in KEPT]
    lines = result.stdout.strip().splitlines()
    assert [int(SUMMARY.match(line).group(1)) for line in lines] == KEPT, result.stdout
    assert "epoch-3" in result.stderr  # the progress bar
    decoding = {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.2, "max_new_tokens": 12}
    for epoch in KEPT:
        answers = records(run / "dev" / f"epoch-{epoch}.jsonl")
        assert [a["id"] for a in answers] == ids(prompts)
        for answer in answers:
            assert list(answer) == list(RECORD_KEYS)
            assert answer["epoch"] == epoch and answer["model"] == "lima-1030" and answer["source"] == "in-process"
            assert answer["decoding"] == decoding
            assert isinstance(answer["answer"], str) and isinstance(answer["stopped_at_eot"], bool)
            assert 1 <= answer["tokens"] <= 12 and isinstance(answer["seconds"], float)
        assert [a["prompt"] for a in answers] == [
            json.loads(line)["prompt"] for line in prompts.read_text(encoding="utf-8").splitlines()
        ]


def test_a_rerun_skips_answered_ids_and_redoes_a_torn_line(run, prompts):
    decoding = Decoding(max_new_tokens=8)
    dev_answers(run, prompts, decoding, batch_size=2)
    first, last = run / "dev" / "epoch-2.jsonl", run / "dev" / "epoch-3.jsonl"
    kept = first.read_text(encoding="utf-8").splitlines()[:2]
    torn = first.read_text(encoding="utf-8").splitlines()[2][:40]
    first.write_text("\n".join(kept) + "\n" + torn, encoding="utf-8")  # as a kill mid-write leaves it
    untouched = last.read_bytes()

    summaries = dev_answers(run, prompts, decoding, batch_size=2)
    answers = records(first)
    assert [a["id"] for a in answers] == ids(prompts)  # one answer per id, the first two kept as they were
    assert [json.dumps(a) for a in answers[:2]] == [json.dumps(json.loads(line)) for line in kept]
    assert last.read_bytes() == untouched
    assert [int(SUMMARY.match(line).group(1)) for line in summaries] == KEPT


def test_batched_greedy_answers_equal_unbatched_ones(trained, prompts, tmp_path):
    greedy = Decoding(temperature=0, max_new_tokens=24)
    answers = {}
    for batch_size in (1, 4):
        run = tmp_path / f"batch-{batch_size}" / "lima-1030"
        shutil.copytree(trained / "lima-1030" / "epoch-3", run / "epoch-3")
        dev_answers(run, prompts, greedy, batch_size=batch_size)
        answers[batch_size] = [
            (a["answer"], a["tokens"], a["stopped_at_eot"]) for a in records(run / "dev" / "epoch-3.jsonl")
        ]
    assert answers[1] == answers[4]
    assert len({text for text, _, _ in answers[1]}) > 1  # different prompts, different answers: no padding leak


def test_source_answers_through_a_server_into_that_epochs_file(run, prompts):
    with TGIServer(Behaviour(reply="Seven is prime.")) as server:
        dev_answers(run, prompts, Decoding(max_new_tokens=16), batch_size=3, source=server.url, epoch=3)
        assert len(server.applied) == 5
        # the paper's decoding as TGI applies it (tests/tgi_server.py mirrors its router)
        assert all(a["repetition_penalty"] == pytest.approx(1.2) and a["top_p"] == 0.9 for a in server.applied)
        server.behaviour = Behaviour(reply="one two three four five six")
        capped = run / "capped"
        shutil.copytree(run / "epoch-3", capped / "epoch-3")
        dev_answers(capped, prompts, Decoding(max_new_tokens=3), source=server.url, epoch=3)
    assert sorted(p.name for p in (run / "dev").iterdir()) == ["epoch-3.jsonl"]
    answers = records(run / "dev" / "epoch-3.jsonl")
    assert [a["id"] for a in answers] == ids(prompts)
    for answer in answers:
        assert list(answer) == list(RECORD_KEYS)
        assert (answer["source"], answer["epoch"], answer["answer"]) == (server.url, 3, "Seven is prime.")
        assert answer["stopped_at_eot"] is True and answer["tokens"] > 1
    cut = records(capped / "dev" / "epoch-3.jsonl")
    assert {(a["answer"], a["stopped_at_eot"]) for a in cut} == {("one two three", False)}


@pytest.mark.parametrize(
    "case",
    ["no epochs", "not JSON", "no prompt", "source without epoch", "unknown epoch", "bad temperature", "no server"],
)
def test_bad_input_is_one_line_exit_2(case, trained, prompts, tmp_path):
    run, args = trained / "lima-1030", []
    if case == "no epochs":
        run = tmp_path / "empty"
        run.mkdir()
        expected = f"error: {run}: no kept epoch"
    elif case == "not JSON":
        prompts.write_text('{"id": "a", "prompt": "Hi."}\n{"id": "b", "prompt": \n', encoding="utf-8")
        expected = f"error: {prompts}:2: not valid JSON"
    elif case == "no prompt":
        prompts.write_text('{"id": "a", "text": "Hi."}\n', encoding="utf-8")
        expected = f"error: {prompts}:1: prompt: missing field"
    elif case == "source without epoch":
        args, expected = ["--source", "http://127.0.0.1:9"], "error: --source needs --epoch N"
    elif case == "unknown epoch":
        args, expected = ["--epoch", "7"], f"error: {run}: has no epoch-7 model: kept epochs are epoch-2, epoch-3"
    elif case == "bad temperature":
        args, expected = ["--temperature", "-1"], "error: --temperature -1: must be >= 0"
    else:
        url = f"http://127.0.0.1:{free_port()}"
        args, expected = ["--source", url, "--epoch", "3"], f"error: --source {url}: unreachable"
    result = run_cli("-m", "finetune", "dev", str(run), "--prompts", str(prompts), *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(expected), result.stderr
    assert not (trained / "lima-1030" / "dev").exists()
