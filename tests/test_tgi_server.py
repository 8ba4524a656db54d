"""The loopback TGI look-alike (tests/tgi_server.py), checked with the real clients that will talk to it.

huggingface_hub's AsyncInferenceClient must parse its streams, see its errors, and see a killed server as a broken
stream; httpx checks the raw wire (health, info, native SSE).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import httpx
import httpx2
import pytest
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import GenerationError, HfHubHTTPError, UnknownError
from tgi_server import ERRORS, Behaviour, TGIServer

from finetune.servable import render_like_tgi

MESSAGES = [{"role": "user", "content": "Say hello"}]
FIVE = "one two three four five"


@pytest.fixture
def server():
    with TGIServer() as tgi:
        yield tgi


async def _chat_stream(url: str, **kwargs) -> tuple[list[tuple[float, str | None, str | None]], Exception | None]:
    """Stream one chat turn; (arrival time, content, finish_reason) per chunk, and the exception that ended it."""
    chunks: list[tuple[float, str | None, str | None]] = []
    kwargs.setdefault("max_tokens", 64)
    async with AsyncInferenceClient(base_url=url) as client:
        try:
            stream = await client.chat_completion(MESSAGES, stream=True, **kwargs)
            async for chunk in stream:
                choice = chunk.choices[0]
                chunks.append((time.monotonic(), choice.delta.content, choice.finish_reason))
        except Exception as error:
            return chunks, error
    return chunks, None


def chat_stream(url: str, **kwargs) -> tuple[list[tuple[float, str | None, str | None]], Exception | None]:
    return asyncio.run(_chat_stream(url, **kwargs))


def test_chat_stream_arrives_in_order_at_the_set_pace(server: TGIServer):
    server.behaviour = Behaviour(reply=FIVE, token_delay_s=0.05, first_token_delay_s=0.05)
    start = time.monotonic()
    chunks, error = chat_stream(
        server.url, max_tokens=50, temperature=0.7, top_p=0.9, extra_body={"repetition_penalty": 1.2}
    )
    assert error is None
    assert "".join(content or "" for _, content, _ in chunks) == FIVE
    assert [content for _, content, _ in chunks] == ["one", " two", " three", " four", " five", ""]
    assert [finish for _, _, finish in chunks] == [None] * 5 + ["stop"]
    arrivals = [at for at, _, _ in chunks[:5]]
    assert arrivals[0] - start >= 0.1  # first-token delay + token delay
    assert arrivals[-1] - start >= 0.3
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert sorted(gaps)[len(gaps) // 2] >= 0.03, gaps  # streamed as produced, not buffered (median: CI jitter)

    (body,) = server.requests
    assert body["messages"] == MESSAGES
    assert body["stream"] is True
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (50, 0.7, 0.9)
    assert body["repetition_penalty"] == 1.2


def test_chat_max_tokens_ends_with_length(server: TGIServer):
    server.behaviour = Behaviour(reply=FIVE)
    chunks, error = chat_stream(server.url, max_tokens=3)
    assert error is None
    assert [content for _, content, _ in chunks] == ["one", " two", " three"]
    assert chunks[-1][2] == "length"


def test_chat_without_stream(server: TGIServer):
    server.behaviour = Behaviour(reply=FIVE, model_id="org/lima-7b")

    async def turn():
        async with AsyncInferenceClient(base_url=server.url) as client:
            return await client.chat_completion(MESSAGES, max_tokens=64)

    answer = asyncio.run(turn())
    assert answer.choices[0].message.content == FIVE
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == 6  # five words and EOS
    assert answer.model == "dummy"  # TGI echoes the request's model; huggingface_hub sends "dummy" for a URL


def test_raw_sse_chunks_have_tgi_shape(server: TGIServer):
    server.behaviour = Behaviour(reply="Hi there", model_id="org/lima-7b")
    body = {"model": "tgi", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"] == "text/event-stream"
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    first = events[0]
    assert first["object"] == "chat.completion.chunk"
    assert first["model"] == "org/lima-7b"
    assert first["system_fingerprint"] == "3.3.7-native"
    assert first["usage"] is None
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "logprobs": None, "finish_reason": None}
    ]
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("status", sorted(ERRORS))
def test_error_status_raises_with_tgi_message(server: TGIServer, status: int):
    server.behaviour = Behaviour(status=status)
    error_type, message = ERRORS[status]
    chunks, error = chat_stream(server.url)
    assert chunks == []
    assert isinstance(error, HfHubHTTPError)
    assert error.response.status_code == status
    assert error.server_message == message
    assert message in str(error)
    raw = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert raw.status_code == status
    assert raw.json() == {"error": message, "error_type": error_type}
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == (503 if status == 503 else 200)


def test_custom_error_message(server: TGIServer):
    server.behaviour = Behaviour(status=424, error_message="Request failed during generation: boom")
    _, error = chat_stream(server.url)
    assert isinstance(error, HfHubHTTPError)
    assert error.server_message == "Request failed during generation: boom"


def test_die_after_tokens_breaks_the_stream(server: TGIServer):
    server.behaviour = Behaviour(reply=FIVE, die_after_tokens=2)
    chunks, error = chat_stream(server.url)
    assert [content for _, content, _ in chunks] == ["one", " two"]
    assert isinstance(error, httpx2.RemoteProtocolError)  # huggingface_hub's transport is httpx2, not httpx
    assert "incomplete chunked read" in str(error)


def test_stream_error_event_surfaces_as_exception(server: TGIServer):
    server.behaviour = Behaviour(reply=FIVE, stream_error_after_tokens=2, error_message="Request failed: OOM")
    chunks, error = chat_stream(server.url)  # TGI 3.x's chat error event: {"error": {"message", "http_status_code"}}
    assert [content for _, content, _ in chunks] == ["one", " two"]
    assert isinstance(error, UnknownError)
    assert error.args[0] == {"message": "Request failed: OOM", "http_status_code": 422}

    server.behaviour = Behaviour(reply=FIVE, stream_error_after_tokens=1, chat_stream_error_style="tgi")
    chunks, error = chat_stream(server.url)  # native {"error": ..., "error_type": "generation"}
    assert [content for _, content, _ in chunks] == ["one"]
    assert isinstance(error, GenerationError)
    assert str(error) == ERRORS[424][1]


def test_stop_while_streaming_ends_the_client_stream(server: TGIServer):
    server.behaviour = Behaviour(reply=FIVE, token_delay_s=0.5)  # the whole answer would take 2.5 s

    async def turn_with_kill():
        asyncio.get_running_loop().call_later(0.7, server.stop)  # after the first token, before the second
        return await _chat_stream(server.url)

    start = time.monotonic()
    chunks, error = asyncio.run(turn_with_kill())
    assert time.monotonic() - start < 2.0  # ended by the stop, not by the answer's end
    assert [content for _, content, _ in chunks] == ["one"]
    assert isinstance(error, httpx2.RemoteProtocolError)

    _, error = chat_stream(server.url)  # nobody listens now
    assert isinstance(error, httpx2.ConnectError)
    server.behaviour = Behaviour(reply="back")
    server.start()  # same port again: a restarted server
    chunks, error = chat_stream(server.url)
    assert error is None and chunks[0][1] == "back"


def test_health_and_info(server: TGIServer):
    health = httpx.get(f"{server.url}/health")
    assert (health.status_code, health.content) == (200, b"")
    server.behaviour = Behaviour(model_id="org/lima-7b")
    info = httpx.get(f"{server.url}/info").json()
    assert info["model_id"] == "org/lima-7b"
    assert info["version"] == "3.3.7"
    assert (info["max_input_tokens"], info["max_total_tokens"]) == (1536, 2048)
    assert info["router"] == "text-generation-router"
    server.behaviour = Behaviour(status=503)
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 503
    assert health.json() == {"error": "unhealthy", "error_type": "healthcheck"}
    assert server.requests == []  # only generation bodies are recorded


# -- the template engine as TGI's router sets it up (finetune.servable.render_like_tgi) -----------------------
def test_tgi_always_passes_tools_so_a_template_sees_it_defined():
    """lib.rs ChatTemplateInputs has `tools: Option<Vec<Tool>>`, serialised as none when a request sends none."""
    template = "{% if tools is defined and tools is none %}no tools{% else %}undefined{% endif %}: "
    template += "{{ messages[0].content }}"
    assert render_like_tgi(template, MESSAGES, None, None) == "no tools: Say hello"


def test_tgi_serialises_and_iterates_a_messages_keys_sorted():
    """TGI's minijinja is built without `preserve_order`: a TextMessage is a sorted map, whatever order was sent."""
    sent = [{"role": "user", "content": "Say <hello>"}]
    as_json = render_like_tgi("{{ messages[0]|tojson }}", sent, None, None)
    assert as_json == '{"content":"Say \\u003chello\\u003e","role":"user"}'
    assert render_like_tgi("{% for key in messages[0] %}{{ key }} {% endfor %}", sent, None, None) == "content role "


def test_check_served_agrees_with_tgi_on_tools_and_on_key_order(tiny_tokenizer_dir):
    """Jinja2 (transformers) passes `tools` as none too, so a template asking for it is servable; one that walks a
    message's keys renders them in the order sent there and sorted on TGI, so it is not."""
    from transformers import AutoTokenizer

    from finetune.chat_format import SERVING_TEMPLATE
    from finetune.servable import check_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tools = "{% if tools is not defined %}{{ raise_exception('no tools') }}{% endif %}" + SERVING_TEMPLATE
    walks_keys = "{% for key in messages[0] %}{{ key }} {% endfor %}" + SERVING_TEMPLATE
    found = {}
    for name, template in (("tools", tools), ("walks_keys", walks_keys)):
        tokenizer.chat_template = template
        config = {"chat_template": template, "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token}
        found[name] = check_template(tokenizer, config)
    assert found["tools"] == []
    (problem,) = found["walks_keys"]
    assert problem.startswith("the chat template renders differently on TGI (minijinja) from transformers (Jinja2)")
    assert "at character 0: 'content role " in problem and "instead of 'role content " in problem
