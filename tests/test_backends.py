"""serving/backends.py with real parts: the tiny trained model in process, and the loopback TGI server over HTTP.

The local model is tiny and random, so its text is checked against a greedy reference run of the same model:
temperature 0 is greedy (as on TGI, vLLM and transformers serve), which pins down the prompt (the model's own chat
template), the repetition penalty (over the whole context, as every server applies it) and the token cap exactly.
Against the TGI look-alike, tests read what TGI would have applied (``TGIServer.applied``), not only what was sent.
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

from serving.backends import (
    TOTAL_TOKEN_BUDGET,
    BackendError,
    Decoding,
    LocalBackend,
    RemoteBackend,
    Waiting,
    make_backend,
    parse_source,
)
from serving.kinds import KINDS, TRANSFORMERS, ServerKind

EOT = "<|end_of_turn|>"
HISTORY = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]
GREEDY = 0.0  # temperature 0: the most likely token, on every backend
FIVE = "one two three four five"


async def _collect(backend, messages: list[dict], decoding: Decoding) -> tuple[list[str], BackendError | None]:
    """Every chunk streamed, and the BackendError that ended the stream (None if it finished)."""
    chunks: list[str] = []
    try:
        async for chunk in backend.stream(messages, decoding):
            if not isinstance(chunk, Waiting):  # a note while queued, not answer text
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
    assert (status.model, status.detail) == ("test/lima-1030/epoch-3", "in-process on cpu, fp32")  # tiny: fp32
    return backend


def greedy_reference(backend: LocalBackend, messages: list[dict], max_new_tokens: int, penalty: float) -> list[int]:
    """Token ids greedy decoding appends to the chat-template prompt, with transformers' own repetition penalty
    (over the whole context, as TGI, vLLM and transformers serve apply it)."""
    encoded = backend.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    prompt_len = encoded["input_ids"].shape[1]
    with torch.no_grad():
        out = backend.model.generate(
            **encoded, do_sample=False, max_new_tokens=max_new_tokens, repetition_penalty=penalty
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
    def generating() -> bool:
        return local.batcher is not None and local.batcher.running > 0

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


# -- what each side is asked for -----------------------------------------------------------------------------
def test_local_decoding_is_the_papers_with_no_hidden_top_k(local: LocalBackend):
    sampled = LocalBackend.generate_kwargs(Decoding())
    assert sampled == {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,  # a generation_config.json top_k default would narrow the nucleus
        "repetition_penalty": 1.2,
        "max_new_tokens": 512,
    }
    assert LocalBackend.generate_kwargs(Decoding(temperature=0.0), room=100) == {
        "do_sample": False,
        "repetition_penalty": 1.2,
        "max_new_tokens": 100,
    }
    record = local.decoding_record(Decoding())
    assert record["server"] == "in-process" and record["penalty_scope"] == "context"
    assert record["sent"] == sampled and record["may_ignore"] == []
    assert {
        k: record[k] for k in ("temperature", "top_p", "repetition_penalty", "max_new_tokens")
    } == Decoding().as_dict()


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
    assert status.model == "B"
    assert status.detail == (
        "TGI 3.3.7 serving GAIR/lima-1030; repetition penalty sent as presence_penalty, over the whole context"
    )
    assert (backend.kind, backend.version, backend.model_id) == ("tgi", "3.3.7", "GAIR/lima-1030")


def test_tgi_applies_the_papers_decoding_through_presence_penalty(server: TGIServer, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_TOKEN_HOSTS", "http://127.0.0.1")  # the opt-in: plain http to loopback gets the token
    backend = RemoteBackend(server.url)
    chunks, error = collect(backend, HISTORY, Decoding(max_new_tokens=300))
    assert error is None
    assert chunks == ["one", " two", " three", " four", " five"]  # in order; the EOS chunk's empty text dropped
    (body,) = server.requests
    assert body["messages"] == HISTORY
    assert body["stream"] is True
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (300, 0.7, 0.9)
    assert body["model"] == "tgi"  # not an adapter id: the base model, said the way TGI means it
    assert "repetition_penalty" not in body  # TGI's chat route would drop it silently
    (applied,) = server.applied  # what TGI's router hands the model
    assert applied["repetition_penalty"] == pytest.approx(1.2)
    assert (applied["do_sample"], applied["temperature"], applied["top_p"], applied["top_k"]) == (True, 0.7, 0.9, None)
    assert (applied["max_new_tokens"], applied["adapter"]) == (300, None)
    assert server.headers[0]["authorization"] == "Bearer hf_test_token"  # HF_TOKEN, to a host listed for it

    record = backend.decoding_record(Decoding(max_new_tokens=300))
    assert record["server"] == "tgi 3.3.7" and record["penalty_scope"] == "context" and record["may_ignore"] == []
    assert record["sent"] == {k: body[k] for k in ("model", "max_tokens", "temperature", "presence_penalty", "top_p")}


def test_tgi_greedy_and_no_nucleus_are_said_the_way_tgi_validates_them(server: TGIServer):
    backend = RemoteBackend(server.url)
    assert collect(backend, HISTORY, Decoding(temperature=0.0, top_p=1.0, repetition_penalty=1.0))[1] is None
    (body,) = server.requests
    assert "top_p" not in body  # validation.rs refuses top_p 1.0: no nucleus is no top_p
    (applied,) = server.applied
    assert (applied["do_sample"], applied["top_p"], applied["repetition_penalty"]) == (False, 1.0, 1.0)


def test_tgi_look_alike_ignores_repetition_penalty_and_validates_like_tgi(server: TGIServer):
    """What the arena used to send: TGI applies no penalty for it. And TGI's range checks, as 422 validation."""
    from huggingface_hub import AsyncInferenceClient

    async def chat(**fields):
        async with AsyncInferenceClient(base_url=server.url) as client:
            return await client.chat_completion(HISTORY, max_tokens=5, **fields)

    asyncio.run(chat(temperature=0.7, top_p=0.9, extra_body={"repetition_penalty": 1.2}))
    assert server.applied[-1]["repetition_penalty"] == 1.0
    for fields, message in [
        ({"temperature": -0.1}, "`temperature` must be strictly positive"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"presence_penalty": -2.5}, "`repetition_penalty` must be strictly positive"),
        ({"frequency_penalty": 2.5}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ]:
        with pytest.raises(Exception) as caught:
            asyncio.run(chat(**fields))
        assert getattr(caught.value, "response", None) is not None and caught.value.response.status_code == 422
        assert message in str(caught.value)


