"""The arena's conversations and their turns: state as plain data, and a turn as a stream of events.

A conversation pairs the two configured models on sides A and B: in blind mode (the default) which model sits
on A is drawn at random per conversation, and names stay hidden until the verdict. Each side keeps its own
history, since live conversations diverge (LIMA's Figure 8).

``play_turn`` is one side's turn, from the rater's message to the stored answer, as events (``Started``,
``Chunk``, ``Waiting``, ``Retrying``, ``Stored``, ``Failed``, ``Refused``): the app maps them to components,
autoplay (``demo.judge``) reads them to the end. Whether the turn may happen at all is decided before anything
changes, in memory or in the store (``protocol``'s rules, then the rate limit), so a refused turn leaves no trace.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import logging
import math
import random
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from demo import limits, protocol, ratings, retry
from serving import backends

log = logging.getLogger(__name__)


@dataclass
class TurnView:
    user: str
    assistant: str = ""
    turn_id: str | None = None  # set once the finished turn is stored
    error: str | None = None


@dataclass
class Side:
    """One side's history; ``busy`` while an answer streams, so a second send on that side waits its turn."""

    turns: list[TurnView] = field(default_factory=list)
    busy: bool = False

    def history(self) -> list[dict]:
        """Messages for the model: every answered turn, then the open one's user message. A turn that failed
        (and was not retried) is left out, so user and assistant still alternate."""
        messages: list[dict] = []
        for n, turn in enumerate(self.turns, 1):
            if turn.turn_id and not turn.error:
                messages.append({"role": "user", "content": turn.user})
                messages.append({"role": "assistant", "content": turn.assistant})
            elif n == len(self.turns) and not turn.turn_id:
                messages.append({"role": "user", "content": turn.user})
        return messages

    def rateable(self) -> tuple[tuple[int, str, str], ...]:
        """(turn number, turn id, the answer's first words) of each stored, successful turn: what gets a rating
        control, labelled with the start of the answer it rates."""
        return tuple(
            (n, t.turn_id, first_words(t.assistant)) for n, t in enumerate(self.turns, 1) if t.turn_id and not t.error
        )


def _fresh_sides() -> dict[str, Side]:
    return {key: Side() for key in protocol.SIDES}


@dataclass
class Conversation:
    """Both sides of one conversation, its verdict, and its generation: starting over (``restart``) moves the
    generation on, so a stream still running for the old one writes nothing more, neither here nor in the store."""

    id: str
    models: tuple[int, int]  # index into the configured (left, right) models for side A and side B
    blind: bool
    names: tuple[str, str] = ("", "")  # the models on A and B, as the store names them
    purpose: str = "arena"
    verdict: str | None = None
    opener_id: str | None = None
    sides: dict[str, Side] = field(default_factory=_fresh_sides)
    generation: int = 0

    @property
    def revealed(self) -> bool:
        return not self.blind or self.verdict is not None

    @property
    def busy(self) -> bool:
        return any(side.busy for side in self.sides.values())

    def restart(self, rng: random.Random | None = None, configured: Sequence[str] = ("", "")) -> None:
        """A new conversation in place of this one (same page, same state), with its own draw of sides."""
        fresh = new_conversation(self.blind, rng, configured, self.purpose)
        fresh.generation = self.generation + 1
        self.__dict__.update(fresh.__dict__)


def new_conversation(
    blind: bool, rng: random.Random | None = None, configured: Sequence[str] = ("", ""), purpose: str = "arena"
) -> Conversation:
    """``configured``: the (left, right) models' names; in blind mode which one sits on A is drawn."""
    rng = rng or random.SystemRandom()
    models = (1, 0) if blind and rng.random() < 0.5 else (0, 1)
    names = (configured[models[0]], configured[models[1]])
    return Conversation(id=uuid.uuid4().hex, models=models, blind=blind, names=names, purpose=purpose)


def first_words(text: str, words: int = 8) -> str:
    """The start of an answer, on one line, to show beside its rating."""
    parts = text.split()
    return " ".join(parts[:words]) + (" …" if len(parts) > words else "")


