"""common/: the one-line error runner every command shares, and the one reader of prompt files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import run_cli

from common import cli
from common.jsonl import summary
from common.prompts import Prompt, load_prompts
from common.yamlfile import read_mapping


class OwnError(Exception):
    """A command's own input-error type that does not derive from UserError (demo.report's ReportError, say)."""


def test_an_input_error_is_its_lines_on_stderr_and_status_2(capsys):
    def main(argv: list[str] | None) -> int:
        raise cli.UserError("recipe.yaml:3: not valid YAML", "error: --set epochs: expected a number")

    assert cli.run(main, []) == 2
    out, err = capsys.readouterr()
    assert out == ""
    # each line once prefixed, whether or not the raiser wrote the prefix
    assert err == "error: recipe.yaml:3: not valid YAML\nerror: --set epochs: expected a number\n"


def test_a_commands_own_type_counts_as_input_only_when_named(capsys):
    def main(argv: list[str] | None) -> int:
        raise OwnError(f"no ratings database at {argv[0]}")

    assert cli.run(main, ["x.db"], input_errors=(OwnError,)) == 2
    assert capsys.readouterr().err == "error: no ratings database at x.db\n"
    with pytest.raises(OwnError):  # not named: a bug, and it keeps its traceback
        cli.run(main, ["x.db"])


def test_quiet_says_nothing_and_still_fails(capsys):
    def main(argv: object) -> int:
        raise cli.UserError("error: a mistake every process meets")

    assert cli.run(main, None, quiet=True) == 2
    assert capsys.readouterr().err == ""


def test_a_bug_keeps_its_traceback_and_a_result_is_a_success():
    def broken(argv: object) -> int:
        raise KeyError("ours")

    with pytest.raises(KeyError):
        cli.run(broken)
    assert cli.run(lambda argv: 3) == 3
    assert cli.run(lambda argv: {"tok_s": 1.0}) == 0  # a benchmark returns its figures


def test_a_benchmark_says_an_input_mistake_in_one_line(tmp_path: Path):
    result = run_cli("bench/arena_crowd.py", "--pair", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"error: --pair {tmp_path}: no selected lima-1000 / lima-1030 pair in it\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_prompts_every_problem_named_file_line_field(tmp_path: Path):
    path = write(
        tmp_path / "openers.jsonl",
        '{"id": "o1", "prompt": "Hi", "category": "chat", "follow_ups": ["More?"]}\n'
        "\n"
        '{"id": "o2", "prompt": "  ", "follow_ups": []}\n'
        '{"id": "o3", "prompt": "Hello", "follow_ups": "More?"}\n'
        '{"id": "o4", "prompt": "Hello"}\n'
        '{"id": "o1", "prompt": "Again", "follow_ups": [""]}\n'
        '{"id": "o5", "prompt": "Hello", "follow_ups": [], "category": 3}\n'
        "[1, 2]\n"
        '{"id": "o6", "prompt": "Hello", "follow_ups": []}\n',
    )
    prompts, problems = load_prompts(path, with_follow_ups=True)
    assert prompts == [
        Prompt("o1", "Hi", "chat", ["More?"], str(path), 1),
        Prompt("o6", "Hello", None, [], str(path), 9),
    ]
    assert prompts[0].record() == {"id": "o1", "prompt": "Hi", "category": "chat", "follow_ups": ["More?"]}
    assert [str(p) for p in problems] == [
        f"error: {path}:8: expected a JSON object, got a list",
        f"error: {path}:3: prompt: empty",
        f"error: {path}:4: follow_ups: must be a list of strings, got a string",
        f"error: {path}:5: follow_ups: missing field (a list of planned follow-up messages)",
        f"error: {path}:6: follow_ups[0]: empty",
        f"error: {path}:7: category: must be a string, got a number",
    ]
    assert summary(problems) == f"{path}:8: expected a JSON object, got a list (and 5 more)"

    dev = write(tmp_path / "dev.jsonl", '{"id": "d1", "prompt": "Q"}\n{"id": "d1", "prompt": "Q2"}\n')
    prompts, problems = load_prompts(dev, with_follow_ups=False)  # dev prompts have no follow-ups
    assert [p.id for p in prompts] == ["d1", "d1"]
    assert [p.text for p in problems] == [f"{dev}:2: id: duplicate id 'd1' (first on line 1)"]


def test_prompts_pass_the_callers_own_rule_for_messages(tmp_path: Path):
    def at_most_ten(text: str) -> str:
        if len(text) > 10:
            raise ValueError(f"messages are limited to 10 characters (this one has {len(text)})")
        return text

    path = write(tmp_path / "o.jsonl", '{"id": "o1", "prompt": "Short", "follow_ups": ["Far too long here"]}\n')
    prompts, problems = load_prompts(path, with_follow_ups=True, check=at_most_ten)
    assert prompts == []
    assert [p.text for p in problems] == [
        f"{path}:1: follow_ups[0]: messages are limited to 10 characters (this one has 17)"
    ]
    missing, problems = load_prompts(tmp_path / "none.jsonl", with_follow_ups=True)
    assert missing == [] and [p.text for p in problems] == [f"{tmp_path / 'none.jsonl'}: file not found"]


def test_a_yaml_mapping_or_one_line_saying_where_and_why(tmp_path: Path):
    assert read_mapping(write(tmp_path / "empty.yaml", ""), "a mapping") == {}
    assert read_mapping(write(tmp_path / "ok.yaml", "epochs: 3\n"), "a mapping") == {"epochs": 3}
    tabbed = write(tmp_path / "tabbed.yaml", "epochs: 3\n\tlr: 1\n")
    with pytest.raises(cli.UserError) as caught:
        read_mapping(tabbed, "a mapping")
    assert caught.value.lines == [f"{tabbed}:2: not valid YAML: found character '\\t' that cannot start any token"]
    with pytest.raises(OwnError, match=r"list\.yaml: a recipe is a mapping"):
        read_mapping(write(tmp_path / "list.yaml", "- 1\n"), "a recipe is a mapping", OwnError)


def test_common_imports_neither_finetune_nor_demo():
    code = "import sys, common.cli, common.jsonl, common.prompts, common.yamlfile; "
    code += "print(sorted(m for m in sys.modules if m.split('.')[0] in ('finetune', 'demo')))"
    result = run_cli("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert sys.modules.get("common.cli") is cli