def test_tgi_renders_the_served_folders_template_as_transformers_does(trained: Path):
    """TGI's minijinja renders the saved template to the very prompt transformers built in training."""
    from transformers import AutoTokenizer

    model_dir = trained / "lima-1030" / "epoch-3"
    with TGIServer(Behaviour(reply=FIVE), model_dir=model_dir) as tgi:
        assert collect(RemoteBackend(tgi.url), HISTORY, Decoding(max_new_tokens=8))[1] is None
        (applied,) = tgi.applied
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    expected = tokenizer.apply_chat_template(HISTORY, add_generation_prompt=True, tokenize=False)
    assert applied["prompt"] == expected
    assert applied["input_tokens"] == len(tokenizer(expected, add_special_tokens=False)["input_ids"])


def test_tgi_without_a_template_is_its_422_template_error(tmp_path: Path, trained: Path):
    model_dir = tmp_path / "base"
    shutil.copytree(trained / "lima-1030" / "epoch-3", model_dir)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    with TGIServer(Behaviour(reply=FIVE), model_dir=model_dir) as tgi:
        chunks, error = collect(RemoteBackend(tgi.url))
    message = assert_one_line(error)
    assert chunks == [] and "(422)" in message and "Template error: template not found" in message


def test_tgi_model_is_an_adapter_id_named_after_the_hash(server: TGIServer):
    server.behaviour = Behaviour(reply=FIVE, adapters=("lima-1030-lora",))
    loaded = make_backend(f"A={server.url}#lima-1030-lora")
    assert (loaded.url, loaded.model, loaded.source) == (server.url, "lima-1030-lora", f"{server.url}#lima-1030-lora")
    status = asyncio.run(loaded.probe())
    assert status.ok and "with adapter lima-1030-lora" in status.detail
    unknown = make_backend(f"{server.url}#no-such-adapter")
    for backend in (loaded, unknown):
        assert collect(backend, HISTORY, Decoding(max_new_tokens=4))[1] is None
    assert [body["model"] for body in server.requests] == ["lima-1030-lora", "no-such-adapter"]
    # TGI runs an id it never loaded on the base model, silently (flash_causal_lm.py ADAPTER_TO_INDEX.get(id, 0)).
    assert [applied["adapter"] for applied in server.applied] == ["lima-1030-lora", None]


