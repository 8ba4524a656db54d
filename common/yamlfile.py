"""Reading a user's YAML file (a recipe, the arena's settings) as a mapping, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from common.cli import UserError


def read_mapping(path: Path, not_a_mapping: str, error: type[Exception] = UserError) -> dict[str, Any]:
    """The file's top-level mapping (an empty file is an empty one), else ``error`` in one line.

    A syntax error names the line YAML stopped at and why; ``not_a_mapping`` says what the file should hold.
    ``error``: the caller's own input-error type, when its callers catch that one.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise error(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: {not_a_mapping}")
    return data
