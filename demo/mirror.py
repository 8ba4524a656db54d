"""The Hub copy: the store's event log as append-only JSONL files that ``CommitScheduler`` pushes to a dataset
repo, and the way back from those files to a database.

A Space's disk is ephemeral, so the dataset repo is the record that survives a restart. Every write to the
store is one self-contained event (a conversation with its models and blind flag, a turn with its full text,
decoding and timings, a rating, a verdict naming the models, a review hand-out, a model judge's answer),
committed to SQLite in the same transaction as the tables it changes (``ratings.Store``). The mirror copies those
events, in order, to a JSONL file of this process's own (``events-<uuid>.jsonl``, then ``events-<uuid>.pNNNN.jsonl``
parts of about ``PART_BYTES``: two replicas never write one file, and a push re-uploads one small part, not the
whole history) and fsyncs it; the scheduler uploads what changed every ``push_every_s`` seconds (only when there
is something new) and once more at shutdown. A hard crash without persistent storage loses at most what was
acknowledged since the last push began: the interval plus one upload.

The copy runs beside the rater, not in their way: a rating is acknowledged once SQLite has committed it. A copy
that fails (a full disk, a folder that went away) is retried with backoff from where it stopped, which the
database remembers per folder, so nothing is skipped. A crash between the append and that bookmark can copy an
event twice; every event has an id, and a rebuild keeps one of each.

``rebuild`` (``python -m demo.report --from-mirror DIR_OR_REPO --db NEW.db``, and the app at start when its
database is empty) replays the events through the store's own write code into a new database, which then holds
the same rows and gives the same report. Events from several files (replicas, restarts on other hosts) are put in
causal order, not clock order: each file's own order is its host's commit order, and an event comes after the
events that create what it names (conversation, then its opener, turns, verdict and review hand-outs; a turn,
then its ratings and judgments); the clock only breaks ties, so two hosts' skewed clocks cannot reorder a child
before its parent. A file that does not rebuild is named with its line and the reason.
"""

from __future__ import annotations

import collections
import heapq
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from demo import ratings
from demo.studies import tables as study_tables

log = logging.getLogger(__name__)

PREFIX = "events-"  # the files this mirror writes; older ratings-*.jsonl files hold ratings only (schema 0)
PATH_IN_REPO = "events"
# A file is closed and a new part begun past this size: the scheduler re-uploads a changed file whole at every
# push, so a small part keeps each push (and the loss window it adds to) short, and under the Hub's LFS size.
PART_BYTES = 1 << 20
PUSH_EVERY_S = 45  # see settings.push_every: at most 80 commits an hour, under the Hub's 128 per repo
# What each kind of event must carry (beyond schema, id, kind and at) for a rebuild to apply it.
FIELDS = {
    "conversation": ("conversation_id", "session", "rater", "model_a", "model_b", "blind", "opener_id"),
    "opener": ("conversation_id", "opener_id"),
    "turn": (
        "turn_id",
        "conversation_id",
        "side",
        "turn_index",
        "attempt",
        "model",
        "user_text",
        "assistant_text",
        "status",
        "error",
        "decoding",
        "started_at",
        "first_token_s",
    ),
    "rating": ("turn_id", "session", "rater", "rating", "by_owner", "conversation_id"),
    "verdict": ("conversation_id", "rater", "verdict"),
    "review": ("session", "conversation_id", "rater"),
    "judgment": ("judgment_id", "subject_kind", "subject_id", "judge", "order", "prompt", "raw_answer", "parsed"),
    "redaction": ("conversation_id", "reason"),
    **study_tables.FIELDS,
}
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# The licence the collected data is published under (the page's consent notice and the dataset card say it).
LICENCE = ("cc-by-4.0", "CC BY 4.0", "https://creativecommons.org/licenses/by/4.0/")
CARD = "README.md"  # the dataset card, written into the mirror folder and uploaded to the repo's root


class MirrorError(Exception):
    """Mirror files or a repo that cannot be read back; the message names the file and line."""