@pytest.mark.parametrize(
    ("server_kind", "kind", "extra"),
    [("vllm", "vllm", {"repetition_penalty": 1.2, "top_k": 0, "min_p": 0.0}), ("openai", "openai", {})],
)
def test_other_servers_get_repetition_penalty_at_the_top_level(server_kind: str, kind: str, extra: dict):
    with TGIServer(Behaviour(reply=FIVE, server=server_kind, model_id="org/lima-1030")) as other:
        backend = RemoteBackend(other.url)
        status = asyncio.run(backend.probe())
        assert status.ok and backend.kind == kind
        assert collect(backend, HISTORY, Decoding(max_new_tokens=16))[1] is None
        (body,) = other.requests
    assert body["repetition_penalty"] == 1.2 and "presence_penalty" not in body
    assert body["model"] == "org/lima-1030"  # the server's only model, by name (vLLM refuses another)
    assert {key: body[key] for key in extra} == extra
    record = backend.decoding_record(Decoding(max_new_tokens=16))
    if kind == "vllm":
        assert status.detail.startswith("vLLM 0.33.0 serving org/lima-1030; repetition penalty sent as")
        assert (record["penalty_scope"], record["may_ignore"]) == ("context", [])
    else:  # a server of unknown make: the pane says the penalty may not be applied, and the turn records it
        assert "may ignore repetition_penalty" in status.detail
        assert (record["penalty_scope"], record["may_ignore"]) == ("unknown", ["repetition_penalty"])


@pytest.mark.parametrize("kind", [kind for kind in KINDS if kind is not TRANSFORMERS], ids=lambda kind: kind.name)
def test_every_server_kind_has_a_look_alike_that_the_probe_tells_apart(kind: ServerKind):
    """Each entry of serving.kinds.KINDS is recognised from its look-alike's own routes (transformers serve: the real
    server, tests/test_transformers_serve.py) and sent the paper's decoding in the fields its entry maps it to."""
    with TGIServer(Behaviour(reply=FIVE, server=kind.name, model_id="org/lima-1030")) as look_alike:
        backend = RemoteBackend(look_alike.url)
        status = asyncio.run(backend.probe())
        assert status.ok and backend.kind == kind.name and status.detail.startswith(kind.shown)
        assert collect(backend, HISTORY, Decoding(max_new_tokens=16))[1] is None
        (body,) = look_alike.requests
    sent = backend.decoding_record(Decoding(max_new_tokens=16))["sent"]
    assert {key: body[key] for key in sent} == sent and kind.penalty_field in sent


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
    """Both sides stream at once, shown by order rather than by timing: the left server holds its third token
    until the right side's request has reached the other server. A client that ran one side after the other
    would never send that request while the left one is held, and the left side would end in an error."""
    six = "a b c d e f"
    with TGIServer(Behaviour(reply=six)) as left, TGIServer(Behaviour(reply=six)) as right:
        right_arrived = threading.Event()
        left.behaviour = Behaviour(reply=six, token_delay_s=0.01, hold=(right_arrived, 3))
        right.behaviour = Behaviour(reply=six, token_delay_s=0.01, arrived=right_arrived)
        order: list[str] = []

        async def side(name: str, url: str):
            result = await _collect(RemoteBackend(url), HISTORY, Decoding(max_new_tokens=64))
            order.append(name)
            return result

        async def both():
            return await asyncio.gather(side("left", left.url), side("right", right.url))

        results = asyncio.run(both())

    assert [("".join(chunks), error) for chunks, error in results] == [(six, None), (six, None)]
    assert sorted(order) == ["left", "right"]


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


# -- batched in-process generation ----------------------------------------------------------------------------
def test_concurrent_requests_are_answered_in_batches_each_its_own_answer(trained):
    """Four raters at once: one batch, and each stream is the answer its own request gets alone (greedy, fp32)."""
    source = str(trained / "lima-1030" / "epoch-3")
    prompts = [[{"role": "user", "content": text}] for text in ("Hi there", "Tell me a joke.", "What is 2+2?", "Bye")]
    greedy = Decoding(temperature=GREEDY, max_new_tokens=12)
    alone = LocalBackend(source, max_batch=1)
    expected = [collect(alone, messages, greedy) for messages in prompts]
    assert all(error is None for _, error in expected) and list(alone.batcher.batch_sizes) == [1, 1, 1, 1]

    together = LocalBackend(source, max_batch=8)
    together.load()

    async def crowd():
        return await asyncio.gather(*(_collect(together, messages, greedy) for messages in prompts))

    answers = asyncio.run(crowd())
    assert list(together.batcher.batch_sizes) == [4]  # observable in the backend: one generate call for all four
    assert ["".join(chunks) for chunks, _ in answers] == ["".join(chunks) for chunks, _ in expected]
    assert all(len(chunks) > 1 for chunks, _ in answers)  # streamed token by token, not at the end

    # Different decoding never shares a batch: each request keeps its own settings.
    sampled = Decoding(temperature=0.7, max_new_tokens=6)

    async def mixed():
        return await asyncio.gather(_collect(together, prompts[0], greedy), _collect(together, prompts[1], sampled))

    asyncio.run(mixed())
    assert sorted(list(together.batcher.batch_sizes)[1:]) == [1, 1]


