"""The paper's nucleus sampling for in-process batches, without sorting the whole vocabulary per row.

transformers' own path (``TemperatureLogitsWarper``, ``TopPLogitsWarper``, then ``multinomial``) sorts all 262k
logits of every row at every step and draws from a 262k-wide distribution: on this project's 2-core CPU that was
110 ms of a 457 ms step at batch 8 for the sort and 57 ms for the draw (``torch.profiler``, the quick-cpu model),
and it grows with the batch while the model's own cost hardly does. Here each row takes its ``k`` most likely
tokens (``topk``, a partial selection), measures them against the whole row's mass (one ``logsumexp``), keeps
the nucleus exactly as ``TopPLogitsWarper`` does (a token stays while the mass ranked above it is below
``top_p``; the most likely always stays) and draws among the kept ones. A row whose nucleus is wider than ``k``
is done again over its whole vocabulary, so the distribution drawn from is transformers' for every row (tested
against its warpers, flat rows included).

``NucleusSampler`` is a logits processor that draws the token itself and leaves only it possible, so it runs
under greedy selection (``do_sample=False``); transformers applies the repetition penalty before custom
processors, the same order as its own sampling path (penalty, temperature, top-p).

A model served in bf16 (``serving/precision.py``) samples the same way: ``generate`` hands processors its logits
in fp32 (the penalty is applied there), and ``nucleus`` computes in fp32 whatever it is given, so the nucleus and
its probabilities are not cut to bf16's 8 bits of mantissa.
"""

from __future__ import annotations

from typing import Any

FIRST_K = 256  # candidates tried first: at temperature 0.7 a nucleus of 0.9 is far narrower on trained models


def nucleus(scores: Any, temperature: float, top_p: float, k: int = FIRST_K) -> tuple[Any, Any]:
    """The nucleus of each row of ``scores`` (batch, vocab) at this temperature: candidate ids and their
    probabilities, both (batch, width), best first; a token outside the nucleus has probability 0. The kept
    probabilities are the full row's, not yet renormalised (``multinomial`` does not need it)."""
    import torch

    scaled = scores.float() / temperature
    if top_p >= 1:  # no nucleus (transformers adds no top-p warper then): the whole row
        return torch.arange(scaled.shape[-1], device=scaled.device).expand_as(scaled), torch.softmax(scaled, dim=-1)
    total = torch.logsumexp(scaled, dim=-1, keepdim=True)
    width = min(k, scaled.shape[-1])
    values, ids = torch.topk(scaled, width, dim=-1)
    probs = torch.exp(values - total)
    above = torch.cumsum(probs, dim=-1) - probs  # the mass ranked above each candidate
    keep = above < top_p
    keep[:, 0] = True
    probs = probs * keep
    wider = probs.sum(dim=-1) < top_p  # the mass above the (k+1)-th token is below top_p: it is kept too
    if width < scaled.shape[-1] and bool(wider.any()):
        rows = wider.nonzero().flatten()
        all_ids, all_probs = nucleus(scores[rows], temperature, top_p, k=scaled.shape[-1])
        grow = (0, all_ids.shape[-1] - width)
        ids, probs = torch.nn.functional.pad(ids, grow), torch.nn.functional.pad(probs, grow)
        ids[rows], probs[rows] = all_ids, all_probs
    return ids, probs


class NucleusSampler:
    """A logits processor that samples: each row's token is drawn from its nucleus and every other token is
    made impossible, so greedy selection returns the draw. ``generator``: a ``torch.Generator`` (tests)."""

    def __init__(self, temperature: float, top_p: float, generator: Any = None) -> None:
        if not temperature > 0 or not 0 < top_p <= 1:
            raise ValueError(f"nucleus sampling needs temperature > 0 and 0 < top_p <= 1, not {temperature}, {top_p}")
        self.temperature, self.top_p, self.generator = temperature, top_p, generator

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        ids, probs = nucleus(scores, self.temperature, self.top_p)
        drawn = ids.gather(1, torch.multinomial(probs, 1, generator=self.generator))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, drawn, 0.0)


def sampled_generate_kwargs(kwargs: dict) -> dict:
    """``generate`` arguments for the paper's sampling that draw through ``NucleusSampler``: the same
    distribution, with the temperature and top-p taken out of transformers' hands. Anything else (greedy, or a
    top-k cut) is returned as it was, for transformers' own path."""
    from transformers import LogitsProcessorList

    if not kwargs.get("do_sample") or kwargs.get("top_k") not in (0, None) or kwargs.get("top_p") is None:
        return kwargs
    rest = {k: v for k, v in kwargs.items() if k not in ("do_sample", "temperature", "top_p", "top_k")}
    sampler = NucleusSampler(float(kwargs.get("temperature") or 1.0), float(kwargs["top_p"]))
    # None for the three: a generation_config.json default (Gemma's top_k 64) is neither applied nor warned of.
    return {
        **rest,
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "logits_processor": LogitsProcessorList([sampler]),
    }
