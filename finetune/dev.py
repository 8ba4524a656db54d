"""``python -m finetune dev RUN_DIR``: every kept epoch's answers to the held-out dev prompts.

LIMA kept epochs 5 to 10 and chose one by reading their answers to 50 held-out prompts; this writes those
answers, one file per epoch, for a person (or the UI) to read before ``python -m finetune select``.

Each epoch's answers go to ``RUN_DIR/dev/epoch-N.jsonl``, one JSON object per prompt with exactly the keys of
``RECORD_KEYS`` (a contract with the UI that reads them). A rerun skips the ids a file already holds, so a
killed run resumes where it stopped; a line torn by the kill is dropped and its prompt answered again.

Answers come from the model folder itself, loaded as the arena's in-process side loads it
(``serving.backends.LocalBackend``) and decoded as the arena decodes (``LocalBackend.generate_kwargs``), batched;
or, with ``--source URL``, from a server serving one epoch, through the arena's ``RemoteBackend``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.cli import UserError
from common.jsonl import display_path
from common.prompts import Prompt, load_prompts
from serving.backends import TOTAL_TOKEN_BUDGET, BackendError, Decoding, LocalBackend, RemoteBackend, Waiting
from serving.folder import epoch_dir, kept_epochs
from serving.sampling import sampled_generate_kwargs

log = logging.getLogger(__name__)

DEV_DIR = "dev"
IN_PROCESS = "in-process"
RECORD_KEYS = (
    "id",
    "prompt",
    "answer",
    "epoch",
    "model",
    "decoding",
    "tokens",
    "stopped_at_eot",
    "seconds",
    "source",
)


@dataclass
class Answer:
    text: str
    tokens: int  # generated tokens, the stop token included when there was one
    stopped_at_eot: bool
    seconds: float


def read_prompts(path: Path) -> list[Prompt]:
    """The dev prompts, checked as ``finetune data --check`` checks them; the first problem is the error."""
    prompts, problems = load_prompts(path, with_follow_ups=False)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(f"{errors[0]}{more}")
    return prompts


def check_decoding(decoding: Decoding, batch_size: int) -> None:
    problems = []
    if decoding.temperature < 0:
        problems.append(f"--temperature {decoding.temperature:g}: must be >= 0 (0 is greedy)")
    if not 0 < decoding.top_p <= 1:
        problems.append(f"--top-p {decoding.top_p:g}: must be in (0, 1]")
    if decoding.repetition_penalty <= 0:
        problems.append(f"--repetition-penalty {decoding.repetition_penalty:g}: must be > 0 (1 is none)")
    if not 0 < decoding.max_new_tokens <= TOTAL_TOKEN_BUDGET:
        problems.append(f"--max-new-tokens {decoding.max_new_tokens}: must be in 1..{TOTAL_TOKEN_BUDGET}")
    if batch_size < 1:
        problems.append(f"--batch-size {batch_size}: must be >= 1")
    if problems:
        raise UserError(f"error: {problems[0]}")


def read_answers(path: Path) -> list[dict]:
    """The records already in an epoch's file. Every record is written with its newline in one piece, so only
    bytes after the last newline can be cut short (a kill mid-write): they are removed from the file, and that
    prompt is answered again."""
    if not path.is_file():
        return []
    complete, newline, torn = path.read_bytes().rpartition(b"\n")
    if torn:
        log.warning("%s: an unfinished last line (a killed run?): answering that prompt again", display_path(path))
        with path.open("r+b") as handle:
            handle.truncate(len(complete) + len(newline))
    records = []
    for number, line in enumerate(complete.split(b"\n") if newline else [], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise UserError(
                f"error: {display_path(path)}:{number}: not an answer record: fix the line or delete the file"
            )
        records.append(record)
    return records


def check_same_decoding(path: Path, records: list[dict], decoding: Decoding) -> None:
    """Answers decoded differently must not end up in one file: the epochs would no longer compare."""
    for record in records:
        if record.get("decoding") != decoding.as_dict():
            raise UserError(
                f"error: {display_path(path)}: holds answers decoded with {record.get('decoding')}, not "
                f"{decoding.as_dict()}: pass the same decoding to resume, or delete the file to start again"
            )


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- in-process ---------------------------------------------------------------------------------------------
def load_local(model_dir: Path) -> LocalBackend:
    backend = LocalBackend(str(model_dir))
    backend.load()
    if backend.load_error:
        raise UserError(f"error: {backend.load_error}")
    # Prompts of different lengths share a batch: pad on the left so that every answer starts at the same column.
    backend.tokenizer.padding_side = "left"
    return backend


def generate_local(backend: LocalBackend, prompts: Sequence[Prompt], decoding: Decoding) -> list[Answer]:
    """One batched ``generate`` call for ``prompts``, decoded as the arena's in-process side decodes."""
    import torch

    from finetune import chat_format

    tokenizer, model = backend.tokenizer, backend.model
    eot = tokenizer.convert_tokens_to_ids(chat_format.EOT)
    stops = model.generation_config.eos_token_id
    stops = set(stops if isinstance(stops, list) else [stops]) - {None}
    conversations = [[{"role": "user", "content": p.prompt}] for p in prompts]
    # Repetition penalty covers the whole context, so it also sees the left padding. That is harmless here: pad
    # is the base's <pad> (never generated), or EOT or the base's EOS where a base has none, and the prompt
    # already holds EOT after the user's turn.
    encoded = tokenizer.apply_chat_template(
        conversations, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
    ).to(backend.device)
    width = encoded["input_ids"].shape[1]
    room = TOTAL_TOKEN_BUDGET - width
    if room < 1:
        longest = prompts[int(encoded["attention_mask"].sum(dim=1).argmax())]
        raise UserError(f"error: {longest.where}: prompt: past the {TOTAL_TOKEN_BUDGET}-token budget")
    started = time.perf_counter()
    with torch.no_grad():
        # The arena's batcher samples the same way: transformers' distribution, without its 262k-wide sort per row.
        output = model.generate(**encoded, **sampled_generate_kwargs(LocalBackend.generate_kwargs(decoding, room)))
    share = (time.perf_counter() - started) / len(prompts)
    answers = []
    for row in output[:, width:].tolist():
        end = next((i for i, token in enumerate(row) if token in stops), None)
        ids = row if end is None else row[:end]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        tokens = len(row) if end is None else end + 1
        answers.append(Answer(text, tokens, end is not None and row[end] == eot, share))
    return answers


