"""The LIMA multi-turn arena: two models side by side, every assistant turn rated, then a verdict.

    python demo/app.py [--left SRC] [--right SRC] [--db PATH] [--host H] [--port P] [--share]

This file starts and stops the arena: settings, models, the store and its mirror, the server. The page is
``ui``'s, a turn is ``arena.play_turn``'s, the rules are ``protocol``'s, ratings live in ``ratings``. Gradio and
the modules built on it (``ui``, ``results``, ``queue_guard``) are imported where the page is built, so a bad
setting, side or database is told in a fraction of a second, not after Gradio's import (6 s on a 2-core CPU).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path

if __package__ in (None, ""):  # run as `python demo/app.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from typing import TYPE_CHECKING

from starlette.middleware import Middleware

from common import cli, prompts
from common.cli import UserError
from demo import (
    checkpoints,
    clients,
    direct_calls,
    limits,
    mirror,
    protocol,
    ratings,
    settings,
    timings,
)
from serving import backends

if TYPE_CHECKING:
    import gradio as gr

    from demo import queue_guard

log = logging.getLogger("demo.app")

# Pages whose state (their conversation) the server keeps, least recently used dropped first: a client makes a
# session with every request it wants to, and each costs tens of kilobytes (Gradio's default keeps 10,000).
STATE_SESSIONS = 2000
OPENERS_FILE = Path(__file__).resolve().parents[1] / "dialogues" / "eval_openers.jsonl"


def load_openers(path: Path = OPENERS_FILE) -> list[dict]:
    """The evaluation openers as ``{id, prompt, category, follow_ups}``; none when the file is missing."""
    if not path.is_file():
        return []
    openers, problems = prompts.load_prompts(path, with_follow_ups=True, check=protocol.check_message)
    for problem in problems:  # a bad line leaves its opener out of the list, not the arena down
        log.warning("%s", problem)
    return [opener.record() for opener in openers]


def build(
    models: list[backends.LocalBackend | backends.RemoteBackend], store: ratings.Store, **options: object
) -> gr.Blocks:
    """The arena's page (``demo.ui``) for two models (configured left and right) and a ratings store; ``options``
    are ``ui.build``'s (blind, turn_limit, max_new_tokens, admin, review_open, checkpoint_runs, caps,
    dataset_repo)."""
    from demo import ui

    return ui.build(models, store, openers=load_openers(), **options)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    backends.redact_logs()  # no credential reaches the log, whoever logs it (httpx logs each request's URL)
    return cli.run(_run, argv)


def _run(argv: list[str] | None) -> int:
    """Start the arena; an input mistake (a setting, the database, the dataset repo, the port) is a UserError."""
    config = settings.parse(argv)
    sources = settings.resolve_sides(config)
    models = [backends.make_backend(src, concurrency=config.concurrency) for src in sources]
    local_on_cpu = any(isinstance(m, backends.LocalBackend) for m in models)
    max_new = config.max_new_tokens or (256 if local_on_cpu and not _cuda() else backends.TOTAL_TOKEN_BUDGET // 2)
    start_models(models)
    try:
        store = ratings.Store(config.db, rate_every_turn=config.rate_every_turn)
    except (OSError, sqlite3.Error) as err:
        raise UserError(f"cannot open the ratings database {config.db}: {err}") from None
    try:
        demo = _build_for(config, models, store, max_new)
    except BaseException:
        shut_down(store)
        raise
    from demo import queue_guard

    demo.queue(default_concurrency_limit=8)
    stop_on_signals()
    try:
        demo.launch(
            server_name=config.host,
            server_port=config.port,
            share=config.share,
            footer_links=["api"],
            app_kwargs=app_kwargs(demo, store, queue_guard.QueueGuard(gate_for(config))),
            state_session_capacity=STATE_SESSIONS,
        )
    except OSError as err:  # the port is taken, or the address is not this machine's
        reason = str(err).splitlines()[0].split(". ")[0]
        raise UserError(f"cannot listen on {config.host}:{config.port} ({reason}): pass a free --port") from None
    except KeyboardInterrupt:  # the signal came while launch() was still starting (it checks its own server)
        demo.close()
    finally:
        shut_down(store)
    return 0


def _build_for(config: settings.Settings, models: list, store: ratings.Store, max_new: int) -> gr.Blocks:
    """The page for these settings: the mirror opened (and restored from) first, the limits and gates of a public
    or private arena, the Checkpoints tab's runs."""
    from demo import results

    if config.dataset_repo or config.mirror_dir:
        open_mirror(config, store)
    public = is_public(config)
    gate = gate_for(config)
    checkpoint_runs = None
    if config.checkpoints:
        try:
            checkpoint_runs = checkpoints.find_runs(config.checkpoints)
            for run in checkpoint_runs:  # before the page: a study that cannot be stored is one line, not a trace
                checkpoints.store_answers(store, run)
        except checkpoints.CheckpointError as err:
            raise UserError(str(err)) from None
    return build(
        models,
        store,
        blind=config.blind,
        turn_limit=config.turn_limit,
        max_new_tokens=max_new,
        admin=results.Admin(token=os.environ.get("LIMA_ARENA_ADMIN_TOKEN"), public=public, gate=gate),
        review_open=config.review,  # unset: on for local requests only
        checkpoint_runs=checkpoint_runs,
        dataset_repo=config.dataset_repo,
        **caps_pair(config, public),
    )


