"""The arena against a real third-party server: ``transformers serve`` serving the tiny trained model folder on
loopback (tests/transformers_server.py), named by the side's source after ``#``.

What is checked is what the server did, not what was sent: its greedy answers equal the in-process backend's token
for token with the penalty on and off (so it applied the saved template, the penalty and its scope as we do), and
generation ends at the saved EOT.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS
from test_backends import HISTORY, assert_one_line, collect, greedy_reference
from transformers_server import TransformersServe, command

from serving.backends import Decoding, LocalBackend, RemoteBackend, make_backend

pytestmark = pytest.mark.skipif(command() is None, reason="needs transformers[serving] (requirements-test.txt)")


@pytest.fixture(scope="module")
def serve():
    with TransformersServe() as server:
        yield server


@pytest.fixture(scope="module")
def model_dir(trained: Path) -> Path:
    return trained / "lima-1030" / "epoch-3"


@pytest.fixture(scope="module")
def served(serve: TransformersServe, model_dir: Path) -> RemoteBackend:
    backend = make_backend(f"lima-1030={serve.url}#{model_dir}")
    status = asyncio.run(backend.probe())
    assert status.ok, (status.detail, serve.log_tail())
    return backend


@pytest.fixture(scope="module")
def local(model_dir: Path) -> LocalBackend:
    backend = LocalBackend(str(model_dir), device="cpu")
    assert asyncio.run(backend.probe()).ok
    return backend


def test_the_probe_knows_transformers_serve_and_the_fragment_names_the_model(served: RemoteBackend, model_dir: Path):
    assert (served.kind, served.model, served.url) == ("transformers", str(model_dir), served.url.split("#")[0])
    assert served.describe() == (
        f"transformers serve serving {model_dir}; repetition penalty sent as frequency_penalty, over the whole context"
    )


@pytest.mark.parametrize("penalty", [1.2, 1.0])
def test_greedy_answers_agree_token_for_token_with_the_in_process_model(
    served: RemoteBackend, local: LocalBackend, penalty: float
):
    decoding = Decoding(temperature=0.0, repetition_penalty=penalty, max_new_tokens=24)
    served_chunks, error = collect(served, HISTORY, decoding)
    assert error is None
    local_chunks, error = collect(local, HISTORY, decoding)
    assert error is None
    assert "".join(served_chunks) == "".join(local_chunks) != ""
    # Both are the decode of the same 24 ids, greedy with transformers' own penalty (the server returns text only).
    reference = greedy_reference(local, HISTORY, 24, penalty)
    assert "".join(served_chunks) == local.tokenizer.decode(reference, skip_special_tokens=True)


def test_the_penalty_reaches_the_server(served: RemoteBackend):
    with_penalty = "".join(collect(served, HISTORY, Decoding(temperature=0.0, max_new_tokens=40))[0])
    without = "".join(collect(served, HISTORY, Decoding(temperature=0.0, repetition_penalty=1.0, max_new_tokens=40))[0])
    assert with_penalty and without and with_penalty != without


def test_the_papers_sampling_streams_and_the_turn_records_it_in_the_servers_terms(served: RemoteBackend):
    decoding = Decoding(max_new_tokens=16)  # temperature 0.7, top-p 0.9, penalty 1.2
    chunks, error = collect(served, HISTORY, decoding)
    assert error is None and chunks
    record = served.decoding_record(decoding)
    assert record["server"] == "transformers" and record["penalty_scope"] == "context"
    assert record["sent"]["frequency_penalty"] == pytest.approx(0.2)  # 1 + 0.2: generate's repetition_penalty
    assert json.loads(record["sent"]["generation_config"]) == {"do_sample": True, "top_k": 0}
    assert "repetition_penalty" not in record["sent"]


def test_transformers_serve_refuses_a_repetition_penalty_field(serve: TransformersServe, model_dir: Path):
    """Why the arena sends it as frequency_penalty there: the field other servers read is a 422 here."""
    from huggingface_hub import AsyncInferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    async def chat():
        async with AsyncInferenceClient(base_url=serve.url) as client:
            return await client.chat_completion(
                HISTORY, model=str(model_dir), max_tokens=4, extra_body={"repetition_penalty": 1.2}
            )

    with pytest.raises(HfHubHTTPError) as caught:
        asyncio.run(chat())
    assert caught.value.response.status_code == 422


def test_generation_stops_at_the_saved_eot(serve: TransformersServe, model_dir: Path, local: LocalBackend):
    """The server stops where generation_config.json says: make the model say EOT first, and nothing follows."""
    from huggingface_hub import AsyncInferenceClient

    eot = local.tokenizer.convert_tokens_to_ids("<|end_of_turn|>")

    async def chat():
        async with AsyncInferenceClient(base_url=serve.url) as client:
            return await client.chat_completion(
                HISTORY, model=str(model_dir), max_tokens=20, temperature=0.0, extra_body={"logit_bias": {eot: 100.0}}
            )

    answer = asyncio.run(chat())
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == ""
    assert answer.usage.completion_tokens == 1


def test_a_folder_the_server_cannot_load_is_one_line(serve: TransformersServe, tmp_path: Path):
    backend = make_backend(f"{serve.url}#{tmp_path / 'nothing-here'}")
    assert asyncio.run(backend.probe()).ok  # the server answers; the folder is its to load
    chunks, error = collect(backend, HISTORY, Decoding(max_new_tokens=4))
    assert chunks == [] and "500" in assert_one_line(error)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_one_conversation_in_a_real_browser_against_transformers_serve(
    served: RemoteBackend, local: LocalBackend, tmp_path: Path
):
    """Side A served by transformers serve, side B in process: a rater's turn on both, stored with its decoding."""
    import sqlite3

    from playwright.sync_api import sync_playwright
    from test_browser import last_answer, open_page, rate
    from tgi_server import free_port

    from demo import app, ratings

    store = ratings.Store(tmp_path / "ratings.db")
    demo = app.build([served, local], store, blind=False, max_new_tokens=16)
    demo.queue()
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            arena = type("Arena", (), {"url": f"http://127.0.0.1:{port}/"})
            page = open_page(browser, arena)
            assert "transformers serve serving" in page.locator("#status").inner_text()
            page.fill("#rater input, #rater textarea", "alice")
            page.fill("#input-both textarea", "Hi there")
            page.click("#send-both")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (last_answer(page, "a") and last_answer(page, "b")):
                time.sleep(0.2)
            page.wait_for_selector("#rate-a-1", timeout=60_000)
            page.wait_for_selector("#rate-b-1", timeout=60_000)
            assert last_answer(page, "a") and last_answer(page, "b")
            rate(page, "a", 1, "pass")
            page.wait_for_function("() => true")
            browser.close()
    finally:
        demo.close()
    with sqlite3.connect(tmp_path / "ratings.db") as con:
        rows = con.execute("SELECT side, model, status, decoding FROM turns ORDER BY side").fetchall()
    assert [(side, status) for side, _, status, _ in rows] == [("a", "complete"), ("b", "complete")]
    decodings = {side: json.loads(decoding) for side, _, _, decoding in rows}
    assert decodings["a"]["server"] == "transformers" and "frequency_penalty" in decodings["a"]["sent"]
    assert decodings["b"]["server"] == "in-process" and decodings["b"]["sent"]["repetition_penalty"] == 1.2
    assert decodings["a"]["penalty_scope"] == decodings["b"]["penalty_scope"] == "context"
