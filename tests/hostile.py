"""Hostile requests against a running arena, from a process of its own (so the server keeps its cores):
random route names, random sessions and forwarded addresses, oversized, NaN and wrongly typed inputs; or joins to
Gradio's queue with fresh sessions whose results are never read.

    python tests/hostile.py URL COUNT SEED [--session S]  # prints the HTTP statuses it got, as JSON {status: count}
    python tests/hostile.py URL COUNT SEED --join FN_INDEX --addresses N   # COUNT abandoned joins from N addresses
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import string
import sys
import urllib.parse
from collections import Counter


def requests(count: int, seed: int, session: str | None = None) -> list[tuple[str, bytes, dict]]:
    """Hostile requests; with ``session`` (one the server holds) half of the ratings carry it, so their inputs
    reach the handler instead of being refused for a made-up session."""
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
            own = session is not None and rng.random() < 0.5
            body = {"data": [turn, rating, rater], "session_hash": session if own else junk(rng.randrange(1, 200))}
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


async def barrage(url: str, made: list[tuple[str, bytes, dict]], connections: int = 32) -> Counter:
    """Send every request over ``connections`` kept-alive HTTP/1.1 connections, and count the statuses. Plain
    asyncio streams: the server's cost is what is measured, and a full HTTP client (httpx) spent more of the
    machine's CPU than the server did."""
    parts = urllib.parse.urlsplit(url)
    statuses: Counter = Counter()
    pending = iter(made)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        for path, body, headers in pending:  # one shared iterator: each request is sent once
            head = [f"POST {parts.path.rstrip('/')}/{path} HTTP/1.1", f"Host: {parts.netloc}"]
            head += [f"{key}: {value}" for key, value in headers.items()] + [f"Content-Length: {len(body)}"]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            status, close = await read_response(reader)
            statuses[status] += 1
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return statuses


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One response's status, and whether the server closes the connection after it; its body is read and dropped."""
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip().lower()
    if headers.get("transfer-encoding") == "chunked":
        while size := int((await reader.readline()).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readline()
    else:
        await reader.readexactly(int(headers.get("content-length", 0)))
    return status, headers.get("connection") == "close"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("seed", type=int)
    parser.add_argument("--join", type=int, help="abandoned joins to this event (fn_index) instead")
    parser.add_argument("--addresses", type=int, default=1)
    parser.add_argument("--session", help="a session the server holds, for half of the ratings")
    args = parser.parse_args(sys.argv[1:])
    if args.join is None:
        made = requests(args.count, args.seed, args.session)
    else:
        made = joins(args.count, args.seed, args.join, args.addresses)
    print(json.dumps(asyncio.run(barrage(args.url, made))))
