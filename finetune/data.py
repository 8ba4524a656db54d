"""LIMA's data and ours, read into one format and checked.

Every example becomes ``{"messages": [{"role", "content"}, ...], "source": str}`` (DESIGN.md, contract 1):
starts with the user, alternates strictly, ends with the assistant, no empty content. LIMA's own rows
(``{"conversations": [str, ...], "source": str}``) are converted here and nowhere else.

The two training sets the paper compares:
  zero-shot = LIMA's 1,000 single-turn examples (offline: our sample stands in, and says so)
  dialogue  = the same + 30 multi-turn dialogues (ours from dialogues/train.jsonl, or LIMA's own 30)

Validation collects every problem of every file in one pass; each problem is one line naming the file, the
line and the field. Errors stop the run (exit 2); warnings (duplicates, overlap with evaluation prompts,
examples longer than the training length) are printed and the data is kept. The check covers every prompt
set too: the arena's openers, the dev prompts, the studies' test and sensitive prompts, and LIMA's own test
prompts where the user has them; none may repeat training text, and a test or sensitive prompt may not repeat
an opener or a dev prompt either.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.cli import UserError
from common.jsonl import Problem, display_path, duplicate_ids, json_type, read_jsonl, text_problem
from common.prompts import (
    LIMA_REPO,
    LIMA_TEST_FILE,
    MALICIOUS,
    OUT_OF_DISTRIBUTION,
    Prompt,
    find_lima_test,
    load_lima_test,
    load_prompts,
    load_sensitive_prompts,
    load_test_prompts,
)
from finetune.hub import explain_hub_errors

log = logging.getLogger(__name__)

DIALOGUES_DIR = Path(__file__).resolve().parents[1] / "dialogues"
TRAIN_FILE = "train.jsonl"
SAMPLE_FILE = "sample_single_turn.jsonl"
OPENERS_FILE = "eval_openers.jsonl"
DEV_FILE = "dev.jsonl"
TEST_FILE = "test.jsonl"
SENSITIVE_FILE = "sensitive.jsonl"

# The paper's studies: Figure 3 reports 20 out-of-distribution test prompts apart; the safety study has 30
# sensitive prompts, 10 of them clearly malicious. Another size is allowed (a warning): the studies still run.
PROMPT_SET_SIZES = {TEST_FILE: (100, OUT_OF_DISTRIBUTION, 20), SENSITIVE_FILE: (30, MALICIOUS, 10)}

LIMA_URL = f"https://huggingface.co/datasets/{LIMA_REPO}"
ROLES = ("user", "assistant")

# Training renders each message as "Role:\n" + content + EOT + "\n" (finetune/chat_format.py): 5 tokens
# around the content with Gemma's and Llama's tokenizers. The oversize check adds them to the content's own.
TEMPLATE_TOKENS_PER_MESSAGE = 5
# GPT-3's contamination test: an evaluation prompt that shares a 13-word span with a training turn overlaps.
OVERLAP_NGRAM = 13


class DataError(UserError):
    """Invalid input data: carries every error found, one line each."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__(*self.problems)


@dataclass
class Example:
    """A training example in our format, remembering where it came from."""

    messages: list[dict[str, str]]
    source: str
    id: str | None = None
    path: str = ""
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def user_turns(self) -> int:
        return len(self.messages) // 2

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"messages": self.messages, "source": self.source}
        if self.id is not None:
            record["id"] = self.id
        return record


# ---------------------------------------------------------------------------------------------- reading