# -- a server -----------------------------------------------------------------------------------------------
def connect(url: str) -> RemoteBackend:
    if not url.startswith(("http://", "https://")):
        raise UserError(f"error: --source {url}: not an http:// or https:// URL")
    backend = RemoteBackend(url, timeout=600.0)
    status = asyncio.run(backend.probe())
    if not status.ok:
        raise UserError(f"error: --source {url}: {status.detail}")
    return backend


def generate_remote(
    backend: RemoteBackend, prompts: Sequence[Prompt], decoding: Decoding, count: Callable[[str], int]
) -> list[Answer]:
    """``prompts`` sent at once, as a server batches concurrent requests. A server reports why it stopped, not
    which token: "stop" is a stop id of the served generation_config.json (EOT first). Token counts are the
    server's usage where it sends one, else the answer re-tokenised by ``count`` (plus the stop token)."""

    async def one(prompt: Prompt) -> tuple[str, dict]:
        finish: dict = {}
        stream = backend.stream([{"role": "user", "content": prompt.prompt}], decoding, finish)
        parts = [chunk async for chunk in stream if not isinstance(chunk, Waiting)]  # not notes while queued
        return "".join(parts), finish

    async def every() -> list[tuple[str, dict]]:
        return await asyncio.gather(*(one(p) for p in prompts))

    started = time.perf_counter()
    try:
        results = asyncio.run(every())
    except BackendError as err:
        raise UserError(f"error: --source {backend.url}: {err}") from None
    share = (time.perf_counter() - started) / len(prompts)
    answers = []
    for text, finish in results:
        reason = finish.get("reason")
        tokens = finish.get("completion_tokens") or count(text) + (reason == "stop")
        stopped = reason == "stop" if reason else tokens < decoding.max_new_tokens
        answers.append(Answer(text, tokens, stopped, share))
    return answers