class JsonlMirror:
    """Copies ``store``'s events to ``folder`` (and, with ``repo_id``, to that Hub dataset) as they commit."""

    def __init__(
        self,
        folder: str | Path,
        store: ratings.Store,
        repo_id: str | None = None,
        token: str | None = None,
        push_every_s: float = PUSH_EVERY_S,
        retry_s: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.key = str(self.folder.resolve())
        self.name = f"{PREFIX}{uuid.uuid4().hex}"
        self.parts = 0  # parts begun after the first file
        self.path = self.folder / f"{self.name}.jsonl"
        self.store = store
        self.retry_s = retry_s
        self.scheduler = None
        if repo_id:
            from huggingface_hub import CommitScheduler

            self.scheduler = CommitScheduler(
                repo_id=repo_id,
                repo_type="dataset",
                folder_path=self.folder,
                path_in_repo=PATH_IN_REPO,
                every=push_every_s / 60,
                private=True,
                token=token,
                allow_patterns=[f"{PREFIX}*.jsonl"],
            )
        write_card(self.folder, repo_id, self.scheduler)
        # The scheduler reads the folder under its lock while uploading; appends take the same lock.
        self.lock = self.scheduler.lock if self.scheduler else threading.Lock()
        self.failing: str | None = None  # why the last copy failed, until one succeeds
        self.copied = 0  # events this mirror has copied
        saved = store.mirror_cursor(self.key)
        self.cursor = 0 if saved is None else saved  # a folder new to this database gets every event
        self._flushing = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jsonl-mirror", daemon=True)
        store.listeners.append(self)
        self._thread.start()
        self._wake.set()  # copy what the database holds beyond the bookmark

    def __call__(self, kind: str, event: dict) -> None:
        """A store listener: an event committed, so wake the copier (never blocks the writer)."""
        self._wake.set()

    def behind(self) -> int:
        """Committed events not yet in the folder."""
        return self.store.last_event() - self.cursor

    def flush(self) -> bool:
        """Copy every event past the bookmark; False (and ``failing`` says why) if the folder refused them."""
        with self._flushing:
            while batch := self.store.events_after(self.cursor):
                batch = self._fitting(batch)
                text = "".join(body + "\n" for _, body in batch)
                try:
                    with self.lock, self.path.open("a+b") as out:
                        if out.tell() and (out.seek(-1, os.SEEK_END), out.read(1))[1] != b"\n":
                            out.write(b"\n")  # a write torn by an earlier failure stays a line of its own
                        out.write(text.encode("utf-8"))
                        out.flush()
                        os.fsync(out.fileno())
                except OSError as err:
                    if self.failing is None:
                        log.warning(
                            "cannot copy events to %s (%s): %d wait in the database, retrying",
                            self.path,
                            err.strerror or err,
                            self.behind(),
                        )
                    self.failing = str(err)
                    return False
                if self.failing is not None:
                    log.info("copying events to %s again; none lost", self.path)
                    self.failing = None
                self.cursor = batch[-1][0]
                self.copied += len(batch)
                self.store.set_mirror_cursor(self.key, self.cursor)
                self._next_part()
            return True

    def _fitting(self, batch: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """The head of ``batch`` that fits in this part (one event at least): parts end where the size says, not
        where a busy copier happened to wake, so a copy's files are the same however fast it ran."""
        try:
            room = PART_BYTES - self.path.stat().st_size
        except OSError:
            room = PART_BYTES
        for count, (_, body) in enumerate(batch):
            room -= len(body.encode("utf-8")) + 1
            if room < 0:
                return batch[: max(count, 1)]
        return batch

    def _next_part(self) -> None:
        """Begin a new part once this one is full; parts sort after the first file and in order."""
        try:
            full = self.path.stat().st_size >= PART_BYTES
        except OSError:
            return
        if full:
            self.parts += 1
            self.path = self.folder / f"{self.name}.p{self.parts:04d}.jsonl"

    def _run(self) -> None:
        delay = self.retry_s[0]
        while not self._stopped.is_set():
            woken = self._wake.wait(timeout=delay if self.failing else None)
            if self._stopped.is_set():
                return
            if woken:
                self._wake.clear()
            try:
                ok = self.flush()
            except Exception:  # the database itself failed (closed at shutdown, or broken): stop copying
                log.exception("the event copier stopped")
                return
            delay = self.retry_s[0] if ok else min(delay * 2, self.retry_s[1])

    def stop(self) -> None:
        """On shutdown: copy what is left, then push the folder to the Hub and stop the scheduler."""
        self._stopped.set()
        self._wake.set()
        self._thread.join(timeout=30)
        if not self.flush():
            log.warning("%d events could not be copied to %s; the database still holds them", self.behind(), self.path)
        if self.scheduler is not None:
            self.scheduler.trigger().result()
            self.scheduler.stop()


# -- the dataset card -----------------------------------------------------------------------------------------
KINDS = {
    "conversation": "a conversation started: its owner's session, the rater's typed name, the model on each side,"
    " blind or not, the evaluation opener used, its purpose (arena, autoplay, checkpoints)",
    "opener": "the evaluation opener chosen for a conversation",
    "turn": "one answer: the user's message and the model's answer in full, the attempt (2, 3... regenerated),"
    " the decoding asked for, timings, an error if it failed",
    "rating": "a turn rated fail, pass or excellent (with the turn's texts); by_owner: the conversation's own"
    " rater (counted in Figure 7) rather than a second opinion",
    "verdict": "which side was better (a, b, tie), given blind before the names are shown",
    "review": "a judged conversation handed to another session for a second opinion",
    "judgment": "a model judge's prompt and whole answer, and the rating or verdict read from it",
    "redaction": "a conversation taken down: from then on its texts and typed names are published as"
    " [redacted] and a pseudonym; the events before it are not rewritten",
    **study_tables.KINDS,
}


def card(repo_id: str | None) -> str:
    """The dataset card: licence and tags for the Hub, each event kind's fields, how the data was collected,
    consent and takedown."""
    licence_id, licence, licence_url = LICENCE
    repo = f"`{repo_id}`" if repo_id else "this dataset"
    kinds = "\n".join(f"- **{kind}** ({', '.join(f'`{f}`' for f in FIELDS[kind])}): {KINDS[kind]}" for kind in FIELDS)
    return f"""---
license: {licence_id}
pretty_name: LIMA multi-turn arena ratings
language:
- en
tags:
- human-feedback
- evaluation
- multi-turn
- lima
- arena
task_categories:
- text-generation
---
# LIMA multi-turn arena ratings

People talking to two models side by side in the LIMA multi-turn arena, rating every answer and then saying which
model was better: the data of the LIMA paper's Figure 7 (Zhou et al. 2023, *LIMA: Less Is More for Alignment*),
collected live. Licence: [{licence}]({licence_url}), for the messages, the answers, the ratings and the typed names.

## How it was collected

The arena shows two models (A left, B right), which one sits where drawn per conversation and hidden until the
verdict (blind, LIMA's protocol). A rater talks to both, rates every answer *fail*, *pass* or *excellent* as in
LIMA's Figure 7 (an answer is rated before it is regenerated, and every answer before the verdict), then gives one
verdict (A, B or tie); after it the names are shown and nothing about that conversation changes. Only blind
conversations of people (purpose `arena`) make the figures; autoplay (a model judge playing both sides) and
checkpoint comparisons are kept apart.

## Files and fields

`events/events-<uuid>.jsonl`, one file per arena process, one JSON event per line, appended as they were
committed. Every event has `schema`, `id` (unique: a rebuild keeps one of each), `kind` and `at` (Unix time), and
the fields of its kind:

{kinds}

`python -m demo.report --from-mirror {repo_id or "OWNER/NAME"} --db new.db` rebuilds the arena's database from them.

## Consent

On a public arena, before their first message, every rater is told what is stored and published (their messages,
the models' answers, their ratings and verdicts, the name they type), where ({repo}) and under which licence,
and accepts it; nothing is stored from a session that has not. Raters are asked not to type personal data.

## Takedown

Ask the arena's operators to take a conversation down (its id is in every event). They run
`python -m demo.report redact --db DB --conversation ID --reason TEXT`, which appends a `redaction` event: every
rebuild, report and export withholds that conversation's texts, and its raters' names become a pseudonym; its
ratings still count. Files published before the takedown still hold the texts (history is not rewritten in
place); the operators remove them from this repository by replacing those files and squashing its history.
"""


def write_card(folder: Path, repo_id: str | None, scheduler: object | None = None) -> Path:
    """Write (or update) the dataset card in the mirror folder and, given the mirror's ``CommitScheduler``, upload
    it to the repo's root, where the Hub reads a card. A failed upload is logged: the events matter more."""
    path = folder / CARD
    text = card(repo_id)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    if scheduler is not None:
        try:  # the Hub skips a commit whose file did not change
            scheduler.api.upload_file(
                path_or_fileobj=path, path_in_repo=CARD, repo_id=scheduler.repo_id, repo_type="dataset",
                commit_message="Dataset card",
            )  # fmt: skip
        except Exception as err:
            log.warning("could not upload the dataset card to %s: %s", repo_id, str(err).splitlines()[0] or err)
    return path


# -- the way back ---------------------------------------------------------------------------------------------
class Read(NamedTuple):
    """An event as read: where it is (file index in reading order, line) and its clock, for ordering."""

    at: float
    file: int
    line: int
    where: str
    event: dict


def read_events(*folders: str | Path) -> tuple[list[dict], dict]:
    """Every event in the ``*.jsonl`` files under the folders, one of each id, in causal order (``causal_order``);
    and a summary of what was read and skipped."""
    records, summary = _read(folders)
    return [record.event for record in records], summary


def _read(folders: tuple[str | Path, ...] | list[Path]) -> tuple[list[Read], dict]:
    files = sorted(p for folder in folders for p in Path(folder).rglob("*.jsonl") if p.is_file())
    if not files:
        raise MirrorError(f"{', '.join(map(str, folders))}: no .jsonl files to rebuild from")
    records: list[Read] = []
    seen: set[str] = set()
    summary = {"files": len(files), "events": 0, "duplicates": 0, "unreadable": [], "legacy": 0}
    for index, path in enumerate(files):
        for number, event in _events_in(path, summary):
            if event["id"] in seen:
                summary["duplicates"] += 1
                continue
            seen.add(event["id"])
            records.append(Read(float(event["at"]), index, number, f"{path}:{number}", event))
    ordered = causal_order(records, [_stream(path) for path in files])
    summary["events"] = len(ordered)
    return ordered, summary


def _events_in(path: Path, summary: dict) -> Iterator[tuple[int, dict]]:
    """(line number, event) of one file; torn lines and records from before the event log are counted."""
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # a write torn by a crash or a full disk (copied again whole after it)
                summary["unreadable"].append(f"{path}:{number}")
                continue
            if not isinstance(event, dict):
                raise MirrorError(f"{path}:{number}: not an event (a JSON object)")
            if "schema" not in event:  # written before the event log: ratings without their turns
                summary["legacy"] += 1
                continue
            _check(event, f"{path}:{number}")
            yield number, event


def _stream(path: Path) -> str:
    """The stream a file belongs to: one mirror's file and its parts (``events-<uuid>[.pNNNN].jsonl``), wherever
    they were found (the local folder and the repo's copy of it are one stream); any other file is its own."""
    return path.name.split(".")[0] if path.name.startswith(PREFIX) else str(path)


def _creates(event: dict) -> tuple[str, str] | None:
    kind = event["kind"]
    if kind == "conversation":
        return ("conversation", str(event["conversation_id"]))
    if kind == "turn":
        return ("turn", str(event["turn_id"]))
    return study_tables.creates(event)


def _needs(event: dict) -> list[tuple[str, str]]:
    """What an event names that another event creates: it must be replayed after that one."""
    kind, needs = event["kind"], []
    if kind != "conversation" and event.get("conversation_id") is not None:
        needs.append(("conversation", str(event["conversation_id"])))
    if kind != "turn" and event.get("turn_id") is not None:
        needs.append(("turn", str(event["turn_id"])))
    if kind == "judgment":
        needs.append(("turn" if event["subject_kind"] == "turn" else "conversation", str(event["subject_id"])))
    return needs + study_tables.needs(event)


def causal_order(records: list[Read], streams: list[str]) -> list[Read]:
    """The records in an order a store accepts, whatever the clocks of the hosts that wrote them: each stream's
    own order (its host's commit order) is kept, and an event follows the events that create what it names;
    among the events free to go next, the earliest clock (then file, then line) goes first."""
    made: dict[tuple[str, str], int] = {}
    for index, record in enumerate(records):
        if (key := _creates(record.event)) is not None:
            made.setdefault(key, index)
    waiting = [0] * len(records)
    followers: dict[int, list[int]] = collections.defaultdict(list)
    last_of: dict[str, int] = {}
    for index, record in enumerate(records):
        before = {made[key] for key in _needs(record.event) if made.get(key, index) != index}
        stream = streams[record.file]
        if stream in last_of:
            before.add(last_of[stream])
        last_of[stream] = index
        waiting[index] = len(before)
        for earlier in before:
            followers[earlier].append(index)
    ready = [(r.at, r.file, r.line, i) for i, r in enumerate(records) if not waiting[i]]
    heapq.heapify(ready)
    order: list[Read] = []
    while ready:
        *_, index = heapq.heappop(ready)
        order.append(records[index])
        for later in followers[index]:
            waiting[later] -= 1
            if not waiting[later]:
                heapq.heappush(ready, (records[later].at, records[later].file, records[later].line, later))
    if len(order) < len(records):  # only files that contradict each other's order (not clocks) come here
        stuck = next(record for index, record in enumerate(records) if waiting[index])
        raise MirrorError(f"{stuck.where}: {stuck.event['kind']} event: the files disagree on what came before it")
    return order


def _check(event: dict, where: str) -> None:
    schema = event["schema"]
    if not isinstance(schema, int) or schema > ratings.EVENT_SCHEMA:
        raise MirrorError(
            f"{where}: event schema {schema!r} is newer than this arena's ({ratings.EVENT_SCHEMA}): update the arena"
        )
    kind = event.get("kind")
    if kind not in FIELDS:
        raise MirrorError(f"{where}: unknown event kind {kind!r} (known: {', '.join(FIELDS)})")
    for field in ("id", "at", *FIELDS[kind]):
        if field not in event:
            raise MirrorError(f"{where}: {kind} event has no {field!r}")
    if not isinstance(event["at"], int | float):
        raise MirrorError(f"{where}: 'at' must be a number, got {event['at']!r}")


def fetch(repo_id: str, into: str | Path, token: str | None = None, missing_ok: bool = False) -> Path | None:
    """Download the dataset repo's JSONL files into ``into`` (emptied first: a copy left by an earlier start must
    not stand in for a repo that cannot be read now). A repo that does not exist is None with ``missing_ok``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    shutil.rmtree(into, ignore_errors=True)
    try:
        return Path(
            snapshot_download(
                repo_id=repo_id, repo_type="dataset", allow_patterns=["*.jsonl", "**/*.jsonl"], local_dir=into,
                token=token,
            )
        )  # fmt: skip
    except RepositoryNotFoundError:
        if missing_ok:  # a new arena: the scheduler creates the repo
            return None
        raise MirrorError(
            f"cannot download dataset repo {repo_id}: no such repo, or the token may not read it"
        ) from None
    except Exception as err:  # no network, a token that may not read it, the Hub down: one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MirrorError(f"cannot download dataset repo {repo_id}: {reason}") from None


def rebuild(
    sources: list[str | Path], store: ratings.Store, token: str | None = None, missing_ok: bool = False
) -> dict | None:
    """Replay the events of mirror folders and dataset repos (``owner/name``) into ``store``, which must be
    empty; an event found in several is applied once. Returns the summary of what was read, with ``applied``.
    With ``missing_ok`` (the app at start), a repo that does not exist yet and a folder without events are
    nothing collected, and None says no source held any; anything else that fails is a MirrorError."""
    if not store.is_empty():
        raise MirrorError(f"{store.path} already holds ratings: rebuild into a new database file")
    folders = []
    for source in sources:
        folder: Path | None = Path(source)
        if not folder.is_dir():
            if folder.exists() or not REPO_ID.match(str(source)):
                raise MirrorError(f"{source}: not a mirror folder, nor a dataset repo id (owner/name)")
            into = Path(f"{store.path}.from-hub") / str(source).replace("/", "--")
            folder = fetch(str(source), into, token, missing_ok)
        if folder is not None and (not missing_ok or any(folder.rglob("*.jsonl"))):
            folders.append(folder)
    if missing_ok and not folders:
        return None
    records, summary = _read(folders)
    summary["applied"] = _replay(records, store)
    summary["source"] = " and ".join(map(str, sources))
    return summary


def _replay(records: list[Read], store: ratings.Store) -> int:
    try:
        return store.replay([record.event for record in records])
    except Exception as err:  # the transaction rolled back: say which event, found on a scratch copy
        raise MirrorError(_misfit(records, err)) from None


def _misfit(records: list[Read], err: Exception) -> str:
    """The first event that does not fit the ones before it, and why: replayed one by one into memory."""
    made = {key for record in records if (key := _creates(record.event)) is not None}
    scratch = ratings.Store(":memory:")
    try:
        for record in records:
            missing = [f"{kind} {name}" for kind, name in _needs(record.event) if (kind, name) not in made]
            if missing:
                return f"{record.where}: {record.event['kind']} event names {missing[0]}, which no file holds"
            try:
                scratch.replay([record.event])
            except Exception as one:
                return f"{record.where}: {record.event['kind']} event does not fit the ones before it: {_line(one)}"
    finally:
        scratch.close()
    return f"the events do not rebuild a database: {_line(err)}"


def _line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def describe(summary: dict) -> str:
    """One line about a rebuild."""
    parts = [f"rebuilt {summary['applied']} events from {summary['files']} files of {summary['source']}"]
    if summary["duplicates"]:
        parts.append(f"{summary['duplicates']} duplicates dropped")
    if summary["legacy"]:
        parts.append(f"{summary['legacy']} records from before the event log skipped (ratings without turns)")
    if summary["unreadable"]:
        shown = ", ".join(summary["unreadable"][:3])
        parts.append(f"{len(summary['unreadable'])} unreadable lines skipped ({shown})")
    return "; ".join(parts)