# Sessions are the server's: a keyed hash of Gradio's session_hash under a secret of this process, so a client
# cannot choose the string the store keys on (a judge's ``judge:<model>``, a reviewer's ``review:<name>``).
_SESSION_KEY = secrets.token_bytes(32)
MAX_SESSION_HASH_CHARS = 128
MAX_RATER_CHARS = 80
RESERVED_RATERS = (protocol.JUDGE_PREFIX, "review:")  # the model judge's namespace, and a reviewer's
# The decoding sliders' ranges (the page's and the API's): (low, high) for each value, inclusive.
DECODING_RANGES = {"temperature": (0.0, 2.0), "top_p": (0.05, 1.0), "repetition_penalty": (1.0, 2.0)}
_TURN_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


class NoSession(ValueError):
    """A request that carries no usable session: it may not write or read anything of anyone's."""


def session_of(request: object) -> str:
    """Who owns what in the store: the server's name for the browser's (or API client's) Gradio session."""
    return server_session(getattr(request, "session_hash", None))


def server_session(raw: object) -> str:
    """The server's name for a Gradio ``session_hash`` (a keyed hash: a client cannot choose another's)."""
    if not isinstance(raw, str) or not raw or len(raw) > MAX_SESSION_HASH_CHARS:
        raise NoSession("this request carries no session: reload the page (API clients: send a session_hash)")
    return "s" + hmac.new(_SESSION_KEY, raw.encode(), hashlib.sha256).hexdigest()[:32]


def rater_of(name: object, request: object, default: str = "anonymous") -> str:
    """The logged-in Hugging Face user on a Space with OAuth, else the typed name, else ``default``. A typed name
    is text of at most ``MAX_RATER_CHARS`` characters on one line, and not in the judge's or a reviewer's
    namespace; anything else raises ValueError."""
    user = getattr(request, "username", None)
    if isinstance(user, str) and user:
        return user
    if name is None:
        return default
    if not isinstance(name, str):
        raise ValueError("a rater's name is text")
    name = " ".join(name.split())
    if len(name) > MAX_RATER_CHARS:
        raise ValueError(f"a rater's name has at most {MAX_RATER_CHARS} characters")
    if not name.isprintable():
        raise ValueError("a rater's name is printable text")
    if name.lower().startswith(RESERVED_RATERS):
        raise ValueError(f"a rater's name may not start with {' or '.join(RESERVED_RATERS)}")
    return name or default


def check_decoding(
    temperature: object, top_p: object, penalty: object, max_tokens: object, most: int
) -> backends.Decoding:
    """The decoding a page or an API client asked for, within the sliders' ranges (``most``: the token cap), or
    ValueError saying which value is wrong."""
    values = {}
    for (key, (low, high)), value in zip(DECODING_RANGES.items(), (temperature, top_p, penalty), strict=True):
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise ValueError(f"{key} must be a number from {low} to {high}")
        values[key] = float(value)
    tokens_ok = isinstance(max_tokens, int | float) and not isinstance(max_tokens, bool)
    if not tokens_ok or not math.isfinite(max_tokens) or max_tokens != int(max_tokens) or not 1 <= max_tokens <= most:
        raise ValueError(f"max new tokens must be a whole number from 1 to {most}")
    return backends.Decoding(values["temperature"], values["top_p"], values["repetition_penalty"], int(max_tokens))


def check_turn_id(turn_id: object) -> str:
    """A turn id as the store writes them (hex), or ValueError."""
    if not isinstance(turn_id, str) or not _TURN_ID.fullmatch(turn_id):
        raise ValueError("this turn does not belong to your session")
    return turn_id


_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
# a code span as CommonMark pairs them: equal runs of backticks, the first not escaped, within one paragraph
_CODE_SPAN = re.compile(r"(?<![\\`])(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.DOTALL)
_UNSAFE = re.compile(r"!\[[^\]\n]*\]\([^)\n]*\)|!\[|<")
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]()!~|:.@])")  # with `:.@`: no autolinks inside


