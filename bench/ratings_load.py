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
import os
import random
import signal
import socket
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
from tgi_server import Behaviour, TGIServer  # noqa: E402

DECODING = (0.7, 0.9, 1.2, 64)
RATINGS = ("fail", "pass", "excellent")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=30)


def rater(
    url: str, name: str, ratings: int, think: float, acked: list, latencies: list, half: threading.Event, lock
) -> None:
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
        started = time.perf_counter()
        try:
            client.predict(turn_id, rating, name, api_name="/rate")
        except Exception:  # the app was killed: stop, and count only what was acknowledged
            return
        took = time.perf_counter() - started
        with lock:
            acked.append((turn_id, name, rating, i))
            latencies.append(took)
            if len(acked) >= half.target:  # type: ignore[attr-defined]
                half.set()
    try:
        client.predict(name, api_name=f"/verdict_{rng.choice(('a', 'b', 'tie'))}")
    except Exception:  # as above
        return


def check(db: Path, acked: list) -> dict:
    with sqlite3.connect(db) as con:
        logged = collections.Counter(con.execute("SELECT turn_id, rater, rating FROM rating_log").fetchall())
        current = con.execute("SELECT turn_id, rater, rating FROM ratings").fetchall()
    sent = collections.Counter((t, r, g) for t, r, g, _ in acked)
    lost = sum((sent - logged).values())
    extra = sum((logged - sent).values())
    last: dict[tuple[str, str], tuple[int, str]] = {}
    for turn_id, name, rating, i in acked:
        if (turn_id, name) not in last or i > last[(turn_id, name)][0]:
            last[(turn_id, name)] = (i, rating)
    view = collections.Counter((t, r) for t, r, _ in current)
    view_dupes = sum(n - 1 for n in view.values() if n > 1)
    stale = sum(1 for t, r, g in current if (t, r) in last and last[(t, r)][1] != g)
    return {"ratings_stored": sum(logged.values()), "duplicates": extra + view_dupes, "lost": lost + stale}


def run(args: argparse.Namespace, workdir: Path) -> dict:
    reply = "A short answer."
    servers = [TGIServer(Behaviour(reply=reply)).start() for _ in range(2)]
    db = workdir / "ratings.db"
    app = App(f"zero={servers[0].url}", f"dialogue={servers[1].url}", db)
    app.start()
    acked: list = []
    latencies: list[float] = []
    lock = threading.Lock()
    half = threading.Event()
    half.target = args.raters * args.ratings // 2  # type: ignore[attr-defined]
    threads = [
        threading.Thread(
            target=rater, args=(app.url, f"rater{n:02d}", args.ratings, args.think, acked, latencies, half, lock)
        )
        for n in range(args.raters)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    result: dict = {}
    if args.kill:
        half.wait(timeout=600)
        with lock:
            app.kill()
            acked_at_kill = list(acked)
        for thread in threads:
            thread.join(timeout=60)
        app.start()  # the same database, as after a crash
        app.stop()
        result["lost_after_kill"] = check(db, acked_at_kill)["lost"]
        result["acknowledged_before_kill"] = len(acked_at_kill)
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    app.stop()
    for server in servers:
        server.stop()
    ms = sorted(1000 * x for x in latencies)
    return {
        "ratings_sent": len(acked),
        **check(db, acked),
        "p50_ms": round(statistics.median(ms), 1) if ms else None,
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1) if ms else None,
        **result,
        "raters": args.raters,
        "ratings_per_rater": args.ratings,
        "think_s": args.think,
        "wall_s": round(wall, 1),
        "targets": {"lost": 0, "duplicates": 0, "p99_ms": 100},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raters", type=int, default=50)
    parser.add_argument("--ratings", type=int, default=40, help="ratings per rater")
    parser.add_argument("--think", type=float, default=3.0, help="mean seconds a rater reads before each rating")
    parser.add_argument("--kill", action="store_true", help="SIGKILL the app midway, restart it, check")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lima-load-") as tmp:
        result = run(args, Path(tmp))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
