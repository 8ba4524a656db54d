"""The Space: its Dockerfile and front matter, and its entry point run with a Space's environment, checked in a
real browser (Results only with the admin token; no secret reaches the page) and through the real API (every
write also lands in the append-only JSONL event log)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import CHROMIUM, CHROMIUM_ARGS, REPO
from gradio_client import Client
from test_app import wait_until_up
from tgi_server import Behaviour, TGIServer, free_port

from finetune.base_models import tiny_model_dir

ADMIN_TOKEN = "admin-secret-4f9c"
HF_TOKEN = "hf_secret_never_in_the_page"


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def dockerfile_env(home: Path = Path("/home/user")) -> dict[str, str]:
    """The image's ENV lines, the user's home moved to `home`."""
    env: dict[str, str] = {}
    for instruction, args in dockerfile():
        if instruction == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value.replace("$PATH", os.environ["PATH"]).replace("/home/user", str(home))
    return env


def space_home(tmp_path: Path) -> Path:
    """A home of the Space's user for one test, its model cache holding the tiny model the run already built
    (a build in it would make the same one again)."""
    cache = tmp_path / "home" / ".cache" / "lima-arena"
    cache.mkdir(parents=True)
    (cache / "tiny").symlink_to(tiny_model_dir().parent, target_is_directory=True)
    return tmp_path / "home"


def test_dockerfile_runs_the_arena_as_user_1000_on_port_7860_and_copies_only_what_exists():
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert any(i == "RUN" and "useradd" in a and "-u 1000" in a for i, a in steps)
    assert ("USER", "user") in steps
    env = dockerfile_env()
    assert (env["LIMA_ARENA_HOST"], env["LIMA_ARENA_PORT"]) == ("0.0.0.0", "7860")
    assert ("EXPOSE", "7860") in steps
    assert json.loads(dict(steps)["CMD"]) == ["python", "demo/app.py"]
    ignored = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in "#"
    ]
    for instruction, args in steps:
        if instruction == "COPY":
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), f"the Dockerfile copies {source}, which does not exist"
                assert source not in ignored, f"{source} is copied but .dockerignore drops it"
    for heavy in (".git", ".venv", "runs", "tests", "*.db*"):
        assert heavy in ignored  # the build context stays small


def test_readme_front_matter_configures_a_docker_space():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n", 2)[1])
    assert (meta["sdk"], meta["app_port"], str(meta["python_version"])) == ("docker", 7860, "3.11")
    assert "## Deploy as a Space" in text


@pytest.fixture
def space(tmp_path: Path):
    """`python demo/app.py` (the image's CMD) with a Space's environment: its ENV lines, SPACE_ID, the two sides
    as TGI URLs, secrets; the database and mirror in a scratch folder, a free port."""
    servers = [TGIServer(Behaviour(reply=f"Answer from {n}.")).start() for n in ("zero", "dialogue")]
    port = free_port()
    env = {
        **os.environ,
        **dockerfile_env(space_home(tmp_path)),
        "SPACE_ID": "someone/lima-arena",
        "LIMA_ARENA_LEFT": f"lima-1000={servers[0].url}",
        "LIMA_ARENA_RIGHT": f"lima-1030={servers[1].url}",
        "LIMA_ARENA_ADMIN_TOKEN": ADMIN_TOKEN,
        "HF_TOKEN": HF_TOKEN,
        "LIMA_ARENA_PORT": str(port),
        "LIMA_ARENA_DB": str(tmp_path / "data" / "ratings.db"),
        "LIMA_ARENA_MIRROR_DIR": str(tmp_path / "mirror"),
        "PYTHONPATH": str(REPO),
    }
    log = tmp_path / "space.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "demo/app.py"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 90
    while True:
        if process.poll() is not None or time.time() > deadline:
            pytest.fail(f"the Space's entry point did not come up: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as page:
                html = page.read().decode()
            break
        except OSError:
            time.sleep(0.5)
    yield url, html, tmp_path
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    for server in servers:
        server.stop()


def test_space_entry_point_keeps_secrets_off_the_page_and_mirrors_every_rating(space):
    url, html, tmp_path = space
    with urllib.request.urlopen(url + "config", timeout=5) as config:
        page_config = config.read().decode()
    for secret in (ADMIN_TOKEN, HF_TOKEN):
        assert secret not in html and secret not in page_config
    client = Client(url, verbose=False)
    client.predict(api_name="/new_conversation")
    client.predict(api_name="/consent")  # a Space is public: the notice accepted first
    client.predict("hello", 0.7, 0.9, 1.2, 64, "rater", api_name="/send_a")
    turn_id = client.predict(api_name="/conversation")["turns"][0]["turn_id"]
    client.predict(turn_id, "excellent", "rater", api_name="/rate")
    client.predict(turn_id, "pass", "rater", api_name="/rate")
    with pytest.raises(Exception, match="admin token"):
        client.predict("", api_name="/results")
    with pytest.raises(Exception, match="Reviews are off"):  # a public Space shows no one others' conversations
        Client(url, verbose=False).predict("mallory", api_name="/review_next")
    (mirror_file,) = (tmp_path / "mirror").glob("events-*.jsonl")
    deadline = time.monotonic() + 10  # the copy runs beside the rater, a moment after the commit
    while len(mirror_file.read_text().splitlines()) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    events = [json.loads(line) for line in mirror_file.read_text().splitlines()]
    assert [e["kind"] for e in events] == ["conversation", "turn", "rating", "rating"]
    lines = events[2:]
    assert [(r["turn_id"], r["rating"]) for r in lines] == [(turn_id, "excellent"), (turn_id, "pass")]
    # Blind: side A is either model; the record names which one wrote the rated text.
    replies = {"lima-1000": "Answer from zero.", "lima-1030": "Answer from dialogue."}
    assert lines[0]["assistant_text"] == replies[lines[0]["model"]]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_results_tab_is_hidden_without_the_admin_token_and_shown_with_it(space):
    from playwright.sync_api import sync_playwright

    url, _, _ = space
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1200})
        page.goto(url)
        page.wait_for_selector("#status:has-text('ready'), #status:has-text('right')", timeout=30_000)
        results_tab = page.get_by_role("tab", name="Results")
        assert results_tab.count() == 0
        assert page.get_by_role("tab", name="Review").count() == 0  # off on a Space unless LIMA_ARENA_REVIEW
        page.get_by_text("Admin", exact=True).click()
        page.fill("#admin-token input", "wrong token")
        page.click("#admin-unlock")
        page.wait_for_selector("text=That is not the admin token", timeout=10_000)
        assert results_tab.count() == 0
        page.fill("#admin-token input", ADMIN_TOKEN)
        page.click("#admin-unlock")
        results_tab.wait_for(timeout=10_000)
        results_tab.click()
        page.click("#results-refresh")
        page.wait_for_selector("#results-figure img", timeout=30_000)
        assert "No ratings yet" in page.inner_text("#results-summary")
        browser.close()


def test_the_image_build_trains_the_embedded_pair_and_the_start_serves_it_without_training(tmp_path: Path):
    """The Dockerfile's training step, run as the build runs it (the Space's variables as build arguments; the
    tiny test recipe for the quick-cpu one), then the image's entry point with the Space's environment: it
    loads that pair and answers, and trains nothing."""
    (step,) = [args for instruction, args in dockerfile() if instruction == "RUN" and "finetune train" in args]
    build_args = {
        name: value.strip('"')
        for instruction, args in dockerfile()
        if instruction == "ARG"
        for name, _, value in [args.partition("=")]
    }
    assert build_args == {"LIMA_ARENA_LEFT": "", "LIMA_ARENA_RIGHT": "", "LIMA_ARENA_FIRST_LAUNCH_RECIPE": "quick-cpu"}
    runs = tmp_path / "runs"
    env = {**os.environ, **dockerfile_env(space_home(tmp_path)), "LIMA_ARENA_RUNS": str(runs), "PYTHONPATH": str(REPO)}
    build = step.replace("python -m finetune", f"{shlex.quote(sys.executable)} -m finetune")

    with_urls = {**env, "LIMA_ARENA_LEFT": "a=http://x", "LIMA_ARENA_RIGHT": "b=http://y"}
    subprocess.run(["sh", "-c", build], cwd=REPO, env=with_urls, check=True, timeout=60)
    assert not runs.exists()  # both sides are servers: the build trains nothing

    built = subprocess.run(
        ["sh", "-c", build], cwd=REPO, env={**env, "LIMA_ARENA_FIRST_LAUNCH_RECIPE": "test"}, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    assert (runs / "test" / "lima-1000" / "selected").is_file() and (runs / "test" / "lima-1030" / "selected").is_file()

    port, log = free_port(), tmp_path / "start.log"
    space_env = {
        **env,
        "SPACE_ID": "someone/lima-arena",
        "LIMA_ARENA_PORT": str(port),
        "LIMA_ARENA_DB": str(tmp_path / "data" / "ratings.db"),
        "LIMA_ARENA_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "demo/app.py"], cwd=REPO, env=space_env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url, process, log, timeout=120)
        client = Client(url, verbose=False)
        client.predict(api_name="/new_conversation")
        client.predict(api_name="/consent")  # a Space is public: the notice accepted first
        chat = client.predict("Hello there", 0.7, 0.9, 1.2, 16, "rater", api_name="/send_a")
        assert chat[-1]["role"] == "assistant" and "⚠️" not in json.dumps(chat)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    text = log.read_text()
    assert "training the" not in text and "loaded" in text, text[-2000:]
