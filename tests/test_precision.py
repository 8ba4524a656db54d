"""serving/precision.py: in-process serving in bf16 where the machine gains from it, fp32 elsewhere or when asked.

The choice is checked with its two measurements replaced (the machine's bf16 and the probe's timing), because
what a real machine says differs from one to the next; the tiny trained model is then served in bf16 for real,
through the batcher and the paper's sampling, and ``generate`` is seen handing the sampler fp32 logits.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

from serving import precision
from serving.backends import Decoding, LocalBackend, Waiting


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    return LlamaForCausalLM(config).eval()


def test_the_precision_asked_for_comes_from_the_argument_then_the_environment(monkeypatch):
    monkeypatch.delenv(precision.ENV, raising=False)
    assert precision.requested() == "auto"
    monkeypatch.setenv(precision.ENV, " BF16 ")
    assert precision.requested() == "bf16"
    assert precision.requested("fp32") == "fp32"  # the backend's own setting wins over the environment
    monkeypatch.setenv(precision.ENV, "fp16")
    with pytest.raises(ValueError, match=r"^LIMA_ARENA_PRECISION must be auto, bf16 or fp32, got 'fp16'$"):
        precision.requested()
    with pytest.raises(ValueError, match=r"^precision must be"):
        precision.requested("half")


def test_auto_serves_bf16_only_where_it_is_native_faster_at_the_served_batch_and_the_model_is_not_tiny(monkeypatch):
    config = tiny_llama().config
    machine = {"native": True, "faster": True}
    probes = []

    def probe(device: str, rows: int, width: int, threads: int) -> bool:
        probes.append((device, rows, width))
        return machine["faster"]

    monkeypatch.setattr(precision, "bf16_faster", probe)
    monkeypatch.setattr(precision, "native_bf16", lambda: machine["native"])
    for machine["native"] in (True, False):  # asked for, it is what is served, native or not
        assert precision.choose(config, "cpu", 8, "fp32") == ("fp32", "asked for fp32")
        assert precision.choose(config, "cpu", 8, "bf16") == ("bf16", "asked for bf16")
    machine["native"] = True
    assert precision.choose(config, "cpu", 8) == ("fp32", "too small a model to gain from bf16")
    monkeypatch.setattr(precision, "SMALL_HEAD", 0)  # this model now counts as a real one
    assert precision.choose(config, "cpu", 8) == ("bf16", "native bf16, faster at 8 rows")
    assert probes == [("cpu", 8, 32)]  # timed at the served batch, on the model's width
    machine["faster"] = False
    assert precision.choose(config, "cpu", 1) == ("fp32", "native bf16, but not faster at 1 rows")
    assert precision.choose(config, "cuda:0", 8) == ("bf16", "native bf16 on the GPU")  # no probe there
    machine["native"] = False
    assert precision.choose(config, "cpu", 8) == ("fp32", "no native bf16 here")
    assert len(probes) == 2


def test_the_probe_runs_once_per_shape():
    precision.bf16_faster.cache_clear()
    first = precision.bf16_faster("cpu", 2, 16, torch.get_num_threads())
    assert precision.bf16_faster("cpu", 2, 16, torch.get_num_threads()) is first
    assert precision.bf16_faster.cache_info().hits == 1


def test_training_and_serving_share_one_detection():
    from finetune import recipe

    assert recipe.native_bf16 is precision.native_bf16


def test_generate_hands_the_sampler_fp32_logits_from_a_bf16_model():
    """The penalty, the temperature and top-p see fp32 scores: bf16 reaches only the model's own products."""
    model = tiny_llama().to(torch.bfloat16)
    seen = []

    def record(input_ids, scores):
        seen.append(scores.dtype)
        return scores

    ids = torch.tensor([[1, 5, 9]])
    model.generate(
        ids, max_new_tokens=3, do_sample=False, repetition_penalty=1.2, logits_processor=LogitsProcessorList([record])
    )
    assert seen == [torch.float32] * 3


@pytest.fixture(scope="module")
def bf16_side(trained: Path) -> LocalBackend:
    backend = LocalBackend(str(trained / "lima-1030" / "epoch-3"), device="cpu", precision="bf16")
    status = asyncio.run(backend.probe())
    assert status.ok and status.detail == "in-process on cpu, bf16", status.detail
    return backend


async def _answer(backend: LocalBackend, text: str, decoding: Decoding) -> str:
    chunks = [c async for c in backend.stream([{"role": "user", "content": text}], decoding)]
    return "".join(c for c in chunks if not isinstance(c, Waiting))


def test_a_model_served_in_bf16_streams_the_papers_sampled_answers_in_one_batch(bf16_side: LocalBackend):
    assert bf16_side.model.dtype == torch.bfloat16 and bf16_side.precision == "bf16"
    head = bf16_side.model.get_output_embeddings()
    assert "forward" not in vars(head)  # bf16's plain head layout is its fast one: left as it is
    paper = Decoding(max_new_tokens=6)  # 0.7, 0.9, penalty 1.2

    async def crowd():
        return await asyncio.gather(*(_answer(bf16_side, t, paper) for t in ("Hi there", "Tell me a joke.", "Bye")))

    answers = asyncio.run(crowd())
    assert list(bf16_side.batcher.batch_sizes) == [3] and all(answers)
    # each row stopped at its own cap (or its end token); counted as generated: sampled text need not re-tokenize
    # to as many tokens (a byte-level piece of a character decodes to U+FFFD, three tokens when encoded again)
    (counts,) = bf16_side.batcher.row_tokens
    assert len(counts) == 3 and all(1 <= n <= 6 for n in counts), counts


def test_greedy_in_bf16_is_the_bf16_models_own_greedy_continuation(bf16_side: LocalBackend):
    messages = [{"role": "user", "content": "Tell me a joke."}]
    encoded = bf16_side.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = bf16_side.model.generate(**encoded, do_sample=False, max_new_tokens=10, repetition_penalty=1.2)
    expected = bf16_side.tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    assert (
        asyncio.run(_answer(bf16_side, messages[0]["content"], Decoding(temperature=0.0, max_new_tokens=10)))
        == expected
    )


def test_a_bad_precision_in_the_environment_is_the_sides_one_line_load_error(trained: Path, monkeypatch):
    monkeypatch.setenv(precision.ENV, "fp16")
    backend = LocalBackend(str(trained / "lima-1030" / "epoch-3"))
    status = asyncio.run(backend.probe())
    assert not status.ok and "LIMA_ARENA_PRECISION must be auto, bf16 or fp32, got 'fp16'" in status.detail
    assert "\n" not in status.detail