def test_the_fast_cpu_head_gives_the_heads_own_logits(trained):
    """The in-process head runs as W @ hᵀ (faster in batches on CPU): the same logits as nn.Linear's."""
    from transformers import AutoModelForCausalLM

    from serving.batching import fast_cpu_head

    source = str(trained / "lima-1030" / "epoch-3")
    backend = LocalBackend(source)
    backend.load()
    plain = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    ids = torch.randint(10, 200, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fast, slow = backend.model(input_ids=ids).logits, plain(input_ids=ids).logits
    assert fast.shape == slow.shape and torch.allclose(fast, slow, atol=1e-5)
    assert fast_cpu_head(torch.nn.Module()) is False  # no output head to change: left alone
    plain.get_output_embeddings().bias = torch.nn.Parameter(torch.zeros(plain.config.get_text_config().vocab_size))
    assert fast_cpu_head(plain) is False  # a head with a bias: left alone


def test_waiting_answers_hold_no_thread_of_the_event_loops_pool(trained):
    """Eight answers queued on one model wait on the event loop, not in its thread pool, which the store's
    writes use: reading them starts no pool thread at all."""
    from concurrent.futures import ThreadPoolExecutor

    backend = LocalBackend(str(trained / "lima-1030" / "epoch-3"), max_batch=1)
    backend.load()
    pool = ThreadPoolExecutor(max_workers=32)

    async def crowd():
        asyncio.get_running_loop().set_default_executor(pool)
        greedy = Decoding(temperature=GREEDY, max_new_tokens=8)
        return await asyncio.gather(*(_collect(backend, HISTORY, greedy) for _ in range(8)))

    answers = asyncio.run(crowd())
    assert all(error is None and chunks for chunks, error in answers) and list(backend.batcher.batch_sizes) == [1] * 8
    assert len(pool._threads) == 0


def test_a_request_queued_behind_a_running_batch_is_told_it_waits(trained):
    backend = LocalBackend(str(trained / "lima-1030" / "epoch-3"), max_batch=1)
    backend.waiting_note_s = 0.05  # the first answer outlasts it on any machine, loaded or not
    long = Decoding(temperature=GREEDY, max_new_tokens=600, repetition_penalty=1.0)

    async def two():
        async def everything(messages):
            seen = []
            async for chunk in backend.stream(messages, long):
                seen.append(chunk)
                if len(seen) > 400:
                    break
            return seen

        return await asyncio.gather(everything(HISTORY), everything([{"role": "user", "content": "Hello"}]))

    first, second = asyncio.run(two())
    notes = [c for c in first + second if isinstance(c, Waiting)]
    assert notes and all(str(c).startswith("waiting for the model") for c in notes)


def test_a_side_asks_its_server_no_more_than_it_takes_so_a_burst_queues_instead_of_429s():
    """TGI says in /info how many requests it takes at once and answers 429 beyond; the side waits for a slot."""
    with TGIServer(Behaviour(reply=FIVE, token_delay_s=0.05, max_concurrent_requests=2)) as tgi:
        backend = RemoteBackend(tgi.url)
        assert asyncio.run(backend.probe()).ok and backend.server_cap == 2

        async def burst():
            return await asyncio.gather(*(_notes_and_text(backend) for _ in range(5)))

        results = asyncio.run(burst())
        assert [text for _, text, _ in results] == [FIVE] * 5 and all(error is None for *_, error in results)
        assert tgi.peak_in_flight == 2 and backend.active == 0
        assert sum(bool(notes) for notes, _, _ in results) >= 3  # those that waited were told so
        assert all(n.startswith("waiting for the server: 2 answers in progress") for ns, _, _ in results for n in ns)

        tgi.in_flight, tgi.peak_in_flight = 0, 0
        uncapped = RemoteBackend(tgi.url, max_concurrent=8)  # a setting above what the server takes: 429s

        async def uncapped_burst():
            return await asyncio.gather(*(_notes_and_text(uncapped) for _ in range(4)))

        outcomes = asyncio.run(uncapped_burst())
        assert any(error is not None and "overloaded (429)" in str(error) for *_, error in outcomes)


async def _notes_and_text(backend) -> tuple[list[str], str, BackendError | None]:
    notes, text = [], ""
    try:
        async for chunk in backend.stream(HISTORY, Decoding(max_new_tokens=16)):
            if isinstance(chunk, Waiting):
                notes.append(str(chunk))
            else:
                text += chunk
    except BackendError as error:
        return notes, text, error
    return notes, text, None
