"""Direct API calls reach Gradio only from a session it holds or the store knows.

A direct call (``POST /gradio_api/run/<name>``, its alias ``/gradio_api/api/<name>``, and
``/gradio_api/component_server``) names its session in the body (``session_hash``), and Gradio builds that
session a whole page's state before it looks at anything else (``route_utils.get_fn``: ``state_holder[hash]``,
~10 ms of the server's time for this app's page), keeping it in a holder of ``state_session_capacity`` sessions
that drops the least recently used. A script sending fresh hashes to ``/rate`` therefore pushed live raters'
sessions out (their conversation gone mid-talk: "Start a new conversation first."), however the handler then
refused the call. Here such a call is answered 403 before Gradio sees it, unless its session is one Gradio
already holds, or one the store knows (it started a conversation or was granted one for review, under the
server's name for it, ``arena.server_session``: a rater whose session outlived a restart of the app still
rates). A call with no session passes: Gradio builds no state for it and the handler refuses it. Sessions are
made only by the page's own events, through the queue, whose joins ``demo.queue_guard`` caps per client.

Pinned to Gradio 6: ``Blocks.state_holder`` (the server's once launched; ``in`` creates nothing), the body's
``session_hash``.
"""

from __future__ import annotations

import json
from typing import Any

import anyio

from demo import arena

PREFIX = "/gradio_api"
DIRECT = (PREFIX + "/run/", PREFIX + "/api/", PREFIX + "/component_server")
MAX_BODY = 1 << 20  # bytes of a direct call's body read here; a rating is well under 1 KiB
REFUSED = b'{"error": "this session has not started from the page: open the arena first"}'
TOO_LARGE = b'{"error": "request body too large"}'


class DirectCalls:
    """ASGI middleware: ``Middleware(DirectCalls, blocks=demo, store=store)``: the page's Gradio ``Blocks`` (whose
    ``state_holder`` is the server's once launched) and the ratings store."""

    def __init__(self, app: Any, blocks: Any, store: Any) -> None:
        self.app, self.blocks, self.store = app, blocks, store

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith(DIRECT):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, MAX_BODY)
        if body is None:
            await answer(send, 413, TOO_LARGE)
            return
        session = session_of(body)
        # the store is asked off the event loop (its lock may be held by a commit), and only when Gradio has no state
        held = session is None or session in self.blocks.state_holder
        if not held and not await anyio.to_thread.run_sync(self.knows, session):
            await answer(send, 403, REFUSED)
            return
        await self.app(scope, Replay(body, receive), send)

    def knows(self, raw: str) -> bool:
        """Whether the store has seen this Gradio session (under the server's name for it)."""
        try:
            return self.store.knows_session(arena.server_session(raw))
        except arena.NoSession:
            return False


async def read_body(receive: Any, limit: int) -> bytes | None:
    """The request's whole body, or None past ``limit`` bytes (what was read is dropped)."""
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client left: nothing to pass on
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


def session_of(body: bytes) -> str | None:
    """The body's ``session_hash`` when it is a string; None otherwise (Gradio validates the rest itself)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    session = data.get("session_hash") if isinstance(data, dict) else None
    return session if isinstance(session, str) else None


class Replay:
    """A ``receive`` that hands the app the body read here, then whatever the client sends next (a disconnect)."""

    def __init__(self, body: bytes, receive: Any) -> None:
        self.body, self.receive = body, receive

    async def __call__(self) -> dict:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        return await self.receive()


async def answer(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
