"""Judge throughput: the judge and autoplay at their server's speed, one request at a time against at the cap.

TGI look-alikes (``tests/tgi_server.py``), each a process of its own, answer every request after a fixed delay
(``--delay``, 0.2 s: a batching server's time per answer, the same however many it holds) and take at most
``--cap`` requests at once (16: their ``/info`` says ``max_concurrent_requests``, and beyond it they answer 429,
as TGI's router does with its semaphore, router/src/infer/mod.rs). This process runs the judge's own code
(``demo.judge``) against them, as ``python -m demo.judge`` does, with ``--concurrency 1`` and with the default
(what ``/info`` says):

  judge_turns_per_s_1, _16   turns judged per second over --conversations judged arena conversations of 4 turns a
                             side: every turn rated and both orders compared (the time covers all of it)
  judge_speedup_16           the ratio (target >= 10)
  autoplay_s_sequential      autoplay's wall time for the 10 openers (dialogues/eval_openers.jsonl) one
                             conversation and one judge request at a time; each side a look-alike of its own
  autoplay_s_concurrent      the same at the judge's cap (conversations at once, judge requests in flight)
  autoplay_speedup           the ratio (target >= 5)

Where the time goes, at the cap: ``judge_server_share_16`` is the time the server's delay alone needs (the
requests in waves of ``cap``: ceil(requests / cap) x delay) over the time taken (1.0: the server is all of it);
``client_cpu_ms_per_request`` is this process's CPU time (the client: requests, streams, store commits) per
request; ``peak_in_flight`` is what the judge's server saw at once, and ``overloaded`` its 429s (0).

Prints one JSON line. ``python bench/judge_throughput.py [--delay 0.2] [--cap 16] [--conversations 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from common import cli  # noqa: E402
from demo import judge, ratings  # noqa: E402
from serving import backends  # noqa: E402

JUDGE_REPLY = "Read.\nRating: pass\nVerdict: A"  # one reply parses as a rating and as a verdict
PLAYER_REPLY = "A short answer from the model."
TURNS_A_SIDE = 4


@contextlib.contextmanager
def look_alike(delay: float, cap: int, reply: str) -> Iterator[dict]:
    """A TGI look-alike in a process of its own; the dict holds its ``url``, and after the block what it served
    (``requests``, ``peak_in_flight``, ``overloaded``)."""
    command = [sys.executable, str(REPO / "tests" / "tgi_server.py"), "0", "0", "--delay", str(delay)]
    command += ["--max-concurrent-requests", str(cap), "--reply", reply]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    served = {"url": process.stdout.readline().strip().rpartition(" ")[2]}
    try:
        yield served
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
        served.update(json.loads(out.strip().splitlines()[-1]))


def judged_arena(path: Path, conversations: int) -> Path:
    """``conversations`` judged arena conversations, 4 turns a side, every answer rated by its owner."""
    store = ratings.Store(path)
    for n in range(conversations):
        cid, session = f"c{n}", f"s{n}"
        store.ensure_conversation(cid, session, "lima-1000", "lima-1030", blind=True, rater="ann")
        for side, model in (("a", "lima-1000"), ("b", "lima-1030")):
            for index in range(1, TURNS_A_SIDE + 1):
                text = f"conversation {n}, side {side}, turn {index}"
                turn = store.add_turn(cid, session, side, index, model, f"ask: {text}", f"answer: {text}", {}, 1.0, 0.1)
                store.rate(turn.id, "pass", session, "ann")
        store.set_verdict(cid, "tie", session, "ann")
    store.close()
    return path


async def rate(db: Path, url: str, requests: int | None) -> dict:
    """``python -m demo.judge --db DB --judge URL [--concurrency N]``'s path, timed."""
    store, asker, tally = ratings.Store(db), judge.Judge(url, requests=requests), judge.Tally()
    await asker.start()
    cpu, started = time.process_time(), time.perf_counter()
    await judge.rate_stored(store, asker, judge.load_prompts(), tally)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    asker.pool.close()
    store.close()
    return {"wall_s": wall, "cpu_s": cpu, "turns": tally.turns, "verdicts": tally.verdicts}


