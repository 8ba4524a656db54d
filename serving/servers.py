"""A side served over HTTP: TGI, vLLM, transformers serve, or another OpenAI-compatible server.

``RemoteBackend`` speaks to an ``http(s)://`` URL with ``huggingface_hub.AsyncInferenceClient``'s
``chat_completion(stream=True)``, so the server applies the model's own chat template. The probe learns which
kind of server it is (``serving/kinds.py``, one entry per kind) and each request tells that server the paper's
decoding in its own terms: the same rater setting means the same decoding on every side.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from serving import credentials
from serving.decoding import BackendError, Decoding, Status, Waiting, decoding_record, one_line
from serving.kinds import Probe, ServerKind, kind_named, recognise

_STATUS_MESSAGES = {
    401: "the server refused the token (401): set HF_TOKEN to a token with access",
    403: "the server refused access (403): check HF_TOKEN's permissions",
    404: "no chat endpoint at this URL (404): is it a TGI or OpenAI-compatible server?",
    422: "the server rejected the request (422)",
    424: "the model failed while generating (424)",
    429: "the server is overloaded (429): retry in a moment",
    503: "the server is warming up or unavailable (503)",
}
credentials.redact_client_logs()  # a URL's query may hold a token, and httpx logs every request's URL


@functools.cache
def _share_tls() -> None:
    """Every request opens a client (``RemoteBackend._session``), and huggingface_hub's factory builds a new TLS
    context for each, loading the CA bundle: 60-100 ms of CPU a request here, which made the client, not the
    server, the bottleneck of a judge with 16 requests in flight. Its clients are made as before (its event
    hooks, redirects, timeout: copied from one it made), with one TLS context for the process."""
    import httpx2
    from huggingface_hub import get_async_session, set_async_client_factory

    made = get_async_session()
    set_async_client_factory(
        functools.partial(
            httpx2.AsyncClient, event_hooks=made.event_hooks, follow_redirects=made.follow_redirects,
            timeout=made.timeout, verify=httpx2.create_ssl_context(),
        )
    )  # fmt: skip


# Fields ``chat_completion`` takes by name; any other field a kind's terms hold goes in ``extra_body``.
_NAMED_FIELDS = ("model", "max_tokens", "temperature", "top_p", "presence_penalty", "frequency_penalty")


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
        # The URL as given stays private to the requests (its query may hold a token the server needs); its
        # user-info becomes the Authorization header (never a URL httpx would log). Everything else, the
        # names shown, stored and logged included, is the redacted form (serving/credentials.py).
        self._url, self._basic = credentials.split_url(url.rstrip("/"))
        self._model = model or None
        self.url = credentials.redact(self._url)
        self.model = credentials.redact(model) if model else None
        self.source = self.url + (f"#{self.model}" if self.model else "")
        # How many answers this side asks of its server at once: the setting, else what TGI's /info says it
        # takes (max_concurrent_requests; beyond it TGI answers 429), else no cap. A burst becomes a queue here.
        self.max_concurrent = max_concurrent
        self.server_cap: int | None = None
        self.active = 0
        self._gate = threading.Lock()
        self.timeout = timeout
        self.model_id: str | None = None
        self.kind: str | None = None  # learnt by probe(): the name of one of serving.kinds.KINDS
        self.version: str | None = None
        self.name = credentials.redact(name) if name else self.source

    @property
    def server(self) -> ServerKind:
        return kind_named(self.kind)

    def _authorize(self, request):
        """Every request to this side carries its own credentials (the URL's user-info), else HF_TOKEN only where
        ``credentials.sends_hf_token`` allows, else nothing: huggingface_hub would add HF_TOKEN to any URL."""
        value = self._basic or credentials.authorization(self._url)
        if value:
            request.headers["Authorization"] = value
        elif "Authorization" in request.headers:
            del request.headers["Authorization"]
        return request

    @contextlib.asynccontextmanager
    async def _session(self):
        """An inference client and its HTTP session (what chat_completion uses), which signs as ``_authorize``
        says."""
        from huggingface_hub import AsyncInferenceClient

        _share_tls()
        # provider="hf-inference": the provider under which the client speaks to a URL.
        async with AsyncInferenceClient(base_url=self._url, timeout=self.timeout, provider="hf-inference") as client:
            # The client's own httpx2 session. huggingface_hub's public get_async_session() builds a new client
            # each time: tried, it made two concurrent first streams ~0.15 s slower here.
            session = await client._get_async_client()
            session.auth = self._authorize
            yield client, session

    async def _get(self, session, route: str, timeout: float = 10) -> tuple[int, object | None]:
        """``GET route`` (after the URL's path, before its query: a token there still goes); the status and the
        JSON (None: not JSON)."""
        from huggingface_hub.utils import build_hf_headers

        parts = urlsplit(self._url)
        url = parts._replace(path=parts.path.rstrip("/") + route).geturl()
        response = await session.get(url, headers=build_hf_headers(token=False), timeout=timeout)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None

    async def probe(self) -> Status:
        """``/health``, then which server this is, from what it answers (``serving.kinds.KINDS``)."""
        import httpx2

        try:
            async with self._session() as (_, session):
                status, health = await self._get(session, "/health", timeout=self.timeout)
                if status != 200:
                    return Status(False, self.name, "/health does not answer 200 yet: warming up or unhealthy")
                routes = ("/info", "/version", "/v1/models")
                answers = await asyncio.gather(*(self._get(session, route) for route in routes))
        except (httpx2.HTTPError, OSError) as err:
            return Status(False, self.name, f"unreachable: {one_line(err) or type(err).__name__}")
        info, version, models = (body if status == 200 else None for status, body in answers)
        problem = self._learn(Probe(info=info, health=health, version=version, models=models))
        return Status(not problem, self.name, problem or self.describe())

    def _learn(self, probe: Probe) -> str | None:
        """Take the server's kind, version, model and cap from its answers; a reason it cannot serve this side."""
        kind = recognise(probe)
        self.kind, self.version = kind.name, probe.server_version()
        if kind.model_is_adapter:  # the one served model is /info's; ``model`` is an adapter on it
            self.model_id = probe.info.get("model_id") if isinstance(probe.info, dict) else None
            cap = probe.info.get("max_concurrent_requests") if isinstance(probe.info, dict) else None
            self.server_cap = cap if isinstance(cap, int) and cap > 0 else None
            return None
        ids = [m["id"] for m in probe.served()]
        if self._model is None and len(ids) > 1:
            shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
            return f"serves {len(ids)} models ({shown}): name one after # in the source"
        self.model_id = self.model or (ids[0] if ids else None)
        return None

    def describe(self) -> str:
        """The status line: what serves this side and how it takes the paper's decoding."""
        kind = self.server
        server = kind.shown + (f" {self.version}" if self.version else "")
        served = self.model_id or "an unnamed model"
        if kind.model_is_adapter and self.model:
            served = f"{served} with adapter {self.model}"
        if kind.may_ignore:
            return f"{server} serving {served}; it may ignore {', '.join(kind.may_ignore)} (not in the OpenAI API)"
        return f"{server} serving {served}; repetition penalty sent as {kind.penalty_field}, over the whole context"

    def _target(self) -> str | None:
        """The request's ``model``: on TGI an adapter id (none: the base model); elsewhere the model to use,
        named after ``#`` or the server's only one (vLLM refuses a name it does not serve)."""
        return self._model if self.server.model_is_adapter else (self._model or self.model_id)

    def decoding_record(self, decoding: Decoding) -> dict:
        kind = self.server
        sent = kind.terms(decoding, self._target())
        server = kind.name + (f" {self.version}" if self.version else "")
        return decoding_record(decoding, server, sent, kind.penalty_scope, kind.may_ignore)

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

        fields = self.server.terms(decoding, self._target())
        named = {key: fields.pop(key) for key in _NAMED_FIELDS if key in fields}
        try:
            async with self._session() as (client, _):
                chunks = await client.chat_completion(messages, stream=True, **named, extra_body=fields or None)
                async for chunk in chunks:
                    if finish is not None:
                        _note_finish(chunk, finish)
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
            raise BackendError(f"the connection to {self.url} broke: {one_line(err) or type(err).__name__}") from None


def _note_finish(chunk, finish: dict) -> None:
    if chunk.choices and chunk.choices[0].finish_reason:
        finish["reason"] = chunk.choices[0].finish_reason
    if getattr(chunk, "usage", None) and chunk.usage.completion_tokens is not None:
        finish["completion_tokens"] = chunk.usage.completion_tokens


def _http_error(err: Exception) -> BackendError:
    response = getattr(err, "response", None)
    code = getattr(response, "status_code", None)
    server_says = one_line(Exception(getattr(err, "server_message", None) or ""))
    base = _STATUS_MESSAGES.get(code, f"the server answered {code}")
    message = f"{base}: {server_says}" if server_says else base
    return BackendError(message[:400], warming_up=code == 503, status=code)