def gate_for(config: settings.Settings) -> clients.Gate:
    """Who a request comes from and whether it is public, as configured (``--trusted-proxies``)."""
    try:
        return clients.Gate(public=is_public(config), proxies=config.trusted_proxies or clients.LOOPBACK)
    except ValueError as err:
        raise UserError(f"--trusted-proxies: {err}") from None


def caps_pair(config: settings.Settings, public: bool) -> dict[str, limits.Limits]:
    """``build``'s caps (as configured) and public_caps (a request through a proxy or a tunnel): one token
    budget for the whole app, whoever asks."""
    public_caps = caps_for(config, public=True)
    caps = public_caps if public else caps_for(config, public=False)
    caps.tokens = public_caps.tokens
    return {"caps": caps, "public_caps": public_caps}


def app_kwargs(demo: gr.Blocks, store: ratings.Store, guard: queue_guard.QueueGuard | None = None) -> dict:
    """The server's own latency per direct API route, at GET /lima-arena/timings (bench/ratings_load.py): one
    histogram per route of this page, one for every other name; direct calls only from sessions Gradio holds or
    the store knows (``demo.direct_calls``); and ``guard`` on Gradio's queue (joins capped per client and in all,
    unread events dropped: ``demo.queue_guard``)."""
    names = {fn.api_name for fn in demo.fns.values() if isinstance(getattr(fn, "api_name", None), str)}
    registry = timings.Registry(known=[timings.TIMED + name for name in names])
    middleware = [
        Middleware(timings.Timings, registry=registry),
        Middleware(direct_calls.DirectCalls, blocks=demo, store=store),
    ]
    if guard is not None:
        from demo import queue_guard

        middleware.append(Middleware(queue_guard.Guarded, guard=guard))
    return {"middleware": middleware}


def start_models(models: list[backends.LocalBackend | backends.RemoteBackend]) -> None:
    """In-process models load while the server starts; each server is asked at once whether it answers (the
    page shows the same, refreshed per visit)."""
    for model in models:
        if isinstance(model, backends.LocalBackend):
            threading.Thread(target=model.load, daemon=True).start()
    sides = zip(("left", "right"), models, strict=True)
    servers = [(where, m) for where, m in sides if isinstance(m, backends.RemoteBackend)]
    if servers:
        statuses = asyncio.run(_probe_all([m for _, m in servers]))
        for (where, _), status in zip(servers, statuses, strict=True):
            (log.info if status.ok else log.warning)("%s: %s: %s", where, status.model, status.detail)


