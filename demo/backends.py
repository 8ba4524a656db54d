"""Where each side's answers come from: a model run in this process, or a TGI / OpenAI-compatible server.

Both kinds stream text chunks through the same async interface, so the arena never knows which it talks to:

- ``LocalBackend``: a servable model directory (contract 2) or a Hub id, loaded with transformers and
  streamed through ``TextIteratorStreamer`` from a generation thread. The chat template comes from the model
  directory, exactly as training used it; generation stops at the EOT listed in ``generation_config.json``.
- ``RemoteBackend``: an ``http(s)://`` URL spoken to with ``huggingface_hub.AsyncInferenceClient``'s
  ``chat_completion(stream=True)``, so the server applies the model's own chat template too.

Every failure a rater can meet (unreachable, warming up, overloaded, timeout, a server error) is raised as a
``BackendError`` whose message is one line fit to show in that side's pane.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

# The paper's decoding (section 4.1): nucleus sampling p = 0.9, temperature 0.7, repetition penalty 1.2 over
# the generated tokens, at most 2,048 tokens in all (prompt + answer).
TOTAL_TOKEN_BUDGET = 2048


@dataclass(frozen=True)
class Decoding:
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.2
    max_new_tokens: int = 512

    def as_dict(self) -> dict:
        return asdict(self)


class BackendError(Exception):
    """A failure to show in one side's pane; ``warming_up`` marks a server that will answer if asked again."""

    def __init__(self, message: str, warming_up: bool = False) -> None:
        super().__init__(message)
        self.warming_up = warming_up


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


def make_backend(spec: str, **kwargs) -> LocalBackend | RemoteBackend:
    name, source = parse_source(spec)
    if source.startswith(("http://", "https://")):
        return RemoteBackend(source, name=name)
    return LocalBackend(source, name=name, **kwargs)


def _local_name(source: str) -> str:
    """``runs/quick-cpu/lima-1030/epoch-10`` -> ``quick-cpu/lima-1030/epoch-10``: recipe, model and epoch."""
    path = Path(source)
    if path.exists():
        return "/".join(path.resolve().parts[-3:])
    return source


# -- in-process transformers --------------------------------------------------------------------------------
class LocalBackend:
    """A model in this process. One generation at a time per model; other sides and requests never wait on it
    except for CPU time."""

    def __init__(self, source: str, name: str | None = None, device: str | None = None) -> None:
        self.source = source
        self.name = name or _local_name(source)
        self.device = device
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()
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
            self.model, self.tokenizer, self.device = model, tokenizer, device
            log.info("loaded %s on %s in %.1f s", self.source, device, time.perf_counter() - started)

    async def probe(self) -> Status:
        await asyncio.to_thread(self.load)
        if self.load_error:
            return Status(False, self.name, self.load_error)
        return Status(True, self.name, f"in-process on {self.device}")

    async def stream(self, messages: list[dict], decoding: Decoding) -> AsyncIterator[str]:
        await asyncio.to_thread(self.load)
        if self.load_error:
            raise BackendError(self.load_error)
        from transformers import TextIteratorStreamer

        tokenizer, model = self.tokenizer, self.model
        encoded = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        prompt_len = encoded["input_ids"].shape[1]
        room = TOTAL_TOKEN_BUDGET - prompt_len
        if room < 16:
            raise BackendError(
                f"the conversation is {prompt_len} tokens, past the {TOTAL_TOKEN_BUDGET}-token budget; start a new one"
            )
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancelled = threading.Event()
        failure: list[BaseException] = []

        def generate() -> None:
            from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

            class Cancelled(StoppingCriteria):
                def __call__(self, input_ids, scores, **kwargs):
                    return cancelled.is_set()

            try:
                with self._generate_lock:
                    model.generate(
                        **encoded,
                        streamer=streamer,
                        do_sample=True,
                        temperature=decoding.temperature,
                        top_p=decoding.top_p,
                        max_new_tokens=min(decoding.max_new_tokens, room),
                        logits_processor=LogitsProcessorList(
                            [GeneratedTokensRepetitionPenalty(prompt_len, decoding.repetition_penalty)]
                        ),
                        stopping_criteria=StoppingCriteriaList([Cancelled()]),
                    )
            except BaseException as err:
                failure.append(err)
                streamer.end()

        thread = threading.Thread(target=generate, daemon=True, name=f"generate:{self.name}")
        thread.start()
        chunks = iter(streamer)
        try:
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                if chunk:
                    yield chunk
        finally:
            cancelled.set()  # the rater left or the app cancelled: stop spending CPU on this answer
        if failure:
            raise BackendError(f"generation failed: {failure[0]}")


