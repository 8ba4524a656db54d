"""The arena's settings: CLI > environment > YAML > default, one-line errors, and the default pair of models."""

import os
from pathlib import Path

import pytest

from demo.settings import Settings, SettingsError, check_source, latest_pair, parse, resolve_sides


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- precedence -------------------------------------------------------------------------------------------------
def test_defaults_without_any_source():
    assert parse([], {}) == Settings()


def test_cli_beats_environment_beats_yaml_beats_default(tmp_path):
    yaml = "port: 8001\nblind: false\nturn_limit: 3\ndb: yaml.db\nmax-new-tokens: 64\n"
    config = write(tmp_path / "arena.yaml", yaml)
    from_yaml = parse(["--config", str(config)], {})
    assert (from_yaml.port, from_yaml.blind, from_yaml.turn_limit, from_yaml.db) == (8001, False, 3, "yaml.db")
    assert (from_yaml.max_new_tokens, from_yaml.host) == (64, "127.0.0.1")  # a key it lacks keeps its default

    env = {"LIMA_ARENA_PORT": "8002", "LIMA_ARENA_BLIND": "true", "LIMA_ARENA_DB": "env.db", "LIMA_ARENA_SHARE": ""}
    from_env = parse(["--config", str(config)], env)
    assert (from_env.port, from_env.blind, from_env.turn_limit, from_env.db) == (8002, True, 3, "env.db")
    assert from_env.share is False  # an empty variable (as Spaces may leave one) is no setting

    from_cli = parse(["--config", str(config), "--port", "8003", "--no-blind", "--turn-limit", "5"], env)
    assert (from_cli.port, from_cli.blind, from_cli.turn_limit, from_cli.db) == (8003, False, 5, "env.db")
    assert parse(["--blind"], {"LIMA_ARENA_BLIND": "false"}).blind is True
    assert parse([], {"LIMA_ARENA_BLIND": "false"}).blind is False
    assert parse(["--share"], {}).share is True


def test_the_config_file_may_come_from_the_environment(tmp_path):
    env_config = write(tmp_path / "env.yaml", "turn_limit: 2\nleft: env-left\n")
    cli_config = write(tmp_path / "cli.yaml", "turn_limit: 4\n")
    assert parse([], {"LIMA_ARENA_CONFIG": str(env_config)}).turn_limit == 2
    chosen = parse(["--config", str(cli_config)], {"LIMA_ARENA_CONFIG": str(env_config)})
    assert (chosen.turn_limit, chosen.left) == (4, None)


@pytest.mark.parametrize(("text", "expected"), [("1", True), ("YES", True), ("on", True), ("0", False), ("off", False)])
def test_boolean_words_in_the_environment(text, expected):
    assert parse([], {"LIMA_ARENA_SHARE": text}).share is expected


