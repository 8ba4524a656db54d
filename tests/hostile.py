"""Hostile requests against a running arena, from a process of its own (so the server keeps its cores):
random route names, random sessions and forwarded addresses, oversized, NaN and wrongly typed inputs.

    python tests/hostile.py URL COUNT SEED    # prints the HTTP statuses it got, as JSON {status: count}
"""

from __future__ import annotations

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
    url, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(asyncio.run(barrage(url, requests(count, seed)))))
