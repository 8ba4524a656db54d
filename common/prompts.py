"""The one reader of prompt files: evaluation openers (with their planned follow-ups) and dev prompts.

One JSON object a line: ``{"id", "prompt", "category"?, "follow_ups"?}``. Every problem of every line is
collected and named ``FILE:LINE: FIELD: message``; a caller decides whether problems stop it (the CLIs) or
only leave out the bad lines (the arena's opener list).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.jsonl import Problem, display_path, duplicate_ids, json_type, read_jsonl, text_problem

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
    name = display_path(path)
    rows, problems = read_jsonl(path)
    prompts: list[Prompt] = []
    for line, obj in rows:
        found = [Problem(name, line, key, message) for key, message in _problems(obj, with_follow_ups, check)]
        problems += found
        if not found:
            follow_ups = list(obj.get("follow_ups", []))
            prompts.append(Prompt(obj["id"], obj["prompt"], obj.get("category"), follow_ups, name, line))
    problems += duplicate_ids([(p.id, p.line) for p in prompts], name)
    return prompts, problems


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
