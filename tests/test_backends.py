"""demo/backends.py with real parts: the tiny trained model in process, and the loopback TGI server over HTTP.

The local model is tiny and random, so its text is checked against a greedy reference run of the same model: a
near-zero temperature makes the backend's sampling pick the argmax, which pins down the prompt (the model's own chat
template), the repetition penalty and the token cap exactly.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from tgi_server import ERRORS, STREAM_ERROR_MESSAGE, Behaviour, TGIServer

from demo.backends import (
    TOTAL_TOKEN_BUDGET,
    BackendError,
    Decoding,
    GeneratedTokensRepetitionPenalty,
    LocalBackend,
    RemoteBackend,
    make_backend,
    parse_source,
)

EOT = "<|end_of_turn|>"
HISTORY = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]
GREEDY = 1e-4  # temperature: sampling then always takes the most likely token
FIVE = "one two three four five"


async def _collect(backend, messages: list[dict], decoding: Decoding) -> tuple[list[str], BackendError | None]:
    """Every chunk streamed, and the BackendError that ended the stream (None if it finished)."""
    chunks: list[str] = []
    try:
        async for chunk in backend.stream(messages, decoding):
            chunks.append(chunk)
    except BackendError as error:
        return chunks, error
    return chunks, None


def collect(backend, messages: list[dict] = HISTORY, decoding: Decoding | None = None):
    return asyncio.run(_collect(backend, messages, decoding or Decoding(max_new_tokens=64)))


def assert_one_line(error: BaseException | None) -> str:
    assert isinstance(error, BackendError), error
    message = str(error)
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


# -- choosing a backend -------------------------------------------------------------------------------------
def test_parse_source_names_and_bare_sources():
    assert parse_source("A=runs/quick-cpu/lima-1030/epoch-10") == ("A", "runs/quick-cpu/lima-1030/epoch-10")
    assert parse_source(" B = http://localhost:8080 ") == ("B", "http://localhost:8080")
    assert parse_source("runs/test/lima-1000/epoch-3") == (None, "runs/test/lima-1000/epoch-3")
    # "=" inside a path or a URL's query is not a name.
    assert parse_source("runs/a=b/epoch-3") == (None, "runs/a=b/epoch-3")
    assert parse_source("http://host:8080/?x=1") == (None, "http://host:8080/?x=1")


def test_make_backend_picks_the_kind_and_default_names(trained: Path):
    remote = make_backend("B=http://127.0.0.1:9/")
    assert isinstance(remote, RemoteBackend)
    assert (remote.name, remote.url) == ("B", "http://127.0.0.1:9")
    assert make_backend("https://example.test/v1").name == "https://example.test/v1"
    model_dir = trained / "lima-1030" / "epoch-3"
    named = make_backend(f"A={model_dir}")
    assert isinstance(named, LocalBackend)
    assert (named.name, named.source) == ("A", str(model_dir))
    assert make_backend(str(model_dir)).name == "test/lima-1030/epoch-3"  # recipe/model/epoch


# -- in-process transformers --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local(trained: Path) -> LocalBackend:
    backend = LocalBackend(str(trained / "lima-1030" / "epoch-3"), device="cpu")  # fp32: the same on any machine
    status = asyncio.run(backend.probe())
    assert status.ok, status.detail
    assert (status.model, status.detail) == ("test/lima-1030/epoch-3", "in-process on cpu")
    return backend


def greedy_reference(backend: LocalBackend, messages: list[dict], max_new_tokens: int, penalty: float) -> list[int]:
    """Token ids greedy decoding appends to the chat-template prompt, with the paper's generated-tokens penalty."""
    from transformers import LogitsProcessorList

    encoded = backend.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    prompt_len = encoded["input_ids"].shape[1]
    with torch.no_grad():
        out = backend.model.generate(
            **encoded,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            logits_processor=LogitsProcessorList([GeneratedTokensRepetitionPenalty(prompt_len, penalty)]),
        )
    return out[0, prompt_len:].tolist()


