"""A public arena against the internet, through the real app: behind a reverse proxy that forwards as a Space's
does, clients are told apart by the address the proxy saw, sessions are the server's, private handlers check
their own permission, a request through a proxy or tunnel is public, and hostile input leaves memory bounded."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import run_cli
from gradio_client import Client
from gradio_client.utils import QueueError
from tgi_server import Behaviour, TGIServer, free_port

from demo import app, arena, clients, limits, queue_guard, ratings, results, settings, timings
from serving import backends

DECODING = (0.7, 0.9, 1.2, 64)
PUBLIC_HOST = "arena.example.org"
HOSTILE = int(os.environ.get("HOSTILE", 10_000))
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length", "x-test-client"}


class Proxy(http.server.ThreadingHTTPServer):
    """A reverse proxy on loopback that forwards as a Space's does: it connects to the app from its own address
    (127.0.0.2, which uvicorn does not trust), appends the address it saw the client come from to whatever
    ``X-Forwarded-For`` the client sent, and passes a public ``Host``. The test says which address each client
    comes from (``X-Test-Client``, which the proxy consumes). Responses stream through (SSE included)."""

    daemon_threads = True

    def __init__(self, app_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.app_port = app_port
        self.url = f"http://127.0.0.1:{self.server_address[1]}/"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the body ends when the connection closes: streams pass through as they come

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        seen = self.headers.get("x-test-client", "192.0.2.1")
        sent = self.headers.get("x-forwarded-for")
        headers["X-Forwarded-For"] = f"{sent}, {seen}" if sent else seen
        headers["Host"] = PUBLIC_HOST
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.app_port, source_address=("127.0.0.2", 0))
        upstream.request(self.command, self.path, body=body or None, headers=headers)
        answer = upstream.getresponse()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Connection", "close")
        self.end_headers()
        while chunk := answer.read1(65536):
            self.wfile.write(chunk)
            self.wfile.flush()
        upstream.close()

    do_GET = do_POST = _forward


def start(demo, **launch: object) -> tuple[str, int]:
    demo.queue()
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True, **launch)
    return f"http://127.0.0.1:{port}/", port


@pytest.fixture
def sides() -> Iterator[list]:
    servers = [TGIServer(Behaviour(reply=f"Answer from {n}.")).start() for n in ("zero", "dialogue")]
    yield [backends.make_backend(f"{n}={s.url}") for n, s in zip(("zero", "dialogue"), servers, strict=True)]
    for server in servers:
        server.stop()


@pytest.fixture
def arena_for(sides, tmp_path: Path, monkeypatch):
    """The app as ``python demo/app.py ARGS`` builds it (``app._build_for``, ``app.app_kwargs`` with the queue's
    guard), launched on loopback; yields a function of the arguments that answers (url, port, db)."""
    monkeypatch.delenv("SPACE_ID", raising=False)
    opened = []

    def build(*argv: str, token: str | None = None) -> tuple[str, int, Path]:
        if token:
            monkeypatch.setenv("LIMA_ARENA_ADMIN_TOKEN", token)
        db = tmp_path / "ratings.db"
        config = settings.parse(["--db", str(db), "--no-blind", *argv], environ={})
        store = ratings.Store(db)
        demo = app._build_for(config, sides, store, 64)
        url, port = start(demo, app_kwargs=app.app_kwargs(demo, store, queue_guard.QueueGuard(app.gate_for(config))))
        opened.append((demo, store))
        return url, port, db

    build.opened = opened  # the apps, for a test that reads Gradio's own state
    yield build
    for demo, store in opened:
        demo.close()
        store.close()


def rows(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(sql, args).fetchall()


def fn_index(url: str, api_name: str) -> tuple[int, int]:
    """An event's ``fn_index`` and number of inputs, from the page's config (what a browser reads)."""
    with urllib.request.urlopen(url + "config") as answer:
        config = json.load(answer)
    for dep in config["dependencies"]:
        if dep.get("api_name") == api_name:
            return dep["id"], len(dep["inputs"])
    raise LookupError(api_name)


def call(url: str, fn: int, data: list, session: str, headers: dict | None = None) -> dict:
    """Join the queue for event ``fn`` by its index, as a script would (raw HTTP), and read the stream to its
    end; answers the final message (``success``, ``output``)."""
    body = {"data": data, "fn_index": fn, "session_hash": session, "event_data": None, "trigger_id": None}
    with httpx.Client(base_url=url, headers=headers or {}, timeout=60) as http:
        content = json.dumps(body)  # NaN and Infinity as JavaScript writes them: a script may send them
        joined = http.post("gradio_api/queue/join", content=content, headers={"content-type": "application/json"})
        assert joined.status_code == 200, joined.text
        with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message
    raise AssertionError("the stream ended without a result")


def accept_notice(client: Client) -> None:
    """A public arena may ask a session to accept its consent notice (``/consent``) before a first message."""
    if "/consent" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]:
        client.predict(api_name="/consent")


def send(client: Client, side: str, text: str) -> list:
    return client.predict(text, *DECODING, "rater", api_name=f"/send_{side}")


# -- real client identity ------------------------------------------------------------------------------------
def test_behind_a_spaces_proxy_each_client_has_its_own_limits_and_forging_the_header_does_not_help(arena_for):
    """On main every client behind the proxy shared the proxy's address, so one script spent the whole arena's
    answers; here the proxy's forwarded address counts, and what the client writes into the header does not."""
    _, port, db = arena_for("--host", "0.0.0.0", "--max-turns-per-hour", "2")  # public, as on a Space
    proxy = Proxy(port)
    mallory = Client(proxy.url, verbose=False, headers={"X-Test-Client": "203.0.113.7"})
    mallory.predict(api_name="/new_conversation")
    accept_notice(mallory)
    send(mallory, "a", "one")
    send(mallory, "b", "two")
    with pytest.raises(Exception, match="You reached 2 answers per hour"):
        send(mallory, "a", "three")
    # a new session, claiming Ann's address in the header: still Mallory's address to the proxy
    forged = {"X-Test-Client": "203.0.113.7", "X-Forwarded-For": "198.51.100.9"}
    again = Client(proxy.url, verbose=False, headers=forged)
    again.predict(api_name="/new_conversation")
    accept_notice(again)
    with pytest.raises(Exception, match="answers per hour"):
        send(again, "a", "four")

    ann = Client(proxy.url, verbose=False, headers={"X-Test-Client": "198.51.100.9"})
    ann.predict(api_name="/new_conversation")
    accept_notice(ann)
    assert "Answer from zero." in str(send(ann, "a", "hello")[-1]["content"])
    send(ann, "b", "hello")
    assert sorted(rows(db, "SELECT user_text FROM turns")) == [("hello",), ("hello",), ("one",), ("two",)]
    proxy.shutdown()


