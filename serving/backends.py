"""Where each side's answers come from: a model run in this process, or a TGI / OpenAI-compatible server.

Both kinds stream text chunks through the same async interface, so the arena never knows which it talks to:

- ``LocalBackend``: a servable model directory (contract 2) or a Hub id, loaded with transformers and
  streamed through ``TextIteratorStreamer`` from a generation thread. The chat template comes from the model
  directory, exactly as training used it; generation stops at the EOT listed in ``generation_config.json``.
- ``RemoteBackend``: an ``http(s)://`` URL spoken to with ``huggingface_hub.AsyncInferenceClient``'s
  ``chat_completion(stream=True)``, so the server applies the model's own chat template too. The probe learns
  which server it is (TGI, vLLM, transformers serve, or another OpenAI-compatible one) and each request tells
  that server the paper's decoding in its own terms (``server_terms``): the same rater setting means the same
  decoding on every side.

One meaning of the repetition penalty (``PENALTY_SCOPE``): CTRL's penalty over the whole context, the prompt
and the answer so far. TGI, vLLM and transformers (``generate``, so transformers serve) all apply it that way
and none can be told otherwise, so the in-process backend does the same. Every stored turn records the
decoding as sent, in the server's terms, with that scope (``decoding_record``).

Every failure a rater can meet (unreachable, warming up, overloaded, timeout, a server error) is raised as a
``BackendError`` whose message is one line fit to show in that side's pane.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The paper's decoding (section 4.1): nucleus sampling p = 0.9, temperature 0.7, a repetition penalty of 1.2
# (Keskar et al.'s, over "previously generated tokens"), at most 2,048 tokens in all (prompt + answer).
TOTAL_TOKEN_BUDGET = 2048
# What the penalty covers on every side: the prompt and the answer so far (see the module docstring).
PENALTY_SCOPE = "context"


@dataclass(frozen=True)
class Decoding:
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.2
    max_new_tokens: int = 512

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def greedy(self) -> bool:
        """Temperature 0 means the most likely token, as TGI, vLLM and transformers serve all read it."""
        return self.temperature <= 0


def decoding_record(decoding: Decoding, server: str, sent: dict, scope: str, may_ignore: tuple[str, ...]) -> dict:
    """What a turn stores: the rater's setting, the server's kind, the fields it was sent (in its terms), what
    the penalty covered there, and which settings it may have ignored."""
    return {
        **decoding.as_dict(),
        "server": server,
        "sent": sent,
        "penalty_scope": scope,
        "may_ignore": list(may_ignore),
    }


class BackendError(Exception):
    """A failure to show in one side's pane; ``warming_up`` marks a server that will answer if asked again;
    ``status`` is the HTTP status the server answered, if it answered one (a 422 refuses that request only)."""

    def __init__(self, message: str, warming_up: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.warming_up = warming_up
        self.status = status


@dataclass(frozen=True)
class Status:
    ok: bool
    model: str
    detail: str


def parse_source(spec: str) -> tuple[str | None, str]:
    """``NAME=SOURCE`` names a side for the report; a bare ``SOURCE`` is named after what it serves."""
    name, sep, source = spec.partition("=")
    if sep and name and not any(ch in name for ch in "/:\\"):
        return name.strip(), source.strip()
    return None, spec.strip()


def make_backend(spec: str, concurrency: int | None = None, **kwargs) -> LocalBackend | RemoteBackend:
    """``concurrency``: answers at once: in-process, the batch size (default 8); for a server, how many it is
    asked at once (default: what TGI's /info says it takes, else no cap)."""
    name, source = parse_source(spec)
    if source.startswith(("http://", "https://")):
        url, _, model = source.partition("#")  # the fragment names one of the server's models
        return RemoteBackend(url, name=name, model=model.strip() or None, max_concurrent=concurrency)
    return LocalBackend(source, name=name, **({"max_batch": concurrency} if concurrency else {}), **kwargs)


def _local_name(source: str) -> str:
    """``runs/quick-cpu/lima-1030/epoch-10`` -> ``quick-cpu/lima-1030/epoch-10``: recipe, model and epoch."""
    path = Path(source)
    if path.exists():
        return "/".join(path.resolve().parts[-3:])
    return source


# -- in-process transformers --------------------------------------------------------------------------------
class Waiting(str):
    """Not answer text: a note a stream yields while its request waits for the model (the app shows it)."""


class LocalBackend:
    """A model in this process. Concurrent requests are generated together in batches (``serving/batching.py``;
    ``max_batch=1``: one at a time), each streaming its own answer."""

    def __init__(self, source: str, name: str | None = None, device: str | None = None, max_batch: int = 8) -> None:
        self.source = source
        self.name = name or _local_name(source)
        self.device = device
        self.max_batch = max_batch
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
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            try:
                device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
                # bf16 where the hardware computes in it; on CPU fp32 generates faster than bf16.
                dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else None
                dtype = dtype or torch.float32
                started = time.perf_counter()
                tokenizer = AutoTokenizer.from_pretrained(self.source)
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
            self.model, self.tokenizer, self.device = model, tokenizer, device
            log.info("loaded %s on %s in %.1f s", self.source, device, time.perf_counter() - started)

    @property
    def settled(self) -> bool:
        """Loaded, or failed to load: either way the wait is over."""
        return self.model is not None or self.load_error is not None

    async def probe(self) -> Status:
        await asyncio.to_thread(self.load)
        if self.load_error:
            return Status(False, self.name, self.load_error)
        return Status(True, self.name, f"in-process on {self.device}")

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
                    item = await asyncio.wait_for(arrived.get(), 1.0)
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


# -- TGI / OpenAI-compatible servers ------------------------------------------------------------------------
_STATUS_MESSAGES = {
    401: "the server refused the token (401): set HF_TOKEN to a token with access",
    403: "the server refused access (403): check HF_TOKEN's permissions",
    404: "no chat endpoint at this URL (404): is it a TGI or OpenAI-compatible server?",
    422: "the server rejected the request (422)",
    424: "the model failed while generating (424)",
    429: "the server is overloaded (429): retry in a moment",
    503: "the server is warming up or unavailable (503)",
}


def server_terms(kind: str, decoding: Decoding, model: str | None) -> tuple[dict, tuple[str, ...]]:
    """The request fields that give ``decoding`` on a server of ``kind``, and the settings it may ignore.

    ``model`` is what the side names after ``#`` in its source (None: the server's only model)."""
    if kind == "tgi":
        # TGI 3.3 (router/src/lib.rs @ db931fc, ChatRequest::try_into_generate, lines 941-1040): the chat route
        # has no repetition_penalty field and drops unknown ones; line 960 is the only way to set it:
        #     let repetition_penalty = presence_penalty.map(|x| x + 2.0);
        # and it is applied over prompt + generated ids (server/.../flash_causal_lm.py:2005, all_input_ids_tensor).
        # `temperature: 0` is greedy (966-970); top_p must be < 1.0 (validation.rs:258-264), so 1.0 is left out.
        # `model` is a LoRA adapter id unless it is "tgi" (lib.rs:1031).
        body = {
            "model": model or "tgi",
            "max_tokens": decoding.max_new_tokens,
            "temperature": max(decoding.temperature, 0.0),
            "presence_penalty": round(decoding.repetition_penalty - 2.0, 6),
        }
        if decoding.top_p < 1.0:
            body["top_p"] = decoding.top_p
        return body, ()
    if kind == "transformers":
        # transformers serve (transformers/cli/serving, 5.x): unknown body fields are a 422
        # (utils.py _validate_request); frequency_penalty becomes generate's repetition_penalty as 1 + value
        # (chat_completion.py _build_generation_config); a positive temperature does not turn sampling on unless
        # the generation config says so, and `generation_config` (a JSON string) is how to say it, with top_k 0
        # for the paper's pure nucleus. generate applies the penalty over the whole input (prompt + answer).
        body = {
            "max_tokens": decoding.max_new_tokens,
            "temperature": max(decoding.temperature, 0.0),
            "top_p": decoding.top_p,
            "frequency_penalty": round(decoding.repetition_penalty - 1.0, 6),
            "generation_config": json.dumps({"do_sample": not decoding.greedy, "top_k": 0}),
        }
        return ({"model": model, **body} if model else body), ()
    body = {
        "max_tokens": decoding.max_new_tokens,
        "temperature": max(decoding.temperature, 0.0),
        "top_p": decoding.top_p,
        # Not in the OpenAI schema: vLLM and SGLang read it at the top level of the body.
        "repetition_penalty": decoding.repetition_penalty,
    }
    if model:
        body = {"model": model, **body}
    if kind == "vllm":
        # vLLM fills every field a request leaves out from the model's generation_config.json
        # (entrypoints/openai/chat_completion/protocol.py to_sampling_params, "user -> server default"):
        # name top_k and min_p too, so a base model's defaults do not narrow the nucleus. Its penalty covers
        # prompt and output tokens (model_executor/layers/utils.py apply_repetition_penalties).
        return {**body, "top_k": 0, "min_p": 0.0}, ()
    return body, ("repetition_penalty",)  # an OpenAI-compatible server of unknown make may drop it


_SCOPES = {"tgi": PENALTY_SCOPE, "vllm": PENALTY_SCOPE, "transformers": PENALTY_SCOPE}
_KIND_NAMES = {"tgi": "TGI", "vllm": "vLLM", "transformers": "transformers serve", "openai": "OpenAI-compatible server"}


class RemoteBackend:
    """A TGI server (or vLLM, SGLang, transformers serve, an Inference Endpoint) at ``url``; the token comes
    from ``HF_TOKEN``. ``model`` names one of the server's models (the source's ``#fragment``); it never goes
    into the URL."""

    def __init__(
        self,
        url: str,
        name: str | None = None,
        timeout: float = 120.0,
        model: str | None = None,
        max_concurrent: int | None = None,
    ) -> None:
        self.source = url.rstrip("/") + (f"#{model}" if model else "")
        # How many answers this side asks of its server at once: the setting, else what TGI's /info says it
        # takes (max_concurrent_requests; beyond it TGI answers 429), else no cap. A burst becomes a queue here.
        self.max_concurrent = max_concurrent
        self.server_cap: int | None = None
        self.active = 0
        self._gate = threading.Lock()
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.model = model or None
        self.model_id: str | None = None
        self.kind: str | None = None  # learnt by probe(): "tgi", "vllm", "transformers" or "openai"
        self.version: str | None = None
        self.name = name or self.source

    def _token(self) -> str | None:
        return os.environ.get("HF_TOKEN") or None

    def _client(self):
        from huggingface_hub import AsyncInferenceClient

        # provider="hf-inference": the provider under which health_check and get_endpoint_info speak to a URL.
        token, timeout = self._token(), self.timeout
        return AsyncInferenceClient(base_url=self.url, token=token, timeout=timeout, provider="hf-inference")

    async def _get_json(self, client, route: str) -> object | None:
        """``GET route`` with the client's own HTTP session; the JSON, or None for an error status or non-JSON."""
        from huggingface_hub.utils import build_hf_headers

        # The client's own httpx2 session (what chat_completion uses). huggingface_hub's public get_async_session()
        # builds a new client each time: tried, it made two concurrent first streams ~0.15 s slower here.
        session = await client._get_async_client()
        response = await session.get(f"{self.url}{route}", headers=build_hf_headers(token=self._token()), timeout=10)
        if response.status_code != 200:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    async def probe(self) -> Status:
        """``/health``, then which server this is: TGI answers ``/info`` (router/src/lib.rs ``Info``), vLLM
        ``/version``, transformers serve ``/health`` with ``{"status": "ok"}`` (cli/serving/server.py) or
        models with a ``status`` (model_manager.py ``list_models``); anything else is OpenAI-compatible."""
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError

        try:
            async with self._client() as client:
                if not await client.health_check():
                    return Status(False, self.name, "/health does not answer 200 yet: warming up or unhealthy")
                try:
                    info = await client.get_endpoint_info()
                except (HfHubHTTPError, ValueError):
                    info = None
                if isinstance(info, dict) and "max_total_tokens" in info and "model_id" in info:
                    self.kind, self.version, self.model_id = "tgi", str(info.get("version", "?")), info["model_id"]
                    cap = info.get("max_concurrent_requests")
                    self.server_cap = cap if isinstance(cap, int) and cap > 0 else None
                else:
                    health = await self._get_json(client, "/health")
                    version = await self._get_json(client, "/version")
                    listed = await self._get_json(client, "/v1/models")
                    models = listed.get("data", []) if isinstance(listed, dict) else []
                    models = [m for m in models if isinstance(m, dict) and m.get("id")]
                    if isinstance(version, dict) and "version" in version:
                        self.kind, self.version = "vllm", str(version["version"])
                    elif health == {"status": "ok"} or any("status" in m for m in models):
                        self.kind = "transformers"
                    else:
                        self.kind = "openai"
                    ids = [m["id"] for m in models]
                    if self.model is None and len(ids) > 1:
                        shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
                        return Status(
                            False, self.name, f"serves {len(ids)} models ({shown}): name one after # in the source"
                        )
                    self.model_id = self.model or (ids[0] if ids else None)
        except (httpx2.HTTPError, OSError) as err:
            return Status(False, self.name, f"unreachable: {_one_line(err) or type(err).__name__}")
        return Status(True, self.name, self.describe())

    def describe(self) -> str:
        """The status line: what serves this side and how it takes the paper's decoding."""
        kind = self.kind or "openai"
        server = _KIND_NAMES[kind] + (f" {self.version}" if self.version else "")
        served = self.model_id or "an unnamed model"
        if kind == "tgi" and self.model:
            served = f"{served} with adapter {self.model}"
        _, may_ignore = server_terms(kind, Decoding(), self.model)
        if may_ignore:
            return f"{server} serving {served}; it may ignore {', '.join(may_ignore)} (not in the OpenAI API)"
        how = {"tgi": "as presence_penalty", "transformers": "as frequency_penalty"}.get(kind, "as repetition_penalty")
        return f"{server} serving {served}; repetition penalty sent {how}, over the whole context"

    def _target(self) -> str | None:
        """The request's ``model``: on TGI an adapter id (none: the base model); elsewhere the model to use,
        named after ``#`` or the server's only one (vLLM refuses a name it does not serve)."""
        return self.model if self.kind == "tgi" else (self.model or self.model_id)

    def decoding_record(self, decoding: Decoding) -> dict:
        kind = self.kind or "openai"
        sent, may_ignore = server_terms(kind, decoding, self._target())
        server = kind + (f" {self.version}" if self.version else "")
        return decoding_record(decoding, server, sent, _SCOPES.get(kind, "unknown"), may_ignore)

    async def stream(self, messages: list[dict], decoding: Decoding, finish: dict | None = None) -> AsyncIterator[str]:
        """The answer's text as it streams, after a slot under the side's cap (``Waiting`` notes until then).
        A ``finish`` dict, when given, receives the server's ``reason`` ("stop": a stop token, "length": the
        token cap) and, where it reports usage, ``completion_tokens``."""
        if self.kind is None:  # not probed yet (or the server was down then): learn what it is first
            await self.probe()
        cap, waited = self.max_concurrent or self.server_cap, 0
        while True:
            with self._gate:  # a lock, not an asyncio primitive: the backend outlives any one event loop
                if cap is None or self.active < cap:
                    self.active += 1
                    break
            if waited % 20 == 0:  # at once, then every second
                yield Waiting(f"waiting for the server: {cap} answers in progress")
            waited += 1
            await asyncio.sleep(0.05)
        try:
            async for chunk in self._stream(messages, decoding, finish):
                yield chunk
        finally:
            with self._gate:
                self.active -= 1

    async def _stream(self, messages: list[dict], decoding: Decoding, finish: dict | None) -> AsyncIterator[str]:
        import httpx2  # huggingface_hub's own HTTP transport: its errors are httpx2's
        from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, TextGenerationError

        sent, _ = server_terms(self.kind or "openai", decoding, self._target())
        fields = dict(sent)
        named = {key: fields.pop(key) for key in ("model", "max_tokens", "temperature", "top_p") if key in fields}
        for key in ("presence_penalty", "frequency_penalty"):
            if key in fields:
                named[key] = fields.pop(key)
        try:
            async with self._client() as client:
                chunks = await client.chat_completion(messages, stream=True, **named, extra_body=fields or None)
                async for chunk in chunks:
                    if finish is not None:
                        if chunk.choices and chunk.choices[0].finish_reason:
                            finish["reason"] = chunk.choices[0].finish_reason
                        if getattr(chunk, "usage", None) and chunk.usage.completion_tokens is not None:
                            finish["completion_tokens"] = chunk.usage.completion_tokens
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content
        except HfHubHTTPError as err:
            raise _http_error(err) from None
        except TextGenerationError as err:  # an error event inside the stream (TGI sends one on a mid-answer failure)
            detail = err.args[0].get("message", "") if err.args and isinstance(err.args[0], dict) else str(err)
            raise BackendError(f"the server failed mid-answer: {detail}"[:400]) from None
        except (TimeoutError, InferenceTimeoutError, httpx2.TimeoutException):
            raise BackendError(f"no answer from {self.url} within {self.timeout:g} s") from None
        except httpx2.ConnectError:
            raise BackendError(f"cannot reach {self.url}: is the server running?") from None
        except (httpx2.HTTPError, OSError) as err:
            raise BackendError(f"the connection to {self.url} broke: {_one_line(err) or type(err).__name__}") from None


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""


def _http_error(err: Exception) -> BackendError:
    response = getattr(err, "response", None)
    code = getattr(response, "status_code", None)
    server_says = _one_line(Exception(getattr(err, "server_message", None) or ""))
    base = _STATUS_MESSAGES.get(code, f"the server answered {code}")
    message = f"{base}: {server_says}" if server_says else base
    return BackendError(message[:400], warming_up=code == 503, status=code)
