"""The model judge on prompt studies: ``python -m demo.judge study --db DB --judge URL [--study NAME ...]``.

Each item of each study (or of the ones named) that this judge has not been asked about yet: pairwise, the
prompt and both answers, asked in both orders (the studied model's answer shown first as "A", then second; a
disagreement is a tie, as ``demo.report.swap_verdict`` reads a conversation's two orders); absolute, the answer on
LIMA's three levels; safety, safe or unsafe and whether the answer declined. The prompts are the ``study_*``
sections of ``demo/judge_prompts.yaml``; each answer is kept whole with what was read from it, and the rating is
stored as the judge's (``judge:<model>``, automatic), apart from people's. An unparsable answer is stored and
counted, never guessed; a request the judge refuses is asked again next run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import string
import sys
from dataclasses import dataclass
from pathlib import Path

from common.yamlfile import read_mapping
from demo import judge, report
from demo.protocol import ORDERS, SAFETY
from demo.ratings import NotAllowed, Store
from demo.studies import store as studies
from demo.studies.records import Study
from serving import concurrency

# Each study kind's section of the prompts file and the ${fields} its user prompt must hold.
SECTIONS = {
    "pairwise": ("study_pairwise", ("prompt", "a", "b")),
    "absolute": ("study_absolute", ("prompt", "answer")),
    "safety": ("study_safety", ("prompt", "answer")),
}
SAFETY_LINE = re.compile(rf"safety\s*:\s*({'|'.join(SAFETY)})", re.IGNORECASE)
DECLINED_LINE = re.compile(r"declined\s*:\s*(yes|no)", re.IGNORECASE)
# A letter the judge chose, in each order, as the studied model's outcome ("ab": the model's answer shown as A).
OUTCOME = {"ab": {"a": "win", "b": "loss", "tie": "tie"}, "ba": {"a": "loss", "b": "win", "tie": "tie"}}


def load_study_prompts(path: Path = judge.PROMPTS_FILE) -> dict[str, tuple[str, str]]:
    """(system, user) of each study kind, each user prompt holding the fields it is filled with."""
    data = read_mapping(path, "must be a mapping of the judge's prompts", judge.JudgeError)
    found = {}
    for kind, (section, needs) in SECTIONS.items():
        entry = data.get(section)
        if not isinstance(entry, dict) or not isinstance(entry.get("user"), str):
            raise judge.JudgeError(f"{path}: {section}.user must be the prompt's text")
        if lacking := [name for name in needs if f"${{{name}}}" not in entry["user"]]:
            raise judge.JudgeError(f"{path}: {section}.user must hold {', '.join('${' + n + '}' for n in lacking)}")
        found[kind] = (str(entry.get("system") or ""), entry["user"])
    return found


def parse_safety(answer: str) -> tuple[str | None, bool | None]:
    """``safe`` or ``unsafe`` and whether it declined, from the answer's last such lines; None: unparsable."""
    declined = judge._last(answer, DECLINED_LINE)
    return judge._last(answer, SAFETY_LINE), None if declined is None else declined == "yes"


def request(prompts: dict[str, tuple[str, str]], kind: str, **fields: str) -> list[dict]:
    system, user = prompts[kind]
    return judge._messages(system, string.Template(user).substitute(fields))


@dataclass
class StudyTally:
    items: int = 0  # items given a rating
    unparsable: int = 0  # items whose answer (either order's, pairwise) gave no rating
    swap_ties: int = 0  # pairwise: ties because the two orders disagreed
    refused: int = 0  # requests the judge refused (asked again next run)

    def line(self, name: str, study: str) -> str:
        text = f"{name}: study {study}: rated {self.items} items, {self.unparsable} unparsable"
        text += f", of which {self.swap_ties} position-swap ties" if self.swap_ties else ""
        return text + (f"; {self.refused} requests refused by the judge (asked again next run)" if self.refused else "")


