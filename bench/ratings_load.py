"""Ratings under load, and after a crash: is every acknowledged rating stored once, and how fast?

The real app (``python demo/app.py`` in a subprocess, its two sides served by loopback TGI-protocol servers,
``tests/tgi_server.py``) is driven through its API by concurrent raters (``gradio_client``, one session each).
Each rater starts a conversation, has two turns on each side, then sends ``--ratings`` ratings cycling over its
four turns (so most are changes of an earlier rating), each after a pause as a reader would take (``--think``,
uniform between half and one and a half times it), and a verdict. A rating counts as acknowledged when the API
call returned. Latencies are as gradio_client sees them, which includes its own polling (it checks for new
messages every 50 ms), so ~60 ms is the floor on this path; the server itself answers a rating in ~12 ms.

  ratings_sent / ratings_stored   acknowledged ratings / rows in the append-only rating_log
  duplicates                      rows in rating_log or the current view beyond what was acknowledged
  lost                            acknowledged ratings missing from rating_log, or a current rating that is not
                                  the rater's last acknowledged one
  p50_ms / p99_ms                 latency of one rating through the API (target: p99 < 100 ms)

With ``--kill`` the app is killed with SIGKILL once half the ratings are in, restarted on the same database, and
``lost_after_kill`` counts acknowledged ratings that did not survive (target 0).

Prints one JSON line. ``python bench/ratings_load.py [--raters 50] [--ratings 40] [--kill]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from gradio_client import Client  # noqa: E402
from tgi_server import Behaviour, TGIServer, free_port  # noqa: E402

DECODING = (0.7, 0.9, 1.2, 64)
RATINGS = ("fail", "pass", "excellent")


class App:
    """``python demo/app.py`` in a subprocess, restartable on the same database and port."""

    def __init__(self, left: str, right: str, db: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.args = [sys.executable, "demo/app.py", "--left", left, "--right", right, "--db", str(db)]
        self.args += ["--port", str(self.port), "--turn-limit", "10"]
        self.log = db.with_suffix(".log")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
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

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


def rater(url: str, name: str, ratings: int, think: float, acked: list, latencies: list, count) -> None:
    rng = random.Random(name)
    client = Client(url, verbose=False)
    client.predict(api_name="/new_conversation")
    for text in ("First question.", "A follow-up."):
        for side in "ab":
            client.predict(text, *DECODING, name, api_name=f"/send_{side}")
    turns = [t["turn_id"] for t in client.predict(api_name="/conversation")["turns"]]
    for i in range(ratings):
        time.sleep(rng.uniform(0.5, 1.5) * think)  # a person reads the answer before rating it
        turn_id, rating = turns[i % len(turns)], rng.choice(RATINGS)
        started, sent_at = time.perf_counter(), time.time()
        try:
            client.predict(turn_id, rating, name, api_name="/rate")
        except Exception:  # the app was killed: stop, and count only what was acknowledged
            return
        latencies.append(time.perf_counter() - started)
        acked.append((turn_id, name, rating, i, sent_at))
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


def worker(url: str, names: list[str], ratings: int, think: float) -> tuple[list, list]:
    """One process of raters (threads): several processes keep the clients' own GIL out of the latencies."""
    count = _COUNT
    acked: list = []
    latencies: list[float] = []
    threads = [
        threading.Thread(target=rater, args=(url, name, ratings, think, acked, latencies, count)) for name in names
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return acked, latencies


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
    for turn_id, name, rating, i, _ in acked:
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
    for turn_id, name, _, _, sent_at in sorted(acked, key=lambda a: a[3]):
        sent[(turn_id, name)].append(sent_at)
    return [at - s for key, times in sent.items() for s, at in zip(times, committed[key], strict=False)]


def run(args: argparse.Namespace, workdir: Path) -> dict:
    reply = "A short answer."
    servers = [TGIServer(Behaviour(reply=reply)).start() for _ in range(2)]
    db = workdir / "ratings.db"
    app = App(f"zero={servers[0].url}", f"dialogue={servers[1].url}", db)
    app.start()
    context = multiprocessing.get_context("spawn")
    count = context.Value("i", 0)
    names = [f"rater{n:02d}" for n in range(args.raters)]
    groups = [names[i :: args.procs] for i in range(args.procs)]
    started = time.perf_counter()
    result: dict = {}
    with context.Pool(args.procs, initializer=_share, initargs=(count,)) as pool:
        jobs = pool.starmap_async(worker, [(app.url, group, args.ratings, args.think) for group in groups])
        if args.kill:
            while count.value < args.raters * args.ratings // 2 and not jobs.ready():
                time.sleep(0.05)
            app.kill()  # a rating whose call returned is committed: every acknowledged one must survive
        outputs = jobs.get(timeout=1800)
    acked = [a for out, _ in outputs for a in out]
    latencies = [x for _, lat in outputs for x in lat]
    if args.kill:
        app.start()  # the same database, as after a crash
        app.stop()
        result["lost_after_kill"] = check(db, acked, in_flight=1)["lost"]
        result["acknowledged_before_kill"] = len(acked)
    wall = time.perf_counter() - started
    app.stop()
    for server in servers:
        server.stop()
    ms = sorted(1000 * x for x in latencies)
    commit_ms = sorted(1000 * x for x in commit_latencies(db, acked))
    return {
        "ratings_sent": len(acked),
        **check(db, acked, in_flight=1 if args.kill else 0),
        "p50_ms": round(statistics.median(ms), 1) if ms else None,
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1) if ms else None,
        "commit_p50_ms": round(statistics.median(commit_ms), 1) if commit_ms else None,
        "commit_p99_ms": round(commit_ms[min(len(commit_ms) - 1, int(0.99 * len(commit_ms)))], 1)
        if commit_ms
        else None,
        **result,
        "raters": args.raters,
        "ratings_per_rater": args.ratings,
        "think_s": args.think,
        "client_processes": args.procs,
        "wall_s": round(wall, 1),
        "targets": {"lost": 0, "duplicates": 0, "p99_ms": 100},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raters", type=int, default=50)
    parser.add_argument("--ratings", type=int, default=40, help="ratings per rater")
    parser.add_argument("--think", type=float, default=3.0, help="mean seconds a rater reads before each rating")
    parser.add_argument("--procs", type=int, default=5, help="client processes the raters are spread over")
    parser.add_argument("--kill", action="store_true", help="SIGKILL the app midway, restart it, check")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lima-load-") as tmp:
        result = run(args, Path(tmp))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
