"""A crowd at the in-process models: 1, 4 and 8 raters at once, each sending to both sides, batched or not.

The embedded default (a public Space with no servers) answers every rater from the models in its own process.
This runs the arena's own serving path (``serving.backends.LocalBackend.stream``, its batcher included) for both
models of a pair: each of N raters sends a message to both sides at once and waits for both answers, for
``--turns`` turns; all N raters start together. Measured in the serving process, so no client's overhead is in
the figures. The same run repeats with batching off (``max_batch=1``, one answer at a time per model, what the
arena did before) on the same loaded models.

  aggregate_tok_s     tokens generated per second by the whole process (both models), by number of raters
  turn_p95_s          95th percentile of a rater's turn: from sending to both answers done
  first_token_p95_s   95th percentile of the time to an answer's first text
  unbatched           the same three with batching off; ratio_8 = aggregate_tok_s["8"] / unbatched's "8"
                      (target >= 2.5), and first_token_p95_s["8"] < 5 s
  precision           what in-process serving chose here (``LIMA_ARENA_PRECISION``, else auto, as
                      ``serving/precision.py`` decides); the figures above are in it
  fp32                the batched three again with both models in fp32; auto_vs_fp32 = aggregate_tok_s["8"] /
                      fp32's "8" (target >= 1.4 on a CPU with native bf16; where auto chose fp32 the fp32 run is
                      the chosen one, so 1.0)

Tokens are counted by the model's tokenizer on each answer. The pair: ``--pair DIR`` (a recipe folder with
lima-1000 and lima-1030), else runs/quick-cpu when it was trained, else the tiny test pair (trained here).

Prints one JSON line. ``python bench/arena_crowd.py [--raters 1,4,8] [--turns 1] [--max-new-tokens 48]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from common import cli  # noqa: E402
from serving import backends  # noqa: E402
from serving.batching import Batcher  # noqa: E402

MESSAGES = ("Tell me about the moon.", "Give me three tips for a job interview.", "How do I make a paper plane?")


def selected_pair(recipe_dir: Path) -> tuple[Path, Path] | None:
    chosen = []
    for model in ("lima-1000", "lima-1030"):
        marker = recipe_dir / model / "selected"
        if not marker.is_file():
            return None
        chosen.append(recipe_dir / model / marker.read_text().strip())
    return chosen[0], chosen[1]


def find_pair(pair: str | None, scratch: Path) -> tuple[Path, Path, str]:
    for candidate in [Path(pair)] if pair else [REPO / "runs" / "quick-cpu"]:
        found = selected_pair(candidate)
        if found:
            return found[0], found[1], str(candidate.relative_to(REPO) if candidate.is_relative_to(REPO) else candidate)
        if pair:
            raise cli.UserError(f"--pair {pair}: no selected lima-1000 / lima-1030 pair in it")
    command = [sys.executable, "-m", "finetune", "train", "--recipe", "test", "--output", str(scratch)]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    zero, dialogue = selected_pair(scratch / "test")
    return zero, dialogue, "the tiny test pair"


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2)


async def answer(backend: backends.LocalBackend, text: str, decoding: backends.Decoding) -> tuple[str, float | None]:
    started, first, out = time.perf_counter(), None, ""
    async for chunk in backend.stream([{"role": "user", "content": text}], decoding):
        if isinstance(chunk, backends.Waiting):
            continue
        if first is None:
            first = time.perf_counter() - started
        out += chunk
    return out, first


async def crowd(sides: list[backends.LocalBackend], raters: int, turns: int, decoding: backends.Decoding) -> dict:
    tokens, turn_s, first_s = 0, [], []

    async def rater(n: int) -> None:
        nonlocal tokens
        for t in range(turns):
            text = MESSAGES[(n + t) % len(MESSAGES)]
            started = time.perf_counter()
            results = await asyncio.gather(*(answer(side, text, decoding) for side in sides))
            turn_s.append(time.perf_counter() - started)
            for side, (out, first) in zip(sides, results, strict=True):
                tokens += len(side.tokenizer(out, add_special_tokens=False)["input_ids"])
                if first is not None:
                    first_s.append(first)

    started = time.perf_counter()
    await asyncio.gather(*(rater(n) for n in range(raters)))
    wall = time.perf_counter() - started
    return {"tok_s": round(tokens / wall, 2), "turn_p95_s": p95(turn_s), "first_token_p95_s": p95(first_s)}


def measure(sides: list[backends.LocalBackend], counts: list[int], turns: int, decoding: backends.Decoding) -> dict:
    runs = {str(n): asyncio.run(crowd(sides, n, turns, decoding)) for n in counts}
    return {
        "aggregate_tok_s": {n: r["tok_s"] for n, r in runs.items()},
        "turn_p95_s": {n: r["turn_p95_s"] for n, r in runs.items()},
        "first_token_p95_s": {n: r["first_token_p95_s"] for n, r in runs.items()},
    }


def loaded(paths: tuple[Path, Path], max_batch: int, precision: str | None) -> list[backends.LocalBackend]:
    """Both models in process in this precision, warmed up (first calls are slow)."""
    sides = [backends.LocalBackend(str(path), max_batch=max_batch, precision=precision) for path in paths]
    for side in sides:
        side.load()
        if side.load_error:
            raise cli.UserError(side.load_error)
    asyncio.run(crowd(sides, 1, 1, backends.Decoding(max_new_tokens=4)))
    return sides


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raters", default="1,4,8", help="comma-separated crowd sizes (default 1,4,8)")
    parser.add_argument("--turns", type=int, default=1, help="turns per rater (default 1)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--pair", help="a recipe folder holding lima-1000 and lima-1030 (default: see above)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.raters.split(",")]
    decoding = backends.Decoding(max_new_tokens=args.max_new_tokens)  # the paper's: 0.7, 0.9, penalty 1.2
    with tempfile.TemporaryDirectory(prefix="lima-crowd-") as tmp:
        zero, dialogue, which = find_pair(args.pair, Path(tmp))
        sides = loaded((zero, dialogue), max(counts), "fp32")
        fp32 = measure(sides, counts, args.turns, decoding)
        chosen = loaded((zero, dialogue), max(counts), None)  # as the arena would: LIMA_ARENA_PRECISION, else auto
        if chosen[0].precision != "fp32":  # else the fp32 run was the chosen one: the same models, measured
            sides = chosen
            batched = measure(sides, counts, args.turns, decoding)
        else:
            batched = fp32
        for side in sides:  # the same models, one answer at a time each
            side.batcher = Batcher(side.model, side.tokenizer, side.device, max_batch=1)
        unbatched = measure(sides, counts, args.turns, decoding)
    top = str(max(counts))
    ratio = batched["aggregate_tok_s"][top] / unbatched["aggregate_tok_s"][top]
    result = {
        "batched": True,
        **batched,
        "unbatched": unbatched,
        f"ratio_{top}": round(ratio, 2),
        "precision": chosen[0].precision,
        "fp32": fp32,
        "auto_vs_fp32": round(batched["aggregate_tok_s"][top] / fp32["aggregate_tok_s"][top], 2),
        "pair": which,
        "max_new_tokens": args.max_new_tokens,
        "turns_per_rater": args.turns,
        "targets": {f"ratio_{top}": 2.5, f"first_token_p95_s[{top}]": 5.0, "auto_vs_fp32": 1.4},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(cli.run(main))