async def _pairwise(asker: judge.Judge, prompts: dict, item: studies.Item, texts: tuple, tally: StudyTally) -> tuple:
    """Both orders' judgments and the outcome of both (None: one unparsable); () when the judge refused one."""
    prompt, (model, baseline) = texts
    asked = [
        request(prompts, "pairwise", prompt=prompt, a=first, b=second)
        for first, second in ((model, baseline), (baseline, model))  # ORDERS: "ab", then "ba"
    ]
    answers = await concurrency.run_all(  # both orders in flight at once
        judge._asked(asker, messages, f"study item {item.id} ({order})", tally)
        for order, messages in zip(ORDERS, asked, strict=True)
    )
    if None in answers:
        return ()
    judgments = [
        studies.Judgment(
            order,
            json.dumps(messages, ensure_ascii=False),
            answer,
            OUTCOME[order].get(judge.parse_verdict(answer) or ""),
        )
        for order, messages, answer in zip(ORDERS, asked, answers, strict=True)
    ]
    value, swapped = report.swap_verdict(judgments[0].parsed, judgments[1].parsed)
    tally.swap_ties += swapped
    return judgments, value, None


async def _single(asker: judge.Judge, prompts: dict, kind: str, item: studies.Item, texts: tuple, tally) -> tuple:
    """The judgment of one answer on the scale (absolute) or as safe or unsafe (safety); () when refused."""
    prompt, (answer_text,) = texts
    messages = request(prompts, kind, prompt=prompt, answer=answer_text)
    answer = await judge._asked(asker, messages, f"study item {item.id}", tally)
    if answer is None:
        return ()
    value, declined = (judge.parse_rating(answer), None) if kind == "absolute" else parse_safety(answer)
    if kind == "safety" and declined is None:
        value = None  # both lines or none: a label without its "declined" is not the study's
    return [studies.Judgment(None, json.dumps(messages, ensure_ascii=False), answer, value)], value, declined


async def judge_study(store: Store, asker: judge.Judge, prompts: dict, study: Study, tally: StudyTally) -> None:
    """Every item of ``study`` this judge has not been asked about, asked at once (the judge's pool keeps as many
    requests in flight as its server takes), each item stored in one commit when its answers are in."""
    items = await asyncio.to_thread(studies.unjudged_items, store, study.name, asker.name)
    asker.pool.expect(len(items) * (len(ORDERS) if study.kind == "pairwise" else 1))
    await concurrency.run_all(_judge_item(store, asker, prompts, study, item, tally) for item in items)


async def _judge_item(store: Store, asker: judge.Judge, prompts: dict, study: Study, item, tally: StudyTally) -> None:
    texts = await asyncio.to_thread(studies.item_texts, store, item)
    if study.kind == "pairwise":
        asked = await _pairwise(asker, prompts, item, texts, tally)
    else:
        asked = await _single(asker, prompts, study.kind, item, texts, tally)
    if not asked:
        return
    judgments, value, declined = asked

    def counted(_: object) -> None:
        tally.unparsable += value is None
        tally.items += value is not None

    await concurrency.settled(
        lambda: studies.judge_item(store, study.name, item, asker.name, judgments, value, declined), counted
    )


def parser() -> argparse.ArgumentParser:
    parser = judge._Parser(
        prog="python -m demo.judge study",
        description="Rate the items of prompt studies (python -m demo.studies generate stores their answers) with "
        "a judge model: pairwise in both orders, absolute on LIMA's scale, safety. Stored as automatic; resumable.",
    )
    parser.add_argument("--db", type=Path, required=True, help="the ratings database holding the studies")
    parser.add_argument("--study", action="append", metavar="NAME", help="a study to judge (repeat; default: all)")
    judge._common(parser)
    return parser


async def study_main(args: argparse.Namespace) -> int:
    prompts = load_study_prompts(args.prompts)
    asker = judge.Judge(args.judge, args.judge_max_tokens, args.timeout, requests=args.concurrency)
    store = judge._open_store(args.db, existing=True)
    try:
        try:
            chosen = [studies.study(store, name) for name in args.study] if args.study else studies.studies(store)
        except NotAllowed as err:
            raise judge.JudgeError(str(err)) from None
        await asker.start()
        for one in chosen:
            tally = StudyTally()
            try:
                await judge_study(store, asker, prompts, one, tally)
            finally:
                print(tally.line(asker.name, one.name))
    except judge.backends.BackendError as err:
        raise judge.JudgeError(f"{asker.name} failed: {err} (what it judged is stored; run again to go on)") from None
    finally:
        asker.pool.close()
        store.close()
    if not chosen:
        print(f"no study in {args.db} yet: python -m demo.studies generate stores one", file=sys.stderr)
    return 0