def test_the_forwarded_address_is_the_right_most_hop_the_trusted_proxies_did_not_add():
    class Request:
        def __init__(self, peer: str, forwarded: str | None = None, user: str | None = None) -> None:
            self.client = type("Peer", (), {"host": peer})()
            self.headers = {"host": "127.0.0.1:7860"} | ({"x-forwarded-for": forwarded} if forwarded else {})
            self.username = user

    gate = clients.Gate(proxies="127.0.0.1, 10.0.0.0/8", space=False)
    assert gate.address(Request("10.1.2.3", "6.6.6.6, 198.51.100.9, 10.0.0.7")) == "198.51.100.9"
    assert gate.address(Request("198.51.100.20", "6.6.6.6")) == "198.51.100.20"  # a stranger's header: ignored
    assert gate.address(Request("127.0.0.1", "2001:db8:1:2:3:4:5:6")) == "2001:db8:1:2::/64"
    assert gate.client(Request("127.0.0.1", "6.6.6.6", user="ann")) == "user:ann"
    space = clients.Gate(space=True)  # the platform's proxy, whatever its address
    assert space.address(Request("172.20.0.9", "6.6.6.6, 198.51.100.9")) == "198.51.100.9"
    assert gate.is_public(Request("127.0.0.1", "198.51.100.9")) and not gate.is_public(Request("127.0.0.1"))
    with pytest.raises(ValueError, match="'nonsense' is not an address"):
        clients.networks("127.0.0.1, nonsense")


