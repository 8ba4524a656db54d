"""A real loopback HTTP server that speaks text-generation-inference's (TGI 3.3.x) HTTP API, for tests and benchmarks.

Standard library only. It answers the routes a chat client needs, with the shapes TGI 3.3.7's router
(``router/src/server.rs``, ``lib.rs``, ``chat.rs``) produces:

- ``GET /health`` (and ``/ping``): 200 with an empty body; 503 ``{"error": "unhealthy", "error_type": "healthcheck"}``
  while ``behaviour.status == 503``.
- ``GET /info``: TGI's ``Info`` object (``model_id``, ``max_input_tokens``, ``max_total_tokens``, ``version``...).
- ``POST /v1/chat/completions``: OpenAI chat completion, streamed (``data: {chunk}`` events, then ``data: [DONE]``) or
  not. As in TGI, ``model`` in the answer echoes the request's ``model`` unless it is missing or ``"tgi"``
  (huggingface_hub sends ``"dummy"`` when given a URL), and a mid-stream failure is sent as TGI 3.x does on this
  route: ``data: {"error": {"message": ..., "http_status_code": 422}}`` followed by ``data: [DONE]``
  (``Behaviour.chat_stream_error_style = "tgi"`` sends the native ``{"error": ..., "error_type": ...}`` instead).

Where TGI's behaviour decides what a model would generate, the server does what TGI's router does and records it
(``TGIServer.applied``, one dict per chat request: the ``GenerateParameters`` the router hands to the model), so a
test asserts the decoding TGI would really apply, not only what the client sent:

- Unknown body fields are ignored (``ChatRequest`` has no ``deny_unknown_fields``), so ``repetition_penalty`` in the
  body does nothing. The repetition penalty is ``presence_penalty + 2.0`` (``lib.rs`` ``try_into_generate``, line 960
  at db931fc); ``temperature: 0`` is greedy (966-970); ``top_k`` and ``typical_p`` are always None.
- ``model`` is a LoRA adapter id unless it is ``"tgi"`` (lib.rs:1031); an id the server did not load runs the base
  model (``flash_causal_lm.py``: ``ADAPTER_TO_INDEX.get(adapter_id, 0)``), so ``applied["adapter"]`` is None then.
- Ranges are validated as ``router/src/validation.rs`` does (lines 152-287), with its messages, as 422 ``validation``.
- With ``model_dir``, the prompt is rendered from that folder's ``tokenizer_config.json`` chat template with
  minijinja configured as TGI's router configures it (``finetune.servable.render_like_tgi``; PyPI's ``minijinja``
  wraps the same Rust engine), counted with its ``tokenizer.json``, and checked against ``max_total_tokens``; a folder
  without a template is TGI's 422 ``template_error``.

The native ``/generate`` routes are left out: the arena speaks only the chat route.

Errors are TGI's: the status code and a JSON body ``{"error": message, "error_type": type}``.

``Behaviour.basic_auth`` puts the server behind HTTP Basic authentication, as a reverse proxy would (401 with
``WWW-Authenticate`` otherwise), ``Behaviour.query_key`` behind a key in the URL's query (``?api_key=``), and
``TGIServer.received`` records every request's headers, so a test sees which credentials each server was sent.

Streams use HTTP/1.1 chunked transfer encoding and every event is written straight to the socket (Nagle off), so a
client sees the tokens arrive at the pace ``Behaviour`` sets. ``die_after_tokens`` and :meth:`TGIServer.stop` close
the connection in the middle of the chunked body, so a client gets an incomplete-body error exactly as when a real
server is killed mid-turn. ``stop()`` followed by ``start()`` listens again on the same port (a restarted server).

Usage::

    with TGIServer(Behaviour(reply="Hi there.", token_delay_s=0.01)) as server:
        client = AsyncInferenceClient(base_url=server.url)
        ...
        server.behaviour = Behaviour(status=503)  # takes effect from the next request
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

TGI_VERSION = "3.3.7"
VLLM_VERSION = "0.33.0"
SYSTEM_FINGERPRINT = f"{TGI_VERSION}-native"

#: HTTP status -> TGI ``error_type`` and a message like the one TGI sends for it.
ERRORS: dict[int, tuple[str, str]] = {
    422: (
        "validation",
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048. "
        "Given: 1900 `inputs` tokens and 400 `max_new_tokens`",
    ),
    424: ("generation", "Request failed during generation: Server error: CUDA out of memory."),
    429: ("overloaded", "Model is overloaded"),
    500: ("incomplete_generation", "Incomplete generation"),
    503: ("unhealthy", "Service Unavailable: the model is loading (warming up), retry later"),
}
STREAM_ERROR_MESSAGE = "Request failed during generation: Server error: CUDA out of memory."


class _Abort(Exception):
    """The handler must drop the connection now (server stopping, or a simulated crash)."""


@dataclass
class Behaviour:
    """What the server does on the next generation request; a test may swap or mutate it between requests."""

    reply: str = "Hello from the test server."  # streamed back as tokens: re.findall(r"\s*\S+", reply)
    # Chooses each request's reply from its messages instead (a scripted judge reads what it was asked).
    reply_for: Callable[[list[dict]], str] | None = None
    token_delay_s: float = 0.0  # pause before each token of the reply
    # extra pause before the first token (time to first token): with token_delay_s 0, a fixed time per answer,
    # the same for every request in flight at once (a batching server's step time, as benchmarks want it)
    first_token_delay_s: float = 0.0
    status: int = 200  # not 200: generation routes answer this status with TGI's error JSON (503: /health too)
    error_message: str | None = None  # message of that error (and of the mid-stream error); None: one like TGI's
    die_after_tokens: int | None = None  # close the TCP connection abruptly after N tokens (a killed server)
    stream_error_after_tokens: int | None = None  # after N tokens send an SSE error event and end the stream
    chat_stream_error_style: str = "openai"  # "openai": TGI 3.x's chat error event; "tgi": {"error", "error_type"}
    model_id: str = "test/model"
    adapters: tuple[str, ...] = ()  # LoRA adapter ids the server loaded (TGI's --lora-adapters)
    # The name of an entry of serving.kinds.KINDS, answering the routes its ``recognise`` reads: "tgi" (/info);
    # "vllm" (GET /version, as vLLM 0.33's entrypoints/serve/instrumentator/basic.py; no /info; a chat for a
    # model it does not serve is its 404); or "openai" (an OpenAI-compatible server of unknown make: neither).
    # Generation is the same look-alike in all. (transformers serve is tested against the real server.)
    server: str = "tgi"
    # Cross-request order without timing: ``arrived`` is set when a generation request reaches the server;
    # ``hold`` (event, n) waits, before the n-th token, until that event is set (at most 5 s, then a stream error).
    # What /info reports (router/src/lib.rs ``Info``, TGI's --max-concurrent-requests, default 128), and what
    # the router holds to: router/src/infer/mod.rs makes ``Semaphore::new(max_concurrent_requests)`` (line 84)
    # and every request takes a permit with ``try_acquire_owned`` (lines 111-120), kept until its answer ends
    # (line 251); without one it is ``InferError::Overloaded``, answered 429 (server.rs line 2408). Counted in
    # ``TGIServer.peak_in_flight`` and ``TGIServer.overloaded``.
    max_concurrent_requests: int = 128
    arrived: threading.Event | None = None
    hold: tuple[threading.Event, int] | None = None
    # (user, password): every route answers 401 unless the request carries that HTTP Basic Authorization, as a
    # reverse proxy in front of TGI would (TGI itself has no user accounts).
    basic_auth: tuple[str, str] | None = None
    query_key: str | None = None  # every route answers 401 unless the URL's query says api_key=<this> (a gateway)

    def tokens(self) -> list[str]:
        return re.findall(r"\s*\S+", self.reply)

    def error(self, status: int | None = None) -> tuple[str, str]:
        """``(error_type, message)`` TGI would send for ``status`` (default: ``self.status``)."""
        status = self.status if status is None else status
        error_type, message = ERRORS.get(status, ("unknown", f"HTTP {status}"))
        return error_type, self.error_message or message

    def stream_error_message(self) -> str:
        return self.error_message or STREAM_ERROR_MESSAGE


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # listen()'s backlog: socketserver's 5 drops the SYNs of a burst of new connections (16 requests at once), and
    # each dropped one waits a second for the kernel to send it again. A real server (tokio) listens with 1024.
    request_queue_size = 1024
    tgi: TGIServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "text-generation-router"
    sys_version = ""
    disable_nagle_algorithm = True  # each small SSE chunk leaves at once
    server: _HTTPServer

    # Routing

    def setup(self) -> None:
        super().setup()
        self._permit = False  # whether the request being answered holds a concurrency permit
        self.server.tgi._track(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.tgi._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # quiet in tests
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (_Abort, OSError):
            self.close_connection = True
            self._drop()

    def _admitted(self) -> bool:
        """Records the request's headers (every route); False, having answered 401, when it lacks the basic
        credentials or the query key the behaviour requires."""
        tgi = self.server.tgi
        tgi._received(self.command, self.path, dict(self.headers))
        basic, key = tgi.behaviour.basic_auth, tgi.behaviour.query_key
        expected = "Basic " + base64.b64encode(":".join(basic).encode()).decode() if basic else None
        if (expected is None or self.headers.get("Authorization") == expected) and (
            key is None or parse_qs(urlsplit(self.path).query).get("api_key") == [key]
        ):
            return True
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="tgi"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", "12")
        self.end_headers()
        self.wfile.write(b"Unauthorized")
        return False

    def do_GET(self) -> None:
        if not self._admitted():
            return
        tgi = self.server.tgi
        behaviour = tgi.behaviour
        path = urlsplit(self.path).path
        if path in ("/health", "/ping", "/"):
            if behaviour.status == 503:
                self._send_json(503, {"error": "unhealthy", "error_type": "healthcheck"})
            else:
                self._send_body(200, b"", "text/plain; charset=utf-8")
        elif path == "/info" and behaviour.server == "tgi":
            self._send_json(200, tgi.info())
        elif path == "/version" and behaviour.server == "vllm":
            self._send_json(200, {"version": VLLM_VERSION})
        elif path == "/v1/models":
            created = int(time.time())
            model = {"id": behaviour.model_id, "object": "model", "created": created, "owned_by": behaviour.model_id}
            self._send_json(200, {"object": "list", "data": [model]})
        elif path == "/v1/chat/completions":
            self._send_body(405, b"", "text/plain; charset=utf-8")
        else:
            self._send_body(404, b"", "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        if not self._admitted():
            return
        routes = {"/v1/chat/completions": self._chat}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        route = routes.get(self.path.split("?", 1)[0])
        if route is None:
            self._send_body(404, b"", "text/plain; charset=utf-8")
            return
        try:
            body = json.loads(raw)
        except ValueError as error:  # axum's Json extractor: 400 plain text
            self._send_body(400, f"Failed to parse the request body as JSON: {error}".encode(), "text/plain")
            return
        if not isinstance(body, dict):
            self._send_body(422, b"Failed to deserialize the JSON body into the target type", "text/plain")
            return
        self.server.tgi._record(body, dict(self.headers))
        behaviour = dataclasses.replace(self.server.tgi.behaviour)  # one consistent behaviour per request
        if behaviour.status != 200:
            self._send_error(behaviour.status, *behaviour.error())
            return
        tgi = self.server.tgi
        with tgi._lock:
            full = tgi.in_flight >= behaviour.max_concurrent_requests
            if not full:
                tgi.in_flight += 1
                tgi.peak_in_flight = max(tgi.peak_in_flight, tgi.in_flight)
        if full:
            with tgi._lock:
                tgi.overloaded += 1
            self._send_error(429, *behaviour.error(429))
            return
        self._permit = True
        try:
            route(body, behaviour)
        finally:
            self._release()

    def _release(self) -> None:
        """Give back this request's permit (once) before the answer's last bytes go out: TGI drops it when the
        generation ends, so a client that waits for the end and then asks again never finds its own previous
        request still counted."""
        if self._permit:
            self._permit = False
            with self.server.tgi._lock:
                self.server.tgi.in_flight -= 1

    # Generation routes

    def _chat(self, body: dict, behaviour: Behaviour) -> None:
        if not isinstance(body.get("messages"), list):
            self._send_body(
                422, b"Failed to deserialize the JSON body into the target type: missing field `messages`", "text/plain"
            )
            return
        tgi = self.server.tgi
        if behaviour.reply_for is not None:  # this request's own copy of the behaviour: others are not touched
            behaviour.reply = behaviour.reply_for(body["messages"])
        if behaviour.server == "vllm" and body.get("model") != behaviour.model_id:  # serving_engine.py _check_model
            error = {"message": f"The model `{body.get('model')}` does not exist.", "type": "NotFoundError"}
            self._send_json(404, {"error": {**error, "param": "model", "code": 404}})
            return
        try:
            applied = tgi.apply(body, behaviour) if behaviour.server == "tgi" else {}
        except TGIError as error:
            self._send_error(422, error.error_type, str(error))
            return
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        tokens, finish = _plan(behaviour.tokens(), max_tokens)
        model = body.get("model")
        model = behaviour.model_id if model in (None, "tgi") else str(model)
        if applied:
            tgi._applied(applied)
        prompt_tokens = sum(len(re.findall(r"\S+", str(m.get("content") or ""))) for m in body["messages"])
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens) + (finish == "stop"),
            "total_tokens": prompt_tokens + len(tokens) + (finish == "stop"),
        }

        def chunk(content: str, finish_reason: str | None) -> dict:
            delta = {"role": "assistant", "content": content}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**_envelope("chat.completion.chunk", model), "choices": [choice], "usage": None}

        if not body.get("stream"):
            self._pace(tokens, behaviour, on_token=lambda i, tok: None, on_stream_error=None)
            message = {"role": "assistant", "content": "".join(tokens)}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            self._send_json(200, {**_envelope("chat.completion", model), "choices": [choice], "usage": usage})
            return

        def on_stream_error() -> None:
            error_type, message = "generation", behaviour.stream_error_message()
            if behaviour.chat_stream_error_style == "tgi":
                self._event({"error": message, "error_type": error_type})
            else:  # TGI 3.x InferError::into_openai_event
                self._event({"error": {"message": message, "http_status_code": 422}})
            self._event("[DONE]")

        last = len(tokens) - 1
        self._start_stream()
        completed = self._pace(
            tokens,
            behaviour,
            on_token=lambda i, tok: self._event(chunk(tok, "length" if i == last and finish == "length" else None)),
            on_stream_error=on_stream_error,
        )
        if completed:
            if finish == "stop":  # the EOS token: special, so empty content
                self._event(chunk("", "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                self._event({**_envelope("chat.completion.chunk", model), "choices": [], "usage": usage})
            self._event("[DONE]")
        self._end_stream()

    def _pace(self, tokens: list[str], behaviour: Behaviour, on_token: Any, on_stream_error: Any) -> bool:
        """Produce ``tokens`` at the set pace; False if a simulated failure ended the request (already answered)."""
        stopping = self.server.tgi._stopping
        if behaviour.arrived is not None:
            behaviour.arrived.set()
        for i, tok in enumerate(tokens):
            if behaviour.hold is not None and i == behaviour.hold[1] and not behaviour.hold[0].wait(5.0):
                if on_stream_error is None:
                    self._send_error(424, "generation", "held: the awaited request never came")
                else:
                    on_stream_error()
                return False
            if behaviour.die_after_tokens is not None and i >= behaviour.die_after_tokens:
                raise _Abort
            if behaviour.stream_error_after_tokens is not None and i >= behaviour.stream_error_after_tokens:
                if on_stream_error is None:  # not streaming: TGI answers 424 with the error
                    self._send_error(424, "generation", behaviour.stream_error_message())
                else:
                    on_stream_error()
                return False
            delay = behaviour.token_delay_s + (behaviour.first_token_delay_s if i == 0 else 0.0)
            if (delay > 0 and stopping.wait(delay)) or stopping.is_set():
                raise _Abort
            on_token(i, tok)
        if behaviour.die_after_tokens is not None and len(tokens) >= behaviour.die_after_tokens:
            raise _Abort  # died before sending the end of the answer
        return True

    # Wire

    def _send_body(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self._release()
        self.wfile.write(payload)

    def _send_json(self, status: int, payload: Any) -> None:
        self._send_body(status, json.dumps(payload).encode(), "application/json")

    def _send_error(self, status: int, error_type: str, message: str) -> None:
        self._send_json(status, {"error": message, "error_type": error_type})

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-compute-type", "gpu+optimized")
        self.end_headers()

    def _event(self, data: Any) -> None:
        text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        payload = f"data: {text}\n\n".encode()
        if text == "[DONE]":
            self._release()
        self.wfile.write(b"%X\r\n%s\r\n" % (len(payload), payload))

    def _end_stream(self) -> None:
        self._release()
        self.wfile.write(b"0\r\n\r\n")

    def _drop(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class TGIError(Exception):
    """A request TGI's router refuses before generating: 422 with ``error_type``."""

    def __init__(self, message: str, error_type: str = "validation") -> None:
        super().__init__(message)
        self.error_type = error_type


