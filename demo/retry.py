"""One retry policy for a server that is waking up, used by every caller of a model: the arena's turns
(``arena.play_turn``, which shows each retry to the rater) and the judge (``judge.Judge.ask``).

An Inference Endpoint scaled to zero answers 503 while it wakes (``backends.BackendError.warming_up``): asked
again every few seconds, it answers within about half a minute. Any other failure is final, and so is a 503
after the answer began (asking again would show the rater a second, different start). tenacity owns the
counting and the waiting; the wait is injectable so tests do not sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from serving import backends

WARMUP_RETRIES = 6  # with WARMUP_WAIT_S: about 30 s, what a scaled-to-zero endpoint takes to wake
WARMUP_WAIT_S = 5.0

T = TypeVar("T")
_END = object()  # the producer's last item: the stream (and every retry) is over


def warming_up(err: BaseException) -> bool:
    return isinstance(err, backends.BackendError) and err.warming_up


def _retrieved(task: asyncio.Future) -> None:
    """Marks a failed producer's error as seen when its consumer left before reading it (no warning at exit)."""
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True)
class Retry:
    """A note between two tries: why the last one failed and when the next starts."""

    reason: str
    wait_s: float
    attempt: int  # this retry's number, from 1
    retries: int

    def __str__(self) -> str:
        return f"{self.reason} · retrying in {self.wait_s:.0f} s ({self.attempt}/{self.retries})"


@dataclass(frozen=True)
class WarmUp:
    retries: int = WARMUP_RETRIES
    wait_s: float = WARMUP_WAIT_S
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def retrying(
        self, may_retry: Callable[[], bool] = lambda: True, before_sleep: Callable | None = None
    ) -> tenacity.AsyncRetrying:
        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(lambda err: warming_up(err) and may_retry()),
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=tenacity.wait_fixed(self.wait_s),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,  # the last error itself, not tenacity's RetryError: callers show it
        )

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()``, asked again while the server warms up."""
        return await self.retrying()(fn)

    async def stream(self, open_stream: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T | Retry]:
        """What ``open_stream()`` yields, with a ``Retry`` before each new try: a stream is opened again while
        its server warms up and has sent no text yet (``backends.Waiting`` notes are not text)."""
        queue: asyncio.Queue = asyncio.Queue()
        said = False

        async def once() -> None:
            nonlocal said
            async for item in open_stream():
                said = said or not isinstance(item, backends.Waiting)
                queue.put_nowait(item)

        def announce(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            queue.put_nowait(Retry(str(error), state.upcoming_sleep, state.attempt_number, self.retries))

        async def produce() -> None:
            try:
                await self.retrying(lambda: not said, announce)(once)
            finally:
                queue.put_nowait(_END)

        # tenacity's loop calls back but cannot yield: it runs as a task of its own, its items come by the queue.
        producer = asyncio.ensure_future(produce())
        producer.add_done_callback(_retrieved)
        try:
            while (item := await queue.get()) is not _END:
                yield item
            await producer  # the final error, if the last try failed
        finally:
            producer.cancel()  # the consumer left early (a new conversation): the model stops answering


WARMUP = WarmUp()