def open_mirror(config: settings.Settings, store: ratings.Store) -> None:
    """The store's copy in a folder (and a dataset repo, pushed every ``push_every`` seconds): restored from it
    first if the database is new. A repo that cannot be used, or a restore that fails, is a UserError."""
    # Secrets come from the environment only (HF_TOKEN); a Space's disk is ephemeral unless it has /data.
    folder = Path(config.mirror_dir or f"{config.db}.jsonl.d")
    token = os.environ.get("HF_TOKEN")
    if store.is_empty():
        restore(store, folder, config.dataset_repo, token)
    if config.dataset_repo and os.environ.get("SPACE_ID") and settings.persistent_storage(os.environ) is None:
        log.warning(
            "no persistent storage: the database lives as long as this container, and a hard crash loses what"
            " was acknowledged since the last push to %s (at most %d s plus one upload)",
            config.dataset_repo,
            config.push_every,
        )
    try:
        mirror.JsonlMirror(folder, store, repo_id=config.dataset_repo, token=token, push_every_s=config.push_every)
    except Exception as err:  # the Hub fails in many ways (network, token, repo); all mean the same here
        raise UserError(f"cannot use dataset repo {config.dataset_repo}: {str(err).splitlines()[0]}") from None


def restore(store: ratings.Store, folder: Path, repo_id: str | None, token: str | None) -> None:
    """A new database (a Space after a restart): rebuild it from the dataset repo's events and the mirror
    folder's, so the arena goes on where it stopped. Those events are already copied, so the mirror's bookmark
    moves past them. A repo that does not exist yet and a folder with no events are a new arena. A restore that
    fails stops the start, naming the file, line and reason: an arena that ran as if nothing had been collected
    would count its results, limits and Review without it, and pile new events beside the old ones."""
    sources = [s for s in (repo_id, folder if folder.is_dir() else None) if s]
    try:
        summary = mirror.rebuild(sources, store, token=token, missing_ok=True) if sources else None
    except mirror.MirrorError as err:
        raise UserError(f"cannot restore the ratings database {store.path}: {err}") from None
    if summary is None:
        log.info("no events to restore from %s: a new arena", " or ".join(map(str, sources)) or "anywhere")
        return
    store.set_mirror_cursor(str(folder.resolve()), store.last_event())
    log.info("%s", mirror.describe(summary))


def stop_on_signals() -> None:
    """SIGTERM (what Docker and Spaces send) and SIGINT both stop the server: launch() waits in the main thread
    until a KeyboardInterrupt, then closes it. SIGINT is set explicitly because a process started from a
    background job of a non-interactive shell begins with SIGINT ignored (POSIX)."""

    def interrupt(signum: int, frame: object) -> None:
        log.info("stopping on %s", signal.Signals(signum).name)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def shut_down(store: ratings.Store) -> None:
    """On the way out: push what the mirrors hold (the last minutes of ratings), then close the database."""
    for listener in store.listeners:
        stop = getattr(listener, "stop", None)
        if stop is not None:
            try:
                stop()
            except Exception as err:  # the Hub may be unreachable; the JSONL files and SQLite still hold it all
                log.warning("could not push the mirror at shutdown: %s", str(err).splitlines()[0] if str(err) else err)
    store.close()


def caps_for(config: settings.Settings, public: bool) -> limits.Limits:
    """The limits as set; one left unset is off locally and takes its public default when public (0: off)."""

    def cap(value: int | None, name: str) -> int | None:
        return limits.PUBLIC_DEFAULTS[name] if value is None and public else (value or None)

    return limits.Limits(
        turns_per_hour=cap(config.max_turns_per_hour, "turns_per_hour"),
        ratings_per_minute=cap(config.max_ratings_per_minute, "ratings_per_minute"),
        tokens_per_hour=cap(config.max_tokens_per_hour, "tokens_per_hour"),
    )


def is_public(config: settings.Settings) -> bool:
    """Decided once: on a Space, with a share link, or listening beyond this machine, strangers can reach the
    page, so results and exports need the admin token and Review is off unless enabled. A request that came
    through a proxy or a tunnel is public on its own (``clients.Gate.is_public``)."""
    loopback = config.host in ("127.0.0.1", "localhost", "::1")
    return bool(os.environ.get("SPACE_ID")) or bool(config.share) or not loopback


async def _probe_all(models: list) -> list[backends.Status]:
    return await asyncio.gather(*(m.probe() for m in models))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