def _number(body: dict, key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # serde: a type error, before validation
        raise TGIError(f"Failed to deserialize the JSON body into the target type: {key}: invalid type", "validation")
    return float(value)


def generate_parameters(body: dict, adapters: tuple[str, ...] = ()) -> dict:
    """TGI 3.3's ``ChatRequest::try_into_generate`` (router/src/lib.rs:941-1040 @ db931fc) and the checks of
    ``Validation::validate`` (router/src/validation.rs:225-287): the parameters the model would generate with."""
    presence_penalty = _number(body, "presence_penalty")
    frequency_penalty = _number(body, "frequency_penalty")
    temperature = _number(body, "temperature")
    top_p = _number(body, "top_p")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    repetition_penalty = None if presence_penalty is None else presence_penalty + 2.0  # lib.rs:960
    do_sample, temperature = (False, None) if temperature == 0.0 else (True, temperature)  # lib.rs:966-970
    model = body.get("model")
    adapter_id = None if model in (None, "tgi") else str(model)  # lib.rs:1031

    temperature = 1.0 if temperature is None else temperature
    if temperature <= 0.0:  # validation.rs:242-244
        raise TGIError("Input validation error: `temperature` must be strictly positive")
    repetition_penalty = 1.0 if repetition_penalty is None else repetition_penalty
    if repetition_penalty <= 0.0:  # validation.rs:247-249
        raise TGIError("Input validation error: `repetition_penalty` must be strictly positive")
    frequency_penalty = 0.0 if frequency_penalty is None else frequency_penalty
    if not -2.0 <= frequency_penalty <= 2.0:  # validation.rs:252-254
        raise TGIError("Input validation error: `frequency_penalty` must be >= -2.0 and <= 2.0")
    if top_p is not None and not 0.0 < top_p < 1.0:  # validation.rs:258-264
        raise TGIError("Input validation error: `top_p` must be > 0.0 and < 1.0")
    if max_tokens == 0:  # validation.rs:285-287
        raise TGIError("Input validation error: `max_new_tokens` must be strictly positive")
    return {
        "do_sample": do_sample,
        "temperature": temperature,
        "top_p": 1.0 if top_p is None else top_p,
        "top_k": None,  # lib.rs:1026: the chat route has no top_k
        "typical_p": None,
        "repetition_penalty": repetition_penalty,
        "frequency_penalty": frequency_penalty,
        "max_new_tokens": max_tokens,
        "seed": body.get("seed"),
        "stop": list(body.get("stop") or []),
        "adapter_id": adapter_id,
        # flash_causal_lm.py:568, 1065: ADAPTER_TO_INDEX.get(adapter_id, 0) -- an unknown id runs the base model
        "adapter": adapter_id if adapter_id in adapters else None,
        "penalty_scope": "context",  # flash_causal_lm.py:2005: the penalty sees all_input_ids (prompt + generated)
    }


def free_port() -> int:
    """A free loopback port (for the app under test, beside these servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _plan(tokens: list[str], max_tokens: Any) -> tuple[list[str], str]:
    """The tokens to send and the finish reason: "length" when ``max_tokens`` cuts the reply, else "stop" (EOS)."""
    if isinstance(max_tokens, int) and 0 <= max_tokens <= len(tokens):
        return tokens[:max_tokens], "length"
    return tokens, "stop"


def _envelope(obj: str, model: str) -> dict:
    return {
        "object": obj,
        "id": "",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


class TGIServer:
    """A loopback TGI look-alike on a background thread. ``behaviour`` and ``requests`` are read/written live."""

    POLL_S: ClassVar[float] = 0.05

    def __init__(
        self, behaviour: Behaviour | None = None, host: str = "127.0.0.1", port: int = 0, model_dir: Any = None
    ) -> None:
        self.behaviour = behaviour or Behaviour()
        self.host = host
        self.port = port
        self.model_dir = model_dir
        self._template: tuple[str | None, str | None, str | None] | None = None
        self._tokenizer: Any = None
        self.requests: list[dict] = []
        self.applied: list[dict] = []  # per chat request TGI accepted: what the model would generate with
        self.headers: list[dict[str, str]] = []  # the HTTP headers of each recorded request, in order
        # Every request that arrived, any route, admitted or not: (method, path, headers with lower-case names).
        self.received: list[tuple[str, str, dict[str, str]]] = []
        self.in_flight = 0  # generation requests being answered now, and the most at once
        self.peak_in_flight = 0
        self.overloaded = 0  # requests refused with 429: beyond max_concurrent_requests
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._httpd is None and not self.port:
            raise RuntimeError("TGIServer is not started")
        return f"http://{self.host}:{self.port}"

    def info(self) -> dict:
        """TGI 3.3.7's ``GET /info`` (``router/src/lib.rs`` ``Info``)."""
        return {
            "model_id": self.behaviour.model_id,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": self.behaviour.max_concurrent_requests,
            "max_best_of": 2,
            "max_stop_sequences": 4,
            "max_input_tokens": 1536,
            "max_total_tokens": 2048,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": TGI_VERSION,
            "sha": None,
            "docker_label": None,
        }

    def start(self) -> TGIServer:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.tgi = self
        self.port = httpd.server_address[1]  # kept: start() after stop() listens on the same port again
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": self.POLL_S}, name=f"tgi-server:{self.port}"
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection, in-flight streams included (a killed server)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> TGIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _load_model_dir(self) -> None:
        """The template and tokenizer TGI reads from the model folder (tokenizer_config.json, tokenizer.json)."""
        if self._template is not None or self.model_dir is None:
            return
        from pathlib import Path

        from tokenizers import Tokenizer

        folder = Path(self.model_dir)
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))

        def token(name: str) -> str | None:
            value = config.get(name)
            return value.get("content") if isinstance(value, dict) else value

        self._template = (config.get("chat_template"), token("bos_token"), token("eos_token"))
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))

    def apply(self, body: dict, behaviour: Behaviour) -> dict:
        """What TGI would do with a chat request: its generate parameters, and with a model folder the prompt
        its template renders and the token budget check (validation.rs:152-187). Raises ``TGIError``."""
        applied = generate_parameters(body, behaviour.adapters)
        if self.model_dir is None:
            return applied
        from finetune.servable import render_like_tgi

        self._load_model_dir()
        template, bos, eos = self._template
        if not isinstance(template, str):  # infer/mod.rs:234: TemplateNotFound
            raise TGIError("Template error: template not found", "template_error")
        messages = [{"role": m.get("role"), "content": m.get("content") or ""} for m in body["messages"]]
        try:
            prompt = render_like_tgi(template, messages, bos, eos)
        except Exception as error:  # minijinja's own error, or the template's raise_exception
            raise TGIError(f"Template error: {str(error).splitlines()[0]}", "template_error") from None
        input_length = len(self._tokenizer.encode(prompt, add_special_tokens=False).ids)  # lib.rs: no specials
        info = self.info()
        # validation.rs:152-179: the budget is checked on the first chunk of at most DEFAULT_GENERATION_LENGTH
        # (1024) new tokens (TGI re-queues longer answers chunk by chunk); the answer may run to max_new_tokens,
        # which defaults to what is left of max_total_tokens.
        requested = applied["max_new_tokens"]
        max_new = requested if requested is not None else max(info["max_total_tokens"] - input_length, 0)
        chunk = min(max_new, 1024)
        if input_length + chunk > info["max_total_tokens"]:
            raise TGIError(
                f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {info['max_total_tokens']}. "
                f"Given: {input_length} `inputs` tokens and {chunk} `max_new_tokens`"
            )
        if input_length > info["max_input_tokens"]:
            raise TGIError(
                f"Input validation error: `inputs` must have less than {info['max_input_tokens']} tokens. "
                f"Given: {input_length}"
            )
        return {**applied, "max_new_tokens": max_new, "prompt": prompt, "input_tokens": input_length}

    def _applied(self, applied: dict) -> None:
        with self._lock:
            self.applied.append(applied)

    def _record(self, body: dict, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(body)
            self.headers.append({k.lower(): v for k, v in headers.items()})

    def _received(self, method: str, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.received.append((method, path, {k.lower(): v for k, v in headers.items()}))

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


def main(argv: list[str] | None = None) -> None:
    """A server in a process of its own (a benchmark's, or to try a client by hand): it prints its URL, and on
    SIGTERM one JSON line of what it served, then exits."""
    import argparse
    import signal
    import sys

    parser = argparse.ArgumentParser(description="A loopback TGI look-alike (tests/tgi_server.py).")
    parser.add_argument("port", nargs="?", type=int, default=8080, help="0: any free port (8080)")
    parser.add_argument("token_delay_s", nargs="?", type=float, default=0.05, help="pause before each token (0.05)")
    parser.add_argument("--delay", type=float, default=0.0, help="pause before the first token of every answer")
    parser.add_argument("--max-concurrent-requests", type=int, default=128, help="as TGI's flag (128)")
    parser.add_argument("--reply", default=Behaviour.reply, help="every answer's text")
    args = parser.parse_args(argv)
    behaviour = Behaviour(
        reply=args.reply,
        token_delay_s=args.token_delay_s,
        first_token_delay_s=args.delay,
        max_concurrent_requests=args.max_concurrent_requests,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with TGIServer(behaviour, port=args.port) as server:
        print(f"TGI test server on {server.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            done.wait()
        served = {"requests": len(server.requests), "peak_in_flight": server.peak_in_flight}
        print(json.dumps({**served, "overloaded": server.overloaded}), flush=True)
    sys.exit(0)


if __name__ == "__main__":  # python tests/tgi_server.py [PORT] [TOKEN_DELAY_S] [--delay S] ...
    main()