def parse_example(obj: dict[str, Any], path: str, line: int) -> tuple[Example | None, list[Problem]]:
    """Check one row (ours or LIMA's format) and convert it to an Example. Returns every problem found."""
    if "messages" in obj:
        list_field, (messages, found) = "messages", _parse_messages(obj["messages"])
    elif "conversations" in obj:  # LIMA's format: alternating strings, the user first
        list_field, (messages, found) = "conversations", _parse_conversations(obj["conversations"])
    else:
        list_field, messages, found = None, None, [("messages", "missing field (or LIMA's 'conversations')")]
    if list_field is not None and messages is not None:
        found += _length_problems(list_field, messages)
    found += _source_and_id_problems(obj)
    if found:
        return None, [Problem(path, line, field_name, message) for field_name, message in found]
    return Example(messages=messages, source=obj["source"], id=obj.get("id"), path=path, line=line), []


Found = list[tuple[str, str]]
"""(field, message) pairs: what is wrong with one row, before it is tied to its file and line."""


def _content(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _parse_messages(raw: Any) -> tuple[list[dict[str, str]] | None, Found]:
    """Our format: a list of {role, content}; None when it is not a list at all."""
    if not isinstance(raw, list):
        return None, [("messages", f"must be a list of {{role, content}} objects, got {json_type(raw)}")]
    found: Found = []
    messages = []
    order_reported = False
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            found.append((where, f"must be an object with 'role' and 'content', got {json_type(message)}"))
            continue
        role_problem = _role_problem(message, ROLES[i % 2], order_reported)
        if role_problem is not None:
            found.append((f"{where}.role", role_problem))
            order_reported |= role_problem.startswith("wrong role order")
        if "content" not in message:
            found.append((f"{where}.content", "missing field"))
        elif (issue := text_problem(message["content"], "empty turn")) is not None:
            found.append((f"{where}.content", issue))
        messages.append({"role": ROLES[i % 2], "content": _content(message.get("content"))})
    return messages, found


def _role_problem(message: dict[str, Any], expected: str, order_reported: bool) -> str | None:
    role = message.get("role")
    if "role" not in message:
        return "missing field"
    if role not in ROLES:
        return f"unknown role {role!r}: expected 'user' or 'assistant'"
    if role != expected and not order_reported:  # later turns are off by one too: say it once
        return f"wrong role order: expected {expected!r} (turns alternate, user first)"
    return None


def _parse_conversations(raw: Any) -> tuple[list[dict[str, str]] | None, Found]:
    """LIMA's format: a list of strings, alternating user and assistant; None when it is not a list."""
    if not isinstance(raw, list):
        return None, [("conversations", f"must be a list of strings, got {json_type(raw)}")]
    found: Found = [
        (f"conversations[{i}]", issue) for i, text in enumerate(raw) if (issue := text_problem(text, "empty turn"))
    ]
    return [{"role": ROLES[i % 2], "content": _content(text)} for i, text in enumerate(raw)], found


def _length_problems(list_field: str, messages: list[dict[str, str]]) -> Found:
    if len(messages) < 2:
        return [(list_field, f"has {len(messages)} turn(s): needs at least one user and one assistant turn")]
    if len(messages) % 2 == 1:
        return [(list_field, "ends on the user: the last turn must be the assistant's")]
    return []


def _source_and_id_problems(obj: dict[str, Any]) -> Found:
    found: Found = []
    source = obj.get("source")
    if "source" not in obj:
        found.append(("source", "missing field"))
    elif not isinstance(source, str) or not source.strip():
        got = json_type(source) if source != "" else "an empty one"
        found.append(("source", f"must be a non-empty string, got {got}"))
    example_id = obj.get("id")
    if example_id is not None and (not isinstance(example_id, str) or not example_id.strip()):
        found.append(("id", "must be a non-empty string when present"))
    return found


def load_examples(path: Path) -> tuple[list[Example], list[Problem]]:
    """Read a file of examples (ours or LIMA's format). Returns the valid ones and every problem."""
    name = display_path(path)
    rows, problems = read_jsonl(path)
    examples: list[Example] = []
    for line, obj in rows:
        example, found = parse_example(obj, name, line)
        problems += found
        if example is not None:
            examples.append(example)
    problems += duplicate_ids([(e.id, e.line) for e in examples], name)
    return examples, problems


# ------------------------------------------------------------------------------------------------ LIMA


def fetch_lima(token: str | None = None, filename: str = "train.jsonl") -> Path:
    """Download LIMA's train.jsonl (or its test.jsonl) from the Hub (gated), or say in one line what the user must
    do."""
    from huggingface_hub import get_token, hf_hub_download

    where = f"{LIMA_REPO} (Hub)"
    token = token or get_token()
    if not token:
        raise UserError(
            f"error: {where}: LIMA is gated and no Hugging Face token is set: accept its terms at {LIMA_URL}, "
            "then run `hf auth login` or export HF_TOKEN (or pass --lima PATH to a local train.jsonl)"
        )
    fallback = "download train.jsonl from it on another machine and pass --lima PATH"
    with explain_hub_errors(where, f"{LIMA_URL} (licence CC BY-NC-SA)", fallback):
        return Path(hf_hub_download(LIMA_REPO, filename, repo_type="dataset", token=token))


def _lima_test_from_hub() -> Path | None:
    """LIMA's test.jsonl from the Hub, beside its train.jsonl. The prompt studies want it, training does not: a
    copy that cannot be fetched is a warning (the studies then use ours), never the end of a training run."""
    try:
        return fetch_lima(filename=LIMA_TEST_FILE)
    except UserError as err:
        log.warning("LIMA's %s was not downloaded (%s); studies can use dialogues/test.jsonl", LIMA_TEST_FILE, err)
        return find_lima_test()


# --------------------------------------------------------------------------------------------- the sets


@dataclass
class TrainingSets:
    """The two training sets of the paper, with what they were built from (for logs and model cards)."""

    single_turn: list[Example]
    dialogues: list[Example]
    single_turn_label: str
    dialogues_label: str
    is_offline_sample: bool

    @property
    def zero_shot(self) -> list[Example]:
        return list(self.single_turn)

    @property
    def dialogue(self) -> list[Example]:
        return [*self.single_turn, *self.dialogues]

    def describe(self) -> str:
        return (
            f"zero-shot: {len(self.single_turn)} examples ({self.single_turn_label}); "
            f"dialogue: {len(self.single_turn) + len(self.dialogues)} examples "
            f"(the same + {len(self.dialogues)} {self.dialogues_label})"
        )


@dataclass
class CheckedData:
    """Everything `data --check` looks at: the training sets, the prompt sets, and the warnings."""

    sets: TrainingSets
    openers: list[Prompt]
    dev: list[Prompt]
    warnings: list[Problem]
    test: list[Prompt] = field(default_factory=list)
    sensitive: list[Prompt] = field(default_factory=list)
    lima_test: list[Prompt] = field(default_factory=list)  # empty where the user has no LIMA test.jsonl


def fingerprint(examples: Sequence[Example]) -> str:
    """A short content hash of a training set, for model cards: same examples in the same order, same hash."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(example.to_record(), sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def _data_file(dialogues_dir: Path, name: str) -> Path:
    """A file from the user's dialogues folder when it has one, else the project's own."""
    own = dialogues_dir / name
    return own if own.exists() else DIALOGUES_DIR / name


def load_data(lima: str = "sample", dialogues: str | Path = DIALOGUES_DIR) -> CheckedData:
    """Load and validate everything: raises DataError listing every error of every file.

    lima: ``"sample"`` (offline: our sample stands in for LIMA's 1,000), ``"hub"`` (GAIR/lima, gated), or a
    path to a train.jsonl in LIMA's format. dialogues: a folder laid out like ``dialogues/`` (its missing
    files are taken from the project's), or ``"lima"`` for LIMA's own 30 multi-turn rows.
    """
    use_lima_dialogues = str(dialogues) == "lima"
    dialogues_dir = DIALOGUES_DIR if use_lima_dialogues else Path(dialogues)
    if not use_lima_dialogues and not dialogues_dir.is_dir():
        raise UserError(f"error: {dialogues}: not a folder: pass a folder laid out like dialogues/, or 'lima'")
    if use_lima_dialogues and lima == "sample":
        raise UserError("error: --dialogues lima: LIMA's own dialogues need LIMA's data: add --lima hub or --lima PATH")

    errors: list[Problem] = []
    if lima == "sample":
        single, found = load_examples(_data_file(dialogues_dir, SAMPLE_FILE))
        errors += found
        single_label = f"OFFLINE SAMPLE: {len(single)} authored single-turn examples standing in for LIMA's 1,000"
        lima_multi: list[Example] = []
        lima_test_path = find_lima_test()
    else:
        lima_path = fetch_lima() if lima == "hub" else Path(lima)
        lima_test_path = _lima_test_from_hub() if lima == "hub" else find_lima_test(lima_path)
        rows, found = load_examples(lima_path)
        errors += found
        single = [e for e in rows if e.user_turns == 1]
        lima_multi = [e for e in rows if e.user_turns > 1]
        origin = LIMA_REPO if lima == "hub" else f"LIMA format, {display_path(lima_path)}"
        single_label = f"LIMA single-turn examples ({origin})"
        log.info("LIMA: %d single-turn and %d multi-turn rows", len(single), len(lima_multi))

    if use_lima_dialogues:
        multi, multi_label = lima_multi, "LIMA's own multi-turn dialogues"
    else:
        multi, found = load_examples(dialogues_dir / TRAIN_FILE)
        errors += found
        multi_label = f"multi-turn dialogues from {display_path(dialogues_dir / TRAIN_FILE)}"

    if lima == "sample":
        errors += [
            Problem(e.path, e.line, "messages", f"has {e.user_turns} user turns: this file holds single-turn examples")
            for e in single
            if e.user_turns != 1
        ]
    errors += [
        Problem(e.path, e.line, "messages", "has 1 user turn: a training dialogue needs at least 2")
        for e in multi
        if e.user_turns < 2
    ]

    prompt_sets, found = _load_prompt_sets(dialogues_dir, lima_test_path)
    errors += found
    if errors:
        raise DataError(errors)

    sets = TrainingSets(single, multi, single_label, multi_label, is_offline_sample=lima == "sample")
    openers, dev, test, sensitive, lima_test = prompt_sets
    warnings = find_duplicates(sets.dialogue) + find_overlap(sets.dialogue, openers, dev, test, sensitive, lima_test)
    warnings += size_problems(test, _data_file(dialogues_dir, TEST_FILE))
    warnings += size_problems(sensitive, _data_file(dialogues_dir, SENSITIVE_FILE))
    return CheckedData(sets, openers, dev, warnings, test, sensitive, lima_test)


def _load_prompt_sets(dialogues_dir: Path, lima_test: Path | None) -> tuple[list[list[Prompt]], list[Problem]]:
    """Openers, dev, test and sensitive prompts (each from the user's folder or the project's), then LIMA's test
    prompts (none when the user has no LIMA test.jsonl); with every problem of every file."""
    loads = [
        load_prompts(_data_file(dialogues_dir, OPENERS_FILE), with_follow_ups=True),
        load_prompts(_data_file(dialogues_dir, DEV_FILE), with_follow_ups=False),
        load_test_prompts(_data_file(dialogues_dir, TEST_FILE)),
        load_sensitive_prompts(_data_file(dialogues_dir, SENSITIVE_FILE)),
        load_lima_test(lima_test) if lima_test is not None else ([], []),
    ]
    return [prompts for prompts, _ in loads], [problem for _, found in loads for problem in found]


def size_problems(prompts: Sequence[Prompt], path: Path) -> list[Problem]:
    """Warn where a study's prompt set differs in size from the paper's (PROMPT_SET_SIZES)."""
    size, flag, flagged = PROMPT_SET_SIZES[path.name]
    marked = sum(bool(getattr(p, flag)) for p in prompts)
    if (len(prompts), marked) == (size, flagged):
        return []
    message = (
        f"{len(prompts)} prompts, {marked} with {flag} true: the paper's study has {size}, {flagged} of them {flag}"
    )
    return [Problem(display_path(path), None, None, message, "warning")]


def load_training_sets(lima: str = "sample", dialogues: str | Path = DIALOGUES_DIR) -> TrainingSets:
    """The two training sets, validated; warnings are logged."""
    data = load_data(lima, dialogues)
    for warning in data.warnings:
        log.warning("%s", warning)
    log.info("%s", data.sets.describe())
    return data.sets


# ------------------------------------------------------------------------------------ duplicates, overlap


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: what two copies of a prompt share."""
    return " ".join(re.findall(r"\w+", text.lower()))


def find_duplicates(examples: Sequence[Example]) -> list[Problem]:
    """Warn on examples that repeat another one whole, or repeat its opening prompt."""
    warnings = []
    whole: dict[str, Example] = {}
    first_prompt: dict[str, Example] = {}
    for example in examples:
        key = "\x00".join(normalize(m["content"]) for m in example.messages)
        prompt = normalize(example.messages[0]["content"])
        if key in whole:
            message = f"duplicate of the example at {whole[key].where}"
        elif prompt in first_prompt:
            message = f"same opening prompt as the example at {first_prompt[prompt].where}"
        else:
            whole[key] = example
            first_prompt[prompt] = example
            continue
        warnings.append(Problem(example.path, example.line, "messages", message, "warning"))
    return warnings


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


Index = tuple[dict[str, str], dict[tuple[str, ...], str]]
"""Normalised texts and their OVERLAP_NGRAM-word spans, each with where it first occurs."""

# What each prompt set is called in an overlap warning, in the order find_overlap takes them.
PROMPT_SET_NAMES = ("an evaluation opener", "a dev prompt", "a test prompt", "a sensitive prompt", "a LIMA test prompt")


def find_overlap(
    train: Sequence[Example],
    openers: Sequence[Prompt],
    dev: Sequence[Prompt],
    test: Sequence[Prompt] = (),
    sensitive: Sequence[Prompt] = (),
    lima_test: Sequence[Prompt] = (),
) -> list[Problem]:
    """Warn where a prompt repeats training text, or a prompt of an earlier set (a dev prompt an opener; a test,
    sensitive or LIMA test prompt an opener, a dev prompt or each other): whatever chose the checkpoint, or was
    trained on, says nothing when it is tested again.

    Overlap is an exact match after normalising, or a shared span of OVERLAP_NGRAM words.
    """
    train_index = _index((m["content"], e.where) for e in train for m in e.messages if m["role"] == "user")
    prompt_sets = [openers, dev, test, sensitive, lima_test]
    indexes = [_index((text, p.where) for p in prompts for _, text in _texts(p)) for prompts in prompt_sets]
    warnings = []
    for i, prompts in enumerate(prompt_sets):
        warnings += _overlaps(prompts, train_index, "training data")
        for name, earlier in zip(PROMPT_SET_NAMES[:i], indexes[:i], strict=True):
            warnings += _overlaps(prompts, earlier, name)
    return warnings


def _texts(prompt: Prompt) -> list[tuple[str, str]]:
    """(field, text) for every message a prompt sends."""
    return [("prompt", prompt.prompt)] + [(f"follow_ups[{i}]", t) for i, t in enumerate(prompt.follow_ups)]


def _index(texts: Iterable[tuple[str, str]]) -> Index:
    exact: dict[str, str] = {}
    spans: dict[tuple[str, ...], str] = {}
    for text, where in texts:
        words = normalize(text).split()
        exact.setdefault(" ".join(words), where)
        for gram in _ngrams(words, OVERLAP_NGRAM):
            spans.setdefault(gram, where)
    return exact, spans


def _overlaps(prompts: Sequence[Prompt], against: Index, what: str) -> list[Problem]:
    exact, spans = against
    warnings = []
    for prompt in prompts:
        for field_name, text in _texts(prompt):
            words = normalize(text).split()
            hit = exact.get(" ".join(words)) or next(
                (spans[g] for g in _ngrams(words, OVERLAP_NGRAM) if g in spans), None
            )
            if hit:
                warnings.append(Problem(prompt.path, prompt.line, field_name, f"overlaps {what} at {hit}", "warning"))
    return warnings


# ------------------------------------------------------------------------------------------------ stats

Tokenize = Callable[[list[str]], list[int]]
"""Token counts for a batch of texts (no special tokens)."""


@dataclass
class Row:
    """One line of the Table 1-style summary."""

    name: str
    examples: int
    turns_per_example: float
    user_tokens_mean: float
    user_tokens_max: int
    assistant_tokens_mean: float
    assistant_tokens_max: int
    assistant_words_mean: float
    over_max_length: int


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def stats_row(name: str, examples: Sequence[Example], count: Tokenize, max_length: int) -> Row:
    user = [m["content"] for e in examples for m in e.messages if m["role"] == "user"]
    assistant = [m["content"] for e in examples for m in e.messages if m["role"] == "assistant"]
    user_tokens, assistant_tokens = count(user), count(assistant)
    return Row(
        name=name,
        examples=len(examples),
        turns_per_example=round(_mean([e.user_turns for e in examples]), 2),
        user_tokens_mean=round(_mean(user_tokens), 1),
        user_tokens_max=max(user_tokens, default=0),
        assistant_tokens_mean=round(_mean(assistant_tokens), 1),
        assistant_tokens_max=max(assistant_tokens, default=0),
        assistant_words_mean=round(_mean([len(t.split()) for t in assistant]), 1),
        over_max_length=sum(example_tokens(e, count) > max_length for e in examples),
    )


def example_tokens(example: Example, count: Tokenize) -> int:
    """Tokens the example takes once rendered for training (content + role headers + end-of-turn tokens)."""
    return sum(count([m["content"] for m in example.messages])) + TEMPLATE_TOKENS_PER_MESSAGE * len(example.messages)


def oversized(examples: Sequence[Example], count: Tokenize, max_length: int) -> list[Problem]:
    """Flag examples longer than the training length: they are kept and truncated at train time."""
    return [
        Problem(
            e.path,
            e.line,
            "messages",
            f"{n} tokens > max length {max_length}: kept, truncated to {max_length} at train time",
            "warning",
        )
        for e in examples
        if (n := example_tokens(e, count)) > max_length
    ]


def stats_table(data: CheckedData, count: Tokenize, max_length: int) -> dict[str, Any]:
    """The numbers behind the paper's Table 1, for our two sets and the evaluation prompts."""
    sets = data.sets
    by_source: dict[str, list[Example]] = {}
    for example in sets.single_turn:
        by_source.setdefault(example.source, []).append(example)
    training = [stats_row(source, group, count, max_length) for source, group in sorted(by_source.items())]
    zero_shot_name = "zero-shot set (offline sample)" if sets.is_offline_sample else "zero-shot set"
    training.append(stats_row(zero_shot_name, sets.zero_shot, count, max_length))
    dialogue_sources: dict[str, list[Example]] = {}
    for example in sets.dialogues:
        dialogue_sources.setdefault(example.source, []).append(example)
    training += [stats_row(source, group, count, max_length) for source, group in sorted(dialogue_sources.items())]
    training.append(stats_row("dialogue set", sets.dialogue, count, max_length))

    prompts = []
    prompt_sets = [(OPENERS_FILE, data.openers), (DEV_FILE, data.dev), (TEST_FILE, data.test)]
    prompt_sets.append((SENSITIVE_FILE, data.sensitive))
    if data.lima_test:  # a row only where the user has LIMA's test prompts
        prompt_sets.append((f"LIMA {LIMA_TEST_FILE}", data.lima_test))
    for name, items in prompt_sets:
        lengths = count([p.prompt for p in items])
        prompts.append(
            {
                "name": name,
                "prompts": len(items),
                "follow_ups_per_prompt": round(_mean([len(p.follow_ups) for p in items]), 2),
                "prompt_tokens_mean": round(_mean(lengths), 1),
                "prompt_tokens_max": max(lengths, default=0),
            }
        )
    return {
        "zero_shot": {
            "examples": len(sets.zero_shot),
            "label": sets.single_turn_label,
            "fingerprint": fingerprint(sets.zero_shot),
        },
        "dialogue": {
            "examples": len(sets.dialogue),
            "label": sets.dialogues_label,
            "fingerprint": fingerprint(sets.dialogue),
        },
        "max_length": max_length,
        "training": [row.__dict__ for row in training],
        "prompts": prompts,
        "warnings": len(data.warnings),
    }


def format_table(table: dict[str, Any], tokenizer_name: str) -> str:
    """Render the stats as fixed-width text, like the paper's Table 1."""
    head = (
        f"{'source':<32}{'examples':>9}{'turns/ex':>10}{'user tok mean/max':>20}"
        f"{'asst tok mean/max':>20}{'asst words':>12}{'> max len':>11}"
    )
    lines = [
        f"Training data (tokens by {tokenizer_name}; max length {table['max_length']})",
        head,
        "-" * len(head),
    ]
    for row in table["training"]:
        total = row["name"].endswith("set") or row["name"].endswith("sample)")
        lines.append(
            f"{row['name']:<32}{row['examples']:>9}{row['turns_per_example']:>10.2f}"
            f"{row['user_tokens_mean']:>13.1f} / {row['user_tokens_max']:<4}"
            f"{row['assistant_tokens_mean']:>13.1f} / {row['assistant_tokens_max']:<4}"
            f"{row['assistant_words_mean']:>12.1f}{row['over_max_length']:>11}"
        )
        if total:
            lines.append("-" * len(head))
    lines += ["", f"{'evaluation prompts':<32}{'prompts':>9}{'follow-ups/prompt':>19}{'prompt tok mean/max':>22}"]
    for row in table["prompts"]:
        lines.append(
            f"{row['name']:<32}{row['prompts']:>9}{row['follow_ups_per_prompt']:>19.2f}"
            f"{row['prompt_tokens_mean']:>15.1f} / {row['prompt_tokens_max']:<4}"
        )
    lines += [
        "",
        f"zero-shot: {table['zero_shot']['examples']} examples, {table['zero_shot']['label']} "
        f"[{table['zero_shot']['fingerprint']}]",
        f"dialogue:  {table['dialogue']['examples']} examples, zero-shot + {table['dialogue']['label']} "
        f"[{table['dialogue']['fingerprint']}]",
    ]
    return "\n".join(lines)


def write_sets(sets: TrainingSets, out_dir: Path) -> list[Path]:
    """Write both sets as JSONL in our format, with a manifest naming what they were built from."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, examples in (("zero-shot", sets.zero_shot), ("dialogue", sets.dialogue)):
        path = out_dir / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for example in examples:
                handle.write(json.dumps(example.to_record(), ensure_ascii=False) + "\n")
        written.append(path)
    manifest = {
        "zero-shot": {
            "examples": len(sets.zero_shot),
            "fingerprint": fingerprint(sets.zero_shot),
            "built_from": sets.single_turn_label,
        },
        "dialogue": {
            "examples": len(sets.dialogue),
            "fingerprint": fingerprint(sets.dialogue),
            "built_from": f"zero-shot + {sets.dialogues_label}",
        },
        "offline_sample": sets.is_offline_sample,
    }
    manifest_path = out_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    written.append(manifest_path)
    return written