# -- mistakes, each in one line naming where it came from -------------------------------------------------------
def one_line_error(argv: list[str], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(SettingsError) as caught:
        parse(argv, environ or {})
    message = str(caught.value)
    assert "\n" not in message and message
    return message


def test_bad_values_name_their_source(tmp_path):
    assert one_line_error(["--port", "abc"]) == "--port: 'abc' is not a valid value for port"
    assert "environment variable LIMA_ARENA_TURN_LIMIT: 'many'" in one_line_error([], {"LIMA_ARENA_TURN_LIMIT": "many"})
    assert "LIMA_ARENA_BLIND: 'maybe'" in one_line_error([], {"LIMA_ARENA_BLIND": "maybe"})
    for text, named in (
        ("port: abc\n", "port: 'abc'"),
        ("share: sometimes\n", "share: 'sometimes'"),
        ("port: 7860.5\n", "port: 7860.5"),  # not silently 7860
        ("turn_limit: yes\n", "turn_limit: True"),  # YAML's yes is a boolean, not 1
    ):
        config = write(tmp_path / "bad.yaml", text)
        assert one_line_error(["--config", str(config)]).startswith(f"{config}: {named} is not a valid value")
    assert "port must be 1-65535, got 70000" in one_line_error(["--port", "70000"])
    assert "turn_limit must be at least 1" in one_line_error([], {"LIMA_ARENA_TURN_LIMIT": "0"})
    assert "max_new_tokens must be at least 1" in one_line_error(["--max-new-tokens", "0"])


def test_yaml_mistakes_name_the_file(tmp_path):
    unknown = write(tmp_path / "unknown.yaml", "port: 8000\ntemprature: 0.7\n")
    assert one_line_error(["--config", str(unknown)]).startswith(f"{unknown}: unknown setting 'temprature' (known: ")
    broken = write(tmp_path / "broken.yaml", "port: 8000\nblind: true\nleft: [unclosed\n\nright: x\n")
    # the line YAML stopped at, and why: what to fix
    said = one_line_error(["--config", str(broken)])
    assert said in {f"{broken}:{n}: not valid YAML: expected ',' or ']', but got ':'" for n in (3, 4, 5)}, said
    tabbed = write(tmp_path / "tabbed.yaml", "port: 8000\n\tblind: true\n")
    said = one_line_error(["--config", str(tabbed)])
    assert said == f"{tabbed}:2: not valid YAML: found character '\\t' that cannot start any token"
    listed = write(tmp_path / "list.yaml", "- port\n")
    assert one_line_error(["--config", str(listed)]) == f"{listed}: expected a mapping of settings"
    missing = tmp_path / "missing.yaml"
    assert one_line_error([], {"LIMA_ARENA_CONFIG": str(missing)}) == f"{missing}: no such settings file"


# -- the default pair: the latest trained runs ------------------------------------------------------------------
def fake_run(runs: Path, recipe: str, model: str, epoch: str | None = "epoch-5", config: bool = True) -> Path:
    run_dir = runs / recipe / model
    (run_dir / "epoch-5").mkdir(parents=True, exist_ok=True)
    if config:
        write(run_dir / "epoch-5" / "config.json", "{}")
    if epoch is not None:
        write(run_dir / "selected", epoch + "\n")
    return run_dir / "epoch-5"


def age(path: Path, seconds_ago: float) -> None:
    when = os.stat(path).st_mtime - seconds_ago
    os.utime(path, (when, when))


def test_latest_pair_is_the_newest_recipe_folder_holding_both_models(tmp_path):
    runs = tmp_path / "runs"
    assert latest_pair(runs) is None  # no runs/ at all
    old = (fake_run(runs, "quick-cpu", "lima-1000"), fake_run(runs, "quick-cpu", "lima-1030"))
    for model in ("lima-1000", "lima-1030"):
        age(runs / "quick-cpu" / model / "selected", 3600)
    assert latest_pair(runs) == old
    new = (fake_run(runs, "single-gpu", "lima-1000"), fake_run(runs, "single-gpu", "lima-1030"))
    assert latest_pair(runs) == new
    fake_run(runs, "lima-7b", "lima-1000")  # newer still, but its dialogue model never finished
    fake_run(runs, "lima-7b-b", "lima-1000")
    fake_run(runs, "lima-7b-b", "lima-1030", epoch=None)  # trained, never selected
    fake_run(runs, "lima-7b-c", "lima-1000")
    fake_run(runs, "lima-7b-c", "lima-1030", epoch="epoch-9")  # selects an epoch that is not there
    fake_run(runs, "lima-7b-d", "lima-1000")
    fake_run(runs, "lima-7b-d", "lima-1030", config=False)  # no servable model in the selected folder
    write(runs / "notes.txt", "not a recipe folder")
    assert latest_pair(runs) == new


def test_explicit_sides_are_returned_untouched(tmp_path):
    runs = tmp_path / "runs"
    settings = Settings(left="mine=http://gpu:8080", right="org/model", runs=str(runs))
    assert resolve_sides(settings) == ("mine=http://gpu:8080", "org/model")
    assert not runs.exists()  # nothing trained, nothing looked up
    pair = fake_run(runs, "quick-cpu", "lima-1000"), fake_run(runs, "quick-cpu", "lima-1030")
    assert resolve_sides(Settings(left="org/model", runs=str(runs))) == ("org/model", str(pair[1]))


# The real first launch (training the pair once, from another folder, with a relative runs/) is
# tests/test_app.py's test_with_no_models_the_app_trains_the_first_launch_pair_then_opens_and_answers.


def test_a_failed_first_launch_says_what_to_run(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(SettingsError) as caught:
        resolve_sides(Settings(runs=str(runs), first_launch_recipe="no-such-recipe"))
    command = f"python -m finetune train --recipe no-such-recipe --output {runs}"
    assert str(caught.value) == f"training the first-launch pair failed; run {command} to see why"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("/nonexistent", "--left /nonexistent: no such folder: pass a trained model folder"),
        ("A=./runs/nope/epoch-3", "--left ./runs/nope/epoch-3: no such folder"),
        ("bad id!!", "--left bad id!!: neither a folder here nor a valid Hub id"),
        ("http://", "--left http://: a URL needs a host"),
        ("{folder}", "--left {folder}: the folder holds no model (no config.json)"),
        ("{file}", "--left {file}: a file, not a model folder"),
    ],
    ids=["missing folder", "named missing folder", "malformed id", "url without host", "not a model", "a file"],
)
def test_a_source_that_cannot_work_is_one_line_naming_its_flag(tmp_path, spec, expected):
    (tmp_path / "notes.txt").write_text("x")
    spec = spec.format(folder=tmp_path, file=tmp_path / "notes.txt")
    with pytest.raises(SettingsError) as caught:
        check_source("--left", spec)
    assert str(caught.value).startswith(expected.format(folder=tmp_path, file=tmp_path / "notes.txt"))
    assert "\n" not in str(caught.value)


def test_sources_that_can_work_pass_even_if_a_server_is_not_up_yet(trained):
    for spec in (str(trained / "lima-1030" / "epoch-3"), "B=http://127.0.0.1:9", "org/some-model", "gpt2"):
        check_source("--right", spec)