def safe_markdown(text: str) -> str:
    """Markdown that shows raw HTML as text and never loads an image, whoever wrote it (a model or a rater).

    Gradio's sanitiser already drops scripts and event handlers, but an ``<img src>`` or ``![](url)`` would
    still make the rater's browser fetch a URL the model chose. Safe by construction, not by agreeing with the
    browser's Markdown parser on every corner (an escaped or unmatched backtick, a link destination, an unclosed
    fence): outside code every ``<`` becomes ``&lt;`` and every ``![`` loses its image meaning; a fenced block is
    re-emitted as a top-level fence that no renderer can read otherwise; inline code holding ``<`` or ``![``
    becomes an HTML ``<code>`` element with escaped content. Other code is left as it is."""
    chunks: list[str] = []
    prose: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening or (opening[2][0] == "`" and "`" in opening[3]):  # CommonMark: not a fence
            prose.append(lines[i])
            i += 1
            continue
        indent, fence, info = len(opening[1]), opening[2], opening[3]
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        body = []
        i += 1
        while i < len(lines) and not closing.match(lines[i]):
            body.append(re.sub(rf"^ {{0,{indent}}}", "", lines[i]))
            i += 1
        if i < len(lines):
            i += 1  # past the closing fence
        elif body and not body[-1]:  # unclosed: the text's final newline stays after the fence we add
            body.pop()
            i -= 1
        if prose:
            chunks.append(_safe_prose("\n".join(prose)))
            if prose[-1].strip():
                chunks.append("")  # a blank line first, so no list item or quote above can claim the fence
            prose = []
        runs = re.findall(re.escape(fence[0]) + "+", "\n".join(body))
        fence = fence[0] * max([len(fence), *(len(run) + 1 for run in runs)])  # longer than any run inside
        chunks += [fence + info.strip(), *body, fence]
    if prose:
        chunks.append(_safe_prose("\n".join(prose)))
    return "\n".join(chunks)


def _safe_prose(text: str) -> str:
    out, done = [], 0
    for span in _CODE_SPAN.finditer(text):
        out.append(_UNSAFE.sub(_defuse, text[done : span.start()]))
        code = span[2]
        out.append(_code_element(code) if "<" in code or "![" in code else span[0])
        done = span.end()
    out.append(_UNSAFE.sub(_defuse, text[done:]))
    return "".join(out)


def _defuse(match: re.Match) -> str:
    if match[0] == "<":
        return "&lt;"
    if match[0] == "![":
        return "!\\["
    return _code_element(match[0])  # a whole image: shown as its Markdown, in code


def _code_element(code: str) -> str:
    code = code.replace("\n", " ")
    if code.startswith(" ") and code.endswith(" ") and code.strip():
        code = code[1:-1]
    return "<code>" + _MARKDOWN_PUNCTUATION.sub(r"\\\1", html.escape(code, quote=False)) + "</code>"


def chat_messages(side: Side, streaming: str | None = None) -> list[dict]:
    """The side's history as Gradio Chatbot messages; ``streaming`` is the partial answer of the open turn."""
    shown: list[dict] = []
    for n, turn in enumerate(side.turns, 1):
        shown.append({"role": "user", "content": safe_markdown(turn.user)})
        is_open = n == len(side.turns) and not turn.turn_id and not turn.error
        if turn.error:
            partial = safe_markdown(turn.assistant) + "\n\n" if turn.assistant else ""
            answer = partial + f"⚠️ **{safe_markdown(turn.error)}**"
            shown.append({"role": "assistant", "content": answer})
        elif is_open:
            shown.append({"role": "assistant", "content": safe_markdown(streaming or "") or "…"})
        else:
            shown.append({"role": "assistant", "content": safe_markdown(turn.assistant)})
    return shown


def redact(text: str, secrets: list[str], side: str) -> str:
    """``text`` without credentials (``serving/credentials.py``), and with every name, path or URL that would tell
    which model sits on ``side`` replaced (blind mode)."""
    text = backends.redact(text)
    for secret in sorted({s for s in secrets if s and len(s) > 2}, key=len, reverse=True):
        text = text.replace(secret, f"model {side.upper()}")
    return text


def label(side: str, name: str, conversation: Conversation | None) -> str:
    if conversation is not None and conversation.revealed:
        return f"### Model {side.upper()}: `{backends.redact(name)}`"
    return f"### Model {side.upper()}"


