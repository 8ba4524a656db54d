"""Arena latency: do the two sides truly overlap, and what does the app add before the first token?

Two real HTTP servers on loopback speak TGI's ``/v1/chat/completions`` stream (``tests/tgi_server.py``), each
emitting tokens at a set pace, one slower. The real app (``demo/app.py``'s Blocks, launched on a free port)
talks to them, and this script drives it through its API with ``gradio_client``, as a browser's two send
events do:

  turn_s_slowest_alone     one turn on the slow side only (median of --reps)
  turn_s_both              the same turn sent to both sides at once, until both are done (median)
  ratio                    turn_s_both / turn_s_slowest_alone: 1.0 when the sides overlap perfectly, ~1.5 here if
                           they ran one after the other (target <= 1.10)
  direct_ratio             the same ratio asked straight from the servers, without the app: the baseline for ratio
  ratio_with_ratings       ratio again while another session (--storm-sessions) writes ratings as fast as its
                           client can, from another process (each an fsync'd SQLite commit): store writes must
                           not stall the streams (target <= 1.10)
  ratings_per_s            how fast that storm wrote, all sessions together
  first_token_overhead_ms  time to the first streamed token through the app minus the same measured straight
                           against the server (median; target <= 150)

The same run then repeats against the real ``transformers serve`` (two servers, one per side, each serving a tiny
servable model folder named after ``#``, as ``URL#folder`` sources do) under ``"transformers_serve"``: there the
servers' own speed sets the pace, so its ratio also shows two CPU servers sharing this machine's cores, and its
first-token overhead is the app's cost in front of a real server. ``--model DIR`` serves a folder of yours; by
default a random tiny one is built (finetune.base_models). ``--no-serve`` skips it.

Prints one JSON line. ``python bench/arena_latency.py [--tokens 40] [--fast 0.02] [--slow 0.04] [--reps 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import transformers_server  # noqa: E402
from gradio_client import Client  # noqa: E402
from tgi_server import Behaviour, TGIServer, free_port  # noqa: E402

from common import cli  # noqa: E402
from demo import app, ratings  # noqa: E402
from demo.protocol import RATINGS  # noqa: E402
from serving import backends  # noqa: E402

DECODING = (0.7, 0.9, 1.2, 2048)  # temperature, top-p, repetition penalty, max new tokens


def answered(output: tuple) -> bool:
    """True once the streamed chatbot value holds some of the assistant's answer."""
    chat = output[0] if isinstance(output, tuple | list) and output and isinstance(output[0], list) else output
    if not isinstance(chat, list) or not chat or chat[-1].get("role") != "assistant":
        return False
    content = chat[-1].get("content")
    text = "".join(b.get("text", "") for b in content) if isinstance(content, list) else str(content or "")
    return bool(text.strip()) and text.strip() != "…"


def time_turn(client: Client, sides: str, decoding: tuple = DECODING) -> tuple[float, float | None]:
    """Send one message to the given sides at once; seconds until all are done, and to the first token of the
    first side."""
    client.predict(api_name="/new_conversation")
    started = time.perf_counter()
    jobs = [client.submit("Tell me something.", *decoding, "bench", api_name=f"/send_{s}") for s in sides]
    first = None
    while not all(job.done() for job in jobs):
        if first is None and answered(jobs[0].outputs()[-1] if jobs[0].outputs() else ()):
            first = time.perf_counter() - started
        time.sleep(0.002)
    for job in jobs:
        job.result()
    if first is None and answered(jobs[0].outputs()[-1]):
        first = time.perf_counter() - started
    return time.perf_counter() - started, first


async def server_first_token(backend: backends.RemoteBackend, decoding: backends.Decoding) -> float:
    """Seconds to the first answer text straight from the side's server, asked exactly as the arena asks it."""
    started = time.perf_counter()
    stream = backend.stream([{"role": "user", "content": "Tell me something."}], decoding)
    async for _ in stream:
        took = time.perf_counter() - started
        break
    async for _ in stream:
        pass
    return took


async def direct_turns(sides: list[backends.RemoteBackend], decoding: backends.Decoding) -> float:
    """Seconds until every side's answer is done, asked straight (no app), all at once."""

    async def one(backend: backends.RemoteBackend) -> None:
        async for _ in backend.stream([{"role": "user", "content": "Tell me something."}], decoding):
            pass

    started = time.perf_counter()
    await asyncio.gather(*(one(backend) for backend in sides))
    return time.perf_counter() - started


STORM = """
import sys, threading, time
from gradio_client import Client

url, sessions, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
RATINGS = sys.argv[4].split(",")  # the scale, from demo.protocol
counts = [0] * sessions
ready = threading.Barrier(sessions + 1)

def rater(n):
    client = Client(url, verbose=False)
    client.predict(api_name="/new_conversation")
    client.predict("Rate me.", 0.7, 0.9, 1.2, 16, "storm", api_name="/send_a")
    turn_id = client.predict(api_name="/conversation")["turns"][0]["turn_id"]
    ready.wait()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        client.predict(turn_id, RATINGS[counts[n] % len(RATINGS)], "storm", api_name="/rate")
        counts[n] += 1

threads = [threading.Thread(target=rater, args=(n,)) for n in range(sessions)]
for thread in threads:
    thread.start()
ready.wait()
print("READY", flush=True)
started = time.monotonic()
for thread in threads:
    thread.join()
print("RATED", sum(counts), time.monotonic() - started, flush=True)
"""


