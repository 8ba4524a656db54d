"""Where each side's answers come from: a model run in this process, or a TGI / OpenAI-compatible server.

Both kinds stream text chunks through the same async interface, so the arena never knows which it talks to:

- ``LocalBackend`` (``serving/local.py``): a servable model directory (contract 2) or a Hub id, loaded with
  transformers and generated in batches (``serving/batching.py``, ``serving/sampling.py``).
- ``RemoteBackend`` (``serving/servers.py``): an ``http(s)://`` URL; the probe learns which kind of server it is
  (``serving/kinds.py``: TGI, vLLM, transformers serve, or another OpenAI-compatible one) and each request tells
  that server the paper's decoding in its own terms.

This module is the one callers import (``from serving import backends``): it chooses a backend for a side's
source and names everything a caller uses (``serving/decoding.py``: ``Decoding``, ``BackendError``,
``Waiting``, ``Status``, ``TOTAL_TOKEN_BUDGET``...). Every failure a rater can meet (unreachable, warming up,
overloaded, timeout, a server error) is raised as a ``BackendError`` whose message is one line fit to show in
that side's pane, with no credential in it (``serving/credentials.py``: the one redaction rule, and where
``HF_TOKEN`` may be sent).
"""

from __future__ import annotations

from serving.credentials import redact, redact_logs, sends_hf_token
from serving.decoding import (
    PENALTY_SCOPE,
    TOTAL_TOKEN_BUDGET,
    BackendError,
    Decoding,
    Status,
    Waiting,
    decoding_record,
)
from serving.kinds import KINDS, ServerKind
from serving.local import LocalBackend
from serving.servers import RemoteBackend

__all__ = [
    "KINDS",
    "PENALTY_SCOPE",
    "TOTAL_TOKEN_BUDGET",
    "BackendError",
    "Decoding",
    "LocalBackend",
    "RemoteBackend",
    "ServerKind",
    "Status",
    "Waiting",
    "decoding_record",
    "make_backend",
    "parse_source",
    "redact",
    "redact_logs",
    "sends_hf_token",
]


def parse_source(spec: str) -> tuple[str | None, str]:
    """``NAME=SOURCE`` names a side for the report; a bare ``SOURCE`` is named after what it serves. The name is
    redacted (it is shown and stored); the source keeps its credentials for the backend to use, and a backend
    names itself after the source's redacted form (``serving/credentials.py``)."""
    name, sep, source = spec.partition("=")
    if sep and name and not any(ch in name for ch in "/:\\"):
        return redact(name.strip()), source.strip()
    return None, spec.strip()


def make_backend(spec: str, concurrency: int | None = None, **kwargs) -> LocalBackend | RemoteBackend:
    """``concurrency``: answers at once: in-process, the batch size (default 8); for a server, how many it is
    asked at once (default: what TGI's /info says it takes, else no cap)."""
    name, source = parse_source(spec)
    if source.startswith(("http://", "https://")):
        url, _, model = source.partition("#")  # the fragment names one of the server's models
        return RemoteBackend(url, name=name, model=model.strip() or None, max_concurrent=concurrency)
    return LocalBackend(source, name=name, **({"max_batch": concurrency} if concurrency else {}), **kwargs)
