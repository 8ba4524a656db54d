"""A study's specification: a small YAML file naming the study, its kind, its prompt file, its sources and the
decoding its answers are asked with.

    name: figure1-gpt4            # the study's name in the store and the report
    kind: pairwise                # pairwise (Figure 1), absolute (Figure 3) or safety
    prompts: ../dialogues/test.jsonl   # relative to this file
    model: lima=runs/r/lima-1000  # the studied model: anything the arena serves, NAME=SOURCE to name it
    baselines:                    # pairwise: one or more; absolute and safety: more sources rated beside the model
      - alpaca=http://localhost:8081
    decoding: {max_new_tokens: 512}   # optional: serving.decoding.Decoding's fields (LIMA's decoding by default)
    limit: 50                     # optional: only the first N prompts of the file

Every mistake is one line naming the file and the field (``common.yamlfile``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from common import jsonl, prompts
from common.cli import UserError
from common.yamlfile import read_mapping
from demo.studies.records import STUDY_KINDS
from serving import backends

KEYS = ("name", "kind", "prompts", "model", "baselines", "decoding", "limit")
MARKS = ("kind", "out_of_distribution", "malicious")  # what a prompt file may say of a prompt, beside its text


class SpecError(UserError):
    """A study specification that cannot be used: one line naming the file and the field."""


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str
    prompts: Path
    model: str  # NAME=SOURCE or SOURCE, as the arena takes a side
    baselines: tuple[str, ...] = ()
    decoding: backends.Decoding = field(default_factory=backends.Decoding)
    limit: int | None = None
    path: Path = Path()

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.model, *self.baselines)


def read_spec(path: Path) -> Spec:
    """The study of a YAML file, every field checked."""
    data = read_mapping(path, "must be a mapping of name, kind, prompts, model, baselines, decoding, limit", SpecError)
    unknown = [key for key in data if key not in KEYS]
    if unknown:
        raise SpecError(f"{path}: {unknown[0]}: unknown field (known: {', '.join(KEYS)})")
    text = {key: _text(path, data, key) for key in ("name", "kind", "prompts", "model")}
    if text["kind"] not in STUDY_KINDS:
        raise SpecError(f"{path}: kind: one of {', '.join(STUDY_KINDS)}, got {text['kind']!r}")
    baselines = data.get("baselines") or []
    if not isinstance(baselines, list) or not all(isinstance(b, str) and b.strip() for b in baselines):
        raise SpecError(f"{path}: baselines: a list of sources (NAME=SOURCE or SOURCE)")
    if text["kind"] == "pairwise" and not baselines:
        raise SpecError(f"{path}: baselines: a pairwise study compares its model with one baseline or more")
    limit = data.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise SpecError(f"{path}: limit: a whole number of at least 1, got {limit!r}")
    return Spec(
        name=text["name"],
        kind=text["kind"],
        prompts=(path.parent / text["prompts"]),
        model=text["model"],
        baselines=tuple(b.strip() for b in baselines),
        decoding=_decoding(path, data.get("decoding") or {}),
        limit=limit,
        path=path,
    )


def _text(path: Path, data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{path}: {key}: {'missing field' if value is None else 'must be a non-empty string'}")
    return value.strip()


def _decoding(path: Path, values: object) -> backends.Decoding:
    known = {one.name: one.type for one in fields(backends.Decoding)}
    if not isinstance(values, dict):
        raise SpecError(f"{path}: decoding: a mapping of {', '.join(known)}")
    for key, value in values.items():
        if key not in known:
            raise SpecError(f"{path}: decoding.{key}: unknown setting (known: {', '.join(known)})")
        want = int if key == "max_new_tokens" else (int, float)
        if isinstance(value, bool) or not isinstance(value, want):
            raise SpecError(f"{path}: decoding.{key}: a number, got {value!r}")
    return backends.Decoding(**values)


def read_prompts(spec: Spec) -> list[dict]:
    """The study's prompts (the first ``limit``), each ``id``, ``prompt`` and the marks the file gives it."""
    lines = jsonl.read_jsonl(spec.prompts)[0]
    if lines and "conversations" in lines[0][1]:  # LIMA's own test.jsonl (GAIR/lima), ids from line numbers
        found, problems = prompts.load_lima_test(spec.prompts)
    else:
        found, problems = prompts.load_prompts(spec.prompts, with_follow_ups=False)
    if problems:
        raise SpecError(jsonl.summary(problems))
    if not found:
        raise SpecError(f"{spec.path}: prompts: {spec.prompts} holds no prompt")
    rows = {str(obj.get("id")): obj for _, obj in lines}
    chosen = []
    for one in found[: spec.limit]:
        # the loader's own fields where it reads them (common.prompts.Prompt), else the line's
        line = rows.get(one.id, {})
        marks = {key: value if (value := getattr(one, key, None)) is not None else line.get(key) for key in MARKS}
        marks["kind"] = marks["kind"] or one.category
        chosen.append({"id": one.id, "prompt": one.prompt, **marks})
    return chosen
