"""No secret leaves: a side's credentials work but reach no page, log, database, mirror or report, and HF_TOKEN
goes to Hugging Face hosts only (serving/credentials.py). Real app, real loopback servers, a real browser."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, REPO, run_cli
from gradio_client import Client
from test_app import wait_until_up
from tgi_server import Behaviour, TGIServer, free_port

from demo import judge
from serving import backends, credentials

PASSWORD = "pw-Zq9x7Kw2"  # what must appear nowhere: distinct enough not to occur by chance
KEY = "key-Vb7Qm3Xs"  # a gateway's key, in the URL's query
HF_TOKEN = "hf_NeverSentOverPlainHttp0123456789"
BASIC = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, KEY, HF_TOKEN, base64.b64encode(f"user:{PASSWORD}".encode()).decode())


def locked(url: str) -> str:
    """``url`` with the look-alike's user and password in it, as an operator gives such a side."""
    return url.replace("http://", f"http://user:{PASSWORD}@")


def leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def files_text(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` (a file or a folder), as text whatever its bytes (SQLite's WAL included)."""
    found = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            found[str(path)] = path.read_bytes().decode("latin-1")
    return found


def browse_to_a_verdict(url: str) -> str:
    """A rater in a real browser: one message to both sides, both rated, a verdict; the page's HTML after it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        page.goto(url)
        page.wait_for_selector("#status:has-text('ready')", timeout=60_000)
        page.fill("#rater input, #rater textarea", "alice")
        page.fill("#input-both textarea", "Hello?")
        page.click("#send-both")
        for side in "ab":
            page.wait_for_selector(f"#rate-{side}-1", timeout=30_000)
            page.locator(f"#rate-{side}-1 label", has_text="pass").click()
        page.wait_for_selector("#verdict-a:not([disabled])", timeout=10_000)
        page.click("#verdict-a")
        page.wait_for_selector("#verdict-note:has-text('Verdict saved')", timeout=10_000)
        html = page.content() + page.inner_text("body")
        browser.close()
    return html


def talk_through_the_api(url: str, locked_server: TGIServer) -> list:
    """A conversation through the API to its verdict, then a turn the locked side fails with an error that
    echoes its URL and password; every answer the API gave."""
    client, answers = Client(url, verbose=False), []
    answers.append(client.predict(api_name="/new_conversation"))
    for side in "ab":
        answers.append(client.predict("Hello there", 0.7, 0.9, 1.2, 32, "bob", api_name=f"/send_{side}"))
    conversation = client.predict(api_name="/conversation")
    answers.append(conversation)
    for turn in conversation["turns"]:
        answers.append(client.predict(turn["turn_id"], "pass", "bob", api_name="/rate"))
    answers.append(client.predict("bob", api_name="/verdict_b"))  # the reveal: labels and the verdict note
    answers.append(client.predict(api_name="/conversation"))
    # The server's own error text carries the credentials back (a proxy echoing the upstream URL, say).
    echo = f"upstream {locked(locked_server.url)}/v1 refused user:{PASSWORD} (Authorization: {BASIC})"
    locked_server.behaviour.status, locked_server.behaviour.error_message = 500, echo
    answers.append(client.predict(api_name="/new_conversation"))
    for side in "ab":  # blind: which side the locked server sits on was drawn
        answers.append(client.predict("Again?", 0.7, 0.9, 1.2, 32, "bob", api_name=f"/send_{side}"))
    answers.append(client.predict(api_name="/conversation"))
    return answers


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium, as the README's test command does")
def test_a_side_with_a_password_answers_and_no_secret_reaches_page_api_log_database_mirror_or_report(tmp_path):
    reply_a, reply_b = "The locked side answers.", "The open side answers."
    with (
        TGIServer(Behaviour(reply=reply_a, basic_auth=("user", PASSWORD))) as a,
        TGIServer(Behaviour(reply=reply_b, query_key=KEY)) as b,
    ):
        port, db, mirror, log = free_port(), tmp_path / "ratings.db", tmp_path / "mirror", tmp_path / "app.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_TOKEN": HF_TOKEN}
        env.pop("HF_TOKEN_HOSTS", None)
        # Both sides unnamed: each is named after its URL, the case that used to carry the password everywhere.
        args = ["--left", locked(a.url), "--right", f"{b.url}/?api_key={KEY}", "--port", str(port), "--db", str(db)]
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "demo/app.py", *args, "--mirror-dir", str(mirror)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_until_up(url, process, log, timeout=120)
            html = browse_to_a_verdict(url)
            answers = json.dumps(talk_through_the_api(url, a))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        received = {"a": a.received, "b": b.received}

    # The credentials worked: both sides answered, A's requests carried its password as HTTP Basic, B's its key.
    assert reply_a in html and reply_b in html and reply_a in answers
    assert "was http://127.0.0.1:" in html  # the reveal names the side by its URL without the password
    assert received["a"] and all(headers.get("authorization") == BASIC for _, _, headers in received["a"])
    assert received["b"] and all(f"api_key={KEY}" in path for _, path, _ in received["b"])
    # HF_TOKEN went to neither: one has its own credentials, the other is plain http on a host not listed.
    assert all("authorization" not in headers for _, _, headers in received["b"])
    errors = [a for a in json.loads(answers) if "500" in json.dumps(a)]
    assert "refused" in answers and "***" in answers, errors  # the echoed error reached the pane, redacted

    report = tmp_path / "report"
    result = run_cli("-m", "demo.report", "--db", str(db), "--out", str(report), env={"HF_TOKEN": HF_TOKEN})
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(report.iterdir()) and list(mirror.rglob("*.jsonl"))
    places = {
        "the page (DOM and HTML)": html,
        "the API's answers": answers,
        "the app's log": log.read_text(),
        "the report command's output": result.stdout + result.stderr,
        **files_text(*tmp_path.glob("ratings.db*"), mirror, report),
    }
    assert "http://127.0.0.1:" in places["the app's log"]  # the log names the sides, without the password
    leaked = {place: found for place, text in places.items() if (found := leaks(text))}
    assert not leaked, leaked


def test_every_name_a_backend_shows_drops_the_credentials_and_its_errors_are_redacted():
    spec = f"https://user:{PASSWORD}@example.org:8443/base?api_key=k-{PASSWORD}&x=1#org/model"
    backend = backends.make_backend(spec)
    for shown in (backend.name, backend.source, backend.url, backend.model):
        assert not leaks(shown) and "user" not in shown, shown
    assert backend.name == "https://example.org:8443/base?api_key=***&x=***#org/model"
    named = backends.make_backend(f"lima=http://u:{PASSWORD}@127.0.0.1:9")
    assert (named.name, named.source) == ("lima", "http://127.0.0.1:9")
    dead = backends.make_backend(f"http://user:{PASSWORD}@127.0.0.1:9")  # nothing listens: unreachable
    status = asyncio.run(dead.probe())
    assert not status.ok and not leaks(status.model + status.detail)
    with pytest.raises(backends.BackendError) as failure:
        asyncio.run(_answer(dead))
    assert "127.0.0.1:9" in str(failure.value) and not leaks(str(failure.value))


def test_a_wrong_password_is_refused_and_the_servers_error_text_is_redacted():
    echo = f"bad credentials user:{PASSWORD} for http://user:{PASSWORD}@127.0.0.1, token {HF_TOKEN}"
    with TGIServer(Behaviour(basic_auth=("user", "another-password"), status=200)) as server:
        backend = backends.make_backend(locked(server.url))
        with pytest.raises(backends.BackendError, match=r"\(401\)") as refused:
            asyncio.run(_answer(backend))
        assert not leaks(str(refused.value))
        server.behaviour = Behaviour(status=422, error_message=echo)
        with pytest.raises(backends.BackendError, match="422") as echoed:
            asyncio.run(_answer(backends.make_backend(locked(server.url))))
    assert not leaks(str(echoed.value)) and "bad credentials" in str(echoed.value)


async def _answer(backend) -> str:
    chunks = [c async for c in backend.stream([{"role": "user", "content": "hi"}], backends.Decoding())]
    return "".join(c for c in chunks if not isinstance(c, backends.Waiting))


def test_the_judge_authenticates_with_its_urls_password_never_shows_it_and_gets_no_hf_token_over_http(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    monkeypatch.delenv("HF_TOKEN_HOSTS", raising=False)
    with TGIServer(Behaviour(reply="Rating: pass", basic_auth=("user", PASSWORD))) as locked_server:
        locked_judge = judge.Judge(locked(locked_server.url))
        asyncio.run(locked_judge.start())
        assert asyncio.run(locked_judge.ask([{"role": "user", "content": "rate"}])) == "Rating: pass"
        shown = locked_judge.name + locked_judge.backend.source + locked_judge.backend.url
        assert not leaks(shown) and locked_judge.backend.url == locked_server.url
        assert all(h.get("authorization") == BASIC for _, _, h in locked_server.received)
    with TGIServer(Behaviour(reply="Rating: pass")) as plain:
        asyncio.run(judge.Judge(plain.url).start())
        assert plain.received and all("authorization" not in h for _, _, h in plain.received)
    with pytest.raises(judge.JudgeError) as bad:
        judge.Judge(f"user:{PASSWORD}@example.org")  # not a URL: the error quotes it, without the password
    assert not leaks(str(bad.value))


def test_hf_token_goes_to_hugging_face_hosts_over_https_and_to_listed_hosts_only():
    env = {"HF_TOKEN": HF_TOKEN}
    sent = [
        "https://huggingface.co",
        "https://router.huggingface.co/v1",
        "https://hf.co/x",
        "https://me-tgi.hf.space",
        "https://x1.us-east-1.aws.endpoints.huggingface.cloud/",
        "https://HUGGINGFACE.CO.",
    ]
    withheld = [
        "http://huggingface.co",  # plain http: the token would cross the network in clear
        "http://x.endpoints.huggingface.cloud",
        "http://127.0.0.1:8080",
        "https://example.org",
        "https://huggingface.co.evil.example",
        "https://evilhuggingface.co",
        "https://hf.space.evil.example",
        "https://huggingface.co@evil.example",  # user-info, then the real host
        "ftp://huggingface.co",
    ]
    assert [u for u in sent if credentials.authorization(u, env) != f"Bearer {HF_TOKEN}"] == []
    assert [u for u in withheld if credentials.sends_hf_token(u, env)] == []
    assert [u for u in withheld if HF_TOKEN in (credentials.authorization(u, env) or "")] == []
    assert credentials.authorization("https://huggingface.co", {}) is None  # no token, no header
    # A URL's own user and password win over HF_TOKEN, even on a Hugging Face host.
    assert credentials.authorization(f"https://user:{PASSWORD}@huggingface.co", env) == BASIC
    # The opt-in: HF_TOKEN_HOSTS lists more hosts (https), or a host with http:// for plain http too.
    listed = {**env, "HF_TOKEN_HOSTS": "tgi.example.org, *.corp.example, http://127.0.0.1"}
    assert credentials.sends_hf_token("https://tgi.example.org:8443/v1", listed)
    assert not credentials.sends_hf_token("http://tgi.example.org", listed)  # listed for https only
    assert credentials.sends_hf_token("https://a.b.corp.example", listed)
    assert not credentials.sends_hf_token("https://corp.example.evil", listed)
    assert credentials.sends_hf_token("http://127.0.0.1:8080", listed)
    assert not credentials.sends_hf_token("http://127.0.0.2:8080", listed)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"cannot reach https://user:{PASSWORD}@host.example:8443/v1: refused", "https://host.example:8443/v1"),
        (f"https://us%40er:p%3A{PASSWORD}@host/x", "https://host/x"),
        (f"http://a:b@c:{PASSWORD}@host:1", "http://host:1"),  # an @ inside the password
        (f"connect user:{PASSWORD}@10.0.0.1:80 failed", "10.0.0.1:80 failed"),  # no scheme
        (f"GET https://host/v1?token={PASSWORD}&model=m", "https://host/v1?token=***&model=***"),
        (f"'https://host/?sig={PASSWORD}'", "'https://host/?sig=***'"),
        (f"Authorization: Bearer {HF_TOKEN}", "Authorization: Bearer ***"),
        (f"basic {base64.b64encode(PASSWORD.encode()).decode()}", "basic ***"),
        (f"the token is {HF_TOKEN}.", "the token is hf_***."),
        (f'{{"api_key": "{PASSWORD}", "max_tokens": 512}}', '"max_tokens": 512'),
        (f"password={PASSWORD} X-Api-Key: {PASSWORD}", "password=*** X-Api-Key: ***"),
        ("`max_new_tokens` must be <= 2048. Given: 1900 `inputs` tokens", "Given: 1900 `inputs` tokens"),
    ],
)
def test_redact_removes_credentials_of_every_shape(text: str, kept: str):
    assert not leaks(credentials.redact(text)) and kept in credentials.redact(text)


def test_a_registered_password_and_hf_token_are_redacted_wherever_they_appear_and_in_log_records(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "not-shaped-like-a-hub-token")
    credentials.split_url(f"https://user:{PASSWORD}@host.example")  # a backend's URL registers its password
    assert credentials.redact(f"echo {PASSWORD}; not-shaped-like-a-hub-token") == "echo ***; ***"
    record = logging.LogRecord("httpx2", logging.INFO, __file__, 1, "GET %s", (locked("http://h:1/x?k=v"),), None)
    assert credentials.RedactingFilter().filter(record) and record.getMessage() == "GET http://h:1/x?k=***"
