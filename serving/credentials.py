"""Credentials a side's source may carry, and where ``HF_TOKEN`` may go.

A side given as ``https://user:password@host`` (or with ``?token=...`` in its query) must still authenticate, but
its name is shown to raters after the verdict and stored in the database, the events, the Hub copy and the
report, and error texts reach the page and the logs. So the rule is one function, applied where text leaves
``serving`` (a backend's name, source and URL, every ``BackendError`` and ``Status``) and on the app's log
handlers: ``redact``. It drops a URL's user-info (``https://user:pw@host`` -> ``https://host``), replaces every
query value (``?token=abc`` -> ``?token=***``), a ``Bearer``/``Basic`` credential, anything shaped like a Hugging
Face token (``hf_...``), the value of a ``...token=``/``api_key:``/``password=``-style pair, and every secret a
backend registered (its password, its ``Authorization`` value, ``HF_TOKEN`` itself) wherever they appear.

The credentials travel only in the ``Authorization`` header a backend builds (``authorization``): the URL's own
user-info as HTTP Basic, else ``HF_TOKEN`` as a bearer token where ``sends_hf_token`` allows it: https to a
Hugging Face host (``HF_HOSTS``), or a host the operator lists in ``HF_TOKEN_HOSTS`` (the opt-in).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
import traceback
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

MASK = "***"
# Hosts run by Hugging Face that take a Hugging Face token: the Hub and its router, Spaces, Inference Endpoints.
# Each entry matches the host itself and every subdomain (``router.huggingface.co``, ``x.hf.space``,
# ``x.us-east-1.aws.endpoints.huggingface.cloud``). The server behind a Space or an Endpoint runs its owner's
# code and may read the header: name someone else's with care (docs/arena.md).
HF_HOSTS = ("huggingface.co", "hf.co", "hf.space", "huggingface.cloud")
# The opt-in: comma-separated hosts (``host``, ``*.domain``) that receive HF_TOKEN over https too; an entry
# written ``http://host`` also over plain http (the token then crosses the network in clear).
TOKEN_HOSTS_ENV = "HF_TOKEN_HOSTS"

_URL = re.compile(r"""(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^\s/?#<>"'`]*@)?(?P<rest>[^\s<>"'`]*)""")
_QUERY_VALUE = re.compile(r"([?&;][^=&#;\s]*=)[^&#;\s]*")
_SCHEMELESS_USERINFO = re.compile(r"(?<![\w/.@:-])[^\s/@:<>\"'`]+:[^\s/@<>\"'`]+@(?=[\w\[])")
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{4,}")
_HF_TOKEN = re.compile(r"\b(hf|api_org)_[A-Za-z0-9]{8,}")
_SECRET_PAIR = re.compile(
    r"""(?ix)(?<![\w-])
    ([\w.-]*(?:token|key|secret|password|passwd|pwd|credentials?|signature|sig|auth))  # a name ending so
    (["']?\s*[=:]\s*["']?)                                                              # = or : (JSON too)
    (?!\*\*\*)([^\s&#,;'"<>)]+)"""
)
_registered: set[str] = set()
_lock = threading.Lock()


def register(*secrets: str | None) -> None:
    """Secrets ``redact`` removes wherever they appear (a password echoed in a server's error, say)."""
    with _lock:
        # Very short ones would take letters out of words; they are caught by the shape rules instead.
        _registered.update(s for s in secrets if s and len(s) >= 4)


def redact(text: str) -> str:
    """``text`` without credentials (the module docstring says which); safe to show, log and store."""
    if not text:
        return text
    with _lock:
        known = sorted(_registered, key=len, reverse=True)
    token = os.environ.get("HF_TOKEN")
    for secret in ([token] if token and len(token) >= 4 else []) + known:
        text = text.replace(secret, MASK)
    text = _URL.sub(_clean_url, text)
    text = _SCHEMELESS_USERINFO.sub("", text)
    text = _AUTH_SCHEME.sub(rf"\1\2{MASK}", text)
    text = _HF_TOKEN.sub(rf"\1_{MASK}", text)
    return _SECRET_PAIR.sub(rf"\1\2{MASK}", text)


def _clean_url(match: re.Match) -> str:
    return match["scheme"] + _QUERY_VALUE.sub(rf"\1{MASK}", match["rest"])


def split_url(url: str) -> tuple[str, str | None]:
    """``url`` without its user-info, and the ``Authorization`` value (HTTP Basic) that user-info stood for."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    basic = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    register(password, unquote(password), basic)  # as typed, decoded, and inside the header
    return parts._replace(netloc=hostport).geturl(), f"Basic {basic}"


def _host_matches(host: str, pattern: str) -> bool:
    pattern = pattern.lower().removeprefix("*.")
    return host == pattern or host.endswith("." + pattern)


def sends_hf_token(url: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether a request to ``url`` may carry ``HF_TOKEN``: https to a Hugging Face host (``HF_HOSTS``), or a
    host listed in ``HF_TOKEN_HOSTS`` (https; plain http only where the entry says ``http://``)."""
    environ = os.environ if environ is None else environ
    parts = urlsplit(url)
    host, scheme = (parts.hostname or "").lower().rstrip("."), parts.scheme.lower()
    if not host or scheme not in ("http", "https"):
        return False
    if scheme == "https" and any(_host_matches(host, known) for known in HF_HOSTS):
        return True
    for entry in filter(None, (e.strip() for e in environ.get(TOKEN_HOSTS_ENV, "").split(","))):
        plain_http = entry.lower().startswith("http://")
        pattern = entry.split("://", 1)[-1].split("/", 1)[0]
        if _host_matches(host, pattern) and (scheme == "https" or plain_http):
            return True
    return False


def authorization(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The ``Authorization`` value a request to ``url`` carries: the URL's own user-info (HTTP Basic), else
    ``HF_TOKEN`` as a bearer token where ``sends_hf_token`` allows it, else none."""
    environ = os.environ if environ is None else environ
    _, basic = split_url(url)
    if basic:
        return basic
    token = environ.get("HF_TOKEN")
    return f"Bearer {token}" if token and sends_hf_token(url, environ) else None


class RedactingFilter(logging.Filter):
    """Log records (their message, arguments and traceback) through ``redact``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return True


def redact_logs() -> None:
    """Every handler on the root logger (the app's) redacts what it writes, whoever logs it."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    redact_client_logs()


def redact_client_logs() -> None:
    """The HTTP clients' loggers redact their records (httpx logs each request's URL at INFO), whichever
    handlers a program sets up."""
    for name in ("httpx", "httpx2", "huggingface_hub"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
