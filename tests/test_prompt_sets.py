"""The studies' prompt sets (issue 21): our test and sensitive prompts, LIMA's test prompts, and their check."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import huggingface_hub.constants
import pytest
from conftest import DIALOGUES, FIXTURES
from test_data import check, write_lines

from common.prompts import find_lima_test, load_lima_test, load_sensitive_prompts, load_test_prompts
from finetune import data

LIMA_TEST = FIXTURES / "lima" / "test.jsonl"


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path: Path, monkeypatch) -> Path:
    """A Hugging Face cache of our own: a developer's cached GAIR/lima must not change what these tests see."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_shipped_sets_pass_the_check_with_the_papers_sizes():
    checked = data.load_data()
    assert checked.warnings == []  # sizes as the paper's, no overlap with training, dev prompts or openers
    assert (len(checked.test), sum(p.out_of_distribution for p in checked.test)) == (100, 20)
    assert (len(checked.sensitive), sum(p.malicious for p in checked.sensitive)) == (30, 10)
    assert checked.lima_test == []  # no GAIR/lima here
    assert all(p.malicious is None for p in checked.test) and all(p.out_of_distribution is None for p in checked.dev)
    ids = [p.id for p in checked.openers + checked.dev + checked.test + checked.sensitive]
    ids += [e.id for e in checked.sets.dialogue]
    assert len(ids) == len(set(ids))


def test_shipped_records_have_one_shape():
    assert {tuple(r) for r in read(DIALOGUES / "test.jsonl")} == {("id", "category", "prompt", "out_of_distribution")}
    assert {tuple(r) for r in read(DIALOGUES / "sensitive.jsonl")} == {("id", "category", "prompt", "malicious")}


def test_shipped_sets_spread_over_the_papers_kinds():
    test, _ = load_test_prompts(DIALOGUES / "test.jsonl")
    kinds = Counter(p.category for p in test if not p.out_of_distribution)
    assert {"advice", "writing", "coding", "math", "knowledge", "recommendation", "planning", "creative"} <= set(kinds)
    assert max(kinds.values()) <= 10
    assert len({p.category for p in test if p.out_of_distribution}) >= 10  # unusual formats and tasks, varied
    sensitive, _ = load_sensitive_prompts(DIALOGUES / "sensitive.jsonl")
    legitimate = {p.category for p in sensitive if not p.malicious}
    assert {"medical", "legal", "self-harm-support", "controversial", "privacy", "dual-use-safety"} <= legitimate
    assert len({p.category for p in sensitive if p.malicious}) == 10


def test_check_prints_a_row_for_each_set(dialogues_copy, tiny_tokenizer_dir, capsys):
    code, lines, out = check(dialogues_copy, tiny_tokenizer_dir, capsys, "--json")
    assert (code, lines) == (0, [])
    rows = {row["name"]: row["prompts"] for row in json.loads(out)["prompts"]}
    assert rows == {"eval_openers.jsonl": 10, "dev.jsonl": 50, "test.jsonl": 100, "sensitive.jsonl": 30}


TEST_ROW = {
    "id": "t-1",
    "category": "advice",
    "prompt": "How do I keep basil alive indoors?",
    "out_of_distribution": False,
}
SENSITIVE_ROW = {"id": "s-1", "category": "legal", "prompt": "Can my boss read my work email?", "malicious": False}
BAD_RECORDS = [
    ("test: no flag", "test", {"out_of_distribution": None}, "out_of_distribution: missing field (true or false)"),
    (
        "test: flag not a boolean",
        "test",
        {"out_of_distribution": "yes"},
        "out_of_distribution: must be true or false, got a string",
    ),
    ("test: no category", "test", {"category": None}, "category: missing field"),
    ("test: empty category", "test", {"category": " "}, "category: empty"),
    ("test: category not text", "test", {"category": 3}, "category: must be a string, got a number"),
    ("test: no prompt", "test", {"prompt": None}, "prompt: missing field"),
    ("test: empty prompt", "test", {"prompt": ""}, "prompt: empty"),
    ("test: no id", "test", {"id": None}, "id: missing field"),
    ("test: duplicate id", "test", {}, "id: duplicate id 't-1' (first on line 1)"),
    ("sensitive: no flag", "sensitive", {"malicious": None}, "malicious: missing field (true or false)"),
    ("sensitive: flag a number", "sensitive", {"malicious": 1}, "malicious: must be true or false, got a number"),
    ("sensitive: duplicate id", "sensitive", {}, "id: duplicate id 's-1' (first on line 1)"),
]


@pytest.mark.parametrize(("name", "change", "expected"), [c[1:] for c in BAD_RECORDS], ids=[c[0] for c in BAD_RECORDS])
def test_bad_record_is_one_line_naming_file_line_and_field(
    dialogues_copy, tiny_tokenizer_dir, capsys, name, change, expected
):
    good = TEST_ROW if name == "test" else SENSITIVE_ROW
    bad = {key: value for key, value in {**good, **change}.items() if value is not None}
    path = write_lines(dialogues_copy / f"{name}.jsonl", good, bad)
    code, lines, out = check(dialogues_copy, tiny_tokenizer_dir, capsys)
    assert (code, lines, out) == (2, [f"error: {path}:2: {expected}"], "")


