"""Training throughput: ours vs TRL's SFTTrainer defaults vs a naive pad-to-2048 loop, in one run.

Same base, same data (a fixed random draw from the single-turn sample + our 30 dialogues, so LIMA-shaped
lengths: mostly a few hundred tokens, some dialogues near 2,048), same effective batch, same precision and
optimiser. The precision is the one training's `precision: auto` takes on this machine (bf16 autocast where it
computes bf16 natively: a GPU, a CPU with AVX512-BF16 or AMX; fp32 elsewhere, where bf16 autocast is emulated
and 17x slower), reported as `precision`. Each measures real (non-padding) tokens per second over its optimiser
steps after the first.

  ours         LIMA's trainer (finetune/train.py): micro-batches of 1 on CPUs (no padding at all) or length
               grouping on GPUs, gradient accumulation to the batch, the plain LM head on CPUs
  trl_default  SFTTrainer with its defaults (micro-batch 8 in random order, padded to the longest; its fused
               LM head), given only what parity needs: the batch, the precision, the step count
  naive        a hand loop that pads every example to 2,048 tokens

Beside tokens/s: peak memory per method (GPU memory allocated on CUDA) and, with a known peak (H100/H200:
989 dense bf16 TFLOP/s, or --peak-tflops), model FLOPs utilisation: the model's FLOPs for the real tokens
(6 x matmul parameters + 6 x layers x hidden x length per token, causal attention) over time x peak.

Prints one JSON line. `python bench/train_throughput.py [--base bundled:gemma-3-270m] [--steps 2]`; with
`--base tiny:llama` it is a seconds-long smoke run. On this machine (2 CPU cores) the bundled base takes
about 10 minutes. bench/gpu_check.py runs it on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from common import cli
from finetune.base_models import resolve_base
from finetune.data import load_training_sets
from finetune.recipe import Recipe
from finetune.train import TokenCounter, build_trainer, encode, load_for_training, peak_memory_mb, training_args
from serving.precision import native_bf16

PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense bf16, the vendors' figures


class StepTimer(TrainerCallback):
    """Real tokens per second over a run's optimiser steps after the first (which warms kernels and allocators
    up), from the trainer's own non-padding token count; its peak memory; the collator's real-token fraction."""

    def __init__(self, counter: TokenCounter):
        self.counter = counter
        self.mark: tuple[float, int] = (0.0, 0)
        self.tok_s = 0.0
        self.peak_mb = 0

    @staticmethod
    def now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.mark = (self.now(), state.num_input_tokens_seen)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1 and state.max_steps > 1:
            self.mark = (self.now(), state.num_input_tokens_seen)

    def on_train_end(self, args, state, control, **kwargs):
        started, tokens = self.mark
        self.tok_s = (state.num_input_tokens_seen - tokens) / (self.now() - started)
        self.peak_mb = peak_memory_mb()

    def result(self) -> dict:
        return {"tok_s": self.tok_s, "fraction": self.counter.fraction, "peak_mb": self.peak_mb}


def reset_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def flops_per_token(model, rows) -> float:
    """Training FLOPs per real token: 6 x the parameters that multiply (the input embedding is a lookup; the
    output head multiplies, tied or not) + causal attention's 6 x layers x hidden x length."""
    config = model.config.get_text_config()
    matmul = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    matmul += model.get_output_embeddings().weight.numel()
    tokens = sum(len(r["input_ids"]) for r in rows)
    squares = sum(len(r["input_ids"]) ** 2 for r in rows)
    return 6 * matmul + 6 * config.num_hidden_layers * config.hidden_size * squares / tokens


def machine_precision() -> str:
    """What `precision: auto` trains in here (finetune/recipe.py): one rule for every method measured."""
    return "bf16" if native_bf16() else "fp32"


def rows_for(base: str, batch: int, steps: int, max_length: int = 2048, seed: int = 0):
    precision = machine_precision()
    recipe = Recipe(base=base, lima="sample", residual_dropout=0.2, precision=precision, gradient_checkpointing=False)
    recipe.max_length = max_length
    sets = load_training_sets("sample")
    model, tokenizer, eot = load_for_training(recipe, resolve_base(base))
    rows = encode(sets.dialogue, tokenizer, max_length).rows
    random.Random(seed).shuffle(rows)
    return recipe, model, tokenizer, eot, rows[: batch * steps]


