"""The GPU check: the real `finetune train` path on CUDA, plain and under FSDP, the arena's serving, throughput.

One command on one GPU, planned at about 3 minutes on an H200 (its budget, --budget, is 6):

    python bench/gpu_check.py --out DIR

DIR receives everything a borrowed machine gives back: gpu_check.json (the JSON line, rewritten after each
leg, so a run cut short still says how far it got), gpu_check.log (progress), and one log per leg (base.log,
plain.log, fsdp.log, serve.log, throughput.log); a failed leg's entry in the JSON carries the tail of its log. The
models and runs go to a scratch folder (--scratch; by default a temporary one, removed at the end).

No weights travel to a GPU machine, so the base is Llama 3.2 1B's architecture (1.24B parameters, 128,256
embedding rows), random-initialised and saved in bf16, with the tiny test tokenizer (BPE trained on
dialogues/, 1,024 tokens): its embedding matrix is padded far past the tokenizer, and EOT lands on a padding
row (finetune/chat_format.py initialises it from the trained rows' mean), as on real padded vocabularies. A
random head would give the 127k padding rows ~99 % of the probability mass (ids that decode to nothing), so
the base is made to put it on the tokenizer's tokens, as a trained model does (`confine_to_tokenizer`).

  plain       python -m finetune train --recipe single-gpu ... (bf16 autocast, gradient checkpointing)
  fsdp        accelerate launch --config_file finetune/accelerate/fsdp.yaml --num_processes 1 -m finetune train
              --recipe lima-7b ...  (the shipped FSDP2 settings: full sharding, CPU-RAM-efficient loading, FSDP
              activation checkpointing, the servable copy gathered whole)
  serve       the plain leg's epoch served the arena's in-process way (LocalBackend: the batcher, the nucleus
              sampler), 1 answer then 8 at once, every answer non-empty
  throughput  bench/train_throughput.py's ours vs TRL's SFTTrainer defaults at the same max_length, in this
              process: tokens/s, MFU, peak memory

The two training legs run at the same time (their train_seconds are not speeds: throughput measures speed
alone), each on the offline sample (16 single-turn examples + 8 dialogues, batch 8, one epoch): the chat
template, EOT, residual dropout, the assistant-only mask, and one servable save each, reloaded on the GPU and
checked (finetune/servable.py: template, EOT stop, dtype, weight names, generation ends at EOT). One epoch
means no resume checkpoint (finetune/train.py writes none after the last epoch).

The plan, ~3 minutes on one H200 (16 cores, a fast disk): costs measured here on CPU scaled as stated, FLOPs
at 30 % of the H200's 989 TFLOP/s, writes at 1 GB/s.
  start and imports         ~15 s  torch + transformers + TRL import in ~6 s on a quiet machine (15 s on this
                                   loaded 2-core one), once per process: this one, plain, fsdp's launcher and worker
  base                      ~10 s  1.24B parameters initialised on the GPU, 2.5 GB of bf16 written
  plain and fsdp together   ~60 s  each: imports, the base read (2.5 GB), 3 steps of 8 x <= 2,048 tokens
                                   (25k tokens x 6 x 1.24B = 0.2 PFLOP: 1 s), one 2.5 GB servable save
  checks and serve          ~25 s  two 2.5 GB loads and 20-token generations; 32 tokens x 3 rounds of batches
  throughput                ~60 s  one base read; 2 x 3 steps of 64 examples (about 170k real tokens each:
                                   1.3 PFLOP, 5 s at 30 % MFU) plus the first step's warm-up
The base is read 3 times (once per training leg and once for throughput), each saved epoch once to check it
and the plain one once to serve it, in 3 processes and accelerate's launcher; before this plan the check also
wrote a 15 GB resume checkpoint per leg (fp32 weights + Adam), and read the base 4 times.

Needs the wheels in bench/gpu_wheels.txt where the machine lacks them (TRL, datasets, minijinja, transformers
5.24). `--smoke` rehearses all of it on CPU: the same legs and files, the same 128,256 embedding rows under a
tiny hidden size, less and shorter data (the FSDP leg is launched as shipped, but accelerate applies FSDP on
accelerators only, so it trains without it there); tests/test_finetune.py runs it (37 s on 2 quiet AVX2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from finetune.servable import check_servable  # noqa: E402

# The training legs' environment: this one with the repository on PYTHONPATH, after what is already there (on
# the GPU machine, the folder the carried wheels were installed into).
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
ROWS = 128_256  # Llama 3.2's embedding rows, in the smoke run too: what a 1,024-token tokenizer leaves unused
# Llama 3.2 1B (meta-llama/Llama-3.2-1B config.json), minus its long-context rope scaling.
# fmt: off
LLAMA_32_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                   num_key_value_heads=8, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
# fmt: on
# The check's data: the shipped recipes otherwise, one epoch of a few steps. The smoke run trains less and
# shorter (the 128k-row head dominates a tiny model's cost on a CPU).
SETS = ["lima=sample", "epochs=1", "keep_epochs=[1,1]", "batch_size=8", "per_device_batch_size=4"]
SETS += ["single_turn_examples=16", "dialogue_examples=8"]
SMOKE_SETS = ["lima=sample", "epochs=1", "keep_epochs=[1,1]", "batch_size=4", "per_device_batch_size=2"]
SMOKE_LENGTH = 128
SMOKE_SETS += ["single_turn_examples=4", "dialogue_examples=4", f"max_length={SMOKE_LENGTH}", "precision=fp32"]
LOG_TAIL = 40  # lines of a failed leg's log carried in the JSON
LATE_LEGS = 120  # seconds of the budget kept for serving and throughput: training legs are stopped before

log = logging.getLogger("gpu-check")


def confine_to_tokenizer(model, known: int) -> None:
    """Make a random model put its probability mass on its tokenizer's `known` rows, as a trained model on a
    padded vocabulary does, and not on the padding rows past them.

    Without it, 127k random padding logits swamp 1k random real ones and ~1 % of sampled ids decode to
    text. Residual channel 0 carries the same small value in every known token's embedding and no layer
    writes into it, so after the final norm (its channel-0 gain raised) it is positive at every position;
    the padding rows are zero but for a negative channel 0, so their logits sit tens below every known
    token's (the same rows serve as the tied head). EOT, a padding row, is re-initialised from the known
    rows' mean when training adds it, and then scores like a known token."""
    embeddings, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    with torch.no_grad():
        for rows in [embeddings] if head is embeddings else [embeddings, head]:
            rows[:known, 0] = 0.02  # the initialiser's scale: the known tokens' embeddings stay as random as before
            rows[known:] = 0.0
            rows[known:, 0] = -100.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        model.model.norm.weight[0] = 1000.0


