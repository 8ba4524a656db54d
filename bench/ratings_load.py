"""Ratings under load, and after a crash: is every acknowledged rating stored once, and how fast?

The real app (``python demo/app.py`` in a subprocess, its two sides served by loopback TGI-protocol servers,
``tests/tgi_server.py``) is driven through its API by concurrent raters (``gradio_client``, one session each).
Each rater starts a conversation, has two turns on each side, then sends ``--ratings`` ratings cycling over its
four turns (so most are changes of an earlier rating), each after a pause as a reader would take (``--think``,
uniform between half and one and a half times it), and a verdict. A rating counts as acknowledged when the API
call returned. The ratings alternate between two clients of the same API and session: ``gradio_client`` (its
queue protocol, polled every 50 ms, so ~60 ms is the floor on that path) and a plain HTTP client (one kept-alive
connection per rater, ``POST /gradio_api/run/rate``, which is what the endpoint is: ``queue=False``). The app
times that route itself (``demo/timings.py``: request received to response sent, after the commit) and the
benchmark reads its histogram at ``GET /lima-arena/timings``.

  ratings_sent / ratings_stored   acknowledged ratings / rows in the append-only rating_log
  duplicates                      rows in rating_log or the current view beyond what was acknowledged
  lost                            acknowledged ratings missing from rating_log, or a current rating that is not
                                  the rater's last acknowledged one
  p50_ms / p99_ms                 latency of one rating through gradio_client (its polling included)
  client_p50_ms / client_p99_ms   the same through plain HTTP (target: p99 < 150 ms)
  server_p50_ms / server_p99_ms   the app's own measure of those plain HTTP ratings (target: p99 < 100 ms)

With ``--kill`` the app is killed with SIGKILL once half the ratings are in, restarted on the same database, and
``lost_after_kill`` counts acknowledged ratings that did not survive (target 0). With ``--mirror-fails`` the
app writes its event log to a mirror folder, which is replaced by a file (every append fails) from a quarter to
half of the ratings, then restored; after a SIGTERM, ``mirror_lost`` / ``mirror_duplicates`` compare the
folder's events with the database's (target 0 and 0).

With ``--kill --wipe`` the app pushes its event log to a dataset repo on a local Hub-protocol server
(``tests/hub_server.py``, at ``HF_ENDPOINT``) every ``--push-every`` seconds, as on a Space without persistent
storage; after the SIGKILL its database and mirror folder are deleted (the container is gone) and it restarts from
the repo. ``acknowledged_lost`` counts acknowledged ratings missing after the restart, and ``loss_window_s`` is how
long before the kill the oldest of them was acknowledged (0 when none is lost): at most the push interval plus one
upload (target: under 60 s).

Prints one JSON line. ``python bench/ratings_load.py [--raters 50] [--ratings 40] [--kill [--wipe] | --mirror-fails]``.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import itertools
import json
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from gradio_client import Client  # noqa: E402
from hub_server import HubServer  # noqa: E402
from tgi_server import Behaviour, TGIServer, free_port  # noqa: E402

from common import cli  # noqa: E402
from demo.protocol import RATINGS  # noqa: E402

DECODING = (0.7, 0.9, 1.2, 64)


class App:
    """``python demo/app.py`` in a subprocess, restartable on the same database and port."""

    def __init__(self, left: str, right: str, db: Path, mirror: Path | None = None, env: dict | None = None) -> None:
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.args = [sys.executable, "demo/app.py", "--left", left, "--right", right, "--db", str(db)]
        self.args += ["--port", str(self.port), "--turn-limit", "10"]
        if mirror is not None:
            self.args += ["--mirror-dir", str(mirror)]
        self.log = db.with_suffix(".log")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        with self.log.open("a") as out:
            self.process = subprocess.Popen(self.args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the app exited: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=2).close()
                return
            except OSError:
                time.sleep(0.3)
        raise SystemExit("the app did not come up within 120 s")

    def timings(self) -> dict:
        """The app's own latency histogram of the plain HTTP ratings (demo/timings.py)."""
        with urllib.request.urlopen(self.url + "lima-arena/timings", timeout=10) as answer:
            routes = json.load(answer)["routes"]
        return routes.get("/gradio_api/run/rate", {})

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