# -- the command --------------------------------------------------------------------------------------------
def dev_answers(
    run_dir: Path,
    prompts_path: Path,
    decoding: Decoding,
    batch_size: int = 8,
    source: str | None = None,
    epoch: int | None = None,
) -> list[str]:
    """Answer every dev prompt with every kept epoch (or ``epoch``, or the one ``source`` serves); return the
    summary line of each epoch."""
    from tqdm import tqdm

    if source is not None and epoch is None:
        raise UserError("error: --source needs --epoch N: the kept epoch that server serves")
    check_decoding(decoding, batch_size)
    if not run_dir.is_dir():
        raise UserError(f"error: {run_dir}: not a folder: pass a run folder, e.g. runs/quick-cpu/lima-1030")
    epochs = kept_epochs(run_dir)
    if not epochs:
        raise UserError(f"error: {run_dir}: no kept epoch (no epoch-N folder with a config.json): is it a run folder?")
    if epoch is not None:
        epochs = {epoch: epoch_dir(run_dir, epoch)}  # a FolderError is the user's mistake, said in one line
    prompts = read_prompts(prompts_path)
    remote = connect(source) if source is not None else None
    model_name = run_dir.resolve().name
    out_dir = run_dir / DEV_DIR
    out_dir.mkdir(exist_ok=True)

    summaries = []
    for number, model_dir in epochs.items():
        path = out_dir / f"epoch-{number}.jsonl"
        done = read_answers(path)
        check_same_decoding(path, done, decoding)
        done_ids = {r["id"] for r in done}
        todo = [p for p in prompts if p.id not in done_ids]
        if todo:
            generate = generator(model_dir, remote, decoding)
            bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=f"epoch-{number}", file=sys.stderr)
            with path.open("a", encoding="utf-8") as handle, bar:
                for batch in batches(todo, batch_size):
                    for prompt, answer in zip(batch, generate(batch), strict=True):
                        record = {
                            "id": prompt.id,
                            "prompt": prompt.prompt,
                            "answer": answer.text,
                            "epoch": number,
                            "model": model_name,
                            "decoding": decoding.as_dict(),
                            "tokens": answer.tokens,
                            "stopped_at_eot": answer.stopped_at_eot,
                            "seconds": round(answer.seconds, 4),
                            "source": IN_PROCESS if remote is None else source,
                        }
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    handle.flush()  # a kill now loses at most the batch in flight
                    bar.update(len(batch))
            generate = None  # drop this epoch's weights before the next epoch's load
        summaries.append(summary(number, read_answers(path), prompts))
    return summaries


def generator(
    model_dir: Path, remote: RemoteBackend | None, decoding: Decoding
) -> Callable[[Sequence[Prompt]], list[Answer]]:
    """How one epoch answers a batch: its folder loaded in this process, or the server serving it."""
    if remote is None:
        backend = load_local(model_dir)
        return lambda batch: generate_local(backend, batch, decoding)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)  # the served epoch's own, to count its tokens

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return lambda batch: generate_remote(remote, batch, decoding, count)


def summary(number: int, records: list[dict], prompts: Sequence[Prompt]) -> str:
    wanted = {p.id for p in prompts}
    records = [r for r in records if r.get("id") in wanted]
    n = len(records)
    eot = sum(bool(r.get("stopped_at_eot")) for r in records)
    tokens = sum(r.get("tokens", 0) for r in records) / n if n else 0
    seconds = sum(r.get("seconds", 0.0) for r in records) / n if n else 0
    return (
        f"epoch-{number}: {n} answers, stopped at EOT {eot}/{n}, mean {tokens:.0f} tokens, {seconds:.2f} s per answer"
    )
