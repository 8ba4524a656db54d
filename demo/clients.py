"""Who a request comes from, decided by the server: its session, its client, and whether it came from the public.

- **Session**: what owns conversations in the store. Gradio's ``session_hash`` is a string the client chose, so
  the store never sees it verbatim: it is an HMAC under a per-process secret (``arena.session_of``). No client
  can name another's session, the model judge's (``judge:<model>``) or a reviewer's (``review:<name>``), and a
  request without a session is refused rather than lumped in with every other such request.
- **Client**: what a limit counts against besides the session: the Hugging Face user (OAuth), else the address
  the last trusted proxy saw. ``X-Forwarded-For`` is read only when the request's peer is a trusted proxy (on a
  Space: the platform's, whatever its address; elsewhere ``--trusted-proxies``, loopback by default), and then
  right to left, past the trusted hops: the entries further left are whatever the client wrote. An IPv6 client
  counts by its /64, which one subscriber usually holds whole.
- **Public**: a Space, ``--share`` or a host beyond loopback make every request public; so does a request that
  came through a proxy or a tunnel (forwarded headers, a ``Host`` that is not loopback, a peer that is not),
  even when the app listens on 127.0.0.1 only.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from demo import arena

if TYPE_CHECKING:
    import gradio as gr

LOOPBACK = ("127.0.0.0/8", "::1/128")
# Where a Space's platform proxies live: its peer is always one; the hops it adds before it are private.
PLATFORM = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fe80::/10", *LOOPBACK)
FORWARDED = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip", "via")
MAX_HOP_CHARS = 64

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(spec: str | Iterable[str] | None) -> tuple[Network, ...]:
    """``"127.0.0.1, 10.0.0.0/8"`` (or a list) as networks; a mistake raises ValueError naming the entry."""
    items = spec.split(",") if isinstance(spec, str) else list(spec or ())
    parsed = []
    for item in (i.strip() for i in items):
        if item:
            try:
                parsed.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an address or a network (CIDR)") from None
    return tuple(parsed)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _header(request: object, name: str) -> str | None:
    headers = getattr(request, "headers", None)
    try:
        return headers.get(name) if headers is not None else None
    except Exception:  # a header that is not text: treated as present, never trusted
        return ""


def _peer(request: object) -> str | None:
    client = getattr(request, "client", None)
    return getattr(client, "host", None)


def _local_host(host: str) -> bool:
    name = host.strip().lower()
    if name.startswith("["):  # [v6] or [v6]:port
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":")[0]
    address = _address(name)
    return name == "localhost" or (address is not None and address.is_loopback)


class Gate:
    """The arena's decision about requests: public or private (``public`` as configured, and per request), and
    who the client is; ``proxies``: whose ``X-Forwarded-For`` is believed (ignored on a Space, whose proxy
    is always believed)."""

    def __init__(self, public: bool = False, proxies: str | Iterable[str] = LOOPBACK, space: bool | None = None):
        self.public = public
        self.space = bool(os.environ.get("SPACE_ID")) if space is None else space
        self.proxies = networks(PLATFORM if self.space else proxies)

    def is_public(self, request: object) -> bool:
        """Public unless clearly local: configured so, or the request came through a proxy or a tunnel."""
        if self.public or request is None:
            return True
        if any(_header(request, name) is not None for name in FORWARDED):
            return True
        host = _header(request, "host")
        peer = _address(_peer(request) or "")
        return host is None or not _local_host(host) or peer is None or not peer.is_loopback

    def _trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        return address is not None and any(address in network for network in self.proxies)

    def address(self, request: object) -> str | None:
        """The client's address: the peer, unless the peer is a trusted proxy; then the right-most hop of
        ``X-Forwarded-For`` that is not a trusted proxy (the left-most when all are)."""
        peer = _peer(request)
        hops = [hop.strip() for hop in (_header(request, "x-forwarded-for") or "").split(",") if hop.strip()]
        client = peer
        if self.space or self._trusted(_address(peer or "")):
            for hop in reversed(hops):
                client = hop
                if not self._trusted(_address(hop)):
                    break
        address = _address(client or "")
        if address is None:
            return (client or "")[:MAX_HOP_CHARS] or None
        if address.version == 6:
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        return str(address)

    def client(self, request: object) -> str | None:
        """What a client's limits count against: ``user:<name>`` (OAuth), else ``address:<ip>``."""
        user = getattr(request, "username", None)
        if isinstance(user, str) and user:
            return f"user:{user}"
        address = self.address(request)
        return f"address:{address}" if address else None

    def keys(self, request: object, session: str) -> list[str]:
        """What a limit counts against: the session, and for a public request also the client."""
        keys = [f"session:{session}"]
        if self.is_public(request) and (client := self.client(request)):
            keys.append(client)
        return keys


def refusal(text: str) -> gr.Error:
    """A client's request refused: said to the client, and no traceback in the log (a script can send many)."""
    import gradio as gr  # here: the app's settings are checked before Gradio's import (seconds) is paid

    return gr.Error(text, print_exception=False)


def session(request: object) -> str:
    """``arena.session_of`` for a handler: a request without a usable session is refused."""
    try:
        return arena.session_of(request)
    except arena.NoSession as err:
        raise refusal(str(err)) from None


def rater(name: object, request: object, default: str = "anonymous") -> str:
    """``arena.rater_of`` for a handler: a name that cannot be a rater's is refused."""
    try:
        return arena.rater_of(name, request, default)
    except ValueError as err:
        raise refusal(str(err)) from None
