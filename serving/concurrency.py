"""How many requests a batch job keeps in flight at one server, and the pool that keeps them there.

A server batches the requests it holds at once (TGI, vLLM), so a job that asks one thing at a time (the judge,
autoplay, dev answers from a server) waits tens of times longer than the server needs. ``in_flight`` is the
one rule for how many to send: what the server says it takes (TGI's ``GET /info`` ``max_concurrent_requests``,
router/src/lib.rs ``Info``; beyond it TGI's router refuses with 429: router/src/infer/mod.rs takes a permit of a
``Semaphore::new(max_concurrent_requests)`` with ``try_acquire_owned`` for every request), else the command's
``--concurrency``, else ``DEFAULT_IN_FLIGHT``; a setting lower than the server's takes the lower.

``Pool`` holds that many slots per server (an ``asyncio.Semaphore``, made for the running event loop) and
counts every answer on a progress bar with the rate (tqdm, on stderr, quiet where stderr is no terminal);
``run_all`` runs coroutines under an ``asyncio.TaskGroup`` and raises the first failure itself, not an
exception group, so a caller's ``except BackendError`` still reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

# For a server that does not say what it takes: enough to keep a batching server busy, few enough that a
# server of unknown make is not flooded.
DEFAULT_IN_FLIGHT = 8


def in_flight(server_cap: int | None, setting: int | None = None) -> int:
    """Requests to keep in flight at a server that says it takes ``server_cap`` at once (None: it does not say),
    with ``setting`` the command's ``--concurrency`` (None: not given)."""
    given = [n for n in (server_cap, setting) if n is not None and n > 0]
    return min(given) if given else DEFAULT_IN_FLIGHT


class Pool:
    """``limit`` slots at one server and a progress bar of its answers (``desc``: what is counted)."""

    def __init__(self, limit: int, desc: str = "requests") -> None:
        self.limit = limit
        self.desc = desc
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._bar: Any = None

    def _semaphore(self) -> asyncio.Semaphore:
        # A semaphore belongs to one event loop; a pool may outlive one (each asyncio.run is a new loop).
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._slots = loop, asyncio.Semaphore(self.limit)
        return self._slots

    def expect(self, count: int) -> None:
        """``count`` more answers to come: the bar's total grows (it starts on the first call)."""
        if self._bar is None:
            from tqdm import tqdm

            # disable=None: quiet when stderr is not a terminal (a log file, a test)
            self._bar = tqdm(total=0, desc=self.desc, unit="req", file=sys.stderr, disable=None, dynamic_ncols=True)
        self._bar.total += count
        self._bar.refresh()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Held while one request is in flight; an answer (not a failure) moves the bar on."""
        async with self._semaphore():
            yield
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


async def run_all(jobs: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Every job at once (their requests wait for a pool's slots), results in the jobs' order. The first failure
    cancels the others and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(job) for job in jobs]
    except BaseExceptionGroup as failed:
        raise _first(failed) from None
    return [task.result() for task in tasks]


def _first(group: BaseExceptionGroup) -> BaseException:
    error = group.exceptions[0]
    return _first(error) if isinstance(error, BaseExceptionGroup) else error


async def settled(write: Callable[[], T], then: Callable[[T], None] = lambda result: None) -> T:
    """``write()`` in a thread (a store's commit, off the event loop), then ``then(result)`` in the loop, both
    seen to their end even when the caller is cancelled meanwhile (another request failed, a run cut short):
    the cancellation reaches the caller only after them, so a write is never left running behind a run that
    has stopped, nor done without being counted."""

    async def both() -> T:
        result = await asyncio.to_thread(write)
        then(result)
        return result

    task = asyncio.ensure_future(both())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
