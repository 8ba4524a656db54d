"""Hostile requests against a running arena, from a process of its own (so the server keeps its cores):
random route names, random sessions and forwarded addresses, oversized, NaN and wrongly typed inputs; or joins to
Gradio's queue with fresh sessions whose results are never read.

    python tests/hostile.py URL COUNT SEED    # prints the HTTP statuses it got, as JSON {status: count}
    python tests/hostile.py URL COUNT SEED --join FN_INDEX --addresses N   # COUNT abandoned joins from N addresses
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import string
import sys
from collections import Counter

import httpx


def requests(count: int, seed: int) -> list[tuple[str, bytes, dict]]:
    rng = random.Random(seed)

    def junk(n: int) -> str:
        return "".join(rng.choices(string.ascii_letters + string.digits + "-_", k=n))

    made = []
    for i in range(count):
        address = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        if i % 5:  # four in five name a route that does not exist; the others rate, with hostile inputs
            path, body = f"gradio_api/run/{junk(rng.randrange(1, 300))}", {"data": [], "session_hash": junk(8)}
        else:
            rating = rng.choice(["pass", float("nan"), "x" * 20_000, None, 7, ["pass"]])
            turn = rng.choice([junk(32), "0" * 10_000, None, 3.5])
            rater = rng.choice(["ann", "judge:x", "y" * 5000, None, float("inf")])
            path = "gradio_api/run/rate"
            body = {"data": [turn, rating, rater], "session_hash": junk(rng.randrange(1, 200))}
        headers = {"X-Forwarded-For": address, "content-type": "application/json"}
        made.append((path, json.dumps(body).encode(), headers))  # NaN as JavaScript writes it
    return made


def joins(count: int, seed: int, fn_index: int, addresses: int) -> list[tuple[str, bytes, dict]]:
    """Joins to event ``fn_index``, each with a session of its own, from ``addresses`` forwarded addresses in turn
    (the first always 203.0.113.1): what a script sends to grow the queue, since it never opens the stream."""
    rng = random.Random(seed)
    made = []
    for i in range(count):
        session = "".join(rng.choices(string.ascii_lowercase + string.digits, k=11))
        body = {"data": [], "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
        headers = {"X-Forwarded-For": f"203.0.113.{1 + i % addresses}", "content-type": "application/json"}
        made.append(("gradio_api/queue/join", json.dumps(body).encode(), headers))
    return made


async def barrage(url: str, made: list[tuple[str, bytes, dict]]) -> Counter:
    statuses: Counter = Counter()
    gate = asyncio.Semaphore(32)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:

        async def one(path: str, body: bytes, headers: dict) -> None:
            async with gate:
                statuses[(await http.post(path, content=body, headers=headers)).status_code] += 1

        await asyncio.gather(*(one(*r) for r in made))
    return statuses


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("seed", type=int)
    parser.add_argument("--join", type=int, help="abandoned joins to this event (fn_index) instead")
    parser.add_argument("--addresses", type=int, default=1)
    args = parser.parse_args(sys.argv[1:])
    if args.join is None:
        made = requests(args.count, args.seed)
    else:
        made = joins(args.count, args.seed, args.join, args.addresses)
    print(json.dumps(asyncio.run(barrage(args.url, made))))
