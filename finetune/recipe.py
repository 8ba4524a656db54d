"""Recipes are data: every hyperparameter of a run lives in a YAML file under finetune/recipes/.

A recipe is read into `Recipe`, whose fields are the only keys a YAML file or `--set key=value` may use;
an unknown key is a one-line error naming the keys that exist. Values given with --set are parsed as YAML
(`--set epochs=3`, `--set lora=null`, `--set keep_epochs=[2,3]`), and nested keys use dots
(`--set lora.r=8`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.cli import UserError
from common.yamlfile import read_mapping
from serving.precision import native_bf16  # one detection, shared with in-process serving

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


@dataclass
class Recipe:
    """One training run's settings. Defaults are the paper's (section 2 and appendix of arXiv 2305.11206)."""

    name: str = "custom"
    base: str = "huggyllama/llama-65b"
    lima: str = "hub"  # sample | hub | PATH to LIMA's train.jsonl
    dialogues: str | None = None  # None: the project's dialogues/; a folder laid out like it; "lima"
    # Optimiser: AdamW, beta1 0.9, beta2 0.95, weight decay 0.1.
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    weight_decay: float = 0.1
    # Schedule: 1e-5 at the first step, decaying linearly to 1e-6 at the last, no warmup.
    learning_rate: float = 1e-5
    final_learning_rate: float = 1e-6
    warmup_steps: int = 0
    # Batch: examples per optimiser step across all devices (32; 64 for the smaller models); the per-device
    # micro-batch and gradient accumulation make it up.
    batch_size: int = 32
    per_device_batch_size: int = 1
    epochs: int = 15
    max_length: int = 2048
    # Residual dropout rises linearly from 0.0 at the bottom layer to this at the top (0.3; 0.2 smaller).
    residual_dropout: float = 0.3
    # Servable checkpoints kept for choosing (epochs 5..10 in the paper).
    keep_epochs: list[int] = field(default_factory=lambda: [5, 10])
    precision: str = "bf16"  # bf16 | fp32 | auto (bf16 where the machine computes in it natively, else fp32)
    gradient_checkpointing: bool = True
    # Length grouping keeps padding low; 'random' is TRL's default order.
    group_by_length: bool = True
    # Optional subsets (quick presets): the N shortest examples of each kind that fit max_length whole.
    single_turn_examples: int | None = None
    dialogue_examples: int | None = None
    # Optional LoRA (quick presets only; the paper fine-tunes every weight): {r, alpha, dropout}.
    lora: dict[str, Any] | None = None
    seed: int = 42
    logging_steps: int = 1

    def keep_range(self) -> range:
        first, last = self.keep_epochs
        return range(first, last + 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Recipe)}


def available() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe by name (finetune/recipes/NAME.yaml) or path, then apply `key=value` overrides."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = RECIPES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UserError(
                f"error: --recipe {name_or_path}: no such recipe: use one of {', '.join(available())} "
                "or a path to a YAML file"
            )
    values = read_mapping(path, "a recipe is a mapping of key: value lines")
    values.setdefault("name", path.stem)
    for key in values:
        _check_key(key, str(path))
    for override in overrides or []:
        key, value = _parse_override(override)
        _set(values, key, value)
    return _build(values, str(path))


def _check_key(key: str, where: str) -> None:
    if key not in FIELDS:
        raise UserError(f"error: {where}: unknown recipe key {key!r}: known keys are {', '.join(FIELDS)}")


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UserError(f"error: --set {text}: expected key=value, e.g. --set epochs=3")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set(values: dict[str, Any], key: str, value: Any) -> None:
    top, _, rest = key.partition(".")
    _check_key(top, f"--set {key}")
    if not rest:
        values[top] = value
        return
    current = values.get(top) or {}
    if not isinstance(current, dict):
        raise UserError(f"error: --set {key}: {top!r} is not a mapping, so it has no {rest!r}")
    values[top] = {**current, rest: value}


def _coerce(key: str, value: Any, where: str) -> Any:
    """Numbers as numbers: YAML reads `1e-5` (no dot) as a string, and --set values arrive as text."""
    default = FIELDS[key].default
    kind = type(default) if default is not dataclasses.MISSING and default is not None else None
    if kind in (int, float) and not isinstance(value, bool) and isinstance(value, str | int | float):
        try:
            return kind(value) if kind is float or float(value).is_integer() else float(value)
        except ValueError:
            raise UserError(f"error: {where}: {key}: expected a number, got {value!r}") from None
    return value


def _build(values: dict[str, Any], where: str) -> Recipe:
    recipe = Recipe(**{key: _coerce(key, value, where) for key, value in values.items()})
    problems = []
    if not 0 <= recipe.residual_dropout < 1:
        problems.append("residual_dropout must be in [0, 1)")
    if recipe.precision == "auto":  # resolved here, so the run records (and resumes with) what it trained in
        recipe.precision = "bf16" if native_bf16() else "fp32"
    if recipe.precision not in ("bf16", "fp32"):
        problems.append(f"precision must be bf16, fp32 or auto, got {recipe.precision!r}")
    if not (isinstance(recipe.keep_epochs, list) and len(recipe.keep_epochs) == 2):
        problems.append("keep_epochs must be [first, last]")
    elif not 1 <= recipe.keep_epochs[0] <= recipe.keep_epochs[1] <= recipe.epochs:
        problems.append(f"keep_epochs {recipe.keep_epochs} must lie within epochs 1..{recipe.epochs}")
    if recipe.batch_size % recipe.per_device_batch_size:
        problems.append("batch_size must be a multiple of per_device_batch_size")
    if not recipe.final_learning_rate <= recipe.learning_rate:
        problems.append("final_learning_rate must not exceed learning_rate")
    if recipe.lora is not None and not isinstance(recipe.lora, dict):
        problems.append("lora must be null or a mapping like {r: 16, alpha: 32, dropout: 0.0}")
    if problems:
        raise UserError(*(f"error: {where}: {problem}" for problem in problems))
    return recipe
