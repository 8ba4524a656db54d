"""Arena latency: do the two sides truly overlap, and what does the app add before the first token?

Two real HTTP servers on loopback speak TGI's ``/v1/chat/completions`` stream (``tests/tgi_server.py``), each
emitting tokens at a set pace, one slower. The real app (``demo/app.py``'s Blocks, launched on a free port)
talks to them, and this script drives it through its API with ``gradio_client``, as a browser's two send
events do:

  turn_s_slowest_alone     one turn on the slow side only (median of --reps)
  turn_s_both              the same turn sent to both sides at once, until both are done (median)
  ratio                    turn_s_both / turn_s_slowest_alone: 1.0 when the sides overlap perfectly, ~1.5 here if
                           they ran one after the other (target <= 1.10)
  first_token_overhead_ms  time to the first streamed token through the app minus the same measured straight
                           against the server (median; target <= 150)

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

from gradio_client import Client  # noqa: E402
from huggingface_hub import AsyncInferenceClient  # noqa: E402
from tgi_server import Behaviour, TGIServer, free_port  # noqa: E402

from demo import app, backends, ratings  # noqa: E402

DECODING = (0.7, 0.9, 1.2, 2048)  # temperature, top-p, repetition penalty, max new tokens


def answered(output: tuple) -> bool:
    """True once the streamed chatbot value holds some of the assistant's answer."""
    chat = output[0] if isinstance(output, tuple | list) and output and isinstance(output[0], list) else output
    if not isinstance(chat, list) or not chat or chat[-1].get("role") != "assistant":
        return False
    content = chat[-1].get("content")
    text = "".join(b.get("text", "") for b in content) if isinstance(content, list) else str(content or "")
    return bool(text.strip()) and text.strip() != "…"


def time_turn(client: Client, sides: str) -> tuple[float, float | None]:
    """Send one message to the given sides at once; seconds until all are done, and to the first token of the
    first side."""
    client.predict(api_name="/new_conversation")
    started = time.perf_counter()
    jobs = [client.submit("Tell me something.", *DECODING, "bench", api_name=f"/send_{s}") for s in sides]
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


async def server_first_token(url: str) -> float:
    async with AsyncInferenceClient(base_url=url) as client:
        started = time.perf_counter()
        stream = await client.chat_completion([{"role": "user", "content": "Tell me something."}], stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                took = time.perf_counter() - started
                break
        async for _ in stream:
            pass
    return took


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=40, help="tokens per answer")
    parser.add_argument("--fast", type=float, default=0.02, help="seconds per token, fast side")
    parser.add_argument("--slow", type=float, default=0.04, help="seconds per token, slow side")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)

    reply = " ".join(f"t{i}" for i in range(args.tokens))
    fast = TGIServer(Behaviour(reply=reply, token_delay_s=args.fast, model_id="bench/fast")).start()
    slow = TGIServer(Behaviour(reply=reply, token_delay_s=args.slow, model_id="bench/slow")).start()
    store = ratings.Store(Path(tempfile.mkdtemp()) / "ratings.db")
    models = [backends.make_backend(f"fast={fast.url}"), backends.make_backend(f"slow={slow.url}")]
    demo = app.build(models, store, blind=False, turn_limit=1000)  # not blind: A is fast, B is slow
    demo.queue()
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        time_turn(client, "ab")  # warm-up: first requests pay for imports and connection set-up
        alone = [time_turn(client, "b")[0] for _ in range(args.reps)]
        both = [time_turn(client, "ab")[0] for _ in range(args.reps)]
        via_app = [time_turn(client, "a")[1] for _ in range(args.reps)]
        direct = [asyncio.run(server_first_token(fast.url)) for _ in range(args.reps)]
    finally:
        demo.close()
        fast.stop()
        slow.stop()
    result = {
        "turn_s_both": round(statistics.median(both), 3),
        "turn_s_slowest_alone": round(statistics.median(alone), 3),
        "ratio": round(statistics.median(both) / statistics.median(alone), 3),
        "first_token_overhead_ms": round(1000 * (statistics.median(via_app) - statistics.median(direct)), 1),
        "first_token_app_ms": round(1000 * statistics.median(via_app), 1),
        "first_token_server_ms": round(1000 * statistics.median(direct), 1),
        "tokens": args.tokens,
        "pace_s": {"fast": args.fast, "slow": args.slow},
        "reps": args.reps,
        "targets": {"ratio": 1.10, "first_token_overhead_ms": 150},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
