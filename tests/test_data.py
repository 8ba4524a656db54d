"""The data layer: loading ours and LIMA's format, every bad-input case, the stats table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DIALOGUES, FIXTURES, run_cli

from finetune import data
from finetune.__main__ import main

GOOD = {
    "messages": [
        {"role": "user", "content": "What is a haiku?"},
        {"role": "assistant", "content": "A three-line poem of five, seven and five syllables."},
        {"role": "user", "content": "Write one about tea."},
        {"role": "assistant", "content": "Steam over the cup / the leaves unfold their summer / in a winter room"},
    ],
    "source": "test",
}


def write_lines(path: Path, *rows: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def check(dialogues_dir: Path, tokenizer: Path, capsys, *extra: str) -> tuple[int, list[str], str]:
    """Run `data --check` in-process; the tiny tokenizer splits finely, so lengths are not checked by default."""
    args = ["data", "--check", "--dialogues", str(dialogues_dir), "--tokenizer", str(tokenizer)]
    code = main([*args, "--max-length", "1000000", *extra])
    out, err = capsys.readouterr()
    return code, [line for line in err.splitlines() if line.startswith(("error", "warning"))], out


def with_messages(*messages: tuple[str, object]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in messages], "source": "test"}


U, A = "user", "assistant"
BAD_ROWS = [
    ("not json", '{"messages": [', "not valid JSON: Expecting value at column 15"),
    ("not an object", "[1, 2]", "expected a JSON object, got a list"),
    ("missing messages", {"source": "test"}, "messages: missing field (or LIMA's 'conversations')"),
    ("missing source", {"messages": GOOD["messages"]}, "source: missing field"),
    ("mistyped source", {**GOOD, "source": 7}, "source: must be a non-empty string, got a number"),
    (
        "mistyped messages",
        {**GOOD, "messages": "hi"},
        "messages: must be a list of {role, content} objects, got a string",
    ),
    (
        "mistyped content",
        with_messages((U, "hi"), (A, 42), (U, "and?"), (A, "ok")),
        "messages[1].content: must be a string, got a number",
    ),
    ("empty turn", with_messages((U, "hi"), (A, "  \n"), (U, "and?"), (A, "ok")), "messages[1].content: empty turn"),
    (
        "wrong role order",
        with_messages((U, "hi"), (U, "hello?"), (A, "yes"), (A, "ok")),
        "messages[1].role: wrong role order: expected 'assistant' (turns alternate, user first)",
    ),
    (
        "unknown role",
        with_messages(("system", "be brief"), (A, "ok"), (U, "hi"), (A, "hello")),
        "messages[0].role: unknown role 'system': expected 'user' or 'assistant'",
    ),
    (
        "ends on the user",
        with_messages((U, "hi"), (A, "hello"), (U, "bye")),
        "messages: ends on the user: the last turn must be the assistant's",
    ),
    (
        "single turn as a dialogue",
        with_messages((U, "hi"), (A, "hello")),
        "messages: has 1 user turn: a training dialogue needs at least 2",
    ),
    ("duplicate id", {**GOOD, "id": "same"}, "id: duplicate id 'same' (first on line 1)"),
    (
        "LIMA row ending on the user",
        {"conversations": ["a", "b", "c"], "source": "x"},
        "conversations: ends on the user: the last turn must be the assistant's",
    ),
]


@pytest.mark.parametrize(("row", "expected"), [case[1:] for case in BAD_ROWS], ids=[case[0] for case in BAD_ROWS])
def test_bad_row_is_one_line_naming_file_line_and_field(dialogues_copy, tiny_tokenizer_dir, capsys, row, expected):
    train = write_lines(dialogues_copy / "train.jsonl", {**GOOD, "id": "same"}, row)
    code, lines, out = check(dialogues_copy, tiny_tokenizer_dir, capsys)
    assert code == 2
    assert lines == [f"error: {train}:2: {expected}"]
    assert out == ""  # no table for invalid data


def test_invalid_utf8_is_reported_on_its_line(dialogues_copy, tiny_tokenizer_dir, capsys):
    train = dialogues_copy / "train.jsonl"
    train.write_bytes(json.dumps(GOOD).encode() + b'\n{"messages": "caf\xe9"}\n')
    code, lines, _ = check(dialogues_copy, tiny_tokenizer_dir, capsys)
    assert (code, lines) == (2, [f"error: {train}:2: not valid UTF-8 (bad byte at column 18)"])


def test_empty_file(dialogues_copy, tiny_tokenizer_dir, capsys):
    (dialogues_copy / "train.jsonl").write_text("\n\n")
    code, lines, _ = check(dialogues_copy, tiny_tokenizer_dir, capsys)
    assert (code, lines) == (
        2,
        [f"error: {dialogues_copy / 'train.jsonl'}: file is empty: expected one JSON object per line"],
    )


def test_every_error_of_every_file_in_one_pass(dialogues_copy, tiny_tokenizer_dir, capsys):
    train = write_lines(dialogues_copy / "train.jsonl", GOOD, "{oops", {"source": "x"}, GOOD, with_messages((U, "q")))
    openers = write_lines(dialogues_copy / "eval_openers.jsonl", {"id": "o1", "prompt": "", "follow_ups": ["a", 3]})
    code, lines, _ = check(dialogues_copy, tiny_tokenizer_dir, capsys)
    assert code == 2
    assert lines == [
        f"error: {train}:2: not valid JSON: Expecting property name enclosed in double quotes at column 2",
        f"error: {train}:3: messages: missing field (or LIMA's 'conversations')",
        f"error: {train}:5: messages: has 1 turn(s): needs at least one user and one assistant turn",
        f"error: {openers}:1: prompt: empty",
        f"error: {openers}:1: follow_ups[1]: must be a string, got a number",
    ]


def test_bom_and_crlf_load(dialogues_copy, tiny_tokenizer_dir, capsys):
    expected = len((DIALOGUES / "train.jsonl").read_text("utf-8").splitlines())
    train = dialogues_copy / "train.jsonl"
    train.write_bytes(b"\xef\xbb\xbf" + train.read_bytes().replace(b"\n", b"\r\n"))
    code, lines, out = check(dialogues_copy, tiny_tokenizer_dir, capsys, "--json")
    assert (code, lines) == (0, [])
    table = json.loads(out)
    assert table["dialogue"]["examples"] - table["zero_shot"]["examples"] == expected


def test_oversized_example_is_kept_and_flagged(dialogues_copy, tiny_tokenizer_dir, capsys):
    long_answer = " ".join(["word"] * 300)
    train = write_lines(dialogues_copy / "train.jsonl", with_messages((U, "a"), (A, long_answer), (U, "b"), (A, "c")))
    code, lines, out = check(dialogues_copy, tiny_tokenizer_dir, capsys, "--max-length", "256", "--json")
    assert code == 0
    flagged = [line for line in lines if str(train) in line]
    assert len(flagged) == 1
    assert flagged[0].startswith(f"warning: {train}:1: messages: ")
    assert flagged[0].endswith("tokens > max length 256: kept, truncated to 256 at train time")
    table = json.loads(out)
    assert table["dialogue"]["examples"] == table["zero_shot"]["examples"] + 1  # kept
    dialogue_row = next(r for r in table["training"] if r["name"] == "dialogue set")
    assert dialogue_row["over_max_length"] >= 1


def test_duplicates_and_overlap_warn_but_pass(dialogues_copy, tiny_tokenizer_dir, capsys):
    train = dialogues_copy / "train.jsonl"
    first = json.loads(train.read_text("utf-8").splitlines()[0])
    opening = first["messages"][0]["content"]
    with open(train, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({**first, "id": "copy"}) + "\n")
    dev = dialogues_copy / "dev.jsonl"
    with open(dev, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "dev-copy", "prompt": opening.upper()}) + "\n")
    n_train = len(train.read_text("utf-8").splitlines())
    n_dev = len(dev.read_text("utf-8").splitlines())
    code, lines, _ = check(dialogues_copy, tiny_tokenizer_dir, capsys)
    assert code == 0
    assert lines == [
        f"warning: {train}:{n_train}: messages: duplicate of the example at {train}:1",
        f"warning: {dev}:{n_dev}: prompt: overlaps training data at {train}:1",
    ]


def test_overlap_by_a_shared_13_word_span():
    train = [data.Example(GOOD["messages"][:2], "t", path="t.jsonl", line=1)]
    train[0].messages[0]["content"] = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    near = data.Prompt(
        "d", "Please: one two three four five six seven eight nine ten eleven twelve thirteen!", path="d", line=4
    )
    far = data.Prompt("e", "one two three four five six seven eight nine ten eleven twelve", path="d", line=5)
    warnings = data.find_overlap(train, [], [near, far])
    assert [str(w) for w in warnings] == ["warning: d:4: prompt: overlaps training data at t.jsonl:1"]


def test_lima_format_fixture_loads_and_splits():
    path = FIXTURES / "lima" / "train.jsonl"
    checked = data.load_data(lima=str(path))
    sets = checked.sets
    ours = len((DIALOGUES / "train.jsonl").read_text("utf-8").splitlines())
    assert [len(sets.zero_shot), len(sets.dialogue)] == [4, 4 + ours]
    assert sets.single_turn[0].messages == [
        {"role": "user", "content": "How long should I steep green tea?"},
        {"role": "assistant", "content": json.loads(path.read_text().splitlines()[0])["conversations"][1]},
    ]
    assert not sets.is_offline_sample and "LIMA" in sets.single_turn_label

    lima_own = data.load_data(lima=str(path), dialogues="lima").sets
    assert [len(lima_own.zero_shot), len(lima_own.dialogue)] == [4, 6]
    assert [m["role"] for m in lima_own.dialogues[0].messages] == ["user", "assistant"] * 2


def test_lima_dialogues_need_lima_data(capsys):
    assert main(["data", "--dialogues", "lima"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --dialogues lima: LIMA's own dialogues need LIMA's data: add --lima hub or --lima PATH"
    )


def test_missing_lima_file(tmp_path, capsys):
    assert main(["data", "--lima", str(tmp_path / "nope.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.jsonl'}: file not found"


def test_offline_sample_is_labelled_everywhere(tmp_path, capsys):
    assert main(["data", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "OFFLINE SAMPLE" in out
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["offline_sample"] is True
    assert "OFFLINE SAMPLE" in manifest["zero-shot"]["built_from"]
    zero_shot = [json.loads(line) for line in (tmp_path / "zero-shot.jsonl").read_text().splitlines()]
    dialogue = [json.loads(line) for line in (tmp_path / "dialogue.jsonl").read_text().splitlines()]
    assert dialogue[: len(zero_shot)] == zero_shot and len(dialogue) == len(zero_shot) + 30
    assert manifest["dialogue"]["fingerprint"] != manifest["zero-shot"]["fingerprint"]


def test_user_error_has_no_traceback(dialogues_copy):
    write_lines(dialogues_copy / "train.jsonl", GOOD, "not json")
    result = run_cli("-m", "finetune", "data", "--dialogues", str(dialogues_copy))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        == f"error: {dialogues_copy / 'train.jsonl'}:2: not valid JSON: Expecting value at column 1"
    )