def secrets_of(backend: object) -> list[str]:
    """What would name the model behind a side: its name, source, URL, served model id (as shown: redacted)."""
    keys = ("name", "source", "url", "model", "model_id")
    return [backends.redact(str(getattr(backend, key, "") or "")) for key in keys]


def shown_error(text: str, backend: object, side: str, conversation: Conversation) -> str:
    """An error as the rater may see it: never with a credential; in blind mode, without anything that names
    the side's model."""
    return backends.redact(text) if conversation.revealed else redact(text, secrets_of(backend), side)


# -- a turn, as a stream of events -------------------------------------------------------------------------
class Backend(Protocol):
    """What a side's model must offer (``backends.LocalBackend``, ``backends.RemoteBackend``): a stream of text
    chunks (and ``backends.Waiting`` notes), raising ``backends.BackendError`` when it fails."""

    name: str

    def stream(self, messages: list[dict], decoding: backends.Decoding) -> AsyncIterator[str]: ...

    def decoding_record(self, decoding: backends.Decoding) -> dict: ...


@dataclass(frozen=True)
class Event:
    """Something that happened in one side's turn."""

    side: str


@dataclass(frozen=True)
class Started(Event):
    """The turn began: ``user`` is on the side (a regenerated answer has left it), the side is busy."""

    user: str


@dataclass(frozen=True)
class Chunk(Event):
    text: str  # what just arrived
    answer: str  # the answer so far


@dataclass(frozen=True)
class Note(Event):
    """A line to show in place of the answer while there is none yet."""

    note: str


class Waiting(Note):
    """Queued behind other raters' answers (only before the answer's first text)."""


class Retrying(Note):
    """The server is warming up: it is asked again after a wait (the note says how long, and which try)."""


@dataclass(frozen=True)
class Stored(Event):
    turn: ratings.Turn


@dataclass(frozen=True)
class Failed(Event):
    """The model failed; the failure is stored as that turn (in full) and may be retried."""

    error: str  # as the rater may see it (``shown_error``)
    turn: ratings.Turn


@dataclass(frozen=True)
class Refused(Event):
    """The turn did not happen, and nothing of it is kept; ``limit``: refused by a rate limit, not a rule."""

    reason: str
    limit: bool = False


@dataclass
class _Answer:
    """What one turn's stream produced, for the store."""

    started: float = field(default_factory=time.time)
    text: str = ""
    chunks: int = 0  # a streamed chunk is a token, on TGI and in-process: what the token limit counts
    first_token_s: float | None = None
    error: str | None = None


async def play_turn(
    conversation: Conversation,
    side_key: str,
    message: str | None,
    *,
    backend: Backend,
    decoding: backends.Decoding,
    store: ratings.Store,
    session: str,
    rater: str,
    regenerate: bool = False,
    turn_limit: int | None = protocol.DEFAULT_TURN_LIMIT,
    caps: limits.Limits | None = None,
    keys: Sequence[str] = (),
    warmup: retry.WarmUp = retry.WARMUP,
) -> AsyncIterator[Event]:
    """One side answers ``message`` (or, with ``regenerate``, its last message again) with its own history; the
    turn is stored under ``session`` as ``rater``'s. Refusals come first and change nothing; then ``Started``,
    the answer as ``Chunk`` events, and ``Stored`` or ``Failed``. If the conversation starts over meanwhile
    (its generation moves on), the stream ends without another event and writes nothing."""
    side, generation = conversation.sides[side_key], conversation.generation
    last_rated = await _last_rated(store, side) if regenerate else False
    if conversation.generation != generation:
        return
    refusal = _refusal(conversation, side, message, regenerate, last_rated, store.rate_every_turn, turn_limit)
    if refusal is None and caps is not None:
        try:  # the last check, as it counts the turn
            caps.start_turn(list(keys))
        except limits.LimitReached as err:
            yield Refused(side_key, str(err), limit=True)
            return
    if refusal is not None:
        yield Refused(side_key, refusal)
        return
    # Nothing above changed anything; from here on, with no await in between, the turn is the side's.
    text = side.turns.pop().user if regenerate else protocol.check_message(message)
    turn = TurnView(user=text)
    side.turns.append(turn)
    side.busy = True
    answer, outcome = _Answer(), None
    try:
        yield Started(side_key, text)
        await asyncio.to_thread(
            store.ensure_conversation, conversation.id, session, *conversation.names, conversation.blind, rater,
            conversation.opener_id, conversation.purpose,
        )  # fmt: skip
        async for event in _stream(conversation, generation, side_key, side, backend, decoding, warmup, answer):
            yield event
        if conversation.generation != generation:
            return
        outcome = await _store(conversation, side_key, side, turn, backend, decoding, store, session, answer)
    finally:
        side.busy = False
        if caps is not None:
            caps.generated(answer.chunks)
    if conversation.generation == generation:
        yield outcome


