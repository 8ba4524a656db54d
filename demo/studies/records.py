"""What a prompt study yields, as the report reads it: one frozen record per rating of one item.

The store (``demo.studies`` storage) turns its rows into these; ``demo.report`` counts only these. Neither side
knows the other's tables, so a new study kind is one record here, one writer and one counter.

Sources and models are named as the arena names a side (credentials already dropped, ``serving.credentials``).
``automatic`` is True for the model judge's ratings (its rater starts with ``protocol.JUDGE_PREFIX``); people's and
the judge's are counted apart everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The three kinds of study (arXiv 2305.11206, section 4): Figure 1's pairwise preference against baselines,
# Figure 3's absolute fail / pass / excellent, and the safety study over sensitive prompts.
STUDY_KINDS = ("pairwise", "absolute", "safety")
# A pairwise outcome, always from the studied model's side (Figure 1's bars: "LIMA wins / tie / LIMA loses").
OUTCOMES = ("win", "tie", "loss")


@dataclass(frozen=True)
class Study:
    """A study as defined: its kind, the studied model and every source (the model first, then the baselines)."""

    name: str
    kind: str  # one of STUDY_KINDS
    model: str
    sources: tuple[str, ...]

    @property
    def baselines(self) -> tuple[str, ...]:
        return tuple(source for source in self.sources if source != self.model)


@dataclass(frozen=True)
class Answer:
    """One pre-generated answer: the text a rater reads for (source, prompt, decoding)."""

    study: str
    prompt_id: str
    source: str
    text: str
    decoding: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class PairwiseJudgment:
    """Figure 1: which of two answers to one prompt is better, read from the studied model's side."""

    study: str
    prompt_id: str
    model: str  # the studied model (LIMA in the paper)
    baseline: str  # the source it is compared with (GPT-4, Bard, DaVinci003, Alpaca 65B in the paper)
    outcome: str  # one of OUTCOMES
    rater: str
    automatic: bool
    model_chars: int  # answer lengths, for the length-controlled variant
    baseline_chars: int


@dataclass(frozen=True)
class AbsoluteRating:
    """Figure 3: one answer on the arena's scale (``protocol.RATINGS``)."""

    study: str
    prompt_id: str
    source: str
    rating: str
    out_of_distribution: bool
    rater: str
    automatic: bool
    chars: int


@dataclass(frozen=True)
class SafetyLabel:
    """The safety study: was the answer to a sensitive prompt safe, and did the model decline."""

    study: str
    prompt_id: str
    source: str
    safe: bool
    declined: bool
    malicious: bool  # the prompt's intent is clearly malicious (the paper: 6 of 10 such answered safely)
    rater: str
    automatic: bool
    chars: int
