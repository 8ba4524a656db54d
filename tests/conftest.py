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


SERVABLE_DIALOGUE = [{"role": "user", "content": "Name a prime."}]


def assert_servable(path: Path) -> None:
    """A saved epoch is what contract 2 says: it reloads, carries the serving template where TGI reads it,
    stops at EOT, and generates until EOT by itself."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune import chat_format

    config = json.loads((path / "tokenizer_config.json").read_text())
    assert config["chat_template"] == chat_format.SERVING_TEMPLATE  # where TGI reads it
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    eot = tokenizer.convert_tokens_to_ids(chat_format.EOT)
    assert model.generation_config.eos_token_id[0] == eot
    prompt = tokenizer.apply_chat_template(SERVABLE_DIALOGUE, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("User:\nName a prime." + chat_format.EOT + "\nAssistant:\n")

    ids = tokenizer.apply_chat_template(
        SERVABLE_DIALOGUE, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    # The tiny model is random: make it say EOT at its third token, and see generation stop there by itself.
    model.generation_config.do_sample = False
    free = model.generate(**ids, max_new_tokens=2)
    bias = {(*tuple(free[0, ids["input_ids"].shape[1] :].tolist()), eot): 1e4}
    out = model.generate(**ids, max_new_tokens=20, sequence_bias=bias)
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    assert new[-1] == eot and len(new) == 3