def test_a_forged_session_cannot_rate_as_the_judge_and_no_session_is_refused(arena_for):
    """On main the store's session was the client's ``session_hash`` verbatim: sending ``judge:<model>`` gave the
    judge's review grants, and with them the judge's ratings to replace."""
    url, _, db = arena_for()
    ann = Client(url, verbose=False)
    ann.predict(api_name="/new_conversation")
    send(ann, "a", "hello")
    send(ann, "b", "hello")
    conversation = ann.predict(api_name="/conversation")
    turn_a, turn_b = (t["turn_id"] for t in conversation["turns"])
    for turn in (turn_a, turn_b):
        assert ann.predict(turn, "pass", "ann", api_name="/rate") == "saved"
    ann.predict("ann", api_name="/verdict_a")
    store = ratings.Store(db)
    store.grant_review("judge:m", conversation["id"], "judge:m")  # as demo.judge does
    store.judge_turn(turn_a, "judge:m", "prompt", "excellent", "excellent")
    store.close()

    new, _ = fn_index(url, "new_conversation")
    for session in ("judge:m", "review:ann", "JUDGE:m"):
        body = {"data": [turn_a, "fail", "mallory"], "session_hash": session}
        answer = httpx.post(url + "gradio_api/run/rate", json=body)  # a session that never opened the page
        assert answer.status_code == 403 and "has not started from the page" in answer.text
        assert call(url, new, [], session)["success"]  # opened through the queue, under the name it chose
        answer = httpx.post(url + "gradio_api/run/rate", json=body)
        assert answer.status_code != 200 and "does not belong to your session" in answer.text
    nobody = httpx.post(url + "gradio_api/run/rate", json={"data": [turn_a, "fail", "mallory"]})
    assert nobody.status_code != 200 and "carries no session" in nobody.text
    assert rows(db, "SELECT rating, rater FROM ratings WHERE session = 'judge:m'") == [("excellent", "judge:m")]
    assert sorted(rows(db, "SELECT rating FROM ratings")) == [("excellent",), ("pass",), ("pass",)]
    assert all(not s.startswith(("judge:", "review:")) for (s,) in rows(db, "SELECT session FROM conversations"))
    # A typed name in the judge's namespace is refused too (the report counts raters named judge:* as judges).
    with pytest.raises(Exception, match="may not start with judge:"):
        ann.predict(turn_b, "fail", "judge:m", api_name="/rate")


# -- gates decided on the server ------------------------------------------------------------------------------
def _checkpoint_run(root: Path) -> Path:
    """A run folder as ``finetune`` leaves it for the Checkpoints tab: two kept epochs, their dev answers, and
    the epoch served now."""
    run = root / "runs" / "lima-1030"
    for epoch in (2, 3):
        (run / f"epoch-{epoch}").mkdir(parents=True)
        (run / f"epoch-{epoch}" / "config.json").write_text("{}")
        (run / "dev").mkdir(exist_ok=True)
        answer = {"id": "dev-01", "prompt": "Why?", "answer": f"Because {epoch}.", "epoch": epoch}
        (run / "dev" / f"epoch-{epoch}.jsonl").write_text(json.dumps(answer) + "\n")
    (run / "selected").write_text("epoch-2\n")
    return run


def test_private_handlers_called_by_fn_index_check_their_own_permission(arena_for, tmp_path: Path):
    """``api_visibility="private"`` only hides an event from the API page: on main, Serve this epoch rewrote the
    run's ``selected`` for anyone who named its ``fn_index``, and an opener could be set after the verdict."""
    run = _checkpoint_run(tmp_path)
    url, port, db = arena_for("--checkpoints", str(run), token="s3cret")
    proxy = Proxy(port)
    serve, inputs = fn_index(url, "serve")
    refresh, _ = fn_index(url, "refresh")

    def serve_as(base: str, session: str, epoch: str, token: str | None) -> dict:
        assert call(base, refresh, ["lima-1030"], session)["success"]  # the page's load: the epochs to offer
        return call(base, serve, ["lima-1030", epoch, token][:inputs], session)

    for token in ("", "wrong", None):
        answer = serve_as(proxy.url, "mallory1234", "epoch-3", token)
        assert not answer["success"] and "needs the admin token" in answer["output"]["error"]
        assert (run / "selected").read_text() == "epoch-2\n"  # nothing changed
    # the admin, through the same proxy, may; a local request (the operator's own machine) may without it
    assert serve_as(proxy.url, "admin12345", "epoch-3", "s3cret")["success"]
    assert (run / "selected").read_text() == "epoch-3\n"
    assert serve_as(url, "local12345", "epoch-2", "")["success"]
    assert (run / "selected").read_text() == "epoch-2\n"

    # After the verdict nothing of a conversation changes, the opener (a private event) included.
    ann = Client(url, verbose=False)
    ann.predict(api_name="/new_conversation")
    send(ann, "a", "hello")
    send(ann, "b", "hello")
    for turn in ann.predict(api_name="/conversation")["turns"]:
        ann.predict(turn["turn_id"], "pass", "ann", api_name="/rate")
    ann.predict("ann", api_name="/verdict_tie")
    pick, _ = fn_index(url, "pick_opener")
    before = rows(db, "SELECT count(*) FROM events")
    answer = call(url, pick, [0, None], ann.session_hash)
    assert rows(db, "SELECT count(*) FROM events") == before and rows(
        db, "SELECT count(*) FROM events WHERE kind = 'opener'"
    ) == [(0,)], answer
    proxy.shutdown()


def test_a_request_through_a_proxy_or_tunnel_is_public_even_on_loopback(arena_for):
    """On main ``--host 127.0.0.1`` meant private, whoever came through a tunnel: Results, the export and Review
    were open to the internet. Here such a request is public: no results without the token, no Review."""
    url, port, _ = arena_for()  # loopback, no admin token: open to the operator on this machine only
    proxy = Proxy(port)
    export, _ = fn_index(url, "export")
    shown, _ = fn_index(url, "results")
    review, _ = fn_index(url, "review_next")
    tunnel = {"Host": PUBLIC_HOST}  # ssh -R, cloudflared: the Host is the public name, no forwarded header
    for base, headers in ((proxy.url, {}), (url, tunnel)):
        assert not call(base, export, ["", "csv"], "strange1234", headers)["success"]
        assert not call(base, shown, [""], "strange1234", headers)["success"]
        assert not call(base, review, ["mallory"], "strange1234", headers)["success"]
    with urllib.request.urlopen(url + "config") as answer:
        components = json.load(answer)["components"]
    (box,) = [c for c in components if c.get("props", {}).get("elem_id") == "admin-token"]
    assert box["props"]["html_attributes"]["autocomplete"] == "off"  # the browser keeps no token history
    local = call(url, export, ["", "csv"], "local123456")
    assert local["success"] and local["output"]["data"][0]["path"].endswith("ratings.csv")
    proxy.shutdown()


# -- bounded whatever clients send ----------------------------------------------------------------------------
def test_inputs_out_of_range_are_refused_and_store_nothing(arena_for):
    """NaN, out-of-range and fractional decoding values (which a page's sliders never send, a script does), and
    rater names too long or in the judge's namespace: refused before anything is counted or stored."""
    url, _, db = arena_for()
    new, _ = fn_index(url, "new_conversation")
    send_a, _ = fn_index(url, "send_a")
    session = "hostile1234"
    assert call(url, new, [], session)["success"]
    bad = [  # Gradio's sliders check a range (NaN is in none and passes theirs); ours checks the rest
        ((float("nan"), 0.9, 1.2, 64), "temperature must be"),
        ((0.7, 0.9, float("nan"), 64), "repetition_penalty must be"),
        ((0.7, 0.9, 1.2, float("nan")), "max new tokens must be"),
        ((0.7, 0.9, 1.2, 64.5), "max new tokens must be"),
        ((0.7, float("inf"), 1.2, 64), ""),
        ((0.7, 0.9, -1, 64), ""),
        ((0.7, 0.9, 1.2, 10**9), ""),
        (("0.7", 0.9, 1.2, 64), ""),
    ]
    for decoding, said in bad:
        answer = call(url, send_a, ["hello", None, *decoding, "rater", None], session)
        assert not answer["success"] and said in (answer["output"]["error"] or "").lower(), answer
    for name, said in (
        ("r" * 81, "at most 80 characters"),
        ("Review:ann", "may not start with"),
        ("a\x07b", "printable"),
    ):
        answer = call(url, send_a, ["hello", None, *DECODING, name, None], session)
        assert not answer["success"] and said in answer["output"]["error"], answer
    call(url, send_a, ["x" * 100_000, None, *DECODING, "ann", None], session)  # refused with a warning
    assert rows(db, "SELECT count(*) FROM events") == [(0,)]
    assert arena.rater_of("  Ann   Smith ", None) == "Ann Smith"


def test_ten_thousand_hostile_requests_leave_memory_and_the_timings_bounded(sides, tmp_path: Path):
    """Random route names, random sessions and addresses, oversized and NaN inputs (``tests/hostile.py``, from a
    process of its own; half of the ratings from a session the server holds, so their inputs reach the handler and
    the limiter sees thousands of addresses), in two rounds: the second grows the server's memory no more than
    noise, the limiter keeps at most its keys, the timings one histogram per route of the page plus one for every
    other name."""
    store = ratings.Store(tmp_path / "ratings.db")
    caps = limits.Limits(turns_per_hour=5, ratings_per_minute=5, max_keys=300)
    demo = app.build(sides, store, caps=caps, admin=results.Admin(token="t", public=True))
    kwargs = app.app_kwargs(demo, store)
    url, _ = start(demo, app_kwargs=kwargs, state_session_capacity=500)  # app.STATE_SESSIONS, smaller
    registry = kwargs["middleware"][0].kwargs["registry"]
    new, _ = fn_index(url, "new_conversation")
    assert call(url, new, [], "mallory-session")["success"]  # half the ratings come from a session the server holds
    sizes, started = [], time.perf_counter()
    for seed in (1, 2):
        hostile = str(Path(__file__).with_name("hostile.py"))
        result = run_cli(hostile, url, str(HOSTILE // 2), str(seed), "--session", "mallory-session")
        assert result.returncode == 0, result.stderr[-2000:]
        statuses = json.loads(result.stdout)
        assert "200" not in statuses and sum(statuses.values()) == HOSTILE // 2  # nothing hostile was accepted
        # made-up routes (404), made-up sessions (403), and inputs that reached the handler and were refused
        assert {"404", "403"} < set(statuses) and sum(statuses.values()) - statuses["404"] - statuses["403"] > 0
        sizes.append((_rss_mb(), len(caps.ratings), len(registry.routes)))
    elapsed = time.perf_counter() - started
    (rss_1, _, routes_1), (rss_2, keys_2, routes_2) = sizes
    assert rows(tmp_path / "ratings.db", "SELECT count(*) FROM events") == [(0,)]
    assert keys_2 <= 300 and routes_2 == routes_1 <= len(registry.known) + 1
    assert rss_2 - rss_1 < 40, (sizes, elapsed)
    summary = httpx.get(url + timings.ROUTE.lstrip("/")).json()
    assert set(summary["routes"]) <= {timings.OTHER, *registry.known}
    assert summary["routes"][timings.OTHER]["count"] >= HOSTILE // 2
    demo.close()
    store.close()


def test_abandoned_queue_joins_leave_gradio_bounded_and_a_rater_is_still_served(arena_for):
    """Joins with fresh sessions whose results nobody reads (``tests/hostile.py --join``), from one address and
    from several, as the proxy forwards them. On main Gradio kept each with no cap (about 0.25 MB a join), and
    past 2,000 such sessions its message cache dropped a live session's queue, whose next message stopped the
    queue for everyone. Here a client has at most ``QUEUE_PER_CLIENT`` unread events and the rest are refused
    with Gradio's own "queue full" (503, which gradio_client raises as QueueError); what nobody reads is dropped,
    page state included, ``QUEUE_ABANDON_S`` after it joined; another client's turn goes through all along."""
    url, port, _ = arena_for("--host", "0.0.0.0")  # public, as on a Space
    demo = arena_for.opened[-1][0]
    queue, holder = demo._queue, demo.server_app.state_holder
    # nothing is abandoned while the floods run, however slow the machine; made short once they are refused
    guard = queue._lima_guard
    guard.abandon_after = 3600.0
    new, _ = fn_index(url, "new_conversation")
    mallory = {"X-Forwarded-For": "203.0.113.4"}  # one of the flood's addresses
    scripted = Client(url, verbose=False, headers=mallory)
    ann = Client(Proxy(port).url, verbose=False, headers={"X-Test-Client": "198.51.100.9"})
    hostile, rss, started = str(Path(__file__).with_name("hostile.py")), [_rss_mb()], time.perf_counter()
    for seed, addresses in ((1, 1), (2, 4)):
        result = run_cli(hostile, url, str(HOSTILE // 10), str(seed), "--join", str(new), "--addresses", str(addresses))
        assert result.returncode == 0, result.stderr[-2000:]
        statuses = json.loads(result.stdout)
        assert statuses["503"] > statuses.get("200", 0) and set(statuses) <= {"200", "503"}, statuses
        unread = sum(map(len, queue.pending_event_ids_session.values()))
        assert unread <= limits.QUEUE_PER_CLIENT * addresses and len(holder.session_data) <= unread + 10
        rss.append(_rss_mb())
    # its last joins are still unread: refused as Gradio refuses, to a script and to gradio_client
    body = {"data": [], "fn_index": new, "session_hash": "mallory0001"}
    refused = httpx.post(url + "gradio_api/queue/join", json=body, headers=mallory)
    assert refused.status_code == 503 and refused.json()["detail"].startswith("Queue is full."), refused.text
    with pytest.raises(QueueError):
        scripted.predict(api_name="/new_conversation")

    ann.predict(api_name="/new_conversation")
    accept_notice(ann)
    assert "Answer from zero." in str(send(ann, "a", "hello")[-1]["content"])
    guard.abandon_after = 1.0  # every join of the floods is older than that by the next sweep
    time.sleep(guard.abandon_after + queue_guard.SWEEP_EVERY_S + 0.2)
    assert call(url, new, [], "mallory0002", mallory)["success"]  # its quota came back: nothing is held for it
    assert sum(map(len, queue.pending_event_ids_session.values())) <= 1 and len(holder.session_data) <= 5
    print(json.dumps({"abandoned_joins": 2 * (HOSTILE // 10), "rss_mb": rss, "s": time.perf_counter() - started}))
    assert rss[2] - rss[1] < 40, rss


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_direct_calls_from_made_up_sessions_do_not_push_a_rater_out_of_the_server(sides, tmp_path: Path):
    """A direct call (``POST /gradio_api/run/rate``) with a ``session_hash`` the server had never seen made Gradio
    build that session a whole page's state before the handler refused it, in a holder of bounded size: on main,
    three times its capacity of such calls pushed a live rater's session out ("Start a new conversation first.").
    Here a session Gradio does not hold and the store does not know is refused before Gradio builds anything; a
    rater's own direct rating still goes through, also once Gradio has dropped the session (as after a restart);
    and events made for the queue cannot be called directly, on a Space or not."""
    store = ratings.Store(tmp_path / "ratings.db")
    demo = app.build(sides, store)
    capacity = 40
    url, _ = start(demo, app_kwargs=app.app_kwargs(demo, store), state_session_capacity=capacity)
    holder = demo.state_holder
    ann = Client(url, verbose=False)
    ann.predict(api_name="/new_conversation")
    send(ann, "a", "hello")
    routes = ("run/rate", "api/rate", "run/new_conversation", "component_server")
    made_up = [
        httpx.post(
            f"{url}gradio_api/{routes[n % 4]}", json={"data": ["t", "pass", "x"], "session_hash": f"made-up-{n}"}
        )
        for n in range(3 * capacity)
    ]
    assert {a.status_code for a in made_up} == {403}, {a.status_code for a in made_up}
    assert made_up[0].json()["error"].startswith("this session has not started from the page")
    assert not any(session.startswith("made-up-") for session in holder.session_data)
    assert "Answer from" in str(send(ann, "a", "again")[-1]["content"])  # the rater's conversation goes on
    (turn, again) = (t["turn_id"] for t in ann.predict(api_name="/conversation")["turns"])

    def rate(turn_id: str) -> httpx.Response:
        return httpx.post(
            url + "gradio_api/run/rate", json={"data": [turn_id, "pass", "ann"], "session_hash": ann.session_hash}
        )

    assert rate(turn).json().get("data") == ["saved"], rate(turn).text
    holder.delete_state(ann.session_hash)  # dropped by Gradio, as by a restart: the store still knows the session
    assert rate(again).json()["data"] == ["saved"]
    for route in ("run/new_conversation", "api/send_a"):  # queued events: through the queue and its guard only
        direct = httpx.post(f"{url}gradio_api/{route}", json={"data": [], "session_hash": ann.session_hash})
        assert direct.status_code == 404 and "does not accept direct HTTP POST" in direct.text, (route, direct.text)
    demo.close()
    store.close()
