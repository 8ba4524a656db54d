"""Reading the user's JSONL files: every problem of every line collected, each one line naming FILE:LINE: FIELD."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, printable as one line: ``severity: path:line: field: message``."""

    path: str
    line: int | None
    field: str | None
    message: str
    severity: Literal["error", "warning"] = "error"

    @property
    def text(self) -> str:
        """The line without its severity: ``path:line: field: message``."""
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        what = f"{self.field}: {self.message}" if self.field else self.message
        return f"{where}: {what}"

    def __str__(self) -> str:
        return f"{self.severity}: {self.text}"


def summary(problems: Sequence[Problem]) -> str:
    """The first error as one line, counting the others: for commands that stop at the first."""
    errors = [p for p in problems if p.severity == "error"]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{errors[0].text}{more}" if errors else ""


def display_path(path: Path | str) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_jsonl(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[Problem]]:
    """Parse a JSONL file into (line number, object) pairs, collecting problems instead of stopping.

    A UTF-8 byte-order mark and CRLF line ends are accepted (editors on Windows write both); blank lines are
    skipped. Lines are decoded one by one so that a bad byte is reported on its own line.
    """
    name = display_path(path)
    if not path.is_file():
        return [], [Problem(name, None, None, "file not found")]
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    rows: list[tuple[int, dict[str, Any]]] = []
    problems: list[Problem] = []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        chunk = chunk.rstrip(b"\r")
        if not chunk.strip():
            continue
        obj, message = _parse_line(chunk)
        if message is not None:
            problems.append(Problem(name, number, None, message))
        else:
            rows.append((number, obj))
    if not rows and not problems:
        problems.append(Problem(name, None, None, "file is empty: expected one JSON object per line"))
    return rows, problems


def _parse_line(chunk: bytes) -> tuple[Any, str | None]:
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8 (bad byte at column {exc.start + 1})"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} at column {exc.colno}"
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {json_type(obj)}"
    return obj, None


def json_type(value: Any) -> str:
    """How JSON names the type of a value, for messages: 'a list', 'null', 'a number'..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def text_problem(value: Any, empty: str = "empty") -> str | None:
    """What is wrong with a value that must be non-blank text, or None."""
    if not isinstance(value, str):
        return f"must be a string, got {json_type(value)}"
    return empty if not value.strip() else None


def duplicate_ids(ids: Iterable[tuple[str | None, int]], path: str) -> list[Problem]:
    """An error for each (id, line) whose id an earlier line already has."""
    first: dict[str, int] = {}
    problems = []
    for item_id, line in ids:
        if item_id is None:
            continue
        if item_id in first:
            problems.append(Problem(path, line, "id", f"duplicate id {item_id!r} (first on line {first[item_id]})"))
        else:
            first[item_id] = line
    return problems
