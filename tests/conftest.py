"""Shared fixtures: a tiny real tokenizer, a scratch copy of dialogues/, the tiny trained pair, and a way to run our
CLIs.

`python -m pytest` runs the suite in pytest-xdist workers (pyproject's addopts; `-n 0` runs it in one process).
What is expensive to build is built once per run, whichever worker asks first: `once_per_run` builds it under a
file lock in the folder all of this run's workers share."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
DIALOGUES = REPO / "dialogues"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Debian's chromium, which the README's test command installs; Playwright drives it headless.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every worker of this run shares: the run's base temporary folder (under xdist each worker's
    basetemp is a child of it), this process's own when the run has no workers."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """`run_folder/name`, filled by `build` once for the whole run; a worker that asks while another builds
    waits for it. A failed build leaves no mark, so the next worker to ask builds again (and fails on its own)."""
    folder, done = run_folder(tmp_path_factory) / name, run_folder(tmp_path_factory) / f"{name}.done"
    with FileLock(run_folder(tmp_path_factory) / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session", autouse=True)
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real byte-level BPE tokenizer trained on our dialogues: the tiny test model's (finetune.base_models).

    Autouse, and built under the run's lock: the model cache is shared by every process on the machine, and two
    workers (or their CLIs) building it at once would replace each other's copy while the other reads it."""
    from finetune.base_models import tiny_model_dir

    with FileLock(run_folder(tmp_path_factory) / "tiny-model.lock"):
        return tiny_model_dir()


@pytest.fixture
def dialogues_copy(tmp_path: Path) -> Path:
    """A scratch copy of dialogues/ that a test may corrupt."""
    target = tmp_path / "dialogues"
    target.mkdir()
    for path in DIALOGUES.glob("*.jsonl"):
        shutil.copy(path, target / path.name)
    return target


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both tiny models (runs/test/lima-1000 and lima-1030), trained once per run by the real command; tests
    read them, and copy what they change."""

    def train(out: Path) -> None:
        result = run_cli("-m", "finetune", "train", "--recipe", "test", "--output", str(out))
        assert result.returncode == 0, result.stderr[-3000:]

    return once_per_run(tmp_path_factory, "runs", train) / "test"


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` as a user would, in a fresh interpreter."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)


# The files that take longest (measured with --durations on a 2-core machine), started first, the rest after in
# collection order: a long file left for last keeps one worker busy while the others idle. (xdist orders files by
# their number of tests unless told not to: pyproject's --no-loadscope-reorder.)
HEAVIEST_FIRST = (
    "test_app.py",
    "test_finetune.py",
    "test_judge.py",
    "test_distributed.py",
    "test_space.py",
    "test_public.py",
    "test_mirror.py",
    "test_lima_hub.py",
    "test_browser.py",
    "test_blind.py",
    "test_backends.py",
    "test_secrets.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept
