"""An automatic first-pass rater: a judge model rates stored turns on LIMA's scale and compares conversations,
and it can play the evaluation openers on both sides by itself (autoplay).

``python -m demo.judge --db ratings.db --judge URL[#model]`` asks the judge about every judged arena conversation
it has not seen yet (so a second run goes on where the first stopped): the answer shown of each turn, with the
conversation up to it as context, and the two sides as "A" and "B" in both orders. The judge rates as
``judge:<model>`` in a session of its own, through a review grant: a second opinion, never the owner's rating,
and its verdict is a judgment, never the conversation's. Every answer is kept whole (the store's ``judgments``).

``python -m demo.judge autoplay --left SRC --right SRC --judge URL`` plays each opener and its planned follow-ups
on both sides, which model sits on A drawn per conversation as the arena draws it, and stores the conversations
as ``autoplay``, the judge their rater: it rates every turn and gives the verdict (both orders; a disagreement is
a tie). The report then sums them up apart from a person's ratings, labelled automatic.

``python -m demo.judge study --db DB --judge URL [--study NAME]`` rates the items of prompt studies
(``demo/studies/judging.py``): pairwise in both orders, absolute on LIMA's scale, safety.

The prompts are data (``judge_prompts.yaml``). The judge is asked greedily (temperature 0) through the arena's own
``RemoteBackend``, so any TGI, vLLM, transformers serve or OpenAI-compatible server will do, and each prompt's
last line is the contract: ``Rating: fail|pass|excellent`` or ``Verdict: A|B|tie``, the last such line wins, and
an answer without one is stored as unparsable, never guessed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sqlite3
import string
import sys
from dataclasses import dataclass
from pathlib import Path

from common import cli, jsonl, prompts
from common.cli import UserError
from demo import arena, checkpoints, protocol, ratings, report, retry
from serving import backends, concurrency

PROMPTS_FILE = Path(__file__).with_name("judge_prompts.yaml")
OPENERS_FILE = Path(__file__).resolve().parents[1] / "dialogues" / "eval_openers.jsonl"
# A status that refuses one request (a prompt past the judge's context, say), not the judge: that subject is
# skipped and asked again next run, and the others go on.
REFUSALS = (400, 413, 422)


class JudgeError(UserError):
    """Input or a judge this command cannot use: one line for stderr, exit 2."""


# -- the prompts and the contract ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Prompts:
    turn_system: str
    turn_user: str
    pairwise_system: str
    pairwise_user: str


def load_prompts(path: Path = PROMPTS_FILE) -> Prompts:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise JudgeError(f"cannot read the judge prompts {path}: {str(err).splitlines()[0]}") from None
    fields = {}
    for kind, needs in (("turn", ("conversation",)), ("pairwise", ("a", "b"))):
        section = data.get(kind) if isinstance(data, dict) else None
        if not isinstance(section, dict) or not isinstance(section.get("user"), str):
            raise JudgeError(f"{path}: {kind}.user must be the prompt's text")
        missing = [name for name in needs if f"${{{name}}}" not in section["user"]]
        if missing:
            raise JudgeError(f"{path}: {kind}.user must hold {', '.join(f'${{{n}}}' for n in missing)}")
        fields[f"{kind}_system"] = str(section.get("system") or "")
        fields[f"{kind}_user"] = section["user"]
    return Prompts(**fields)


def _last(text: str, pattern: re.Pattern) -> str | None:
    """The value on the last line of ``text`` that matches; markdown emphasis, brackets or quotes around the
    words and a closing full stop are read through (judges add them), anything else is not a match."""
    found = None
    for line in text.splitlines():
        core = re.sub(r"[*_`\[\]\"']", "", line).strip().lstrip("#> ").rstrip(".").strip()
        if match := pattern.fullmatch(core):
            found = match[1].lower()
    return found


RATING_LINE = re.compile(rf"rating\s*:\s*({'|'.join(protocol.RATINGS)})", re.IGNORECASE)
VERDICT_LINE = re.compile(rf"verdict\s*:\s*({'|'.join(protocol.VERDICTS)})", re.IGNORECASE)


def parse_rating(answer: str) -> str | None:
    """``fail``, ``pass`` or ``excellent`` from the answer's last ``Rating:`` line; None: unparsable."""
    return _last(answer, RATING_LINE)


def parse_verdict(answer: str) -> str | None:
    """``a`` (the conversation shown first), ``b`` or ``tie`` from the last ``Verdict:`` line; None: unparsable."""
    return _last(answer, VERDICT_LINE)


def transcript(exchanges: list[tuple[str, str]], rate_last: bool = False) -> str:
    """A conversation as the judge reads it; with ``rate_last`` its last answer is labelled as the one to rate."""
    parts = []
    for n, (user, assistant) in enumerate(exchanges, 1):
        target = ": the answer to rate" if rate_last and n == len(exchanges) else ""
        parts += [f"[user, turn {n}]\n{user}", f"[assistant, turn {n}{target}]\n{assistant}"]
    return "\n\n".join(parts)


def _messages(system: str, user: str) -> list[dict]:
    # An empty system prompt is left out: some chat templates refuse a system role.
    return ([{"role": "system", "content": system}] if system.strip() else []) + [{"role": "user", "content": user}]


def turn_request(prompts: Prompts, exchanges: list[tuple[str, str]]) -> list[dict]:
    """The judge's messages for the last answer of ``exchanges`` (the whole conversation up to it: context)."""
    filled = string.Template(prompts.turn_user).substitute(conversation=transcript(exchanges, rate_last=True))
    return _messages(prompts.turn_system, filled)


def pairwise_request(prompts: Prompts, first: list[tuple[str, str]], second: list[tuple[str, str]]) -> list[dict]:
    """The judge's messages comparing two conversations, ``first`` shown as A."""
    filled = string.Template(prompts.pairwise_user).substitute(a=transcript(first), b=transcript(second))
    return _messages(prompts.pairwise_system, filled)


# -- the judge -----------------------------------------------------------------------------------------------
class Judge:
    """A judge model behind a TGI or OpenAI-compatible URL (``NAME=`` in front names it), asked greedily."""

    def __init__(
        self,
        source: str,
        max_tokens: int = 1024,
        timeout: float = 300.0,
        warmup: retry.WarmUp = retry.WARMUP,
        requests: int | None = None,
    ) -> None:
        self.given_name, url = backends.parse_source(source)
        if not url.startswith(("http://", "https://")):
            raise JudgeError(
                f"--judge must be a TGI or OpenAI-compatible server's URL[#model], got {backends.redact(source)!r}"
            )
        base, _, model = url.partition("#")
        self.backend = backends.RemoteBackend(base, model=model.strip() or None, timeout=timeout)
        # Greedy and unpenalised: the same answer each time it is asked (the penalty 1.0 is none on every server).
        self.decoding = backends.Decoding(temperature=0.0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=max_tokens)
        self.name = ""
        self.warmup = warmup  # a judge scaled to zero wakes as the arena's models do
        self.requests = requests  # --concurrency: requests in flight at once (None: what the server takes)
        self.pool = concurrency.Pool(concurrency.in_flight(None, requests))

    async def start(self) -> None:
        status = await self.backend.probe()
        if not status.ok:
            raise JudgeError(f"judge {self.backend.source}: {status.detail}")
        model = self.given_name or self.backend.model or self.backend.model_id or self.backend.url
        self.name = protocol.JUDGE_PREFIX + model
        limit = concurrency.in_flight(self.backend.server_cap, self.requests)
        self.backend.max_concurrent = limit  # the backend's own gate then never holds a request the pool let go
        self.pool = concurrency.Pool(limit, desc=self.name)

    async def ask(self, messages: list[dict]) -> str:
        async def once() -> str:
            stream = self.backend.stream(messages, self.decoding)
            return "".join([chunk async for chunk in stream if not isinstance(chunk, backends.Waiting)])

        async with self.pool.slot():
            return await self.warmup.call(once)