class PlainRater:
    """The rating API without gradio_client: one kept-alive HTTP connection, the rater's own session."""

    IDLE_S = 4.0  # uvicorn closes a connection idle for 5 s (timeout_keep_alive): reconnect before that

    def __init__(self, url: str, session_hash: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        self.session_hash = session_hash
        self.used = time.monotonic()

    def rate(self, turn_id: str, rating: str, name: str) -> None:
        if time.monotonic() - self.used > self.IDLE_S:
            self.connection.close()  # the next request opens a new one (its set-up is in the latency)
        self.used = time.monotonic()
        body = json.dumps({"data": [turn_id, rating, name], "session_hash": self.session_hash})
        self.connection.request("POST", "/gradio_api/run/rate", body=body, headers={"Content-Type": "application/json"})
        answer = self.connection.getresponse()
        payload = answer.read()
        if answer.status != 200 or json.loads(payload)["data"] != ["saved"]:
            raise RuntimeError(f"rating refused: HTTP {answer.status}: {payload[:200]!r}")


def rater(
    url: str,
    name: str,
    ratings: int,
    think: float,
    acked: list,
    latencies: list,
    plain_latencies: list,
    errors: list,
    count,
) -> None:
    rng = random.Random(name)
    client = Client(url, verbose=False)
    client.predict(api_name="/new_conversation")
    for text in ("First question.", "A follow-up."):
        for side in "ab":
            client.predict(text, *DECODING, name, api_name=f"/send_{side}")
    turns = [t["turn_id"] for t in client.predict(api_name="/conversation")["turns"]]
    plain = PlainRater(url, client.session_hash)
    for i in range(ratings):
        time.sleep(rng.uniform(0.5, 1.5) * think)  # a person reads the answer before rating it
        turn_id, rating = turns[i % len(turns)], rng.choice(RATINGS)
        started, sent_at = time.perf_counter(), time.time()
        try:
            if i % 2:
                plain.rate(turn_id, rating, name)
            else:
                client.predict(turn_id, rating, name, api_name="/rate")
        except Exception as err:  # the app was killed: stop, and count only what was acknowledged
            errors.append(f"{name} rating {i} ({'http' if i % 2 else 'gradio_client'}): {str(err)[:200]}")
            return
        (plain_latencies if i % 2 else latencies).append(time.perf_counter() - started)
        acked.append((turn_id, name, rating, i, sent_at, time.time()))
        with count.get_lock():
            count.value += 1
    try:
        client.predict(name, api_name=f"/verdict_{rng.choice(('a', 'b', 'tie'))}")
    except Exception:  # as above
        return


_COUNT = None  # acknowledged ratings so far, shared by all client processes (set by the pool's initializer)


def _share(count) -> None:
    global _COUNT
    _COUNT = count
    # The clients share this machine's cores with the app they measure: let the app go first, so what is
    # measured is the app under load, not the load generator starving it.
    os.nice(10)


def worker(url: str, names: list[str], ratings: int, think: float) -> tuple[list, list, list, list]:
    """One process of raters (threads): several processes keep the clients' own GIL out of the latencies."""
    count = _COUNT
    acked: list = []
    latencies: list[float] = []
    plain: list[float] = []
    errors: list[str] = []
    threads = [
        threading.Thread(target=rater, args=(url, name, ratings, think, acked, latencies, plain, errors, count))
        for name in names
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return acked, latencies, plain, errors


def check(db: Path, acked: list, in_flight: int = 0) -> dict:
    """Compare the database with what was acknowledged. ``in_flight``: calls per rater that may have been
    committed but not answered (the app killed in between); such a row is stored, not duplicated."""
    with sqlite3.connect(db) as con:
        logged = collections.Counter(con.execute("SELECT turn_id, rater, rating FROM rating_log").fetchall())
        current = con.execute("SELECT turn_id, rater, rating FROM ratings").fetchall()
    sent = collections.Counter((t, r, g) for t, r, g, *_ in acked)
    lost = sum((sent - logged).values())
    extra_by_rater = collections.Counter()
    for (_, name, _), n in (logged - sent).items():
        extra_by_rater[name] += n
    extra = sum(max(0, n - in_flight) for n in extra_by_rater.values())
    last: dict[tuple[str, str], tuple[int, str]] = {}
    for turn_id, name, rating, i, *_ in acked:
        if (turn_id, name) not in last or i > last[(turn_id, name)][0]:
            last[(turn_id, name)] = (i, rating)
    view = collections.Counter((t, r) for t, r, _ in current)
    view_dupes = sum(n - 1 for n in view.values() if n > 1)
    # A current rating that is not the rater's last acknowledged one is a lost change (unless an unanswered
    # later call, in flight at a kill, was committed: that one may legitimately be newer).
    stale = 0 if in_flight else sum(1 for t, r, g in current if (t, r) in last and last[(t, r)][1] != g)
    return {
        "ratings_stored": sum(logged.values()),
        "stored_unacknowledged": sum(extra_by_rater.values()) if in_flight else 0,
        "duplicates": extra + view_dupes,
        "lost": lost + stale,
    }


def commit_latencies(db: Path, acked: list) -> list[float]:
    """Seconds from sending each rating to its row being committed (same machine, same clock): the server's
    share of the latency, without the client's polling. Pairs the n-th log row of a (turn, rater) with the
    n-th acknowledged rating of it."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT turn_id, rater, at FROM rating_log ORDER BY seq").fetchall()
    committed: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for turn_id, name, at in rows:
        committed[(turn_id, name)].append(at)
    sent: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for turn_id, name, _, _, sent_at, _ in sorted(acked, key=lambda a: a[3]):
        sent[(turn_id, name)].append(sent_at)
    return [at - s for key, times in sent.items() for s, at in zip(times, committed[key], strict=False)]


def mirror_check(db: Path, folder: Path) -> dict:
    """The mirror folder's events against the database's: every one copied, none twice."""
    with sqlite3.connect(db) as con:
        stored = collections.Counter(row[0] for row in con.execute("SELECT id FROM events"))
    copied = collections.Counter(
        json.loads(line)["id"] for path in folder.glob("events-*.jsonl") for line in path.read_text().splitlines()
    )
    return {
        "mirror_events": sum(copied.values()),
        "mirror_lost": sum((stored - copied).values()),
        "mirror_duplicates": sum((copied - stored).values()) + sum(n - 1 for n in copied.values() if n > 1),
    }


def loss(db: Path, acked: list, killed_at: float) -> dict:
    """Acknowledged ratings missing from the database, and how long before the kill the oldest of them was
    acknowledged: of n missing copies of one rating, the n acknowledged last are the ones lost."""
    with sqlite3.connect(db) as con:
        logged = collections.Counter(con.execute("SELECT turn_id, rater, rating FROM rating_log").fetchall())
    acks: dict[tuple, list[float]] = collections.defaultdict(list)
    for turn_id, name, rating, _, _, acked_at in acked:
        acks[(turn_id, name, rating)].append(acked_at)
    lost_at = [at for key, times in acks.items() for at in sorted(times)[logged[key] :]]
    return {
        "acknowledged_lost": len(lost_at),
        "loss_window_s": round(killed_at - min(lost_at), 1) if lost_at else 0.0,
    }


HUB_REPO = "bench/ratings"


def hub_env(hub: HubServer | None, args: argparse.Namespace, workdir: Path) -> dict[str, str]:
    """The app's settings for pushing to the local Hub (a Space without persistent storage); none without it."""
    if hub is None:
        return {}
    return {
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": "hf_bench",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(workdir / "hf"),
        "LIMA_ARENA_DATASET_REPO": HUB_REPO,
        "LIMA_ARENA_PUSH_EVERY": str(args.push_every),
    }


def wipe(db: Path) -> None:
    """What a Space without persistent storage keeps of its disk when the container goes: nothing."""
    for path in db.parent.glob(db.name + "*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def break_mirror(folder: Path, count, start: int, end: int, done) -> int:
    """Replace the mirror folder by a file between ``start`` and ``end`` acknowledged ratings; how many were
    acknowledged while it failed."""
    while count.value < start and not done():
        time.sleep(0.05)
    aside = folder.with_name(folder.name + ".aside")
    folder.rename(aside)
    folder.write_text("every append to this folder fails now\n")
    failed_from = count.value
    while count.value < end and not done():
        time.sleep(0.05)
    folder.unlink()
    aside.rename(folder)
    return count.value - failed_from


def percentile_ms(seconds: list[float], q: float) -> float | None:
    ms = sorted(1000 * x for x in seconds)
    if not ms:
        return None
    return round(statistics.median(ms) if q == 0.5 else ms[min(len(ms) - 1, int(q * len(ms)))], 1)


def run(args: argparse.Namespace, workdir: Path) -> dict:
    reply = "A short answer."
    servers = [TGIServer(Behaviour(reply=reply)).start() for _ in range(2)]
    db = workdir / "ratings.db"
    folder = workdir / "mirror" if args.mirror_fails else None
    hub = HubServer().start() if args.wipe else None
    app = App(
        f"zero={servers[0].url}", f"dialogue={servers[1].url}", db, mirror=folder, env=hub_env(hub, args, workdir)
    )
    app.start()
    context = multiprocessing.get_context("spawn")
    count = context.Value("i", 0)
    names = [f"rater{n:02d}" for n in range(args.raters)]
    groups = [names[i :: args.procs] for i in range(args.procs)]
    started = time.perf_counter()
    result: dict = {}
    with context.Pool(args.procs, initializer=_share, initargs=(count,)) as pool:
        jobs = pool.starmap_async(worker, [(app.url, group, args.ratings, args.think) for group in groups])
        total = args.raters * args.ratings
        if args.kill:
            while count.value < total // 2 and not jobs.ready():
                time.sleep(0.05)
            server = app.timings()  # what the app measured until now: the kill takes its histogram with it
            app.kill()  # a rating whose call returned is committed: every acknowledged one must survive
            killed_at = time.time()
            if args.wipe:
                wipe(db)  # only the Hub copy is left
        if folder is not None:
            result["acknowledged_while_mirror_failed"] = break_mirror(folder, count, total // 4, total // 2, jobs.ready)
        outputs = jobs.get(timeout=1800)
    acked = [a for out, *_ in outputs for a in out]
    latencies = [x for _, lat, _, _ in outputs for x in lat]
    plain = [x for _, _, lat, _ in outputs for x in lat]
    errors = [e for *_, errs in outputs for e in errs]
    if not args.kill:
        server = app.timings()
    if args.kill:
        app.start()  # the same database, as after a crash; with --wipe, rebuilt from the Hub copy
        app.stop()
        result["lost_after_kill"] = check(db, acked, in_flight=1)["lost"]
        result["acknowledged_before_kill"] = len(acked)
    if hub is not None:
        result.update(loss(db, acked, killed_at))
        pushes = hub.commit_times(HUB_REPO)
        result["push_every_s"] = args.push_every
        before = [at for at in pushes if at < killed_at]
        result["pushes_before_kill"] = len(before)
        # The exposure just before each push landed (and at the kill): the window a crash then would have had.
        gaps = [b - a for a, b in itertools.pairwise([*before, killed_at])]
        result["max_push_gap_s"] = round(max(gaps), 1) if gaps else None
        result["restored"] = next(
            (line.split(": ", 1)[-1] for line in app.log.read_text().splitlines() if " rebuilt " in line), None
        )
        hub.stop()
    wall = time.perf_counter() - started
    app.stop()  # SIGTERM: the mirror copies what is left
    if folder is not None:
        result.update(mirror_check(db, folder))
    for tgi in servers:
        tgi.stop()
    commits = commit_latencies(db, acked)
    return {
        "ratings_sent": len(acked),
        **check(db, acked, in_flight=1 if args.kill else 0),
        "p50_ms": percentile_ms(latencies, 0.5),
        "p99_ms": percentile_ms(latencies, 0.99),
        "client_p50_ms": percentile_ms(plain, 0.5),
        "client_p99_ms": percentile_ms(plain, 0.99),
        "server_p50_ms": server.get("p50_ms"),
        "server_p99_ms": server.get("p99_ms"),
        "server_ratings": server.get("count", 0),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "commit_p50_ms": percentile_ms(commits, 0.5),
        "commit_p99_ms": percentile_ms(commits, 0.99),
        **result,
        "raters": args.raters,
        "ratings_per_rater": args.ratings,
        "think_s": args.think,
        "client_processes": args.procs,
        "wall_s": round(wall, 1),
        "targets": {
            **({"loss_window_s": 60} if args.wipe else {"lost": 0}),
            "duplicates": 0,
            "server_p99_ms": 100,
            "client_p99_ms": 150,
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raters", type=int, default=50)
    parser.add_argument("--ratings", type=int, default=40, help="ratings per rater")
    parser.add_argument("--think", type=float, default=3.0, help="mean seconds a rater reads before each rating")
    parser.add_argument("--procs", type=int, default=5, help="client processes the raters are spread over")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--kill", action="store_true", help="SIGKILL the app midway, restart it, check")
    what.add_argument("--mirror-fails", action="store_true", help="make the mirror folder fail midway, check it")
    parser.add_argument(
        "--wipe",
        action="store_true",
        help="with --kill: push to a local Hub server, delete the database and mirror after the kill, restart from it",
    )
    parser.add_argument("--push-every", type=int, default=45, help="with --wipe: the app's push interval (seconds)")
    args = parser.parse_args(argv)
    if args.wipe and not args.kill:
        parser.error("--wipe goes with --kill")
    with tempfile.TemporaryDirectory(prefix="lima-load-") as tmp:
        result = run(args, Path(tmp))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(cli.run(main))
