"""What dialogues/ must hold (issue 2), checked with the same validator users run."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import DIALOGUES, run_cli

from finetune import data


@pytest.fixture(scope="module")
def checked() -> data.CheckedData:
    return data.load_data()  # raises DataError, naming every problem, if any file is invalid


def words(text: str) -> int:
    return len(text.split())


def test_every_file_is_valid_and_clean(checked):
    assert checked.warnings == []  # no duplicates, no overlap between training and evaluation prompts


def test_thirty_dialogues_as_in_the_paper(checked):
    dialogues = checked.sets.dialogues
    assert len(dialogues) == 30
    assert Counter(d.source for d in dialogues) == {"authored-dialogue": 10, "qa-chain": 20}
    assert all(3 <= d.user_turns <= 6 for d in dialogues)
    assistant_turns = [m["content"] for d in dialogues for m in d.messages if m["role"] == "assistant"]
    assert min(words(t) for t in assistant_turns) >= 80


def test_single_turn_sample(checked):
    sample = checked.sets.single_turn
    assert len(sample) >= 120
    answers = [words(e.messages[1]["content"]) for e in sample]
    assert sum(answers) / len(answers) >= 120
    sources = Counter(e.source for e in sample)
    assert {"how-to", "qa-stem", "qa-other", "advice", "writing", "authored", "safety"} <= set(sources)
    assert 3 <= sources["safety"] <= len(sample) * 0.1  # a few, as the paper's 13 of 1,000


def test_openers_and_dev_prompts(checked):
    assert len(checked.openers) == 10
    assert all(2 <= len(o.follow_ups) <= 4 for o in checked.openers)
    assert len({o.category for o in checked.openers}) == 10  # ten different task types
    assert len(checked.dev) == 50
    assert len({p.category for p in checked.dev}) >= 8


def test_ids_unique_across_files(checked):
    ids = [e.id for e in checked.sets.dialogue] + [p.id for p in checked.openers + checked.dev]
    assert all(ids) and len(ids) == len(set(ids))


def test_no_two_answers_open_alike(checked):
    """A cheap guard against fill-in-the-blanks templates: no two answers start with the same five words."""
    openings = Counter(
        " ".join(m["content"].split()[:5]).lower()
        for e in checked.sets.dialogue
        for m in e.messages
        if m["role"] == "assistant"
    )
    assert openings.most_common(1)[0][1] == 1


@pytest.mark.slow
def test_check_command_prints_table_with_the_bundled_tokenizer():
    result = run_cli("-m", "finetune", "data", "--check")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Training data (tokens by bundled:gemma-3-270m; max length 2048)"
    rows = {line[:32].strip(): line[32:].split() for line in lines if line[:32].strip()}
    sample_size = len((DIALOGUES / data.SAMPLE_FILE).read_text("utf-8").splitlines())
    assert rows["zero-shot set (offline sample)"][:2] == [str(sample_size), "1.00"]
    assert rows["dialogue set"][0] == str(sample_size + 30)
    assert rows["qa-chain"][0] == "20" and rows["authored-dialogue"][0] == "10"
    assert rows["eval_openers.jsonl"][0] == "10" and rows["dev.jsonl"][0] == "50"
    assert lines[-1] == "valid: 0 warning(s)"