@dataclass
class Tally:
    turns: int = 0  # turns given a rating
    unparsable: int = 0  # answers (about turns or conversations) with no rating or verdict line
    verdicts: int = 0  # conversations given a verdict (both orders read)
    swap_ties: int = 0  # of those, ties because the two orders disagreed
    refused: int = 0  # requests the judge refused (asked again next run)

    def count(self, parsed: str | None, rated: bool = True) -> None:
        """One answer stored: a rating (``rated``) or a verdict of one order, None when unparsable."""
        self.unparsable += parsed is None
        self.turns += rated and parsed is not None

    def line(self, judge: str) -> str:
        text = (
            f"{judge}: rated {self.turns} turns, {self.unparsable} unparsable, {self.verdicts} verdicts, "
            f"of which {self.swap_ties} position-swap ties"
        )
        return text + (f"; {self.refused} requests refused by the judge (asked again next run)" if self.refused else "")


def _exchanges(shown: list[ratings.Turn], side: str, upto: int | None = None) -> list[tuple[str, str]]:
    """One side's (user, assistant) turns as shown, up to turn index ``upto``: what its model saw and said."""
    return [(t.user_text, t.assistant_text) for t in shown if t.side == side and (upto is None or t.turn_index <= upto)]


async def _asked(judge: Judge, messages: list[dict], what: str, tally: Tally) -> str | None:
    """The judge's answer, or None when it refused this one request (said on stderr, counted)."""
    try:
        return await judge.ask(messages)
    except backends.BackendError as err:
        if err.status not in REFUSALS:
            raise
        print(f"warning: {judge.name} refused {what}: {err}", file=sys.stderr)
        tally.refused += 1
        return None


async def rate_turn(
    store: ratings.Store,
    judge: Judge,
    prompts: Prompts,
    turn: ratings.Turn,
    shown: list[ratings.Turn],
    tally: Tally,
    granted: asyncio.Event | None = None,
) -> None:
    """Ask the judge about one turn (the conversation up to it as context) and store its answer and rating, once
    ``granted`` is set (the review grant its rating needs, committed meanwhile)."""
    messages = turn_request(prompts, _exchanges(shown, turn.side, upto=turn.turn_index))
    answer = await _asked(judge, messages, f"turn {turn.id}", tally)
    if answer is None:
        return
    if granted is not None:
        await granted.wait()
    rating, prompt = parse_rating(answer), json.dumps(messages, ensure_ascii=False)
    await concurrency.settled(
        lambda: store.judge_turn(turn.id, judge.name, prompt, answer, rating), lambda _: tally.count(rating)
    )


async def compare(
    store: ratings.Store, judge: Judge, prompts: Prompts, conversation_id: str, orders: list[str], tally: Tally
) -> str | None:
    """Ask the judge which side did better, in each order still missing (at once); the verdict of both orders
    (None if either answer was unparsable or refused)."""
    shown = store.shown_turns(conversation_id)
    sides = {side: _exchanges(shown, side) for side in protocol.SIDES}
    asked = await concurrency.run_all(
        _compare_once(store, judge, prompts, conversation_id, sides, order, tally) for order in orders
    )
    if not all(asked):
        return None
    latest = {j["order"]: j["parsed"] for j in store.judgments(judge.name, conversation_id)}
    verdict, swapped = report.swap_verdict(latest.get("ab"), latest.get("ba"))
    if verdict is not None:
        tally.verdicts += 1
        tally.swap_ties += swapped
    return verdict