class RatingStorm:
    """Other raters' sessions rating their own turns over and over through the app's API, from another process
    (so the measuring clients do not share the app's interpreter), for ``seconds``."""

    def __init__(self, url: str, sessions: int, seconds: float) -> None:
        import subprocess

        self.sessions = sessions
        self.proc = subprocess.Popen(
            [sys.executable, "-c", STORM, url, str(sessions), str(seconds), ",".join(RATINGS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "READY"

    def result(self) -> float:
        """Ratings per second, all sessions together (waits for the storm to end)."""
        _, count, seconds = self.proc.stdout.readline().split()
        self.proc.wait(timeout=60)
        return int(count) / float(seconds)


def measure(sources: list[str], reps: int, decoding: tuple, storm: int = 0) -> dict:
    """The app over two URL sides (fast first, slow second): overlap ratio and first-token overhead."""
    store = ratings.Store(Path(tempfile.mkdtemp()) / "ratings.db")
    models = [backends.make_backend(source) for source in sources]
    demo = app.build(models, store, blind=False, turn_limit=1000)  # not blind: A is fast, B is slow
    demo.queue()
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        time_turn(client, "ab", decoding)  # warm-up: imports, connections, a server's first model load
        alone = [time_turn(client, "b", decoding)[0] for _ in range(reps)]
        both = [time_turn(client, "ab", decoding)[0] for _ in range(reps)]
        via_app = [time_turn(client, "a", decoding)[1] for _ in range(reps)]
        stormy: list[float] = []
        ratings_per_s = 0.0
        if storm:
            alone_s = statistics.median(alone)
            storm_run = RatingStorm(f"http://127.0.0.1:{port}/", storm, seconds=reps * alone_s * 1.5 + 2)
            stormy = [time_turn(client, "ab", decoding)[0] for _ in range(reps)]
            ratings_per_s = storm_run.result()
        direct_backend = backends.make_backend(sources[0])
        asyncio.run(direct_backend.probe())  # as the app's side was: learnt what it talks to in the warm-up
        direct = [asyncio.run(server_first_token(direct_backend, backends.Decoding(*decoding))) for _ in range(reps)]
        # The same overlap without the app: what the servers and this machine allow by themselves.
        straight = [backends.make_backend(source) for source in sources]
        for backend in straight:
            asyncio.run(backend.probe())
        direct_alone = [asyncio.run(direct_turns(straight[1:], backends.Decoding(*decoding))) for _ in range(reps)]
        direct_both = [asyncio.run(direct_turns(straight, backends.Decoding(*decoding))) for _ in range(reps)]
    finally:
        demo.close()
        store.close()
    storm_figures = {}
    if storm:
        storm_figures = {
            "ratio_with_ratings": round(statistics.median(stormy) / statistics.median(alone), 3),
            "ratings_per_s": round(ratings_per_s, 1),
            "rating_sessions": storm,
        }
    return {
        **storm_figures,
        "turn_s_both": round(statistics.median(both), 3),
        "turn_s_slowest_alone": round(statistics.median(alone), 3),
        "ratio": round(statistics.median(both) / statistics.median(alone), 3),
        "direct_ratio": round(statistics.median(direct_both) / statistics.median(direct_alone), 3),
        "first_token_overhead_ms": round(1000 * (statistics.median(via_app) - statistics.median(direct)), 1),
        "first_token_app_ms": round(1000 * statistics.median(via_app), 1),
        "first_token_server_ms": round(1000 * statistics.median(direct), 1),
    }


def tiny_servable(folder: Path) -> Path:
    """A random tiny model saved as a servable folder (serving template, EOT stop): what the suite serves."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune import chat_format
    from finetune.base_models import tiny_model_dir

    base = tiny_model_dir()
    tokenizer, model = AutoTokenizer.from_pretrained(base), AutoModelForCausalLM.from_pretrained(base)
    chat_format.add_end_of_turn(model, tokenizer)
    tokenizer.chat_template = chat_format.SERVING_TEMPLATE
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder, save_jinja_files=False)
    return folder


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=40, help="tokens per answer")
    parser.add_argument("--fast", type=float, default=0.02, help="seconds per token, fast side")
    parser.add_argument("--slow", type=float, default=0.04, help="seconds per token, slow side")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--model", type=Path, help="a servable model folder for the transformers serve run")
    parser.add_argument("--no-serve", action="store_true", help="skip the transformers serve run")
    parser.add_argument(
        "--storm-sessions", type=int, default=1, help="sessions rating flat out during the storm run (0: none)"
    )
    args = parser.parse_args(argv)

    reply = " ".join(f"t{i}" for i in range(args.tokens))
    fast = TGIServer(Behaviour(reply=reply, token_delay_s=args.fast, model_id="bench/fast")).start()
    slow = TGIServer(Behaviour(reply=reply, token_delay_s=args.slow, model_id="bench/slow")).start()
    try:
        result = measure([f"fast={fast.url}", f"slow={slow.url}"], args.reps, DECODING, storm=args.storm_sessions)
    finally:
        fast.stop()
        slow.stop()
    result.update(
        tokens=args.tokens,
        pace_s={"fast": args.fast, "slow": args.slow},
        reps=args.reps,
        targets={"ratio": 1.10, "ratio_with_ratings": 1.10, "first_token_overhead_ms": 150},
    )
    if not args.no_serve and transformers_server.command() is not None:
        folder = args.model or tiny_servable(Path(tempfile.mkdtemp()) / "tiny")
        max_new = max(args.tokens, 16)  # the slider's least
        decoding = (*DECODING[:3], max_new)
        with transformers_server.TransformersServe() as a, transformers_server.TransformersServe() as b:
            served = measure([f"a={a.url}#{folder}", f"b={b.url}#{folder}"], args.reps, decoding)
        result["transformers_serve"] = {**served, "model": str(folder), "max_new_tokens": max_new}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(cli.run(main))
