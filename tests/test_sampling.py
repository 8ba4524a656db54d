"""The batcher's nucleus sampling draws from exactly transformers' distribution (temperature, then top-p), for
fp32 logits and for a bf16 model's (which transformers' warpers see upcast to fp32, as ``generate`` hands them)."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from serving.sampling import NucleusSampler, nucleus, sampled_generate_kwargs


def transformers_distribution(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)])
    return torch.softmax(warpers(None, scores.clone()), dim=-1)


def our_distribution(scores: torch.Tensor, temperature: float, top_p: float, k: int) -> torch.Tensor:
    ids, probs = nucleus(scores, temperature, top_p, k=k)
    dense = torch.zeros_like(scores, dtype=torch.float32).scatter_(1, ids, probs)
    return dense / dense.sum(dim=-1, keepdim=True)


def assert_same_nucleus(scores: torch.Tensor, ours: torch.Tensor, expected: torch.Tensor) -> None:
    """The same tokens possible with the same probabilities. bf16 logits tie often (8 bits of mantissa), and where
    tied tokens straddle the nucleus's edge, which of them stay is the sort's choice, in transformers' warper
    (an unstable ``torch.sort``) as in ``topk``: there the two may keep different ones of the tied tokens, with
    the same probabilities."""
    differ = (ours > 0) != (expected > 0)
    edge = torch.where(expected > 0, scores, float("inf")).min(dim=-1, keepdim=True).values.expand_as(scores)
    assert torch.equal(scores[differ], edge[differ])  # only tokens tied with the last one kept
    assert torch.equal((ours > 0).sum(dim=-1), (expected > 0).sum(dim=-1))
    assert torch.allclose(ours.sort(dim=-1).values, expected.sort(dim=-1).values, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [4, 64, 100_000])
def test_the_nucleus_is_transformers_own_for_peaked_moderate_and_flat_rows(k: int, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(7)
    vocab = 5000
    rows = [
        torch.randn(vocab, generator=generator) * 8,  # peaked: a handful of tokens hold 0.9
        torch.randn(vocab, generator=generator) * 2,  # moderate
        torch.randn(vocab, generator=generator) * 0.1,  # nearly flat: the nucleus is most of the vocabulary
        torch.full((vocab,), -3.0).index_fill_(0, torch.tensor([11]), 9.0),  # one token holds it all
    ]
    scores = torch.stack(rows).to(dtype)
    for temperature, top_p in ((0.7, 0.9), (1.0, 0.5), (0.3, 1.0)):
        expected = transformers_distribution(scores.float(), temperature, top_p)
        ours = our_distribution(scores, temperature, top_p, k)
        assert_same_nucleus(scores.float(), ours, expected)
        if dtype == torch.float32:  # these fp32 rows tie nowhere near the edge: token for token
            assert torch.equal(ours > 0, expected > 0) and torch.allclose(ours, expected, atol=1e-6)
    # Rows wider than k were redone over the whole vocabulary, and only those: the flat row is the wide one.
    widths = (transformers_distribution(scores.float(), 0.7, 0.9) > 0).sum(dim=-1).tolist()
    assert widths[3] == 1 and widths[0] < 64 < widths[2]


def test_the_sampler_leaves_only_its_draw_and_draws_at_the_nucleus_frequencies():
    scores = torch.tensor([[2.0, 1.5, 1.0, 0.0, -1.0, -4.0, -9.0]])
    sampler = NucleusSampler(0.7, 0.9, generator=torch.Generator().manual_seed(0))
    expected = transformers_distribution(scores, 0.7, 0.9)[0]
    counts = torch.zeros(scores.shape[-1])
    draws = 20_000
    for _ in range(draws):
        out = sampler(None, scores.clone())
        assert torch.isfinite(out).sum() == 1 and out.max() == 0
        counts[out.argmax()] += 1
    assert torch.equal(counts > 0, expected > 0)  # never a token outside the nucleus
    assert torch.allclose(counts / draws, expected, atol=0.015)


def test_only_the_papers_sampling_is_taken_over_and_bad_settings_are_refused():
    paper = {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,
        "repetition_penalty": 1.2,
        "max_new_tokens": 8,
    }
    taken = sampled_generate_kwargs(paper)
    assert taken["do_sample"] is False and taken["repetition_penalty"] == 1.2 and taken["max_new_tokens"] == 8
    (sampler,) = taken["logits_processor"]
    assert (sampler.temperature, sampler.top_p) == (0.7, 0.9)
    greedy = {"do_sample": False, "repetition_penalty": 1.2, "max_new_tokens": 8}
    assert sampled_generate_kwargs(greedy) is greedy
    top_k = {**paper, "top_k": 40}
    assert sampled_generate_kwargs(top_k) is top_k  # transformers' own path, top-k cut included
    with pytest.raises(ValueError, match="temperature > 0"):
        NucleusSampler(0.0, 0.9)