async def _compare_once(
    store: ratings.Store,
    judge: Judge,
    prompts: Prompts,
    conversation_id: str,
    sides: dict[str, list[tuple[str, str]]],
    order: str,
    tally: Tally,
) -> bool:
    """The judge's answer about one order, stored; False when it refused to answer."""
    first, second = order  # "ba": side b is shown as A
    messages = pairwise_request(prompts, sides[first], sides[second])
    answer = await _asked(judge, messages, f"conversation {conversation_id} ({order})", tally)
    if answer is None:
        return False
    letter = parse_verdict(answer)
    verdict = {"a": first, "b": second, "tie": "tie"}.get(letter)  # back to the conversation's own sides
    prompt = json.dumps(messages, ensure_ascii=False)
    await concurrency.settled(
        lambda: store.record_judgment(conversation_id, judge.name, order, prompt, answer, verdict),
        lambda _: tally.count(verdict, rated=False),
    )
    return True


async def rate_stored(store: ratings.Store, judge: Judge, prompts: Prompts, tally: Tally) -> None:
    """Every turn and conversation of the judged arena conversations that this judge has not judged yet, asked
    at once (the judge's pool keeps as many in flight as its server takes). Each answer is committed whole with
    what was read from it, so a run cut short and run again asks only what is missing."""
    turns = store.unjudged_turns(judge.name)
    pending = store.unjudged_conversations(judge.name)
    granted = {cid: asyncio.Event() for cid in dict.fromkeys(turn.conversation_id for turn in turns)}
    shown = {cid: store.shown_turns(cid) for cid in granted}

    async def grant(cid: str) -> None:
        # The judge's ratings are second opinions, as a reviewer's are. Committed while the first questions are
        # in flight: one commit a conversation before them kept the judge's server waiting.
        await concurrency.settled(lambda: store.grant_review(judge.name, cid, judge.name))
        granted[cid].set()

    judge.pool.expect(len(turns) + sum(len(orders) for _, orders in pending))
    await concurrency.run_all(
        [
            *(grant(cid) for cid in granted),
            *(
                rate_turn(store, judge, prompts, t, shown[t.conversation_id], tally, granted[t.conversation_id])
                for t in turns
            ),
            *(compare(store, judge, prompts, cid, orders, tally) for cid, orders in pending),
        ]
    )


# -- autoplay ------------------------------------------------------------------------------------------------
def load_openers(path: Path) -> list[dict]:
    """The openers, each checked: one JSON object a line with an ``id``, a ``prompt`` and ``follow_ups``."""
    openers, problems = prompts.load_prompts(path, with_follow_ups=True, check=protocol.check_message)
    if problems:
        raise JudgeError(jsonl.summary(problems))
    return [opener.record() for opener in openers]


async def _answer(
    store: ratings.Store,
    conv: arena.Conversation,
    side: str,
    backend: arena.Backend,
    message: str,
    judge: Judge,
    decoding: backends.Decoding,
) -> None:
    """One side answers ``message`` with its own history, as a turn of the arena (``arena.play_turn``), the judge
    its rater; a failure is stored as that side's failed turn, as in the arena."""
    turn = arena.play_turn(
        conv, side, message, backend=backend, decoding=decoding, store=store, session=judge.name, rater=judge.name,
        turn_limit=None, warmup=judge.warmup,
    )  # fmt: skip
    async for event in turn:
        if isinstance(event, arena.Refused):  # the openers were checked when read: a refusal is a bug to see
            raise JudgeError(f"autoplay {conv.id}: side {side} refused a turn: {event.reason}")


async def autoplay(
    store: ratings.Store,
    judge: Judge,
    prompts: Prompts,
    players: list,
    openers: list[dict],
    decoding: backends.Decoding,
    rng: random.Random,
    tally: Tally,
) -> list[str]:
    """Play, rate and judge one conversation per opener, as many at once as the judge takes requests; the ids of
    the conversations stored, in the openers' order."""
    conversations = []
    for opener in openers:  # drawn in the openers' order: a seed seats the same models at any concurrency
        conv = arena.new_conversation(True, rng, [p.name for p in players], purpose="autoplay")
        conv.opener_id = opener["id"]
        conversations.append(conv)
    tables = asyncio.Semaphore(judge.pool.limit)

    async def seated(conv: arena.Conversation, opener: dict) -> None:
        async with tables:
            await play_one(store, judge, prompts, [players[index] for index in conv.models], conv, opener, decoding,
                           tally)  # fmt: skip

    await concurrency.run_all(seated(conv, opener) for conv, opener in zip(conversations, openers, strict=True))
    return [conv.id for conv in conversations]