async def _last_rated(store: ratings.Store, side: Side) -> bool:
    last = side.turns[-1] if side.turns else None
    if last is None or not last.turn_id or last.error:
        return False
    return last.turn_id in await asyncio.to_thread(store.ratings_of, [last.turn_id])


def _refusal(
    conversation: Conversation,
    side: Side,
    message: str | None,
    regenerate: bool,
    last_rated: bool,
    rate_every_turn: bool,
    turn_limit: int | None,
) -> str | None:
    judged = conversation.verdict is not None
    if regenerate:
        last = side.turns[-1] if side.turns else None
        return protocol.regenerate_refusal(
            judged=judged,
            busy=side.busy,
            has_turn=last is not None,
            last_complete=last is not None and bool(last.turn_id) and not last.error,
            last_rated=last_rated,
            rate_every_turn=rate_every_turn,
        )
    refusal = protocol.turn_refusal(judged=judged, busy=side.busy, turns=len(side.turns), turn_limit=turn_limit)
    if refusal is None:
        try:
            protocol.check_message(message)
        except ValueError as err:
            return str(err)
    return refusal


async def _stream(
    conversation: Conversation,
    generation: int,
    side_key: str,
    side: Side,
    backend: Backend,
    decoding: backends.Decoding,
    warmup: retry.WarmUp,
    answer: _Answer,
) -> AsyncIterator[Event]:
    """The answer's events, recorded into ``answer``; a failure ends it as ``answer.error``."""
    try:
        async for item in warmup.stream(lambda: backend.stream(side.history(), decoding)):
            if conversation.generation != generation:  # the rater moved on: stop asking the model
                return
            if isinstance(item, retry.Retry):
                yield Retrying(side_key, shown_error(str(item), backend, side_key, conversation))
            elif isinstance(item, backends.Waiting):
                if not answer.text:
                    yield Waiting(side_key, str(item))
            else:
                if answer.first_token_s is None:
                    answer.first_token_s = time.time() - answer.started
                answer.text += item
                answer.chunks += 1
                yield Chunk(side_key, item, answer.text)
    except backends.BackendError as err:
        answer.error = str(err)
    except Exception as err:  # a bug or an unforeseen failure: still that side's error, not a hang
        log.exception("side %s (%s) failed", side_key, backend.name)
        said = str(err).splitlines()[0] if str(err) else type(err).__name__
        answer.error = backends.redact(f"unexpected error: {said}")  # the store and the Hub keep it: no secrets


async def _store(
    conversation: Conversation,
    side_key: str,
    side: Side,
    turn: TurnView,
    backend: Backend,
    decoding: backends.Decoding,
    store: ratings.Store,
    session: str,
    answer: _Answer,
) -> Event:
    """The finished turn into the store (off the event loop: a write never stalls other streams), then into the
    side's history; refused by the store (a verdict came meanwhile), the turn leaves the side."""
    try:
        stored = await asyncio.to_thread(
            store.add_turn, conversation.id, session, side_key, len(side.turns), backend.name, turn.user,
            answer.text, backend.decoding_record(decoding), answer.started, answer.first_token_s,
            status="error" if answer.error else "complete", error=answer.error,
        )  # fmt: skip
    except ratings.NotAllowed as err:
        side.turns.remove(turn)
        return Refused(side_key, str(err))
    turn.turn_id, turn.assistant = stored.id, answer.text
    if answer.error is None:
        return Stored(side_key, stored)
    turn.error = shown_error(answer.error, backend, side_key, conversation)  # the store keeps the full text
    return Failed(side_key, turn.error, stored)
