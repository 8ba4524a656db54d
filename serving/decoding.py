"""What every backend speaks: the paper's decoding, what a turn records of it, and the stream's vocabulary
(a failure to show in a side's pane, a note while waiting, a side's status line).

One meaning of the repetition penalty (``PENALTY_SCOPE``): CTRL's penalty over the whole context, the prompt
and the answer so far. TGI, vLLM and transformers (``generate``, so transformers serve) all apply it that way
and none can be told otherwise, so the in-process backend does the same. Every stored turn records the
decoding as sent, in the server's terms, with that scope (``decoding_record``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from serving import credentials

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
        super().__init__(credentials.redact(message))  # it reaches the pane, the logs and the judge's stderr
        self.warming_up = warming_up
        self.status = status


@dataclass(frozen=True)
class Status:
    """A side's status line (the page's header, the start-up log); its texts are redacted as made."""

    ok: bool
    model: str
    detail: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", credentials.redact(self.model))
        object.__setattr__(self, "detail", credentials.redact(self.detail))


class Waiting(str):
    """Not answer text: a note a stream yields while its request waits for the model (the app shows it)."""


def one_line(err: BaseException) -> str:
    """An exception's first line, short enough for a pane."""
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""