def test_local_stream_is_the_chat_template_continuation_capped_at_max_new_tokens(local: LocalBackend):
    cap = 12
    prompt = local.tokenizer.apply_chat_template(HISTORY, tokenize=False, add_generation_prompt=True)
    assert prompt.count(EOT) == 3 and prompt.endswith("Assistant:\n")  # the model's own template, turns ended by EOT

    reference = greedy_reference(local, HISTORY, 3 * cap, penalty=1.2)
    assert local.tokenizer.convert_tokens_to_ids(EOT) not in reference[:cap]  # the cap, not the EOT, ends it
    chunks, error = collect(local, HISTORY, Decoding(temperature=GREEDY, max_new_tokens=cap))
    assert error is None
    assert chunks and all(isinstance(chunk, str) and chunk for chunk in chunks)
    text = "".join(chunks)
    assert text == local.tokenizer.decode(reference[:cap], skip_special_tokens=True)  # exactly `cap` tokens
    assert text != local.tokenizer.decode(reference[: cap + 1], skip_special_tokens=True)
    assert EOT not in text and "Assistant:" not in text  # no special tokens, no echo of the prompt

    # The repetition penalty reaches generation: without it this model's greedy answer differs.
    no_penalty = greedy_reference(local, HISTORY, 3 * cap, penalty=1.0)
    assert no_penalty[: 3 * cap] != reference[: 3 * cap]


def test_local_stops_at_an_eos_listed_in_generation_config(local: LocalBackend, tmp_path: Path):
    """Generation ends at an id in generation_config.json's eos_token_id (where the EOT is listed), not at the cap."""
    reference = greedy_reference(local, HISTORY, 40, penalty=1.2)
    stop_at = next(i for i in range(3, len(reference)) if reference[i] not in reference[:i])
    model_dir = tmp_path / "lima-1030" / "epoch-3"
    shutil.copytree(local.source, model_dir)
    config_path = model_dir / "generation_config.json"
    config = json.loads(config_path.read_text())
    assert local.tokenizer.convert_tokens_to_ids(EOT) in config["eos_token_id"]
    config["eos_token_id"] = [*config["eos_token_id"], reference[stop_at]]
    config_path.write_text(json.dumps(config))

    chunks, error = collect(
        LocalBackend(str(model_dir), device="cpu"), HISTORY, Decoding(temperature=GREEDY, max_new_tokens=40)
    )
    assert error is None
    # The stop id is an ordinary token here, so it is shown; the real EOT is special and skip_special_tokens drops it.
    assert "".join(chunks) == local.tokenizer.decode(reference[: stop_at + 1], skip_special_tokens=True)


def test_local_conversation_past_the_budget_is_refused(local: LocalBackend):
    messages = [{"role": "user", "content": "word " * TOTAL_TOKEN_BUDGET}]
    chunks, error = collect(local, messages)
    message = assert_one_line(error)
    assert chunks == []
    assert f"{TOTAL_TOKEN_BUDGET}-token budget" in message and "start a new one" in message


def test_local_missing_model_dir(tmp_path: Path):
    missing = tmp_path / "no-such-run" / "epoch-3"
    backend = LocalBackend(str(missing))
    status = asyncio.run(backend.probe())
    assert not status.ok
    assert status.detail.startswith(f"cannot load {missing}") and "\n" not in status.detail
    chunks, error = collect(backend)
    assert chunks == []
    assert assert_one_line(error) == status.detail  # the kept load failure, not a retry