def known_mass(model, tokenizer) -> float:
    """The least probability any position of a short prompt gives to the tokenizer's own tokens."""
    ids = tokenizer("User: what is a tide?\nAssistant: the sea rises", return_tensors="pt").to(model.device)
    with torch.no_grad():
        probabilities = model(**ids).logits.float().softmax(-1)
    return round(probabilities[..., : len(tokenizer)].sum(-1).min().item(), 6)


def build_base(target: Path, shape: dict, device: str) -> dict:
    """The random base, saved in bf16 with the tiny tokenizer; returns its figures for the JSON line."""
    from transformers import AutoTokenizer

    from finetune.base_models import random_llama, tiny_model_dir

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir())
    with torch.device(device):
        model = random_llama(tokenizer, rows=ROWS, **shape).to(torch.bfloat16)
    confine_to_tokenizer(model, len(tokenizer))
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "base_vocab_rows": model.get_input_embeddings().weight.shape[0],
        "base_tokenizer_tokens": len(tokenizer),
        "base_known_mass": known_mass(model, tokenizer),
    }


def tail(path: Path, lines: int = LOG_TAIL) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else []


def start_leg(name: str, command: list[str], out: Path) -> tuple[subprocess.Popen, float]:
    log.info("%s: %s", name, " ".join(command))
    with (out / f"{name}.log").open("w") as leg_log:
        # A session of its own, so a leg past the budget is stopped with every process it started.
        process = subprocess.Popen(
            command, cwd=REPO, env=ENV, stdout=leg_log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return process, time.time()


def finish_leg(name: str, started: tuple[subprocess.Popen, float], run_dir: Path, out: Path, deadline: float) -> dict:
    """Wait for one training leg (stopping it at the deadline), then check the epoch it kept."""
    process, began = started
    try:
        code = process.wait(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        code = process.wait()
        log.error("%s: stopped at the check's budget", name)
    result: dict = {"ok": False, "exit": code, "seconds": round(time.time() - began, 1)}
    if code != 0:
        log.error("%s: exit %s; the end of %s.log:\n%s", name, code, name, "\n".join(tail(out / f"{name}.log")))
        return {**result, "log_tail": tail(out / f"{name}.log")}
    figures = dict(re.findall(r"^- (\w+): (.*)$", (run_dir / "epoch-1" / "README.md").read_text(), flags=re.M))
    log_text = (run_dir / "train.log").read_text()
    problems = check_servable(run_dir / "epoch-1", device="cuda" if torch.cuda.is_available() else "cpu")
    loss = figures.get("train_loss")
    result.update(
        ok=not problems,
        problems=problems,
        engine=figures.get("engine"),
        steps=int(figures.get("steps", 0)),
        effective_batch=int(figures.get("effective_batch", 0)),
        train_loss=float(loss) if loss not in (None, "None") else None,
        peak_memory_mb=int(figures.get("peak_memory_mb", 0)),
        residual_dropout_logged="residual dropout by layer" in log_text,
        multi_turn_examples=int(m.group(1)) if (m := re.search(r"examples \((\d+) multi-turn\)", log_text)) else None,
    )
    log.info("%s: %s in %s s", name, "ok" if result["ok"] else f"PROBLEMS {problems}", result["seconds"])
    return result


@contextlib.contextmanager
def leg_log(name: str, out: Path, result: dict):
    """Run an in-process leg with its output (stdout, stderr, logging) in DIR/NAME.log; an exception becomes
    the leg's error, with the end of that log, and the check goes on."""
    path, root, failed = out / f"{name}.log", logging.getLogger(), False
    with path.open("w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        handler = logging.StreamHandler(sink)
        root.addHandler(handler)
        try:
            yield
        except Exception as err:
            traceback.print_exc(file=sink)
            result.update(ok=False, error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            failed = True
        finally:
            root.removeHandler(handler)
    if failed:
        result["log_tail"] = tail(path)
        log.error("%s: %s; the end of %s.log:\n%s", name, result["error"], name, "\n".join(result["log_tail"]))


def serve_leg(model_dir: Path, device: str, new_tokens: int = 32) -> dict:
    """The arena's in-process path on this device (serving/local.py LocalBackend, its batcher and nucleus
    sampler): 1 answer, then 8 at once, at the paper's decoding; every answer must say something."""
    import asyncio

    from serving.backends import Decoding, LocalBackend, Waiting

    started = time.time()
    backend = LocalBackend(str(model_dir), device=device, max_batch=8)
    backend.load()
    if backend.load_error:
        return {"ok": False, "error": backend.load_error}
    decoding = Decoding(max_new_tokens=new_tokens)  # temperature 0.7, top-p 0.9, penalty 1.2

    async def crowd(n: int) -> tuple[list[str], float]:
        async def one(k: int) -> str:
            messages = [{"role": "user", "content": f"Question {k}: what is a tide?"}]
            return "".join([c async for c in backend.stream(messages, decoding) if not isinstance(c, Waiting)])

        begun = time.perf_counter()
        answers = await asyncio.gather(*(one(k) for k in range(n)))
        return answers, time.perf_counter() - begun

    asyncio.run(crowd(1))  # warm-up
    # the precision serving chose for this machine (serving/precision.py: bf16 on a GPU that has it)
    result: dict = {"dtype": str(backend.model.dtype), "precision": backend.precision, "empty_answers": 0}
    for n in (1, 8):
        answers, seconds = asyncio.run(crowd(n))
        tokens = sum(len(backend.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
        result[f"tok_s_{n}"] = round(tokens / seconds, 1)
        result["empty_answers"] += sum(not a.strip() for a in answers)
        result["sample"] = answers[0][:80]
    result["batch_sizes"] = list(backend.batcher.batch_sizes)
    backend.model.to("cpu")  # the batcher's idle thread keeps the model: off the GPU, before throughput's peaks
    result["ok"] = result["empty_answers"] == 0 and 8 in result["batch_sizes"]
    result["seconds"] = round(time.time() - started, 1)
    return result


def log_to(out: Path) -> None:
    """Progress on stderr and in DIR/gpu_check.log; what the legs log goes to their own logs (leg_log)."""
    log.setLevel(logging.INFO)
    log.propagate = False
    logging.getLogger().setLevel(logging.INFO)
    form = logging.Formatter("[gpu-check %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(out / "gpu_check.log", mode="w")):
        handler.setFormatter(form)
        log.addHandler(handler)


def report(line: dict, out: Path) -> None:
    """The JSON line as it stands, in DIR/gpu_check.json (rewritten after every leg)."""
    (out / "gpu_check.json").write_text(json.dumps(line) + "\n")


def training_legs(base: Path, scratch: Path, smoke: bool) -> dict[str, tuple[list[str], Path]]:
    """Each training leg's command, as a user types it, and the run folder it fills."""
    train = ["-m", "finetune", "train", "--model", "dialogue", "--base", str(base)]
    sets = [item for setting in (SMOKE_SETS if smoke else SETS) for item in ("--set", setting)]
    # The shipped FSDP launch. Without CUDA accelerate still launches it (through its torchrun path) but
    # applies no FSDP: the smoke run checks the command, the GPU run checks FSDP itself.
    fsdp = ["-m", "accelerate.commands.launch", "--config_file", str(REPO / "finetune/accelerate/fsdp.yaml")]
    fsdp += ["--num_processes", "1"]
    if smoke:  # the yaml's bf16 autocast, emulated on a CPU without native bf16: 37.9 s a step there, 2.2 without
        fsdp += ["--mixed_precision", "no"]
    return {
        "plain": (
            [sys.executable, *train, "--recipe", "single-gpu", *sets, "--output", str(scratch / "plain")],
            scratch / "plain" / "single-gpu" / "lima-1030",
        ),
        "fsdp": (
            [sys.executable, *fsdp, *train, "--recipe", "lima-7b", *sets, "--output", str(scratch / "fsdp")],
            scratch / "fsdp" / "lima-7b" / "lima-1030",
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu-check"), help="where the JSON and logs go")
    parser.add_argument("--scratch", type=Path, help="where models and runs go (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="rehearse it all on CPU (a tiny hidden size, less data)")
    parser.add_argument("--budget", type=int, help="seconds it may take (default 360; smoke 540)")
    parser.add_argument("--throughput-batch", type=int, default=64, help="effective batch of the throughput run")
    parser.add_argument("--throughput-steps", type=int, default=3)
    args = parser.parse_args()
    on_cuda = torch.cuda.is_available()
    if not on_cuda and not args.smoke:
        sys.exit("error: no CUDA device: run this on a GPU machine, or pass --smoke to rehearse it on CPU")
    out, device, started = args.out, "cuda" if on_cuda else "cpu", time.time()
    out.mkdir(parents=True, exist_ok=True)
    end = started + (args.budget or (540 if args.smoke else 360))
    log_to(out)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    line: dict = {
        "check": "gpu",
        "device": torch.cuda.get_device_name(0) if on_cuda else "cpu (smoke)",
        "torch": torch.__version__,
        "base": f"random {'tiny Llama' if args.smoke else 'Llama 3.2 1B (config only)'}, {ROWS} rows",
    }
    log.info("building the base in %s", scratch / "base")
    built: dict = {}
    with leg_log("base", out, built):
        built.update(build_base(scratch / "base", {"tie_word_embeddings": True} if args.smoke else LLAMA_32_1B, device))
        log.info(
            "%.3fB parameters; %.4f of the mass on its tokenizer's tokens",
            built["params"] / 1e9,
            built["base_known_mass"],
        )
    line.update({f"base_{key}" if key in ("error", "log_tail") else key: value for key, value in built.items()})
    report(line, out)
    if "error" in built:
        sys.exit(1)

    legs = training_legs(scratch / "base", scratch, args.smoke)
    running = {name: start_leg(name, command, out) for name, (command, _) in legs.items()}
    for name, (_, run_dir) in legs.items():
        line[name] = finish_leg(name, running[name], run_dir, out, end - LATE_LEGS)
        report(line, out)
    if on_cuda and line["fsdp"].get("engine") not in (None, "FSDP"):
        line["fsdp"]["ok"] = False
        line["fsdp"]["problems"].append(f"FSDP was not applied: the engine was {line['fsdp']['engine']}")
    elif not on_cuda:
        line["fsdp"]["note"] = "CPU: launched as shipped, but accelerate applies FSDP on accelerators only"
    line["fsdp_peak_memory_mb"] = line["fsdp"].get("peak_memory_mb")

    serve_and_measure(line, scratch / "base", legs["plain"][1] / "epoch-1", out, args, end)
    line["seconds"] = round(time.time() - started, 1)
    report(line, out)
    if not args.scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(line))


def serve_and_measure(line: dict, base: Path, epoch: Path, out: Path, args: argparse.Namespace, end: float) -> None:
    """The legs in this process, after training: serve the plain leg's epoch, then measure throughput."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    line["serve"] = {"ok": False}
    if not line["plain"]["ok"]:
        line["serve"]["error"] = "the plain leg saved no servable epoch"
    with leg_log("serve", out, line["serve"]):
        if line["plain"]["ok"]:
            line["serve"].update(serve_leg(epoch, device, 8 if args.smoke else 32))
    log.info("serve: %s", line["serve"])
    report(line, out)

    log.info("throughput: ours vs TRL's SFTTrainer defaults")
    throughput: dict = {"throughput_ok": False}
    with leg_log("throughput", out, throughput):
        if time.time() > end - LATE_LEGS / 2:
            raise TimeoutError("skipped: the training legs spent the budget")
        from bench.train_throughput import measure

        batch, max_length = (2, SMOKE_LENGTH) if args.smoke else (args.throughput_batch, 2048)
        throughput.update(measure(str(base), batch, args.throughput_steps, None, max_length, False))
        throughput["throughput_ok"] = True
    line.update({key: value for key, value in throughput.items() if key not in ("base", "device")})


if __name__ == "__main__":
    main()
