"""The arena's protocol, declared once: the rating scale, the verdicts, the sides, the limits of a conversation,
and the rules of a turn as plain functions over plain facts.

Everything else imports these. The store (``ratings.Store``) calls the rules inside its write transaction, with
the facts read from the database; the UI calls the same rules for its hints, with the facts it holds in memory;
``arena.play_turn`` calls them before anything changes. A rule returns ``None`` when the action may go on, else
the refusal as one sentence a rater can act on (lower case, no full stop: the store raises it as it is, the UI
shows it as a sentence). No Gradio, no I/O.

LIMA's protocol (arXiv 2305.11206, section 4.3 and Figure 7): every assistant turn is rated fail / pass /
excellent, then the whole conversation is judged A better / tie / B better, blind; an answer is rated before it
is asked again (a fail must not vanish by regenerating it), and a verdict is final.
"""

from __future__ import annotations

from dataclasses import dataclass


# -- the scale -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Level:
    name: str
    definition: str  # the paper's wording, shown to raters and judges
    colour: str  # the level's colour in every figure


# Worst to best: the order of a rating control and of every table. Figure 7 stacks them best first (``BEST_FIRST``).
SCALE = (
    Level("fail", "the response does not meet the requirements of the prompt", "#c62828"),
    Level("pass", "the response meets the requirements of the prompt", "#f9a825"),
    Level("excellent", "the model provides an excellent response to the prompt", "#2e7d32"),
)
RATINGS = tuple(level.name for level in SCALE)
BEST_FIRST = tuple(reversed(RATINGS))
COLOURS = {level.name: level.colour for level in SCALE}
RATING_HELP = (
    "**Rate every answer** (LIMA's scale): "
    + "; ".join(f"**{level.name}**: {level.definition}" for level in SCALE)
    + "."
)

# -- sides, verdicts, purposes -------------------------------------------------------------------------------
SIDES = ("a", "b")
VERDICTS = ("a", "b", "tie")
VERDICT_SAID = {"a": "A is better", "b": "B is better", "tie": "a tie"}
ORDERS = ("ab", "ba")  # a pairwise judgment: which side was shown first, as "A"
# What a conversation is for: only a person's blind ``arena`` conversations make Figure 7.
PURPOSES = ("arena", "autoplay", "checkpoints")
# A prompt study's safety label (LIMA section 4.3: "answered safely"), and whether the answer declined the request.
SAFETY = ("safe", "unsafe")
# A model judge rates under a session (and name) of its own, judge:<model>: the report tells its ratings from a
# person's by this prefix.
JUDGE_PREFIX = "judge:"

# -- limits of one conversation ------------------------------------------------------------------------------
MAX_MESSAGE_CHARS = 4000
DEFAULT_TURN_LIMIT = 8


def check_message(text: str | None) -> str:
    """The message to send, or ValueError with what is wrong with it."""
    text = (text or "").strip()
    if not text:
        raise ValueError("type a message first")
    if len(text) > MAX_MESSAGE_CHARS:
        raise ValueError(f"messages are limited to {MAX_MESSAGE_CHARS} characters (this one has {len(text)})")
    return text


# -- the rules -----------------------------------------------------------------------------------------------
def turn_refusal(*, judged: bool, busy: bool, turns: int, turn_limit: int | None) -> str | None:
    """May a side start a new turn? ``turns``: the turns that side already has."""
    if judged:  # judged and unblinded: further turns would not be blind
        return "this conversation has its verdict: start a new one"
    if busy:
        return "this model is still answering"
    if turn_limit is not None and turns >= turn_limit:
        return f"this conversation reached its limit of {turn_limit} turns: start a new one"
    return None


def regenerate_refusal(
    *, judged: bool, busy: bool, has_turn: bool, last_complete: bool, last_rated: bool, rate_every_turn: bool
) -> str | None:
    """May a side's last answer be asked again? A failed answer may always be retried; a complete one only once
    it is rated, when every answer is rated (a fail must not vanish by asking again)."""
    if judged:
        return "this conversation has its verdict: start a new one"
    if busy:
        return "this model is still answering"
    if not has_turn:
        return "nothing to regenerate yet"
    if rate_every_turn and last_complete and not last_rated:
        return "rate this answer before regenerating it: every answer is rated"
    return None


def verdict_refusal(
    *,
    judged: bool,
    unrated: list[tuple[str, int]],
    rated_sides: set[str],
    rate_every_turn: bool,
    busy: bool = False,
) -> str | None:
    """What still blocks the verdict: ``unrated`` is (side, turn index) of every shown answer not rated by its
    owner, ``rated_sides`` the sides with at least one owner's rating, ``busy`` whether an answer is still
    streaming (the store cannot know: it holds finished turns only)."""
    if judged:
        return "this conversation already has its verdict: verdicts are final"
    if busy:  # the answer on its way is one more to rate, and a verdict now would refuse to store it
        return "wait for the answer still streaming, then rate it"
    if rate_every_turn and unrated:
        shown = ", ".join(f"{side.upper()} {index}" for side, index in unrated[:6])
        return f"rate every answer before the verdict (still unrated: {shown})"
    if set(rated_sides) != set(SIDES):
        return "rate at least one answer on each side before giving a verdict"
    return None