async def play_one(
    store: ratings.Store,
    judge: Judge,
    prompts: Prompts,
    seats: list,
    conv: arena.Conversation,
    opener: dict,
    decoding: backends.Decoding,
    tally: Tally,
) -> None:
    """One conversation: each message answered by both sides at once, the next only after both (each side's
    turns in order, each answer seeing its own history); then every turn rated and both orders compared at
    once, and the verdict given after all of them are stored."""
    for message in [opener["prompt"], *opener["follow_ups"]]:
        await asyncio.gather(
            *(
                _answer(store, conv, key, backend, message, judge, decoding)
                for key, backend in zip(protocol.SIDES, seats, strict=True)
            )
        )
    shown = store.shown_turns(conv.id)
    judge.pool.expect(len(shown) + len(protocol.ORDERS))
    *_, verdict = await concurrency.run_all(
        [
            *(rate_turn(store, judge, prompts, turn, shown, tally) for turn in shown),
            compare(store, judge, prompts, conv.id, list(protocol.ORDERS), tally),
        ]
    )
    if verdict is not None:
        try:
            await concurrency.settled(lambda: store.set_verdict(conv.id, verdict, judge.name, judge.name))
        except ratings.NotAllowed as err:  # e.g. a side whose every answer failed: nothing of it was rated
            print(f"warning: autoplay {conv.id} ({opener['id']}) has no verdict: {err}", file=sys.stderr)


# -- command line --------------------------------------------------------------------------------------------
# -- ranking epochs on the dev prompts -------------------------------------------------------------------------
async def rank_epochs(run: checkpoints.Run, judge: Judge, prompts: Prompts, tally: Tally) -> list[dict]:
    """Rate every kept epoch's dev answers (``finetune dev``) with the turn prompt, all asked at once; the judge's
    answers go to ``RUN_DIR/dev/judge-<name>.jsonl`` as they come (a rerun asks only what is missing). Per
    epoch, best first: its shares."""
    out = run.path / "dev" / f"judge-{re.sub(r'[^A-Za-z0-9._-]+', '_', judge.name)}.jsonl"
    done: dict[tuple[int, str], str | None] = {}
    if out.is_file():
        for line in out.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                done[(int(record["epoch"]), str(record["id"]))] = record["parsed"]
            except (ValueError, KeyError, TypeError):  # a torn last line: that answer is asked again
                continue
    todo = [(e, pid, a) for e in run.epochs() for pid, a in run.answers[e].items() if (e, pid) not in done]
    judge.pool.expect(len(todo))
    with out.open("a", encoding="utf-8") as log:

        async def rate(epoch: int, pid: str, answer: dict) -> None:
            raw = await judge.ask(turn_request(prompts, [(answer["prompt"], answer["answer"])]))
            parsed = done[(epoch, pid)] = parse_rating(raw)
            tally.count(parsed)
            record = {"epoch": epoch, "id": pid, "judge": judge.name, "raw_answer": raw, "parsed": parsed}
            log.write(json.dumps(record, ensure_ascii=False) + "\n")  # one line, written whole from the loop
            log.flush()

        await concurrency.run_all(rate(*item) for item in todo)
    return _epoch_table(run, done)


