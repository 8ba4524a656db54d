"""A model in this process: a servable model folder (contract 2) or a Hub id, loaded with transformers.

The chat template comes from the model folder, exactly as training used it; generation stops at the EOT listed in
``generation_config.json``. Concurrent requests are generated together in batches (``serving/batching.py``), each
streaming its own answer; the repetition penalty is transformers' own, over the whole context (``PENALTY_SCOPE``),
as every server applies it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

from serving import credentials, precision
from serving.decoding import PENALTY_SCOPE, TOTAL_TOKEN_BUDGET, BackendError, Decoding, Status, Waiting, decoding_record

_IMPORT_LOCK = threading.Lock()

log = logging.getLogger(__name__)


def _local_name(source: str) -> str:
    """``runs/quick-cpu/lima-1030/epoch-10`` -> ``quick-cpu/lima-1030/epoch-10``: recipe, model and epoch."""
    path = Path(source)
    if path.exists():
        return "/".join(path.resolve().parts[-3:])
    return source


class LocalBackend:
    """A model in this process. Concurrent requests are generated together in batches (``serving/batching.py``;
    ``max_batch=1``: one at a time), each streaming its own answer."""

    waiting_note_s = 1.0  # a request with no token for this long is told it waits in line

    def __init__(
        self,
        source: str,
        name: str | None = None,
        device: str | None = None,
        max_batch: int = 8,
        precision: str | None = None,
    ) -> None:
        self.source = source
        self.name = credentials.redact(name or _local_name(source))  # shown, stored and logged
        self.device = device
        self.max_batch = max_batch
        self.asked = precision  # auto, bf16 or fp32; None: LIMA_ARENA_PRECISION, else auto (serving/precision.py)
        self.precision: str | None = None  # what it serves in, once loaded
        self.batcher = None
        self._load_lock = threading.Lock()
        self.model = None
        self.tokenizer = None
        self.load_error: str | None = None

    def load(self) -> None:
        """Load once (thread-safe); a failure is kept and reported on every later use, not retried."""
        with self._load_lock:
            if self.model is not None or self.load_error is not None:
                return
            with _IMPORT_LOCK:  # transformers' lazy module is not thread-safe: two sides load at once at start
                import torch
                from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

            try:
                asked = precision.requested(self.asked)
                device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
                started = time.perf_counter()
                tokenizer = AutoTokenizer.from_pretrained(self.source)
                config = AutoConfig.from_pretrained(self.source)
                chosen, why = precision.choose(config, device, self.max_batch, asked)
                dtype = torch.bfloat16 if chosen == "bf16" else torch.float32
                model = AutoModelForCausalLM.from_pretrained(self.source, dtype=dtype).to(device).eval()
            except Exception as err:
                self.load_error = f"cannot load {self.source}: {str(err).splitlines()[0] if str(err) else err!r}"
                log.error(self.load_error)
                return
            if not tokenizer.chat_template:
                self.load_error = f"{self.source} has no chat template; serve a fine-tuned model directory"
                return
            from serving.batching import fast_cpu_head, pad_token

            try:
                pad_token(model, tokenizer)
            except ValueError as err:
                self.load_error = f"{self.source}: {err}"
                return
            if device == "cpu":
                fast_cpu_head(model)
            self.model, self.tokenizer, self.device, self.precision = model, tokenizer, device, chosen
            log.info(
                "loaded %s on %s in %s (%s) in %.1f s", self.source, device, chosen, why, time.perf_counter() - started
            )

    @property
    def settled(self) -> bool:
        """Loaded, or failed to load: either way the wait is over."""
        return self.model is not None or self.load_error is not None

    async def probe(self) -> Status:
        await asyncio.to_thread(self.load)
        if self.load_error:
            return Status(False, self.name, self.load_error)
        return Status(True, self.name, f"in-process on {self.device}, {self.precision}")

    @staticmethod
    def generate_kwargs(decoding: Decoding, room: int = TOTAL_TOKEN_BUDGET) -> dict:
        """The paper's decoding as ``generate`` arguments. ``top_k=0`` keeps a ``generation_config.json``
        default (Gemma's base ships ``top_k: 64``) from narrowing the nucleus, as TGI, which never reads one,
        does not either; the penalty is transformers' own, over the whole context (``PENALTY_SCOPE``)."""
        max_new = min(decoding.max_new_tokens, room)
        if decoding.greedy:
            return {"do_sample": False, "repetition_penalty": decoding.repetition_penalty, "max_new_tokens": max_new}
        return {
            "do_sample": True,
            "temperature": decoding.temperature,
            "top_p": decoding.top_p,
            "top_k": 0,
            "repetition_penalty": decoding.repetition_penalty,
            "max_new_tokens": max_new,
        }

    def decoding_record(self, decoding: Decoding) -> dict:
        return decoding_record(decoding, "in-process", self.generate_kwargs(decoding), PENALTY_SCOPE, ())

    async def stream(self, messages: list[dict], decoding: Decoding) -> AsyncIterator[str]:
        if not self.settled:
            await asyncio.to_thread(self.load)
        if self.load_error:
            raise BackendError(self.load_error)
        from serving.batching import DONE, Batcher

        with self._load_lock:  # made at the first answer, so a model only loaded (finetune dev) keeps no thread
            if self.batcher is None:
                self.batcher = Batcher(self.model, self.tokenizer, self.device, max_batch=self.max_batch)
        tokenizer, batcher = self.tokenizer, self.batcher
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        prompt = list(encoded["input_ids"])
        room = TOTAL_TOKEN_BUDGET - len(prompt)
        if room < 16:
            raise BackendError(
                f"the conversation is {len(prompt)} tokens, past the {TOTAL_TOKEN_BUDGET}-token budget; start a new one"
            )
        kwargs = self.generate_kwargs(decoding, room)
        loop, arrived = asyncio.get_running_loop(), asyncio.Queue()
        request = batcher.submit(
            prompt,
            kwargs,
            kwargs["max_new_tokens"],
            deliver=lambda item: loop.call_soon_threadsafe(arrived.put_nowait, item),
        )
        ids: list[int] = []
        sent = ""
        try:
            while True:
                try:
                    item = await asyncio.wait_for(arrived.get(), self.waiting_note_s)
                except TimeoutError:  # still queued behind other raters' answers: say so
                    ahead = batcher.waiting_before(request)
                    if not ids and (ahead or batcher.running):
                        yield Waiting(
                            f"waiting for the model: {ahead + 1} in line" if ahead else "waiting for the model"
                        )
                    continue
                if item is DONE:
                    break
                if isinstance(item, BaseException):
                    raise BackendError(f"generation failed: {str(item).splitlines()[0] if str(item) else item!r}")
                ids.append(item)
                text = tokenizer.decode(ids, skip_special_tokens=True)
                if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest of it
                    continue
                if len(text) > len(sent):
                    yield text[len(sent) :]
                    sent = text
        finally:
            request.cancelled.set()  # the rater left or the app cancelled: the batch stops spending time on it
