"""Limits for a public arena: how many turns a session (and a client) may ask for per hour, how many ratings
per minute, and how many tokens the whole app may generate per hour; memory stays bounded whatever keys clients
make (``Window``).

A public Space is the internet: a script calling ``/send_a`` in a loop costs whoever pays for the endpoints,
and a crowd of clicks can starve real raters. Each limit is a sliding window (the last hour, the last minute)
over the times of what was allowed, per key: the session, and for a public request also the client (the Hugging
Face user with OAuth, else the address the trusted proxy forwards: ``clients.Gate``), so a new browser tab does
not reset it. A refusal says when the oldest counted use leaves the window; nothing is stored for a refused turn,
and other keys are unaffected.
Off (``None`` or 0) locally by default; ``PUBLIC_DEFAULTS`` apply when the arena is public and a limit is unset.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

HOUR, MINUTE = 3600.0, 60.0
# A rater who reads and rates every answer sends a turn every minute or so, and rates a few answers a minute.
PUBLIC_DEFAULTS = {"turns_per_hour": 120, "ratings_per_minute": 60, "tokens_per_hour": None}
# Keys a window remembers at most (sessions, users, addresses): ~100 bytes each beside their uses.
MAX_KEYS = 50_000
# Gradio's queue (demo.queue_guard). Events joined and not yet read that one public client may have: a rater has
# a handful (the page's four loads, two sides streaming, a rating), a few tabs or raters behind one address more.
QUEUE_PER_CLIENT = 32
# ... that all clients together may have: below the 2,000 sessions whose messages Gradio keeps, so it never drops
# a live one.
QUEUE_PENDING = 1000
# Events waiting for a worker, all clients (Gradio's ``queue(max_size=...)``): each waiting event is sent an estimate
# at every other event's start (~0.5 KB each, unread ones kept), so n waiting cost up to n * n / 2 messages.
QUEUE_WAITING = 200
# Seconds an event may go unread with no stream open before it is dropped (a page opens its stream at once).
QUEUE_ABANDON_S = 30.0


class LimitReached(Exception):
    """Over a limit; the message says which and when it resets."""


def _wait(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, math.ceil(seconds))} s"
    return f"{math.ceil(seconds / 60)} min"


class Window:
    """Uses per key within the last ``span`` seconds; thread-safe, and bounded however many keys clients make.

    A key is kept only while it holds uses in the window (a check creates nothing), and at most ``max_keys`` of
    them: past that, the key used least recently goes. Evicting resets only that key's count, and pushing a key
    out takes ``max_keys`` newer keys' uses, each of which its own limits allowed; a client still using its key
    keeps it at the recent end. A refusal never makes a key.
    """

    def __init__(
        self, limit: int, span: float, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS
    ) -> None:
        self.limit, self.span, self.clock, self.max_keys = limit, span, clock, max_keys
        self._uses: OrderedDict[str, deque[tuple[float, int]]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._uses)

    def _prune(self, key: str, now: float) -> deque[tuple[float, int]]:
        uses = self._uses.get(key)
        if uses is None:
            return deque()
        while uses and uses[0][0] <= now - self.span:
            uses.popleft()
        if not uses:
            del self._uses[key]
        return uses

    def used(self, key: str) -> int:
        with self._lock:
            return sum(n for _, n in self._prune(key, self.clock()))

    def check(self, keys: list[str], amount: int = 1) -> float | None:
        """Seconds until ``amount`` more would fit for every key; None if it fits now."""
        now = self.clock()
        waits = []
        with self._lock:
            for key in keys:
                uses = self._prune(key, now)
                total = sum(n for _, n in uses)
                if total + amount > self.limit and uses:
                    # wait until enough of the oldest uses leave the window
                    freed, need = 0, total + amount - self.limit
                    for at, n in uses:
                        freed += n
                        if freed >= need:
                            waits.append(at + self.span - now)
                            break
        return max(waits) if waits else None

    def take(self, keys: list[str], amount: int = 1) -> None:
        now = self.clock()
        with self._lock:
            for key in keys:
                self._uses.setdefault(key, deque()).append((now, amount))
                self._uses.move_to_end(key)
            while len(self._uses) > self.max_keys:
                self._uses.popitem(last=False)


@dataclass
class Limits:
    turns_per_hour: int | None = None
    ratings_per_minute: int | None = None
    tokens_per_hour: int | None = None  # the whole app's generated tokens (an endpoint bill), all raters together
    clock: Callable[[], float] = time.monotonic
    max_keys: int = MAX_KEYS  # per window

    def __post_init__(self) -> None:
        def window(limit: int | None, span: float) -> Window | None:
            return Window(limit, span, self.clock, self.max_keys) if limit else None

        self.turns = window(self.turns_per_hour, HOUR)
        self.ratings = window(self.ratings_per_minute, MINUTE)
        self.tokens = window(self.tokens_per_hour, HOUR)

    @property
    def active(self) -> bool:
        return any((self.turns, self.ratings, self.tokens))

    def start_turn(self, keys: list[str]) -> None:
        """Count one answer for these keys, or raise LimitReached (and count nothing)."""
        if self.tokens is not None and (wait := self.tokens.check(["app"], 1)) is not None:
            raise LimitReached(
                f"The arena has generated its {self.tokens_per_hour} tokens for this hour; try again in {_wait(wait)}."
            )
        if self.turns is not None:
            wait = self.turns.check(keys)
            if wait is not None:
                raise LimitReached(f"You reached {self.turns_per_hour} answers per hour; try again in {_wait(wait)}.")
            self.turns.take(keys)

    def generated(self, tokens: int) -> None:
        if self.tokens is not None and tokens > 0:
            self.tokens.take(["app"], tokens)

    def rate(self, keys: list[str]) -> None:
        if self.ratings is None:
            return
        wait = self.ratings.check(keys)
        if wait is not None:
            raise LimitReached(f"You reached {self.ratings_per_minute} ratings per minute; try again in {_wait(wait)}.")
        self.ratings.take(keys)