def test_local_closing_the_stream_stops_generation(local: LocalBackend):
    thread_name = f"generate:{local.name}"

    def generating() -> bool:
        return any(thread.name == thread_name for thread in threading.enumerate())

    async def first_chunk_then_close() -> tuple[str, bool, float]:
        stream = local.stream(HISTORY, Decoding(max_new_tokens=1800))  # seconds of CPU if left running
        first = await anext(stream)
        was_running = generating()
        await stream.aclose()
        closed = time.monotonic()
        while generating() and time.monotonic() - closed < 5:
            await asyncio.sleep(0.01)
        return first, was_running, time.monotonic() - closed

    first, was_running, stopped_after = asyncio.run(first_chunk_then_close())
    assert isinstance(first, str) and first
    assert was_running
    assert not generating() and stopped_after < 2.0, stopped_after
    chunks, error = collect(local, HISTORY, Decoding(max_new_tokens=4))  # the model is free again
    assert error is None and chunks


# -- the paper's repetition penalty -------------------------------------------------------------------------
def test_repetition_penalty_only_on_generated_tokens():
    # Prompt: tokens 1 and 2; generated so far: 3, 4, and 3 again.
    input_ids = torch.tensor([[1, 2, 3, 4, 3]])
    scores = torch.tensor([[0.5, 2.0, -1.0, 3.0, -2.0, 1.0]])
    out = GeneratedTokensRepetitionPenalty(prompt_len=2, penalty=2.0)(input_ids, scores)
    expected = torch.tensor([[0.5, 2.0, -1.0, 1.5, -4.0, 1.0]])  # positive / penalty, negative * penalty, once
    assert torch.equal(out, expected)
    assert torch.equal(scores, torch.tensor([[0.5, 2.0, -1.0, 3.0, -2.0, 1.0]]))  # input left as it was


def test_repetition_penalty_off_or_nothing_generated_leaves_scores():
    scores = torch.tensor([[0.5, 2.0, -1.0, 3.0]])
    input_ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(GeneratedTokensRepetitionPenalty(1, 1.0)(input_ids, scores), scores)
    assert torch.equal(GeneratedTokensRepetitionPenalty(3, 1.2)(input_ids, scores), scores)  # only the prompt


# -- TGI over HTTP ------------------------------------------------------------------------------------------
@pytest.fixture
def server():
    with TGIServer(Behaviour(reply=FIVE)) as tgi:
        yield tgi


def test_remote_probe_reads_info(server: TGIServer):
    server.behaviour = Behaviour(model_id="GAIR/lima-1030")
    backend = RemoteBackend(server.url + "/", name="B")
    status = asyncio.run(backend.probe())
    assert status.ok
    assert (status.model, status.detail) == ("B", "TGI 3.3.7 serving GAIR/lima-1030")
    assert backend.model_id == "GAIR/lima-1030"