BAD_LIMA_ROWS = [
    ("no conversations", {"source": "advice"}, "conversations: missing field"),
    (
        "conversations not a list",
        {"conversations": "hi"},
        "conversations: must be a list holding the prompt, got a string",
    ),
    ("no prompt", {"conversations": []}, "conversations: empty: expected the prompt"),
    ("blank prompt", {"conversations": ["  "]}, "conversations[0]: empty"),
    ("source not text", {"conversations": ["hi"], "source": 7}, "source: must be a string, got a number"),
]


@pytest.mark.parametrize(("row", "expected"), [c[1:] for c in BAD_LIMA_ROWS], ids=[c[0] for c in BAD_LIMA_ROWS])
def test_bad_lima_test_row_is_one_line(tmp_path, dialogues_copy, tiny_tokenizer_dir, capsys, row, expected):
    shutil.copy(FIXTURES / "lima" / "train.jsonl", tmp_path / "train.jsonl")
    lima_test = write_lines(tmp_path / "test.jsonl", read(LIMA_TEST)[0], row)
    code, lines, _ = check(dialogues_copy, tiny_tokenizer_dir, capsys, "--lima", str(tmp_path / "train.jsonl"))
    assert (code, lines) == (2, [f"error: {lima_test}:2: {expected}"])


def warnings(dialogues_dir: Path, lima: str = "sample") -> list[str]:
    return [str(w) for w in data.load_data(lima, dialogues_dir).warnings]


def test_sizes_unlike_the_papers_warn(dialogues_copy):
    test = dialogues_copy / "test.jsonl"
    rows = read(test)
    write_lines(test, *[r for r in rows if r["id"] != "test-100"])  # one out-of-distribution prompt fewer
    sensitive = dialogues_copy / "sensitive.jsonl"
    write_lines(sensitive, *[{**r, "malicious": False} for r in read(sensitive)])
    assert warnings(dialogues_copy) == [
        f"warning: {test}: 99 prompts, 19 with out_of_distribution true: the paper's study has 100, 20 of them "
        "out_of_distribution",
        f"warning: {sensitive}: 30 prompts, 0 with malicious true: the paper's study has 30, 10 of them malicious",
    ]


def test_overlap_with_training_and_earlier_sets_is_caught(dialogues_copy):
    train_prompt = read(DIALOGUES / "sample_single_turn.jsonl")[4]["messages"][0]["content"]
    dev_prompt = read(DIALOGUES / "dev.jsonl")[2]["prompt"]
    test = dialogues_copy / "test.jsonl"
    rows = read(test)
    rows[0]["prompt"] = train_prompt.upper()  # normalised away
    write_lines(test, *rows)
    sensitive = dialogues_copy / "sensitive.jsonl"
    rows = read(sensitive)
    rows[1]["prompt"] = f"Quick one. {dev_prompt}"  # a shared 13-word span
    rows[2]["prompt"] = read(test)[5]["prompt"]
    write_lines(sensitive, *rows)
    sample = dialogues_copy / "sample_single_turn.jsonl"
    assert warnings(dialogues_copy) == [
        f"warning: {test}:1: prompt: overlaps training data at {sample}:5",
        f"warning: {sensitive}:2: prompt: overlaps a dev prompt at {dialogues_copy / 'dev.jsonl'}:3",
        f"warning: {sensitive}:3: prompt: overlaps a test prompt at {test}:6",
    ]


def test_lima_test_loader_reads_the_fixture():
    prompts, problems = load_lima_test(LIMA_TEST)
    assert problems == []
    assert [(p.id, p.category, p.line) for p in prompts] == [
        ("lima-test-001", "advice", 1),
        ("lima-test-002", "writing", 2),
        ("lima-test-003", "explanation", 3),
        ("lima-test-004", "brainstorming", 4),
    ]
    assert prompts[1].prompt == "Write a short poem about a cat watching rain through a window."
    assert all(p.out_of_distribution is None and p.malicious is None and p.follow_ups == [] for p in prompts)


def test_lima_test_beside_lima_train_is_checked_for_overlap(tmp_path):
    train = shutil.copy(FIXTURES / "lima" / "train.jsonl", tmp_path / "train.jsonl")
    first = read(Path(train))[0]["conversations"][0]
    write_lines(tmp_path / "test.jsonl", *read(LIMA_TEST), {"conversations": [first], "source": "advice"})
    assert len(data.load_data(lima=str(train)).lima_test) == 5
    assert warnings(DIALOGUES, lima=str(train)) == [
        f"warning: {tmp_path / 'test.jsonl'}:5: prompt: overlaps training data at {train}:1"
    ]


def test_lima_test_is_found_in_the_hub_cache(empty_hub_cache):
    """Where `hf download GAIR/lima --repo-type dataset` leaves it (huggingface_hub's cache layout)."""
    assert find_lima_test() is None
    repo = empty_hub_cache / "datasets--GAIR--lima"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copy(LIMA_TEST, snapshot / "test.jsonl")
    assert find_lima_test() == snapshot / "test.jsonl"
    checked = data.load_data()
    assert [p.id for p in checked.lima_test] == [f"lima-test-00{n}" for n in range(1, 5)]
    assert checked.warnings == []
    table = data.stats_table(checked, lambda texts: [len(t.split()) for t in texts], max_length=2048)
    assert table["prompts"][-1]["name"] == "LIMA test.jsonl" and table["prompts"][-1]["prompts"] == 4
