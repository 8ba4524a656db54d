"""The precision a model computes in, chosen per machine: what training's ``precision: auto`` and in-process
serving both ask.

bf16 halves the bytes every weight costs to read, which is what a decoding step on a CPU waits for; but only a
machine that computes it natively gains (``native_bf16``): elsewhere torch falls back to a reference gemm that is
slower than fp32. Serving asks one thing more, because what pays depends on the batch: a one-time probe at load
times the model's own output-head shape (its largest product) at the served batch size, in fp32 (both layouts the
batcher may use, ``serving.batching.fast_cpu_head``) and in bf16, and keeps bf16 only where it is clearly faster.
Measured on a 2-core AMD EPYC with AVX512-BF16 (no AMX), 8 rows of Gemma 3's head on one thread: fp32 325-430 ms,
bf16 140-175 ms; one row: 130 ms against 110 ms. Models too small for arithmetic to matter (the tests' tiny ones,
a 1,024 x 64 head) stay in fp32, whose numbers the tests pin down exactly.

``LIMA_ARENA_PRECISION`` (``auto``, ``bf16`` or ``fp32``; default ``auto``) forces a choice for in-process serving.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

ENV = "LIMA_ARENA_PRECISION"
CHOICES = ("auto", "bf16", "fp32")
SMALL_HEAD = 2**22  # output-head weights (vocabulary x width); below this a step is Python's overhead, not arithmetic
PROBE_ROWS = 16_384  # head rows timed: past a CPU's cache, as the whole head is, yet a few tens of ms
BF16_GAIN = 0.85  # bf16 is chosen when its product takes at most this share of fp32's best
_PROBING = threading.Lock()  # both sides load at once at start: one probe, not two timing each other


def native_bf16() -> bool:
    """Whether this machine computes bf16 at full speed: a CUDA GPU with bf16, else a CPU with AVX512-BF16 or
    AMX. Elsewhere (an AVX2-only CPU) torch's bf16 matrix products fall to a single-threaded reference gemm (in
    training, py-spy showed the output head's backward in cpublas_gemm_impl)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes (private)
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def requested(value: str | None = None) -> str:
    """The precision asked for: ``value``, else ``LIMA_ARENA_PRECISION``, else auto; ValueError names the bad one."""
    where = "precision" if value is not None else ENV
    value = (value if value is not None else os.environ.get(ENV) or "auto").strip().lower()
    if value not in CHOICES:
        raise ValueError(f"{where} must be auto, bf16 or fp32, got {value!r}")
    return value


@functools.cache
def bf16_faster(device: str, rows: int, width: int, threads: int) -> bool:
    """Whether a (PROBE_ROWS, width) weight times ``rows`` hidden states runs clearly faster in bf16 than in fp32's
    faster layout here (one probe per shape and thread count in a process: both sides share it)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(PROBE_ROWS, width, generator=generator).to(device)
    hidden = torch.randn(rows, width, generator=generator).to(device)
    half_weight, half_hidden = weight.bfloat16(), hidden.bfloat16()
    products = {
        "fp32": lambda: torch.nn.functional.linear(hidden, weight),
        "fp32 W@hT": lambda: torch.mm(weight, hidden.t()).t().contiguous(),
        "bf16": lambda: torch.nn.functional.linear(half_hidden, half_weight),
    }
    best = dict.fromkeys(products, float("inf"))
    with torch.inference_mode():
        for _ in range(5):  # interleaved, best of five: a busy neighbour slows one round, not one precision
            for name, product in products.items():
                started = time.perf_counter()
                product()
                best[name] = min(best[name], time.perf_counter() - started)
    fp32 = min(best["fp32"], best["fp32 W@hT"])
    log.info("precision probe, %d rows: fp32 %.1f ms, bf16 %.1f ms", rows, fp32 * 1e3, best["bf16"] * 1e3)
    return best["bf16"] <= BF16_GAIN * fp32


def choose(config: Any, device: str, rows: int, asked: str = "auto") -> tuple[str, str]:
    """The precision to serve a model of this ``config`` in on ``device`` at up to ``rows`` answers at once, and
    why. Decided from the config, before the weights load, so a large model never loads in fp32 first."""
    if asked != "auto":
        if asked == "bf16" and not native_bf16():
            log.warning("%s=bf16 on a machine without native bf16: expect it slower than fp32", ENV)
        return asked, f"asked for {asked}"
    if not native_bf16():
        return "fp32", "no native bf16 here"
    text = config.get_text_config()
    if text.vocab_size * text.hidden_size < SMALL_HEAD:
        return "fp32", "too small a model to gain from bf16"
    if not device.startswith("cpu"):
        return "bf16", "native bf16 on the GPU"
    import torch

    with _PROBING:
        faster = bf16_faster(device, rows, text.hidden_size, torch.get_num_threads())
    if faster:
        return "bf16", f"native bf16, faster at {rows} rows"
    return "fp32", f"native bf16, but not faster at {rows} rows"
