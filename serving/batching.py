"""Batched generation for an in-process model: concurrent requests share one ``generate`` call.

On a CPU (or a small GPU) one model answering one rater at a time leaves most of the machine idle: measured on
the quick-cpu model, plain ``generate`` gives 9.3 tokens/s at batch 1, 20.3 at batch 4 and 35.0 at batch 8.
transformers' continuous batching (``init_continuous_batching``) runs on CPU with these models, but it drops
``RepetitionPenaltyLogitsProcessor`` (``supports_continuous_batching = False`` in
``generation/logits_process.py``), and the paper's decoding needs that penalty. So this is a small dynamic
batcher over ``generate``: requests queue; the worker takes the oldest and, after a short gathering window,
every other waiting request with the same decoding (up to ``max_batch``), left-pads them into one batch and
generates. A custom streamer hands each row its own tokens as they come, so every request still streams its
own answer; each row stops at EOT (generate's own end-of-sequence handling), at its own token cap, or when its
request is cancelled (a per-row stopping criterion). Requests that arrive while a batch runs wait for the next
one: a full batch queues. With ``max_batch=1`` it is the one-at-a-time generation it replaces.

Two costs that grow with the batch are cut where the model runs on a CPU: the paper's sampling is drawn by
``serving.sampling`` (the same distribution, no 262k-wide sort and draw per row, in fp32 whatever the model
computes in), and ``fast_cpu_head`` computes an fp32 output head in the layout MKL runs fastest for a few rows
(a bf16 one is fastest as it is; ``serving/precision.py`` chooses between them). A waiting reader is woken
through ``deliver`` rather than blocking a thread.

Left padding with an attention mask gives the same greedy tokens as an unbatched call (tested on the tiny
model in fp32). The repetition penalty also sees the pad token; that token is never generated, so it changes
nothing (``Batcher`` refuses a tokenizer whose pad token is an end-of-turn token).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.sampling import sampled_generate_kwargs

log = logging.getLogger(__name__)

DONE = object()  # the end of a request's tokens
HISTORY = 1000  # batch runs remembered for tests and benchmarks


def pad_token(model: Any, tokenizer: Any) -> tuple[int, set[int]]:
    """The pad id to batch with, and the end-of-turn ids; ValueError if the pad is one of those (then the
    padding's repetition penalty would make the model less likely to stop)."""
    eos = model.generation_config.eos_token_id
    ends = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.generation_config.pad_token_id
    if pad is None or pad in ends:
        raise ValueError("batched generation needs a pad token that is not an end-of-turn token")
    return pad, ends


def fast_cpu_head(model: Any) -> bool:
    """Compute a CPU model's output head as ``W @ hᵀ`` instead of ``h @ Wᵀ``: the same products, which MKL runs
    2.3x faster for 8 rows of Gemma's 262k-row head on this project's 2-core CPU (134 ms, 59 ms; 1 row: 54 ms
    either way, the weight's read). The head is most of a step's cost there, so this is what lets a batch pay.
    In bf16 the plain layout is the faster one (oneDNN's bf16 kernel: 8 rows 140-175 ms against 165-210), so only
    a bias-free fp32 ``nn.Linear`` head on the CPU is changed; True when it was."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return False
    if head.weight.device.type != "cpu" or head.weight.dtype != torch.float32:
        return False

    def forward(hidden: Any) -> Any:
        flat = hidden.reshape(-1, hidden.shape[-1])
        logits = torch.mm(head.weight, flat.t()).t().contiguous()
        return logits.reshape(*hidden.shape[:-1], head.weight.shape[0])

    head.forward = forward
    return True


@dataclass(eq=False)
class Request:
    """``deliver`` gets the answer's token ids one by one, then DONE (or an exception), from the worker thread;
    by default they go to ``tokens``. An async reader hands in a ``deliver`` that wakes its event loop, so a
    waiting answer holds no thread (many raters would otherwise fill the loop's thread pool, which the store's
    writes also use)."""

    input_ids: list[int]
    group: tuple  # requests batch together only with the same decoding
    generate_kwargs: dict
    max_new_tokens: int
    tokens: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)
    deliver: Callable[[Any], None] | None = None

    def put(self, item: Any) -> None:
        try:
            (self.deliver or self.tokens.put)(item)
        except RuntimeError:  # the reader's event loop is gone: nobody reads this answer any more
            self.cancelled.set()


class Batcher:
    """One worker thread per model; ``submit`` from any thread."""

    def __init__(self, model: Any, tokenizer: Any, device: str, max_batch: int = 8, gather_s: float = 0.02) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.max_batch, self.gather_s = max(1, max_batch), gather_s
        self.pad, self.eos = pad_token(model, tokenizer)
        # The latest batch runs, in order (what tests and benchmarks observe; bounded, as the server runs for days):
        # each one's size, and (runs that finished) the tokens each of its rows generated, the end token too.
        self.batch_sizes: deque[int] = deque(maxlen=HISTORY)
        self.row_tokens: deque[list[int]] = deque(maxlen=HISTORY)
        self.running = 0  # rows in the batch being generated now
        self._pending: deque[Request] = deque()
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="batcher", daemon=True)
        self._thread.start()

    def submit(
        self,
        input_ids: list[int],
        generate_kwargs: dict,
        max_new_tokens: int,
        deliver: Callable[[Any], None] | None = None,
    ) -> Request:
        group = tuple(sorted((k, repr(v)) for k, v in generate_kwargs.items() if k != "max_new_tokens"))
        request = Request(list(input_ids), group, generate_kwargs, max_new_tokens, deliver=deliver)
        with self._ready:
            self._pending.append(request)
            self._ready.notify()
        return request

    def waiting_before(self, request: Request) -> int:
        """Requests ahead of this one in the queue (0 once it is generating)."""
        with self._ready:
            try:
                return list(self._pending).index(request)
            except ValueError:
                return 0

    def _take(self) -> list[Request]:
        with self._ready:
            while not self._pending:
                self._ready.wait()
        time.sleep(self.gather_s)  # let requests sent together (both sides, a crowd) arrive
        with self._ready:
            while self._pending and self._pending[0].cancelled.is_set():
                self._pending.popleft().put(DONE)
            if not self._pending:
                return []
            group = self._pending[0].group
            batch = [r for r in self._pending if r.group == group and not r.cancelled.is_set()][: self.max_batch]
            for r in batch:
                self._pending.remove(r)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            self.running = len(batch)
            try:
                self._generate(batch)
            except BaseException as err:  # every request of the batch learns it failed
                log.exception("batched generation failed")
                for r in batch:
                    r.put(err)
            finally:
                self.running = 0
                for r in batch:
                    r.put(DONE)

    def _generate(self, batch: list[Request]) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        width = max(len(r.input_ids) for r in batch)
        ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, r in enumerate(batch):
            ids[row, width - len(r.input_ids) :] = torch.tensor(r.input_ids)
            mask[row, width - len(r.input_ids) :] = 1
        finished = [False] * len(batch)
        counts = [0] * len(batch)
        eos, outer = self.eos, self

        class Rows(BaseStreamer):
            """Each step's tokens, one per row, to each row's request (after its end, nothing)."""

            def __init__(self) -> None:
                self.prompt_seen = False

            def put(self, value: Any) -> None:
                if not self.prompt_seen:  # generate hands the prompt over first
                    self.prompt_seen = True
                    return
                for row, token in enumerate(value.reshape(-1).tolist()):
                    if finished[row]:
                        continue
                    counts[row] += 1
                    batch[row].put(token)  # the end token too: decoding drops it when it is special
                    if token in eos or counts[row] >= batch[row].max_new_tokens:
                        finished[row] = True

            def end(self) -> None:
                pass

        class PerRow(StoppingCriteria):
            """A row is done at its own cap or when its request was cancelled; the batch ends when all are."""

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = [
                    finished[row] or r.cancelled.is_set() or counts[row] >= r.max_new_tokens
                    for row, r in enumerate(batch)
                ]
                for row, stop in enumerate(done):
                    finished[row] = finished[row] or stop
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        kwargs = {**batch[0].generate_kwargs, "max_new_tokens": max(r.max_new_tokens for r in batch)}
        kwargs = sampled_generate_kwargs(kwargs)  # the paper's sampling, without a 262k-wide sort per row
        with torch.inference_mode():
            outer.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                pad_token_id=self.pad,
                streamer=Rows(),
                stopping_criteria=StoppingCriteriaList([PerRow()]),
                **kwargs,
            )
        self.row_tokens.append(counts)
