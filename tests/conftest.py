"""Shared fixtures: a tiny real tokenizer, a scratch copy of dialogues/, and a way to run our CLIs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIALOGUES = REPO / "dialogues"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Debian's chromium, which the README's test command installs; Playwright drives it headless.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir() -> Path:
    """A real byte-level BPE tokenizer trained on our dialogues: the tiny test model's (finetune.base_models)."""
    from finetune.base_models import tiny_model_dir

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
def trained(tmp_path_factory) -> Path:
    """Both tiny models (runs/test/lima-1000 and lima-1030), trained once by the real command."""
    out = tmp_path_factory.mktemp("runs")
    result = run_cli("-m", "finetune", "train", "--recipe", "test", "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "test"


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` as a user would, in a fresh interpreter."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)
