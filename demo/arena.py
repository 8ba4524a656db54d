"""Conversation state of the arena, as plain data and pure functions (no Gradio, no I/O).

A conversation pairs the two configured models on sides A and B: in blind mode (the default) which model sits
on A is drawn at random per conversation, and names stay hidden until the verdict. Each side keeps its own
history, since live conversations diverge (LIMA's Figure 8).
"""

from __future__ import annotations

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
        """Messages for the model: every answered turn, then the open one's user message."""
        messages: list[dict] = []
        for turn in self.turns:
            messages.append({"role": "user", "content": turn.user})
            if turn.turn_id and not turn.error:
                messages.append({"role": "assistant", "content": turn.assistant})
        return messages

    def rateable(self) -> tuple[tuple[int, str], ...]:
        """(turn number, turn id) of each stored, successful turn: what gets a rating control."""
        return tuple((n, t.turn_id) for n, t in enumerate(self.turns, 1) if t.turn_id and not t.error)


def check_message(text: str | None) -> str:
    """The message to send, or ValueError with what is wrong with it."""
    text = (text or "").strip()
    if not text:
        raise ValueError("type a message first")
    if len(text) > MAX_MESSAGE_CHARS:
        raise ValueError(f"messages are limited to {MAX_MESSAGE_CHARS} characters (this one has {len(text)})")
    return text


_CODE = re.compile(r"(```.*?(?:```|$)|`[^`\n]*`)", re.DOTALL)
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]*)\)")


def safe_markdown(text: str) -> str:
    """Markdown that shows raw HTML as text and never loads an image, whoever wrote it (a model or a rater).

    Gradio's sanitiser already drops scripts and event handlers, but an ``<img src>`` or ``![](url)`` would
    still make the rater's browser fetch a URL the model chose. Code spans and blocks are left alone: the
    Markdown renderer escapes them itself."""
    parts = _CODE.split(text)
    for i in range(0, len(parts), 2):  # even parts are outside code
        plain = parts[i].replace("<", "&lt;")
        parts[i] = _IMAGE.sub(lambda m: f"`![{m.group(1)}]({m.group(2)})`", plain)
    return "".join(parts)


def chat_messages(side: Side, streaming: str | None = None) -> list[dict]:
    """The side's history as Gradio Chatbot messages; ``streaming`` is the partial answer of the open turn."""
    shown: list[dict] = []
    for n, turn in enumerate(side.turns, 1):
        shown.append({"role": "user", "content": safe_markdown(turn.user)})
        is_open = n == len(side.turns) and not turn.turn_id and not turn.error
        if turn.error:
            answer = (safe_markdown(turn.assistant) + "\n\n" if turn.assistant else "") + f"⚠️ **{turn.error}**"
            shown.append({"role": "assistant", "content": answer})
        elif is_open:
            shown.append({"role": "assistant", "content": safe_markdown(streaming or "") or "…"})
        else:
            shown.append({"role": "assistant", "content": safe_markdown(turn.assistant)})
    return shown


def label(side: str, name: str, conversation: Conversation | None) -> str:
    if conversation is not None and conversation.revealed:
        return f"### Model {side.upper()}: `{name}`"
    return f"### Model {side.upper()}"
