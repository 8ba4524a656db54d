"""Training throughput: ours vs TRL's SFTTrainer defaults vs a naive pad-to-2048 loop, in one run.

Same base, same data (a fixed random draw from the single-turn sample + our 30 dialogues, so LIMA-shaped
lengths: mostly a few hundred tokens, some dialogues near 2,048), same effective batch, same precision and
optimiser. Each measures real (non-padding) tokens per second over all its optimiser steps.

  ours         LIMA's trainer (finetune/train.py): micro-batches of 1 on CPUs (no padding at all) or length
               grouping on GPUs, gradient accumulation to the batch, the plain LM head on CPUs
  trl_default  SFTTrainer with its defaults (micro-batch 8 in random order, padded to the longest; its fused
               LM head), given only what parity needs: the batch, the precision, the step count
  naive        a hand loop that pads every example to 2,048 tokens

Prints one JSON line. `python bench/train_throughput.py [--base bundled:gemma-3-270m] [--steps 2]`; with
`--base tiny:llama` it is a seconds-long smoke run. On this machine (2 CPU cores) the bundled base takes
about 10 minutes.
"""

from __future__ import annotations

import argparse
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

from finetune.base_models import resolve_base
from finetune.data import load_training_sets
from finetune.recipe import Recipe
from finetune.train import TokenCounter, build_trainer, encode, load_for_training, training_args


class StepTimer(TrainerCallback):
    """Times the optimiser steps of a run; the collator wrapper counts the tokens they saw."""

    def __init__(self, counter: TokenCounter):
        self.counter = counter
        self.started = self.seconds = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.started

    def result(self) -> tuple[float, float]:
        return self.counter.real / self.seconds, self.counter.fraction


def rows_for(base: str, batch: int, steps: int, seed: int = 0):
    recipe = Recipe(base=base, lima="sample", residual_dropout=0.2, precision="bf16", gradient_checkpointing=False)
    sets = load_training_sets("sample")
    model, tokenizer, eot = load_for_training(recipe, resolve_base(base))
    rows = encode(sets.dialogue, tokenizer, 2048).rows
    random.Random(seed).shuffle(rows)
    return recipe, model, tokenizer, eot, rows[: batch * steps]


def run_ours(base: str, batch: int, steps: int, workdir: Path) -> tuple[float, float]:
    recipe = Recipe(base=base, lima="sample", residual_dropout=0.2, precision="bf16", gradient_checkpointing=False)
    recipe.batch_size = batch
    recipe.per_device_batch_size = 1 if not torch.cuda.is_available() else 4
    # The training order of finetune/train.py: arguments (and the distributed state) before the model.
    args = training_args(recipe, workdir / "ours", max_steps=steps, save_strategy="no", disable_tqdm=True)
    _, model, tokenizer, eot, rows = rows_for(base, batch, steps)
    trainer = build_trainer(recipe, args, model, tokenizer, eot, rows)
    timer = StepTimer(trainer.data_collator)
    trainer.add_callback(timer)
    trainer.train()
    return timer.result()


def run_trl_default(base: str, batch: int, steps: int, workdir: Path) -> tuple[float, float]:
    from datasets import Dataset

    _, model, tokenizer, _, rows = rows_for(base, batch, steps)
    on_cuda = torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=batch,
        max_steps=steps,
        bf16=True,
        use_cpu=not on_cuda,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.data_collator = counter = TokenCounter(trainer.data_collator)
    timer = StepTimer(counter)
    trainer.add_callback(timer)
    trainer.train()
    return timer.result()


def run_naive(base: str, batch: int, steps: int) -> float:
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
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss / batch
            loss.backward()
            real += n
        optimizer.step()
        optimizer.zero_grad()
    return real / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="bundled:gemma-3-270m")
    parser.add_argument("--batch", type=int, default=8, help="effective batch (examples per optimiser step)")
    parser.add_argument("--steps", type=int, default=2, help="optimiser steps per method")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ours, ours_fraction = run_ours(args.base, args.batch, args.steps, Path(tmp))
        trl, trl_fraction = run_trl_default(args.base, args.batch, args.steps, Path(tmp))
    naive = run_naive(args.base, args.batch, args.steps)
    result = {
        "base": args.base,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}",
        "effective_batch": args.batch,
        "steps": args.steps,
        "ours_tok_s": round(ours, 1),
        "trl_default_tok_s": round(trl, 1),
        "naive_tok_s": round(naive, 1),
        "ours_vs_trl_default": round(ours / trl, 2),
        "ours_real_token_fraction": round(ours_fraction, 3),
        "trl_default_real_token_fraction": round(trl_fraction, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