async def play(db: Path, url: str, sides: list[str], requests: int | None) -> dict:
    """``python -m demo.judge autoplay --left L --right R --judge URL [--concurrency N]``'s path, timed."""
    store, asker, tally = ratings.Store(db, rate_every_turn=False), judge.Judge(url, requests=requests), judge.Tally()
    await asker.start()
    players = [backends.make_backend(f"{name}={side}") for name, side in zip(("left", "right"), sides, strict=True)]
    for player in players:
        await player.probe()
    openers = judge.load_openers(judge.OPENERS_FILE)
    decoding = backends.Decoding(max_new_tokens=64)
    cpu, started = time.process_time(), time.perf_counter()
    await judge.autoplay(store, asker, judge.load_prompts(), players, openers, decoding, random.Random(0), tally)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    asker.pool.close()
    store.close()
    return {"wall_s": wall, "cpu_s": cpu, "turns": tally.turns, "verdicts": tally.verdicts}


def measure_judge(folder: Path, args: argparse.Namespace, requests: int | None) -> dict:
    db = judged_arena(folder / f"arena-{requests}.db", args.conversations)
    with look_alike(args.delay, args.cap, JUDGE_REPLY) as server:
        run = asyncio.run(rate(db, server["url"], requests))
    return {**run, **{key: server[key] for key in ("requests", "peak_in_flight", "overloaded")}}


def measure_autoplay(folder: Path, args: argparse.Namespace, requests: int | None) -> dict:
    db = folder / f"autoplay-{requests}.db"
    with (
        look_alike(args.delay, args.cap, JUDGE_REPLY) as server,
        look_alike(args.delay, args.cap, PLAYER_REPLY) as left,
        look_alike(args.delay, args.cap, PLAYER_REPLY) as right,
    ):
        run = asyncio.run(play(db, server["url"], [left["url"], right["url"]], requests))
    played = left["requests"] + right["requests"]
    return {**run, "requests": server["requests"] + played, "peak_in_flight": server["peak_in_flight"],
            "overloaded": server["overloaded"] + left["overloaded"] + right["overloaded"]}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.2, help="seconds the server takes per answer (0.2)")
    parser.add_argument("--cap", type=int, default=16, help="the server's max_concurrent_requests (16)")
    parser.add_argument("--conversations", type=int, default=10, help="judged arena conversations (10)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        one, many = (measure_judge(folder, args, requests) for requests in (1, None))
        sequential, concurrent = (measure_autoplay(folder, args, requests) for requests in (1, None))
    waves = math.ceil(many["requests"] / args.cap) * args.delay
    result = {
        "judge_turns_per_s_1": round(one["turns"] / one["wall_s"], 2),
        "judge_turns_per_s_16": round(many["turns"] / many["wall_s"], 2),
        "judge_speedup_16": round(one["wall_s"] / many["wall_s"], 2),
        "autoplay_s_sequential": round(sequential["wall_s"], 2),
        "autoplay_s_concurrent": round(concurrent["wall_s"], 2),
        "autoplay_speedup": round(sequential["wall_s"] / concurrent["wall_s"], 2),
        "judge_server_share_16": round(waves / many["wall_s"], 3),
        "client_cpu_ms_per_request": {
            "judge_1": round(1000 * one["cpu_s"] / one["requests"], 2),
            "judge_16": round(1000 * many["cpu_s"] / many["requests"], 2),
            "autoplay_concurrent": round(1000 * concurrent["cpu_s"] / concurrent["requests"], 2),
        },
        "peak_in_flight": {
            "judge_1": one["peak_in_flight"],
            "judge_16": many["peak_in_flight"],
            "autoplay_sequential": sequential["peak_in_flight"],
            "autoplay_concurrent": concurrent["peak_in_flight"],
        },
        "overloaded": sum(run["overloaded"] for run in (one, many, sequential, concurrent)),
        "judged": {"turns": many["turns"], "verdicts": many["verdicts"], "requests": many["requests"]},
        "autoplayed": {
            "turns": concurrent["turns"],
            "verdicts": concurrent["verdicts"],
            "requests": concurrent["requests"],
        },
        "delay_s": args.delay,
        "cap": args.cap,
        "targets": {"judge_speedup_16": 10, "autoplay_speedup": 5},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(cli.run(main))
