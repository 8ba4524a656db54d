"""How fast the server answers its API, measured in the server: a latency histogram per direct API route.

``Timings`` is an ASGI middleware. For every ``POST /gradio_api/run/<name>`` (a direct call: ``/rate`` is one,
with ``queue=False``), it times from the request reaching the app to the last byte of the response, which the
handler sends only after the store has committed. The durations go into a histogram of log-spaced buckets 5 %
wide (bounded memory however long the app runs). ``GET /lima-arena/timings`` answers them as JSON: per route,
the count and the 50th, 90th and 99th percentiles and the maximum, each the upper edge of its bucket (so within
5 % above the true value); every route the app does not have is counted under one ``OTHER``. What a client
adds (its polling, its connection set-up) is not in it: that is the point, since the benchmarks want the
server's cost, not the measuring client's.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable
from typing import Any

ROUTE = "/lima-arena/timings"
TIMED = "/gradio_api/run/"
LOWEST_S, RATIO, BUCKETS = 1e-5, 1.05, 420  # 10 us up to ~8 min
OTHER = TIMED + "(other)"  # every route that is not the app's own, together
MAX_ROUTES = 64


class Histogram:
    """Counts of durations in log-spaced buckets; safe to share between threads."""

    def __init__(self) -> None:
        self.counts = [0] * (BUCKETS + 1)  # the last bucket holds everything beyond the top edge
        self.total = 0
        self.max_s = 0.0
        self._lock = threading.Lock()

    @staticmethod
    def bucket(seconds: float) -> int:
        if seconds <= LOWEST_S:
            return 0
        return min(BUCKETS, math.ceil(math.log(seconds / LOWEST_S, RATIO)))

    @staticmethod
    def upper_edge(index: int) -> float:
        return LOWEST_S * RATIO**index

    def add(self, seconds: float) -> None:
        with self._lock:
            self.counts[self.bucket(seconds)] += 1
            self.total += 1
            self.max_s = max(self.max_s, seconds)

    def percentile(self, q: float) -> float | None:
        """The upper edge of the bucket holding the q-th quantile (0 < q <= 1); None when empty."""
        with self._lock:
            if not self.total:
                return None
            rank, seen = math.ceil(q * self.total), 0
            for index, count in enumerate(self.counts):
                seen += count
                if seen >= rank:
                    return min(self.upper_edge(index), self.max_s)
        return self.max_s

    def summary(self) -> dict[str, Any]:
        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(1000 * seconds, 2)

        return {
            "count": self.total,
            "p50_ms": ms(self.percentile(0.5)),
            "p90_ms": ms(self.percentile(0.9)),
            "p99_ms": ms(self.percentile(0.99)),
            "max_ms": ms(self.max_s if self.total else None),
        }


class Registry:
    """One histogram per timed route: the app's own (``known``), and one ``OTHER`` for every name a client makes
    up, so memory stays the same whatever routes are asked for. Without ``known``, the first ``max_routes``
    routes seen get their own histograms."""

    def __init__(self, known: Iterable[str] | None = None, max_routes: int = MAX_ROUTES) -> None:
        self.known = None if known is None else {route.rstrip("/") for route in known}
        self.max_routes = max_routes
        self.routes: dict[str, Histogram] = {}
        self._lock = threading.Lock()

    def add(self, route: str, seconds: float) -> None:
        with self._lock:
            own = route in self.known if self.known is not None else route in self.routes
            if not own and (self.known is not None or len(self.routes) >= self.max_routes):
                route = OTHER
            histogram = self.routes.setdefault(route, Histogram())
        histogram.add(seconds)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            routes = dict(self.routes)
        return {
            "measured": "request received to response sent, in the server",
            "routes": {route: h.summary() for route, h in sorted(routes.items())},
        }


class Timings:
    """``FastAPI(middleware=[Middleware(Timings, registry=...)])``; Gradio: ``launch(app_kwargs=...)``."""

    def __init__(self, app: Any, registry: Registry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == ROUTE and scope["method"] == "GET":
            body = json.dumps(self.registry.summary()).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if not (path.startswith(TIMED) and scope["method"] == "POST"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = path.rstrip("/")
        if self.registry.known is not None and route not in self.registry.known:
            # not a route of this page: answered here, as cheaply as can be (a script may send many)
            body = b'{"error": "no such API route"}'
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 404, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            self.registry.add(OTHER, time.perf_counter() - started)
            return

        async def timed(message: dict) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.registry.add(route, time.perf_counter() - started)

        await self.app(scope, receive, timed)
