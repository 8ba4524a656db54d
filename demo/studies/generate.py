"""Pre-generating a study's answers: each (source, prompt) once with the study's decoding, before raters arrive.

Resumable and idempotent: what the store holds is skipped, and the store refuses a second answer to the same
(study, prompt, source), so a run killed halfway and run again stores nothing twice. Requests are in flight at
once, up to ``concurrency`` per source (a folder's model batches them; a server is asked that many at a time).
An answer that fails is not stored: it is counted, said on stderr, and asked again by the next run.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

from demo import retry
from demo.ratings import NotAllowed, Store
from demo.studies import store as studies
from demo.studies.records import Study
from demo.studies.spec import Spec, SpecError, read_prompts
from serving import backends


@dataclass
class Progress:
    total: int
    stored: int = 0
    failed: int = 0
    every: int = 1  # a line each this many answers when stderr is not a terminal

    def line(self) -> str:
        failed = f", {self.failed} failed (asked again next run)" if self.failed else ""
        return f"{self.stored}/{self.total} answers stored{failed}"

    def tick(self) -> None:
        done = self.stored + self.failed
        if sys.stderr.isatty():
            print("\r" + self.line(), end="", file=sys.stderr, flush=True)
        elif done % self.every == 0 or done == self.total:
            print(self.line(), file=sys.stderr, flush=True)


async def open_sources(spec: Spec, concurrency: int) -> list[backends.LocalBackend | backends.RemoteBackend]:
    """Each source's backend, probed one after the other (two threads importing transformers at once can see it
    half-initialised); named apart, or a SpecError."""
    found = [backends.make_backend(source, concurrency) for source in spec.sources]
    names = [backend.name for backend in found]
    if len(set(names)) < len(names):
        raise SpecError(f"{spec.path}: two sources are named alike ({', '.join(names)}): name them NAME=SOURCE")
    for backend in found:
        status = await backend.probe()
        if not status.ok:
            raise SpecError(f"{spec.path}: source {backend.name}: {status.detail}")
    return found


async def generate(store: Store, spec: Spec, concurrency: int = 8, warmup: retry.WarmUp = retry.WARMUP) -> Progress:
    """Define the study in ``store`` and store every answer it lacks; returns what was done."""
    chosen = read_prompts(spec)
    sources = await open_sources(spec, concurrency)
    names = tuple(backend.name for backend in sources)
    study = Study(spec.name, spec.kind, names[0], names)
    decoding = spec.decoding.as_dict()
    try:
        await asyncio.to_thread(studies.define, store, study, decoding, spec.prompts.name)
    except NotAllowed as err:
        raise SpecError(f"{spec.path}: {err}") from None
    have = await asyncio.to_thread(studies.stored_answers, store, spec.name)
    todo = [(p, b) for p in chosen for b in sources if (p["id"], b.name) not in have]
    progress = Progress(len(todo), every=max(1, len(todo) // 10))
    gates = {backend.name: asyncio.Semaphore(concurrency) for backend in sources}

    async def one(prompt: dict, backend) -> None:
        async with gates[backend.name]:
            await _answer(store, spec, prompt, backend, warmup, progress)

    await asyncio.gather(*(one(prompt, backend) for prompt, backend in todo))
    if sys.stderr.isatty() and todo:
        print(file=sys.stderr)
    return progress


async def _answer(store: Store, spec: Spec, prompt: dict, backend, warmup: retry.WarmUp, progress: Progress) -> None:
    """One source's answer to one prompt, asked as a one-turn conversation and stored with its decoding as sent."""
    messages = [{"role": "user", "content": prompt["prompt"]}]
    started = time.time()
    first: list[float] = []

    async def once() -> str:
        first.clear()
        chunks = []
        async for chunk in backend.stream(messages, spec.decoding):
            if not isinstance(chunk, backends.Waiting):
                if not first:
                    first.append(time.time() - started)
                chunks.append(chunk)
        return "".join(chunks)

    try:
        text = await warmup.call(once)
    except backends.BackendError as err:
        progress.failed += 1
        print(f"warning: {spec.name}: {backend.name} on {prompt['id']}: {err}", file=sys.stderr)
        progress.tick()
        return
    timing = {"decoding": backend.decoding_record(spec.decoding), "started_at": started}
    timing["first_token_s"] = first[0] if first else None
    await asyncio.to_thread(studies.add_answer, store, spec.name, prompt, backend.name, text, timing)
    progress.stored += 1
    progress.tick()
