"""Conversation state of the arena, as plain data and pure functions (no Gradio, no I/O).

A conversation pairs the two configured models on sides A and B: in blind mode (the default) which model sits
on A is drawn at random per conversation, and names stay hidden until the verdict. Each side keeps its own
history, since live conversations diverge (LIMA's Figure 8).
"""

from __future__ import annotations

import html
import random
import re
import uuid
from dataclasses import dataclass, field

MAX_MESSAGE_CHARS = 4000
DEFAULT_TURN_LIMIT = 8

RATING_HELP = (
    "**Rate every answer** (LIMA's scale): **fail**: does not meet the prompt's requirements; "
    "**pass**: meets them; **excellent**: an excellent response to the prompt."
)


@dataclass
class Conversation:
    id: str
    models: tuple[int, int]  # index into the configured (left, right) models for side A and side B
    blind: bool
    verdict: str | None = None
    opener_id: str | None = None
    # Set when the rater starts another conversation: a stream still running for this one stops and writes
    # nothing more (neither into the page's state nor into the store).
    closed: bool = False

    @property
    def revealed(self) -> bool:
        return not self.blind or self.verdict is not None


def new_conversation(blind: bool, rng: random.Random | None = None) -> Conversation:
    rng = rng or random.SystemRandom()
    models = (1, 0) if blind and rng.random() < 0.5 else (0, 1)
    return Conversation(id=uuid.uuid4().hex, models=models, blind=blind)


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


def first_words(text: str, words: int = 8) -> str:
    """The start of an answer, on one line, to show beside its rating."""
    parts = text.split()
    return " ".join(parts[:words]) + (" …" if len(parts) > words else "")


def session_of(request: object) -> str:
    """Who owns what in the store: the browser (or API client) session of a Gradio request."""
    return getattr(request, "session_hash", None) or "anonymous"


def rater_of(name: str | None, request: object, default: str = "anonymous") -> str:
    """The logged-in Hugging Face user on a Space with OAuth, else the typed name, else ``default``."""
    return getattr(request, "username", None) or (name or "").strip() or default


def check_message(text: str | None) -> str:
    """The message to send, or ValueError with what is wrong with it."""
    text = (text or "").strip()
    if not text:
        raise ValueError("type a message first")
    if len(text) > MAX_MESSAGE_CHARS:
        raise ValueError(f"messages are limited to {MAX_MESSAGE_CHARS} characters (this one has {len(text)})")
    return text


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
    """``text`` with every name, path or URL that would tell which model sits on ``side`` replaced (blind mode)."""
    for secret in sorted({s for s in secrets if s and len(s) > 2}, key=len, reverse=True):
        text = text.replace(secret, f"model {side.upper()}")
    return text


def label(side: str, name: str, conversation: Conversation | None) -> str:
    if conversation is not None and conversation.revealed:
        return f"### Model {side.upper()}: `{name}`"
    return f"### Model {side.upper()}"
