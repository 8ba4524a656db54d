"""The GPU check: the real `finetune train` path on CUDA, plain and under FSDP, then training throughput.

One command on one GPU; planned to take about 5 minutes on an H200 (kept under 8):

    python bench/gpu_check.py [--out /tmp/gpu-check]

No weights travel to a GPU machine, so the base is a real 1-2B architecture (Llama 3.2 1B's config: 1.24B
parameters, a 128k vocabulary) random-initialised and saved in bf16, with the tiny test tokenizer (BPE
trained on dialogues/), so its embedding matrix is padded far past the tokenizer and EOT lands on a padding
row (finetune/chat_format.py initialises it from the trained rows' mean). What it runs, each as a user would:

  plain  python -m finetune train --recipe single-gpu ... (bf16 autocast, gradient checkpointing)
  fsdp   accelerate launch --config_file finetune/accelerate/fsdp.yaml --num_processes 1 -m finetune train
         --recipe lima-7b ...  (the shipped FSDP2 settings: full sharding, CPU-RAM-efficient loading, FSDP
         activation checkpointing, sharded resume state, the servable copy gathered whole)

both on the offline sample (16 single-turn examples + 8 dialogues, batch 8, one epoch kept): the chat
template, EOT, residual dropout, the assistant-only mask, one servable save each. Each saved epoch is then
reloaded on the GPU and checked (finetune/servable.py: template, EOT stop, dtype, generation ends at EOT).
The plain leg's epoch is then served the arena's in-process way (LocalBackend: batches, the nucleus sampler),
1 answer and 8 at once. Last, bench/train_throughput.py on the same base: ours vs TRL's SFTTrainer defaults,
tokens/s, MFU, peak memory.

Prints progress on stderr and one JSON line on stdout. The device machine has torch, transformers,
accelerate and peft but not trl or datasets: carry them as wheels (README, "The GPU check").
`--smoke` runs the same on a tiny Llama on CPU, to check this script where there is no GPU (the FSDP leg is
launched as shipped, but accelerate applies FSDP on accelerators only, so it trains without it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from finetune.servable import check_servable  # noqa: E402

# Llama 3.2 1B (meta-llama/Llama-3.2-1B config.json), minus its long-context rope scaling.
LLAMA_32_1B = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    vocab_size=128256,
    max_position_embeddings=4096,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=1088,  # padded past the tiny tokenizer, as the real one is
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)
# The check's data and length: the shipped recipe otherwise, a handful of steps.
SETS = [
    "lima=sample",
    "epochs=1",
    "keep_epochs=[1,1]",
    "batch_size=8",
    "per_device_batch_size=4",
    "single_turn_examples=16",
    "dialogue_examples=8",
]


def say(message: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_base(target: Path, shape: dict, device: str) -> int:
    """A random-initialised model of the given shape with the tiny tokenizer, saved in bf16. Returns params."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from finetune.base_models import tiny_model_dir

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir())
    config = LlamaConfig(
        **shape,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    model.to(torch.bfloat16).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return params


def run_leg(name: str, command: list[str], run_dir: Path, log_dir: Path) -> dict:
    """Run one training command to the end, then check the epoch it kept."""
    say(f"{name}: {' '.join(command)}")
    started = time.time()
    log_path = log_dir / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with log_path.open("w") as log:
        code = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    result: dict = {"ok": False, "exit": code, "seconds": round(time.time() - started, 1)}
    tail = log_path.read_text(errors="replace").splitlines()[-15:]
    if code != 0:
        say(f"{name}: exit {code}; last lines:\n" + "\n".join(tail))
        return {**result, "log_tail": tail}
    card = (run_dir / "epoch-1" / "README.md").read_text()
    figures = dict(re.findall(r"^- (\w+): (.*)$", card, flags=re.M))
    log_text = (run_dir / "train.log").read_text()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    problems = check_servable(run_dir / "epoch-1", device=device)
    result.update(
        ok=not problems,
        problems=problems,
        engine=figures.get("engine"),
        steps=int(figures.get("steps", 0)),
        effective_batch=int(figures.get("effective_batch", 0)),
        train_loss=float(figures["train_loss"]) if figures.get("train_loss") not in (None, "None") else None,
        peak_memory_mb=int(figures.get("peak_memory_mb", 0)),
        residual_dropout_logged="residual dropout by layer" in log_text,
        multi_turn_examples=int(m.group(1)) if (m := re.search(r"examples \((\d+) multi-turn\)", log_text)) else None,
    )
    say(f"{name}: {'ok' if result['ok'] else 'PROBLEMS ' + str(problems)} in {result['seconds']} s")
    return result


def serve_leg(model_dir: Path, device: str, new_tokens: int = 32) -> dict:
    """The arena's in-process path on this device (demo/backends.py LocalBackend, its batcher and nucleus
    sampler): 1 answer, then 8 at once, at the paper's decoding; the batches it ran and the tokens per second."""
    import asyncio

    from demo.backends import Decoding, LocalBackend, Waiting

    started = time.time()
    backend = LocalBackend(str(model_dir), device=device, max_batch=8)
    backend.load()
    if backend.load_error:
        return {"ok": False, "error": backend.load_error}
    decoding = Decoding(max_new_tokens=new_tokens)  # temperature 0.7, top-p 0.9, penalty 1.2

    async def crowd(n: int) -> tuple[list[str], float]:
        async def one(k: int) -> str:
            out = ""
            async for chunk in backend.stream(
                [{"role": "user", "content": f"Question {k}: what is a tide?"}], decoding
            ):
                if not isinstance(chunk, Waiting):
                    out += chunk
            return out

        begun = time.perf_counter()
        answers = await asyncio.gather(*(one(k) for k in range(n)))
        return answers, time.perf_counter() - begun

    try:
        asyncio.run(crowd(1))  # warm-up
        result = {"ok": True, "dtype": str(backend.model.dtype)}
        for n in (1, 8):
            answers, seconds = asyncio.run(crowd(n))
            tokens = sum(len(backend.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
            result[f"tok_s_{n}"] = round(tokens / seconds, 1)
            result["ok"] = result["ok"] and all(answers)
        result["batch_sizes"] = backend.batcher.batch_sizes
        result["ok"] = result["ok"] and 8 in backend.batcher.batch_sizes
    except Exception as err:  # a report, not a crash: the training legs' figures still print
        result = {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    result["seconds"] = round(time.time() - started, 1)
    say(f"serve: {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu-check"), help="scratch folder")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on CPU: checks this script only")
    parser.add_argument("--throughput-batch", type=int, default=64, help="effective batch of the throughput run")
    parser.add_argument("--throughput-steps", type=int, default=3)
    args = parser.parse_args()
    on_cuda = torch.cuda.is_available()
    if not on_cuda and not args.smoke:
        sys.exit("error: no CUDA device: run this on a GPU machine, or pass --smoke to check the script on CPU")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    base = out / "base"
    shape = TINY if args.smoke else LLAMA_32_1B
    say(f"building a random {'tiny Llama' if args.smoke else 'Llama 3.2 1B'} in {base}")
    params = build_base(base, shape, "cuda" if on_cuda else "cpu")
    say(f"{params / 1e9:.3f}B parameters saved")

    train = ["-m", "finetune", "train", "--model", "dialogue", "--base", str(base)]
    sets = [item for pair in (("--set", s) for s in SETS) for item in pair]
    if args.smoke:
        sets += ["--set", "precision=fp32"]
    legs = {
        "plain": (
            [sys.executable, *train, "--recipe", "single-gpu", *sets, "--output", str(out / "plain")],
            out / "plain" / "single-gpu" / "lima-1030",
        )
    }
    # The shipped FSDP launch, as a user types it. Without CUDA accelerate still launches it (through its
    # torchrun path) but applies no FSDP: the smoke run checks the command, the GPU run checks FSDP itself.
    fsdp = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "finetune" / "accelerate" / "fsdp.yaml"),
        "--num_processes",
        "1",
    ]
    legs["fsdp"] = (
        [*fsdp, *train, "--recipe", "lima-7b", *sets, "--output", str(out / "fsdp")],
        out / "fsdp" / "lima-7b" / "lima-1030",
    )
    results = {name: run_leg(name, command, run_dir, out) for name, (command, run_dir) in legs.items()}
    if on_cuda and results["fsdp"].get("engine") not in (None, "FSDP"):
        results["fsdp"]["ok"] = False
        results["fsdp"]["problems"].append(f"FSDP was not applied: the engine was {results['fsdp']['engine']}")
    elif not on_cuda:
        results["fsdp"]["note"] = "CPU: launched as shipped, but accelerate applies FSDP on accelerators only"

    served = (
        serve_leg(legs["plain"][1] / "epoch-1", "cuda" if on_cuda else "cpu")
        if results["plain"]["ok"]
        else {"ok": False, "error": "the plain leg saved no servable epoch"}
    )

    say("throughput: ours vs TRL SFTTrainer defaults")
    bench = [
        sys.executable,
        str(REPO / "bench" / "train_throughput.py"),
        "--base",
        str(base),
        "--batch",
        str(8 if args.smoke else args.throughput_batch),
        "--steps",
        str(args.throughput_steps),
        "--no-naive",
    ]
    with (out / "throughput.log").open("w") as log:
        done = subprocess.run(bench, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    lines = done.stdout.strip().splitlines()
    throughput = json.loads(lines[-1]) if done.returncode == 0 and lines else {"exit": done.returncode}

    line = {
        "check": "gpu",
        "device": torch.cuda.get_device_name(0) if on_cuda else "cpu (smoke)",
        "torch": torch.__version__,
        "base": "random tiny Llama" if args.smoke else "random Llama 3.2 1B (config only)",
        "params": params,
        "plain": results["plain"],
        "fsdp": results["fsdp"],
        "fsdp_peak_memory_mb": results["fsdp"].get("peak_memory_mb"),
        "serve": served,
        **{key: throughput.get(key) for key in throughput if key not in ("base", "device")},
        "seconds": round(time.time() - started, 1),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