def _epoch_table(run: checkpoints.Run, done: dict[tuple[int, str], str | None]) -> list[dict]:
    table = []
    for epoch in run.epochs():
        parsed = [done.get((epoch, pid)) for pid in run.answers[epoch]]
        rated = [p for p in parsed if p is not None]
        shares = {name: round(100 * rated.count(name) / len(rated), 1) if rated else None for name in protocol.RATINGS}
        table.append({"epoch": epoch, "rated": len(rated), "unparsable": len(parsed) - len(rated), **shares})
    best, worst = protocol.BEST_FIRST[0], protocol.RATINGS[0]
    return sorted(table, key=lambda row: (-(row[best] or 0), row[worst] or 0, row["epoch"]))


async def _epochs_main(args: argparse.Namespace) -> int:
    try:
        runs = checkpoints.find_runs(args.run_dir)
    except checkpoints.CheckpointError as err:
        raise JudgeError(str(err).removeprefix("--checkpoints ")) from None
    prompts = load_prompts(args.prompts)
    judge = Judge(args.judge, args.judge_max_tokens, args.timeout, requests=args.concurrency)
    await judge.start()
    for run in runs:
        tally = Tally()
        try:
            table = await rank_epochs(run, judge, prompts, tally)
        except backends.BackendError as err:
            raise JudgeError(f"{judge.name} failed: {err} (its answers so far are kept; run again to go on)") from None
        finally:
            judge.pool.close()
        print(f"AUTOMATIC: {run.name}'s epochs ranked by {judge.name}, a model, not a person (read them too):")
        for row in table:
            shares = " ".join(f"{name} {row[name]}%" for name in protocol.RATINGS if row[name] is not None)
            print(
                f"  epoch-{row['epoch']}: {shares or 'nothing rated'}"
                f" ({row['rated']} rated, {row['unparsable']} unparsable)"
            )
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise JudgeError(f"{message} (see python -m demo.judge --help)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--judge",
        required=True,
        metavar="URL[#model]",
        help="the judge: a TGI or OpenAI-compatible server (NAME=URL names it; the rater is judge:NAME or "
        "judge:<served model>)",
    )
    parser.add_argument("--judge-max-tokens", type=_positive, default=1024, help="the judge's answer cap (1024)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one judge answer (300)")
    parser.add_argument("--prompts", type=Path, default=PROMPTS_FILE, help="judge prompts (demo/judge_prompts.yaml)")
    parser.add_argument(
        "--concurrency",
        type=_positive,
        metavar="N",
        help="requests in flight at the judge at once, and autoplay's conversations played at once (default: what "
        f"a TGI judge's /info says it takes, max_concurrent_requests, else {concurrency.DEFAULT_IN_FLIGHT}; a TGI "
        "judge is never sent more than it takes)",
    )


def _rate_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m demo.judge",
        description="Rate the stored turns and conversations of judged arena conversations with a judge model, "
        "as second opinions (resumable). `python -m demo.judge autoplay --help` plays and judges by itself.",
    )
    parser.add_argument("--db", type=Path, required=True, help="the arena's SQLite ratings database")
    _common(parser)
    return parser


def _autoplay_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m demo.judge autoplay",
        description="Play each evaluation opener and its follow-ups on both sides, rate and judge them with a "
        "judge model (stored as autoplay: automatic figures, apart from a person's), then print the report.",
    )
    parser.add_argument("--left", required=True, metavar="SRC", help="a model folder, Hub id or server URL")
    parser.add_argument("--right", required=True, metavar="SRC", help="the other side, as --left")
    parser.add_argument("--db", type=Path, default=Path("ratings.db"), help="the ratings database (ratings.db)")
    parser.add_argument("--openers", type=Path, default=OPENERS_FILE, help="dialogues/eval_openers.jsonl")
    parser.add_argument("--limit", type=_positive, help="play only the first N openers")
    parser.add_argument("--max-new-tokens", type=_positive, default=512, help="each answer's cap (512)")
    parser.add_argument("--seed", type=int, help="seed the draw of sides (default: unseeded, as the arena)")
    _common(parser)
    return parser


