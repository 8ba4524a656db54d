"""Gradio's queue bounded whatever clients send: how many events a client may have joined and not yet read, how many
all clients together, how many may wait for a worker, and how long an event may go unread before it is dropped.

A join (``/gradio_api/queue/join``, ``/gradio_api/call/<name>``) makes Gradio keep the event, its messages and its
session until a stream (``/gradio_api/queue/data``, ``GET /gradio_api/call/<name>/<id>``) reads its result, with
no cap: a script that joins with fresh ``session_hash`` values and never reads grew the app about 0.25 MB per join
(each waiting event is sent an estimate at every other event's start), and past 2,000 such sessions Gradio's
message cache dropped a live session's queue, whose next message raised in the queue's loop and stopped it for
everyone. Here every join passes ``QueueGuard``, which refuses the excess with Gradio's own "queue full" (HTTP 503:
``gradio_client`` raises ``QueueError``, the page says the app is busy), and drops the sessions nobody reads.

Pinned to Gradio 6's queue (``gradio/queueing.py``, ``routes.py``): ``Queue.push(body, request, username)`` answers
``(ok, event id or message, state)``; ``pending_event_ids_session`` holds a session's joined events until a stream
delivers their results; ``pending_messages_per_session`` (an LRU of 2,000) their messages; ``clean_events`` is
Gradio's own drop of a session's events when its stream disconnects. ``tests/test_public.py`` checks them.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from typing import Any

import gradio as gr

from demo import clients, limits

log = logging.getLogger("demo.app")

# What of Gradio's queue the guard uses (``gradio/queueing.py``, 6.x).
PINNED = ("push", "pending_event_ids_session", "pending_messages_per_session", "clean_events", "server_app")
SWEEP_EVERY_S = 1.0  # how often a join looks for sessions to drop (one pass is O(sessions held))
STREAM_SUFFIX = "/queue/data"
CALL = "/call/"


class QueueGuard:
    """Admits or refuses each join, and forgets sessions: those whose results were read, and those with events
    nobody has read for ``abandon_after`` seconds with no stream open. A client is ``clients.Gate.client``'s (the
    Hugging Face user, else the address the trusted proxy forwards); its cap applies to public requests."""

    def __init__(
        self,
        gate: clients.Gate,
        per_client: int = limits.QUEUE_PER_CLIENT,
        pending: int = limits.QUEUE_PENDING,
        waiting: int = limits.QUEUE_WAITING,
        abandon_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gate, self.per_client, self.pending, self.waiting = gate, per_client, pending, waiting
        self.abandon_after = limits.QUEUE_ABANDON_S if abandon_after is None else abandon_after
        self.clock = clock
        self.events: dict[str, str] = {}  # event id -> session, until read
        self.owned: dict[str, set[str]] = {}  # public client -> its event ids
        self.seen: dict[str, float] = {}  # session -> its last join or stream close
        self.streams: Counter[str] = Counter()  # session -> streams open now
        self.read: set[str] = set()  # sessions that opened a stream since the guard last forgot them
        self._swept = float("-inf")
        self._sweeping = False

    def attach(self, queue: Any) -> None:
        """Guard ``queue``'s joins (once; ``demo.queue()`` makes a new queue, so this is asked per request)."""
        if getattr(queue, "_lima_guard", None) is self:
            return
        if not all(hasattr(queue, name) for name in PINNED):
            queue._lima_guard = self  # warned once; the queue runs unguarded rather than break every join
            log.warning("Gradio's queue lacks %s: its joins are not capped (demo.queue_guard)", ", ".join(PINNED))
            return
        push = queue.push

        async def guarded(body: Any, request: Any, username: str | None) -> tuple:
            return await self.push(queue, push, body, request, username)

        queue.push, queue._lima_guard = guarded, self

    async def push(self, queue: Any, push: Callable, body: Any, request: Any, username: str | None) -> tuple:
        now = self.clock()
        sessions = queue.pending_messages_per_session
        full = len(sessions) >= getattr(sessions, "max_size", 2000) - 1
        if full or now - self._swept >= SWEEP_EVERY_S:
            await self.sweep(queue)
        who = gr.Request(request=request, username=username)
        client = self.gate.client(who) if self.gate.is_public(who) else None
        refused = self.refusal(queue, client)
        if refused:
            return False, refused, "queue_full"
        ok, event_id, state = await push(body, request, username)
        if ok and isinstance(event_id, str) and body.session_hash:
            self.events[event_id] = body.session_hash
            self.seen[body.session_hash] = self.clock()
            if client is not None:
                self.owned.setdefault(client, set()).add(event_id)
        return ok, event_id, state

    def refusal(self, queue: Any, client: str | None) -> str | None:
        """Why a join is refused now (Gradio's "Queue is full." first, as its own refusal says), or None."""
        if client is not None and client in self.owned:
            mine = self.owned[client] = {e for e in self.owned[client] if self._unread(queue, e)}
            if len(mine) >= self.per_client:
                return (
                    f"Queue is full. Max size is {self.per_client} unread events per client and this client has "
                    f"{len(mine)}: read their results first."
                )
        unread = sum(len(ids) for ids in queue.pending_event_ids_session.values())
        if unread >= self.pending:
            return f"Queue is full. Max size is {self.pending} unread events and size is {unread}."
        if len(queue) >= self.waiting:
            return f"Queue is full. Max size is {self.waiting} waiting events and size is {len(queue)}."
        sessions = queue.pending_messages_per_session
        if len(sessions) >= getattr(sessions, "max_size", 2000) - 1:
            return f"Queue is full. Max size is {len(sessions)} sessions."
        return None

    def _unread(self, queue: Any, event_id: str) -> bool:
        session = self.events.get(event_id)
        return session is not None and event_id in queue.pending_event_ids_session.get(session, ())

    async def sweep(self, queue: Any) -> None:
        """Forget every session with no stream open whose results were all read, and drop those with events
        unread for ``abandon_after`` seconds (Gradio's ``clean_events``: waiting ones leave the queue, running
        ones stop at their next step)."""
        if self._sweeping:
            return
        self._sweeping, self._swept = True, self.clock()
        try:
            ids, messages = queue.pending_event_ids_session, queue.pending_messages_per_session
            for session in list({*ids, *messages}):
                if self.streams.get(session):
                    continue
                unread = set(ids.get(session, ()))
                if unread and self.clock() - self.seen.setdefault(session, self.clock()) < self.abandon_after:
                    continue
                if unread:
                    await queue.clean_events(session_hash=session)
                    if set(ids.get(session, ())) - unread:  # it joined again meanwhile: not abandoned
                        continue
                ids.pop(session, None)
                messages.pop(session, None)
                if unread and session not in self.read:
                    self._forget_state(queue, session)
            self.events = {e: s for e, s in self.events.items() if self._unread(queue, e)}
            self.owned = {c: live for c, mine in self.owned.items() if (live := mine & self.events.keys())}
            self.seen = {s: t for s, t in self.seen.items() if s in ids or s in messages}
            self.read &= self.seen.keys()
        finally:
            self._sweeping = False

    @staticmethod
    def _forget_state(queue: Any, session: str) -> None:
        """The page state Gradio made for a session that never opened a stream (a page opens its own at once):
        the largest part of an abandoned join, ~0.2 MB on the arena's page, else kept until 2,000 newer sessions
        push it out."""
        holder = getattr(queue.server_app, "state_holder", None)
        if holder is not None and hasattr(holder, "session_data"):
            with holder.lock:
                holder.session_data.pop(session, None)
                getattr(holder, "time_last_used", {}).pop(session, None)

    def stream_session(self, scope: dict) -> str | None:
        """The session a request's result stream reads, or None when it is not a stream."""
        path = scope["path"].rstrip("/")
        if path.endswith(STREAM_SUFFIX):
            query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
            return (query.get("session_hash") or [None])[0]
        head, _, event_id = path.rpartition("/")
        if CALL in head:  # GET /call/<name>/<event id> (or /call/v2/...): the event's session
            return self.events.get(event_id, event_id)
        return None


class Guarded:
    """ASGI middleware (``launch(app_kwargs={"middleware": [Middleware(Guarded, guard=...)]})``): attaches the
    guard to the app's queue, and counts the result streams open per session, so a session being read is never
    taken for abandoned."""

    def __init__(self, app: Any, guard: QueueGuard) -> None:
        self.app, self.guard = app, guard

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        blocks = getattr(scope.get("app"), "get_blocks", lambda: None)()
        if getattr(blocks, "_queue", None) is not None:
            self.guard.attach(blocks._queue)
        session = self.guard.stream_session(scope) if scope["method"] == "GET" else None
        if session is None:
            await self.app(scope, receive, send)
            return
        self.guard.streams[session] += 1
        self.guard.read.add(session)
        try:
            await self.app(scope, receive, send)
        finally:
            self.guard.streams[session] -= 1
            if self.guard.streams[session] <= 0:
                del self.guard.streams[session]
            self.guard.seen[session] = self.guard.clock()
