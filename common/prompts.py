"""The one reader of prompt files: evaluation openers (with their planned follow-ups), dev prompts, the prompt
sets of the studies (our test and sensitive prompts) and LIMA's own test prompts.

One JSON object a line: ``{"id", "prompt", "category"?, "follow_ups"?}``; a study's set also needs ``category``
and its boolean flag (``out_of_distribution`` in test.jsonl, ``malicious`` in sensitive.jsonl). LIMA's
test.jsonl is ``{"conversations": [prompt], "source"}``. Every problem of every line is collected and named
``FILE:LINE: FIELD: message``; a caller decides whether problems stop it (the CLIs) or only leave out the bad
lines (the arena's opener list).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.jsonl import Problem, display_path, duplicate_ids, json_type, read_jsonl, text_problem

LIMA_REPO = "GAIR/lima"
LIMA_TEST_FILE = "test.jsonl"
# The flag each study's prompt set carries: Figure 3 reports out-of-distribution prompts apart, the safety study
# the clearly malicious ones.
OUT_OF_DISTRIBUTION = "out_of_distribution"
MALICIOUS = "malicious"

# A caller's own rule for a message it will send (the arena's length cap, say): the message, or ValueError.
MessageCheck = Callable[[str], object]


@dataclass
class Prompt:
    """An evaluation opener or a dev prompt: no answer, optional planned follow-ups."""

    id: str
    prompt: str
    category: str | None = None
    follow_ups: list[str] = field(default_factory=list)
    path: str = ""
    line: int = 0
    # None where the file does not say (openers, dev prompts, LIMA's test prompts).
    out_of_distribution: bool | None = None
    malicious: bool | None = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def record(self) -> dict[str, Any]:
        """The JSON keys of the file's line (the arena and the judge keep openers as these dicts)."""
        return {"id": self.id, "prompt": self.prompt, "category": self.category, "follow_ups": list(self.follow_ups)}


def load_prompts(
    path: Path, *, with_follow_ups: bool, check: MessageCheck | None = None
) -> tuple[list[Prompt], list[Problem]]:
    """Read openers (``with_follow_ups``: the field is required) or dev prompts. Returns the valid ones and every
    problem. ``check``: a further rule each message (prompt and follow-ups) must pass."""
    return _load(path, with_follow_ups, check, flag=None)


def load_test_prompts(path: Path) -> tuple[list[Prompt], list[Problem]]:
    """Read a test set (dialogues/test.jsonl): ``category`` and ``out_of_distribution`` (a boolean) required."""
    return _load(path, False, None, flag=OUT_OF_DISTRIBUTION)


def load_sensitive_prompts(path: Path) -> tuple[list[Prompt], list[Problem]]:
    """Read sensitive prompts (dialogues/sensitive.jsonl): ``category`` and ``malicious`` (a boolean) required."""
    return _load(path, False, None, flag=MALICIOUS)


def _load(
    path: Path, with_follow_ups: bool, check: MessageCheck | None, flag: str | None
) -> tuple[list[Prompt], list[Problem]]:
    name = display_path(path)
    rows, problems = read_jsonl(path)
    prompts: list[Prompt] = []
    for line, obj in rows:
        found = _problems(obj, with_follow_ups, check) + (_flag_problems(obj, flag) if flag else [])
        problems += [Problem(name, line, key, message) for key, message in found]
        if not found:
            follow_ups = list(obj.get("follow_ups", []))
            flags = {flag: obj[flag]} if flag else {}
            prompts.append(Prompt(obj["id"], obj["prompt"], obj.get("category"), follow_ups, name, line, **flags))
    problems += duplicate_ids([(p.id, p.line) for p in prompts], name)
    return prompts, problems


def _flag_problems(obj: dict[str, Any], flag: str) -> list[tuple[str, str]]:
    """A study's prompt is reported by its category and its flag: both must be there."""
    found = []
    if "category" not in obj:
        found.append(("category", "missing field"))
    elif isinstance(obj["category"], str) and not obj["category"].strip():
        found.append(("category", "empty"))
    if flag not in obj:
        found.append((flag, "missing field (true or false)"))
    elif not isinstance(obj[flag], bool):
        found.append((flag, f"must be true or false, got {json_type(obj[flag])}"))
    return found


def load_lima_test(path: Path) -> tuple[list[Prompt], list[Problem]]:
    """Read LIMA's test.jsonl (``{"conversations": [prompt], "source"}`` a line) as Prompts: the id is
    ``lima-test-NNN`` from the line number, the category is the row's ``source``. The file marks no prompt out of
    distribution, so ``out_of_distribution`` stays None."""
    name = display_path(path)
    rows, problems = read_jsonl(path)
    prompts: list[Prompt] = []
    for line, obj in rows:
        found = _lima_problems(obj)
        problems += [Problem(name, line, key, message) for key, message in found]
        if not found:
            prompt = obj["conversations"][0]
            prompts.append(Prompt(f"lima-test-{line:03d}", prompt, obj.get("source"), [], name, line))
    return prompts, problems


def _lima_problems(obj: dict[str, Any]) -> list[tuple[str, str]]:
    conversations = obj.get("conversations")
    found = []
    if "conversations" not in obj:
        found.append(("conversations", "missing field"))
    elif not isinstance(conversations, list):
        found.append(("conversations", f"must be a list holding the prompt, got {json_type(conversations)}"))
    elif not conversations:
        found.append(("conversations", "empty: expected the prompt"))
    elif (issue := text_problem(conversations[0])) is not None:
        found.append(("conversations[0]", issue))
    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        found.append(("source", f"must be a string, got {json_type(source)}"))
    return found


def find_lima_test(beside: Path | None = None) -> Path | None:
    """LIMA's test.jsonl where the user has it: beside their LIMA train.jsonl, else in the Hugging Face cache
    (left there by an earlier download of GAIR/lima). Never goes to the network: the set is gated."""
    if beside is not None and (candidate := beside.parent / LIMA_TEST_FILE).is_file():
        return candidate
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(LIMA_REPO, LIMA_TEST_FILE, repo_type="dataset")
    return Path(cached) if isinstance(cached, str) else None


def _problems(obj: dict[str, Any], with_follow_ups: bool, check: MessageCheck | None) -> list[tuple[str, str]]:
    """(field, message) for everything wrong with one line."""
    found = []
    for key in ("id", "prompt"):
        if key not in obj:
            found.append((key, "missing field"))
        elif (issue := text_problem(obj[key])) is not None:
            found.append((key, issue))
    category = obj.get("category")
    if category is not None and not isinstance(category, str):
        found.append(("category", f"must be a string, got {json_type(category)}"))
    follow_ups = obj.get("follow_ups", [])
    if with_follow_ups and "follow_ups" not in obj:
        found.append(("follow_ups", "missing field (a list of planned follow-up messages)"))
    elif not isinstance(follow_ups, list):
        found.append(("follow_ups", f"must be a list of strings, got {json_type(follow_ups)}"))
    else:
        found += [(f"follow_ups[{i}]", issue) for i, text in enumerate(follow_ups) if (issue := text_problem(text))]
    if check is not None and not found:
        found += _checked(
            check, [("prompt", obj["prompt"])] + [(f"follow_ups[{i}]", t) for i, t in enumerate(follow_ups)]
        )
    return found


def _checked(check: MessageCheck, messages: list[tuple[str, str]]) -> list[tuple[str, str]]:
    found = []
    for key, text in messages:
        try:
            check(text)
        except ValueError as err:
            found.append((key, str(err)))
    return found