def _epochs_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m demo.judge epochs",
        description="Rank a run's kept epochs by a judge model's ratings of their dev answers (python -m finetune "
        "dev writes them): an automatic first pass before reading them in the Checkpoints tab.",
    )
    parser.add_argument("run_dir", type=Path, help="a run (runs/R/lima-1030) or a recipe folder holding both")
    _common(parser)
    return parser


def _open_store(path: Path, existing: bool) -> ratings.Store:
    if existing:  # rating what is stored: a missing or foreign file is a mistake, not a new database
        try:
            report.connect(path).close()
        except report.ReportError as err:
            raise JudgeError(str(err)) from None
    try:
        # Autoplay gives its verdict even where the judge could not rate an answer (counted as unparsable).
        return ratings.Store(path, rate_every_turn=existing)
    except (sqlite3.Error, OSError) as err:
        raise JudgeError(f"cannot open the ratings database {path}: {str(err).splitlines()[0]}") from None


async def _rate_main(args: argparse.Namespace) -> int:
    prompts = load_prompts(args.prompts)
    judge = Judge(args.judge, args.judge_max_tokens, args.timeout, requests=args.concurrency)
    store = _open_store(args.db, existing=True)
    tally = Tally()
    try:
        await judge.start()
        await rate_stored(store, judge, prompts, tally)
    except backends.BackendError as err:
        print(tally.line(judge.name))
        raise JudgeError(f"{judge.name} failed: {err} (what it judged is stored; run again to go on)") from None
    finally:
        judge.pool.close()
        store.close()
    print(tally.line(judge.name))
    return 0


async def _autoplay_main(args: argparse.Namespace) -> int:
    prompts = load_prompts(args.prompts)
    openers = load_openers(args.openers)[: args.limit]
    judge = Judge(args.judge, args.judge_max_tokens, args.timeout, requests=args.concurrency)
    players = [backends.make_backend(source) for source in (args.left, args.right)]
    store = _open_store(args.db, existing=False)
    tally = Tally()
    try:
        await judge.start()
        for flag, player in zip(("--left", "--right"), players, strict=True):
            # One after the other: two threads importing transformers at once can see it half-initialised.
            status = await player.probe()
            if not status.ok:
                raise JudgeError(f"{flag} {player.source}: {status.detail}")
        if players[0].name == players[1].name:
            raise JudgeError(f"both sides are named {players[0].name!r}: name them (NAME=SOURCE) to tell them apart")
        decoding = backends.Decoding(max_new_tokens=args.max_new_tokens)  # the paper's decoding, as the arena's
        rng = random.Random(args.seed) if args.seed is not None else random.SystemRandom()
        played = await autoplay(store, judge, prompts, players, openers, decoding, rng, tally)
    except backends.BackendError as err:
        print(tally.line(judge.name))
        raise JudgeError(f"{judge.name} failed: {err} (what was played and judged is stored)") from None
    finally:
        judge.pool.close()
        store.close()
    print(tally.line(judge.name))
    names = " vs ".join(p.name for p in players)
    print(
        f"\nAUTOMATIC: {len(played)} autoplay conversation(s) of {names} played, every turn rated and every verdict "
        f"given by {judge.name}, a model, not a person. Its figures are the report's 'Automatic' section below.\n"
    )
    print(report.markdown(report.build_report(args.db)), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_run, sys.argv[1:] if argv is None else argv)  # JudgeError and ReportError are UserErrors


def _run(argv: list[str]) -> int:
    if argv[:1] == ["autoplay"]:
        return asyncio.run(_autoplay_main(_autoplay_parser().parse_args(argv[1:])))
    if argv[:1] == ["epochs"]:
        return asyncio.run(_epochs_main(_epochs_parser().parse_args(argv[1:])))
    if argv[:1] == ["study"]:
        from demo.studies import judging  # imported here: it builds on this module

        return asyncio.run(judging.study_main(judging.parser().parse_args(argv[1:])))
    return asyncio.run(_rate_main(_rate_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