def test_remote_streams_the_reply_and_sends_the_papers_decoding(server: TGIServer, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    backend = RemoteBackend(server.url)
    chunks, error = collect(backend, HISTORY, Decoding(max_new_tokens=300))
    assert error is None
    assert chunks == ["one", " two", " three", " four", " five"]  # in order; the EOS chunk's empty text dropped
    (body,) = server.requests
    assert body["messages"] == HISTORY
    assert body["stream"] is True
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (300, 0.7, 0.9)
    assert body["repetition_penalty"] == 1.2
    assert server.headers[0]["authorization"] == "Bearer hf_test_token"  # HF_TOKEN from the environment


def test_remote_max_new_tokens_caps_the_answer(server: TGIServer):
    chunks, error = collect(RemoteBackend(server.url), HISTORY, Decoding(max_new_tokens=3))
    assert error is None
    assert "".join(chunks) == "one two three"


@pytest.mark.parametrize("status", [422, 424, 429, 503, 500])
def test_remote_error_status_is_one_line_with_the_servers_message(server: TGIServer, status: int):
    server.behaviour = Behaviour(reply=FIVE, status=status)
    chunks, error = collect(RemoteBackend(server.url))
    message = assert_one_line(error)
    assert chunks == []
    assert str(status) in message
    assert ERRORS[status][1] in message
    assert error.warming_up is (status == 503)


def test_remote_error_message_keeps_only_the_first_line(server: TGIServer):
    server.behaviour = Behaviour(status=424, error_message="first line of the failure\n  at frame 1\n  at frame 2")
    message = assert_one_line(collect(RemoteBackend(server.url))[1])
    assert message.endswith("first line of the failure")


def test_remote_probe_on_a_warming_server(server: TGIServer):
    server.behaviour = Behaviour(status=503)
    status = asyncio.run(RemoteBackend(server.url).probe())
    assert not status.ok
    assert "warming up" in status.detail


def test_remote_error_event_mid_answer(server: TGIServer):
    server.behaviour = Behaviour(reply=FIVE, stream_error_after_tokens=2)
    chunks, error = collect(RemoteBackend(server.url))
    message = assert_one_line(error)
    assert chunks == ["one", " two"]
    assert "failed mid-answer" in message and STREAM_ERROR_MESSAGE in message
    assert not error.warming_up


def test_remote_server_killed_mid_answer(server: TGIServer):
    server.behaviour = Behaviour(reply=FIVE, die_after_tokens=2)
    chunks, error = collect(RemoteBackend(server.url))
    message = assert_one_line(error)
    assert chunks == ["one", " two"]
    assert message.startswith(f"the connection to {server.url} broke")


def test_remote_unreachable():
    tgi = TGIServer().start()
    url = tgi.url
    tgi.stop()  # nothing listens on that port any more
    backend = RemoteBackend(url)
    chunks, error = collect(backend)
    message = assert_one_line(error)
    assert chunks == []
    assert message.startswith(f"cannot reach {url}")
    status = asyncio.run(backend.probe())
    assert not status.ok
    assert status.detail.startswith("unreachable") and "\n" not in status.detail


def test_remote_timeout(server: TGIServer):
    server.behaviour = Behaviour(reply=FIVE, first_token_delay_s=2.0)
    started = time.monotonic()
    chunks, error = collect(RemoteBackend(server.url, timeout=0.3))
    elapsed = time.monotonic() - started
    message = assert_one_line(error)
    assert chunks == []
    assert message == f"no answer from {server.url} within 0.3 s"
    assert elapsed < 1.5, elapsed  # the client gave up; it did not wait for the token


# -- both sides at once ---------------------------------------------------------------------------------------
def test_two_remote_sides_stream_concurrently():
    six = "a b c d e f"
    delays = (0.08, 0.12)
    with TGIServer(Behaviour(reply=six)) as fast, TGIServer(Behaviour(reply=six)) as slow:
        assert collect(RemoteBackend(fast.url))[1] is None  # first use imports huggingface_hub: not timed
        fast.behaviour = Behaviour(reply=six, token_delay_s=delays[0])
        slow.behaviour = Behaviour(reply=six, token_delay_s=delays[1])
        finished: dict[str, float] = {}

        async def side(name: str, url: str):
            result = await _collect(RemoteBackend(url), HISTORY, Decoding(max_new_tokens=64))
            finished[name] = time.monotonic()
            return result

        async def both():
            return await asyncio.gather(side("fast", fast.url), side("slow", slow.url))

        started = time.monotonic()
        results = asyncio.run(both())
        elapsed = time.monotonic() - started

    assert [("".join(chunks), error) for chunks, error in results] == [(six, None), (six, None)]
    one_after_the_other = 6 * sum(delays)
    assert 6 * max(delays) <= elapsed < 0.8 * one_after_the_other, elapsed
    assert finished["fast"] < finished["slow"]


def test_one_side_failing_does_not_stop_the_other():
    with (
        TGIServer(Behaviour(reply=FIVE, token_delay_s=0.02)) as healthy,
        TGIServer(Behaviour(reply=FIVE, status=424)) as failing,
    ):

        async def both():
            return await asyncio.gather(
                _collect(RemoteBackend(healthy.url), HISTORY, Decoding()),
                _collect(RemoteBackend(failing.url), HISTORY, Decoding()),
            )

        (good, good_error), (bad, bad_error) = asyncio.run(both())
    assert good_error is None and "".join(good) == FIVE
    assert bad == [] and "(424)" in assert_one_line(bad_error)
