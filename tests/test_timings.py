"""The server-side latency histogram (demo/timings.py): its percentiles are the true ones to within a bucket
(5 %), above, never below; and the middleware times only direct API calls, from request to last byte."""

from __future__ import annotations

import asyncio
import json
import random

from demo.timings import ROUTE, Histogram, Registry, Timings


def test_percentiles_are_within_one_bucket_above_the_true_ones():
    rng = random.Random(0)
    samples = [rng.lognormvariate(-4, 1) for _ in range(10_000)]  # ~18 ms median, a long tail
    histogram = Histogram()
    for s in samples:
        histogram.add(s)
    ordered = sorted(samples)
    for q in (0.5, 0.9, 0.99):
        true = ordered[int(q * len(ordered)) - 1]
        assert true <= histogram.percentile(q) <= true * 1.05 * 1.0001, q
    assert histogram.summary()["count"] == 10_000 and histogram.summary()["max_ms"] == round(1000 * max(samples), 2)
    assert Histogram().percentile(0.5) is None and Histogram().summary()["p99_ms"] is None


def test_the_middleware_times_direct_api_calls_and_answers_its_route():
    registry, sent = Registry(), []

    async def app(scope, receive, send):  # an ASGI app that answers in two body parts
        await asyncio.sleep(0.02)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await asyncio.sleep(0.02)
        await send({"type": "http.response.body", "body": b"end"})

    async def call(method: str, path: str) -> None:
        async def send(message):
            sent.append(message)

        await Timings(app, registry)({"type": "http", "method": method, "path": path}, None, send)

    async def main():
        await call("POST", "/gradio_api/run/rate/")
        await call("GET", "/gradio_api/info")  # not a direct call: passed through, not timed
        sent.clear()
        await call("GET", ROUTE)

    asyncio.run(main())
    answer = json.loads(sent[-1]["body"])
    (route,) = answer["routes"]
    assert route == "/gradio_api/run/rate" and answer["routes"][route]["count"] == 1
    assert answer["routes"][route]["p50_ms"] >= 40  # to the last body part, not the first