def run_ours(loaded: tuple, batch: int, steps: int, per_device: int, workdir: Path) -> dict:
    """Our trainer on a copy of the loaded base (`loaded`: what rows_for returns), so TRL's side starts from the
    same weights without loading them again."""
    recipe, model, tokenizer, eot, rows = loaded
    recipe = dataclasses.replace(recipe, batch_size=batch, per_device_batch_size=per_device)
    reset_memory()
    args = training_args(
        recipe,
        workdir / "ours",
        max_steps=steps,
        save_strategy="no",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
    )
    model = copy.deepcopy(model)
    trainer = build_trainer(recipe, args, model, tokenizer, eot, rows)
    timer = StepTimer(trainer.data_collator)
    trainer.add_callback(timer)
    trainer.train()
    return {**timer.result(), "flops_per_token": flops_per_token(model, rows)}


def run_trl_default(loaded: tuple, batch: int, steps: int, workdir: Path) -> dict:
    from datasets import Dataset

    recipe, model, tokenizer, _, rows = loaded
    reset_memory()
    on_cuda = torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(workdir / "trl"),
        # TRL's default micro-batch (8), accumulated to the same effective batch
        per_device_train_batch_size=min(8, batch),
        gradient_accumulation_steps=max(batch // 8, 1),
        max_steps=steps,
        max_length=recipe.max_length,  # ours, not TRL's 1,024: both sides train the same tokens
        bf16=recipe.precision == "bf16",
        use_cpu=not on_cuda,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
    )
    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.data_collator = counter = TokenCounter(trainer.data_collator)
    timer = StepTimer(counter)
    trainer.add_callback(timer)
    trainer.train()
    return timer.result()


def run_naive(base: str, batch: int, steps: int) -> float:
    reset_memory()
    _recipe, model, tokenizer, _, rows = rows_for(base, batch, steps)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)
    pad = tokenizer.pad_token_id
    real = 0
    started = time.perf_counter()
    for step in range(steps):
        for row in rows[step * batch : (step + 1) * batch]:
            n = len(row["input_ids"])
            ids = torch.tensor([row["input_ids"] + [pad] * (2048 - n)], device=device)
            labels = torch.tensor([row["labels"] + [-100] * (2048 - n)], device=device)
            mask = torch.tensor([[1] * n + [0] * (2048 - n)], device=device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=machine_precision() == "bf16"):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss / batch
            loss.backward()
            real += n
        optimizer.step()
        optimizer.zero_grad()
    return real / (time.perf_counter() - started)


def measure(
    base: str,
    batch: int,
    steps: int,
    per_device: int | None = None,
    max_length: int = 2048,
    naive: bool = True,
    peak_tflops: float | None = None,
) -> dict:
    """The benchmark's figures (the JSON line's keys): ours, TRL's defaults and, with `naive`, the naive loop.
    The base is loaded once for ours and TRL's side; bench/gpu_check.py calls this in its own process."""
    on_cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if on_cuda else f"cpu x{torch.get_num_threads()}"
    per_device = per_device or (8 if on_cuda else 1)
    peak = peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if on_cuda and k in device), None)
    torch.manual_seed(0)
    loaded = rows_for(base, batch, steps, max_length)
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_ours(loaded, batch, steps, per_device, Path(tmp))
        trl = run_trl_default(loaded, batch, steps, Path(tmp))
    del loaded
    naive_tok_s = run_naive(base, batch, steps) if naive else None

    def mfu(tok_s: float) -> float | None:
        return round(tok_s * ours["flops_per_token"] / (peak * 1e12), 3) if peak else None

    return {
        "base": base,
        "device": device,
        "effective_batch": batch,
        "per_device_batch": per_device,
        "steps": steps,
        "max_length": max_length,
        "precision": machine_precision(),
        "ours_tok_s": round(ours["tok_s"], 1),
        "trl_default_tok_s": round(trl["tok_s"], 1),
        "naive_tok_s": round(naive_tok_s, 1) if naive_tok_s is not None else None,
        "ours_vs_trl_default": round(ours["tok_s"] / trl["tok_s"], 2),
        "ours_real_token_fraction": round(ours["fraction"], 3),
        "trl_default_real_token_fraction": round(trl["fraction"], 3),
        "ours_mfu": mfu(ours["tok_s"]),
        "trl_default_mfu": mfu(trl["tok_s"]),
        "peak_tflops": peak,
        "ours_peak_memory_mb": ours["peak_mb"],
        "trl_default_peak_memory_mb": trl["peak_mb"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="bundled:gemma-3-270m")
    parser.add_argument("--batch", type=int, default=8, help="effective batch (examples per optimiser step)")
    parser.add_argument("--steps", type=int, default=2, help="optimiser steps per method")
    parser.add_argument("--per-device", type=int, default=None, help="our micro-batch (default: 1 on CPUs, 8 on a GPU)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive pad-to-2048 loop")
    args = parser.parse_args(argv)
    figures = measure(
        args.base, args.batch, args.steps, args.per_device, naive=not args.no_naive, peak_tflops=args.peak_tflops
    )
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    sys.exit(cli.run(main))
