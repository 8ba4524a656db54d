"""Fetching LIMA from the Hub, against a real local HTTP server that answers like the Hub does.

The Hub's file protocol (HEAD for metadata, then GET; errors named by the X-Error-Code header) is served by
``hub_server.HubServer``; huggingface_hub is pointed at it with HF_ENDPOINT, in a fresh interpreter each time
because the library reads its endpoint at import.
"""

from __future__ import annotations

import socket

import pytest
from conftest import FIXTURES, run_cli
from hub_server import HubServer

LIMA_FIXTURE = (FIXTURES / "lima" / "train.jsonl").read_bytes()
REFUSALS = {  # how the Hub answers a gated repo whose terms were not accepted, and a token it does not know
    "gated": (403, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to dataset GAIR/lima is restricted."}),
    "bad-token": (401, {"X-Error-Message": "Invalid credentials in Authorization header"}),
}


@pytest.fixture
def hub():
    servers = []

    def start(mode: str) -> str:
        server = HubServer().start()
        server.put("GAIR/lima", "train.jsonl", LIMA_FIXTURE)
        server.refuse = REFUSALS.get(mode)
        servers.append(server)
        return server.url

    start.servers = servers  # a test may put more files on the server it started
    yield start
    for server in servers:
        server.stop()


def data_from_hub(tmp_path, endpoint: str, token: str | None):
    env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": token or "", "HF_HUB_DISABLE_XET": "1"}
    return run_cli("-m", "finetune", "data", "--lima", "hub", "--dialogues", "lima", env=env)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_hub_download_loads_lima(tmp_path, hub):
    result = data_from_hub(tmp_path, hub("ok"), token="hf_test")
    assert result.returncode == 0, result.stderr
    assert "test.jsonl was not downloaded" in result.stderr  # this Hub has no test.jsonl: the studies' file only
    assert result.stdout.strip() == (
        "zero-shot: 4 examples (LIMA single-turn examples (GAIR/lima)); "
        "dialogue: 6 examples (the same + 2 LIMA's own multi-turn dialogues)"
    )


def test_no_token(tmp_path, hub):
    result = data_from_hub(tmp_path, hub("ok"), token=None)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: GAIR/lima (Hub): LIMA is gated and no Hugging Face token is set")


def test_terms_not_accepted(tmp_path, hub):
    result = data_from_hub(tmp_path, hub("gated"), token="hf_test")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: GAIR/lima (Hub): your token has no access yet: accept the terms")


def test_token_rejected(tmp_path, hub):
    result = data_from_hub(tmp_path, hub("bad-token"), token="hf_wrong")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: GAIR/lima (Hub): the Hub" in result.stderr and "HF_TOKEN" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_no_network(tmp_path):
    result = data_from_hub(tmp_path, f"http://127.0.0.1:{closed_port()}", token="hf_test")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: GAIR/lima (Hub): cannot reach the Hub")
    assert result.stderr.strip().endswith("pass --lima PATH")


def test_offline_mode(tmp_path):
    result = run_cli(
        "-m",
        "finetune",
        "data",
        "--lima",
        "hub",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_test"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: GAIR/lima (Hub): cannot reach the Hub")


def test_lima_s_test_prompts_come_with_it(tmp_path, hub):
    url = hub("ok")
    env = {"HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_test", "HF_HUB_DISABLE_XET": "1"}
    hub.servers[-1].put("GAIR/lima", "test.jsonl", (FIXTURES / "lima" / "test.jsonl").read_bytes())
    with_it = run_cli("-m", "finetune", "data", "--check", "--lima", "hub", env=env)
    assert with_it.returncode == 0, with_it.stderr
    assert "LIMA test.jsonl" in with_it.stdout  # its prompts checked beside ours, overlap included