class GeneratedTokensRepetitionPenalty:
    """CTRL's repetition penalty applied to tokens the model generated, not to the prompt (LIMA section 4.1)."""

    def __init__(self, prompt_len: int, penalty: float) -> None:
        self.prompt_len = prompt_len
        self.penalty = penalty

    def __call__(self, input_ids, scores):
        import torch

        generated = input_ids[:, self.prompt_len :]
        if self.penalty == 1.0 or generated.shape[1] == 0:
            return scores
        picked = torch.gather(scores, 1, generated)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores.scatter(1, generated, picked)


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


class RemoteBackend:
    """A TGI server (or vLLM, SGLang, an Inference Endpoint) at ``url``; the token comes from ``HF_TOKEN``."""

    def __init__(self, url: str, name: str | None = None, timeout: float = 120.0) -> None:
        self.source = url.rstrip("/")
        self.url = self.source
        self.timeout = timeout
        self.model_id: str | None = None
        self.name = name or self.url

    def _token(self) -> str | None:
        return os.environ.get("HF_TOKEN") or None

    def _headers(self) -> dict[str, str]:
        token = self._token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def probe(self) -> Status:
        """``/health`` then ``/info`` (TGI) or ``/v1/models`` (OpenAI-compatible servers)."""
        try:
            async with httpx.AsyncClient(timeout=10, headers=self._headers()) as client:
                health = await client.get(f"{self.url}/health")
                if health.status_code == 503:
                    return Status(False, self.name, "warming up (503)")
                if health.status_code >= 400:
                    return Status(False, self.name, f"/health answered {health.status_code}")
                info = await client.get(f"{self.url}/info")
                if info.status_code == 200:
                    data = info.json()
                    self.model_id = data.get("model_id")
                    detail = f"TGI {data.get('version', '?')} serving {self.model_id}"
                else:
                    models = await client.get(f"{self.url}/v1/models")
                    ids = [m.get("id") for m in models.json().get("data", [])] if models.status_code == 200 else []
                    self.model_id = ids[0] if ids else None
                    detail = f"OpenAI-compatible server serving {self.model_id or 'an unnamed model'}"
        except httpx.HTTPError as err:
            return Status(False, self.name, f"unreachable: {_one_line(err) or type(err).__name__}")
        except ValueError:
            return Status(False, self.name, "answered, but not with TGI's JSON")
        return Status(True, self.name, detail)

    async def stream(self, messages: list[dict], decoding: Decoding) -> AsyncIterator[str]:
        import httpx2  # huggingface_hub's own HTTP transport: its errors are httpx2's
        from huggingface_hub import AsyncInferenceClient
        from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, TextGenerationError

        try:
            async with AsyncInferenceClient(base_url=self.url, token=self._token(), timeout=self.timeout) as client:
                chunks = await client.chat_completion(
                    messages,
                    stream=True,
                    max_tokens=decoding.max_new_tokens,
                    temperature=decoding.temperature,
                    top_p=decoding.top_p,
                    # Not in the OpenAI schema: vLLM and SGLang read it; servers that do not know it ignore it.
                    extra_body={"repetition_penalty": decoding.repetition_penalty},
                )
                async for chunk in chunks:
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
    return BackendError(message[:400], warming_up=code == 503)
