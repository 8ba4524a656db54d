"""The arena's settings: CLI flag > environment variable (for Spaces) > YAML file > default.

With no sides given, the arena shows the selected epochs of the latest ``runs/*/lima-1000`` and
``runs/*/lima-1030``; where none exist, it trains the quick CPU pair first (once).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from common.cli import UserError
from common.yamlfile import read_mapping
from demo import protocol
from serving.credentials import redact

log = logging.getLogger(__name__)

ENV_PREFIX = "LIMA_ARENA_"
REPO = Path(__file__).resolve().parents[1]
SPACE_STORAGE = Path("/data")  # where a Space mounts its persistent storage, when it has one


class SettingsError(UserError):
    """A setting that cannot work, said in one line."""


@dataclass
class Settings:
    left: str | None = None  # SOURCE or NAME=SOURCE: model dir, Hub id, or http(s) URL of a TGI server
    right: str | None = None
    db: str = "ratings.db"
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    blind: bool = True
    turn_limit: int = protocol.DEFAULT_TURN_LIMIT
    rate_every_turn: bool = True  # the paper's protocol: every answer rated before the verdict and regenerating
    max_new_tokens: int | None = None  # default: 2048 for servers, 256 in-process on CPU
    runs: str = "runs"
    first_launch_recipe: str = "quick-cpu"
    review: bool | None = None  # the Review tab; default: on locally, off when public (Space, --share, not loopback)
    dataset_repo: str | None = None  # Hub dataset repo that receives every rating as JSONL (CommitScheduler)
    mirror_dir: str | None = None  # where those JSONL files are written (default: beside the database)
    push_every: int = 45  # seconds between pushes to the dataset repo: the loss window of a crash without storage
    max_turns_per_hour: int | None = None  # per session (and client when public); 0: off; unset: off locally
    max_ratings_per_minute: int | None = None
    max_tokens_per_hour: int | None = None  # the whole app's generated tokens
    concurrency: int | None = None  # answers a side works on at once (in-process batch; a server's slots)
    checkpoints: str | None = None  # a run (or recipe) folder whose epochs' dev answers the Checkpoints tab compares
    trusted_proxies: str | None = None  # addresses/CIDRs whose X-Forwarded-For is believed (default: loopback)


_HELP = {
    "left": "left model: a servable model dir, a Hub id, or a TGI URL; NAME=SOURCE names it",
    "right": "right model (same forms as --left)",
    "db": "SQLite file for ratings (default ratings.db; on a Space with persistent storage /data/ratings.db)",
    "host": "address to listen on (0.0.0.0 to serve others)",
    "port": "port (default 7860)",
    "share": "also open a public gradio.live link",
    "blind": "hide which model is which until the verdict (default on; --no-blind turns it off)",
    "turn_limit": f"most user turns per side in one conversation (default {protocol.DEFAULT_TURN_LIMIT})",
    "rate_every_turn": "every answer is rated before the verdict and before it is regenerated (default on)",
    "max_new_tokens": "default cap on new tokens per answer",
    "runs": "where trained runs live (default runs/)",
    "first_launch_recipe": "recipe trained when no runs exist (default quick-cpu)",
    "review": "offer the Review tab (second opinions on others' conversations); default on, off when public",
    "dataset_repo": "Hub dataset repo (owner/name) that also receives every event, pushed every --push-every seconds",
    "mirror_dir": "folder for the append-only JSONL event log (default: <db>.jsonl.d beside the db)",
    "push_every": "seconds between two pushes of the event log to the dataset repo, each only when something is new"
    " (default 45: at most 80 commits an hour, under the Hub's 128 per repo; a hard crash without persistent"
    " storage loses at most this plus one upload)",
    "max_turns_per_hour": "answers a session (and, when public, a client) may ask for per hour; 0 turns it off"
    " (default: off locally, 120 when public)",
    "max_ratings_per_minute": "ratings a session may give per minute; 0: off (default: off locally, 60 when public)",
    "max_tokens_per_hour": "tokens the whole arena may generate per hour, all raters together (default: off)",
    "concurrency": "answers each side works on at once: in-process, the batch size (default 8); a server, how"
    " many it is asked at once (default: what TGI's /info says it takes); more wait in line and are told so",
    "trusted_proxies": "comma-separated addresses or networks (CIDR) of the reverse proxies in front of the arena,"
    " whose X-Forwarded-For names the client that limits count (default: loopback only; on a Space, its proxy)",
    "checkpoints": "a run folder (runs/R/lima-1030, or runs/R for both models) whose epochs the Checkpoints tab"
    " compares on their dev answers (python -m finetune dev RUN_DIR writes them)",
}


def _coerce(name: str, value: object, where: str) -> object:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if value is None:
        return None
    try:
        if "bool" in kind:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError
        if "int" in kind:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError  # YAML's `port: 7860.5` or `port: yes`: int() would silently make 7860 or 1
            return int(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{where}: {value!r} is not a valid value for {name}") from None
    return str(value)


def parse(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    parser = argparse.ArgumentParser(
        prog="python demo/app.py", description="Rate two models side by side, every turn (the LIMA multi-turn arena)."
    )
    parser.add_argument("--config", help=f"YAML file of settings (or {ENV_PREFIX}CONFIG)")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        if f.type.startswith("bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=_HELP[f.name])
        else:
            parser.add_argument(flag, default=None, help=_HELP[f.name])
    args = parser.parse_args(argv)

    values = {f.name: f.default for f in fields(Settings)}
    config = args.config or environ.get(ENV_PREFIX + "CONFIG")
    given: dict[str, object] = _read_yaml(Path(config)) if config else {}
    for f in fields(Settings):
        env = environ.get(ENV_PREFIX + f.name.upper())
        if env not in (None, ""):
            given[f.name] = _coerce(f.name, env, f"environment variable {ENV_PREFIX}{f.name.upper()}")
        cli = getattr(args, f.name)
        if cli is not None:
            given[f.name] = _coerce(f.name, cli, "--" + f.name.replace("_", "-"))
    values.update(given)
    storage = persistent_storage(environ)
    if storage is not None and given.get("db") is None:
        values["db"] = str(storage / "ratings.db")
        log.info("persistent storage at %s: the database and its event log are kept there (%s)", storage, values["db"])
    elif storage is None and environ.get("SPACE_ID") and not values["dataset_repo"]:
        log.warning("a Space with no persistent storage and no dataset repo: every rating goes with the container")
    settings = Settings(**values)
    if settings.turn_limit < 1:
        raise SettingsError(f"turn_limit must be at least 1, got {settings.turn_limit}")
    if not 0 < settings.port < 65536:
        raise SettingsError(f"port must be 1-65535, got {settings.port}")
    if settings.concurrency is not None and settings.concurrency < 1:
        raise SettingsError(f"concurrency must be at least 1, got {settings.concurrency}")
    for name in ("max_turns_per_hour", "max_ratings_per_minute", "max_tokens_per_hour"):
        if (getattr(settings, name) or 0) < 0:
            raise SettingsError(f"{name} must be 0 (off) or more, got {getattr(settings, name)}")
    if settings.push_every < 1:
        raise SettingsError(f"push_every must be at least 1 second, got {settings.push_every}")
    if settings.max_new_tokens is not None and settings.max_new_tokens < 1:
        raise SettingsError(f"max_new_tokens must be at least 1, got {settings.max_new_tokens}")
    return settings


def persistent_storage(environ: dict[str, str]) -> Path | None:
    """The Space's persistent storage, when it has one: on a Space (SPACE_ID), a writable /data. A machine that
    merely has a /data folder is not a Space, so it keeps the default beside the working directory."""
    if environ.get("SPACE_ID") and SPACE_STORAGE.is_dir() and os.access(SPACE_STORAGE, os.W_OK):
        return SPACE_STORAGE
    return None


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SettingsError(f"{path}: no such settings file")
    data = read_mapping(path, "expected a mapping of settings", SettingsError)
    known = {f.name for f in fields(Settings)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise SettingsError(f"{path}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
        out[name] = _coerce(name, value, f"{path}: {key}")
    return out


# -- the embedded default: the latest trained pair ---------------------------------------------------------
def latest_pair(runs: Path) -> tuple[Path, Path] | None:
    """Selected epoch dirs of the newest recipe folder that holds both models, or None."""
    pairs = []
    for recipe_dir in runs.glob("*"):
        chosen = [_selected(recipe_dir / model) for model in ("lima-1000", "lima-1030")]
        if all(chosen):
            newest = max((recipe_dir / m / "selected").stat().st_mtime for m in ("lima-1000", "lima-1030"))
            pairs.append((newest, chosen[0], chosen[1]))
    if not pairs:
        return None
    _, zero_shot, dialogue = max(pairs)
    return zero_shot, dialogue


def _selected(run_dir: Path) -> Path | None:
    marker = run_dir / "selected"
    if not marker.is_file():
        return None
    epoch_dir = run_dir / marker.read_text(encoding="utf-8").strip()
    return epoch_dir if (epoch_dir / "config.json").is_file() else None


def check_source(flag: str, spec: str) -> None:
    """A side that cannot work stops the start, in one line; a URL is allowed to answer later (servers often
    start after the arena), and the start-up probe says how it answers."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from serving.backends import parse_source

    _, source = parse_source(spec)
    what_to_pass = "pass a trained model folder (runs/<recipe>/<model>/epoch-N), a Hub id, or a server URL"
    if source.startswith(("http://", "https://")):
        if not urlsplit(source).hostname:
            raise SettingsError(f"{flag} {redact(source)}: a URL needs a host, e.g. http://127.0.0.1:8080")
        return
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SettingsError(f"{flag} {source}: the folder holds no model (no config.json): {what_to_pass}")
        return
    if path.exists():
        raise SettingsError(f"{flag} {source}: a file, not a model folder: {what_to_pass}")
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise SettingsError(f"{flag} {source}: no such folder: {what_to_pass}")
    try:
        validate_repo_id(source)
    except HFValidationError:
        raise SettingsError(f"{flag} {source}: neither a folder here nor a valid Hub id: {what_to_pass}") from None


def resolve_sides(settings: Settings) -> tuple[str, str]:
    """The two sources; trains the first-launch pair (terminal progress bars) when no runs exist yet."""
    for flag, spec in (("--left", settings.left), ("--right", settings.right)):
        if spec:
            check_source(flag, spec)
    if settings.left and settings.right:
        return settings.left, settings.right
    runs = Path(settings.runs)
    pair = latest_pair(runs)
    if pair is None:
        log.warning(
            "no trained models in %s/: training the %s pair first (one time; later launches open at once)",
            runs,
            settings.first_launch_recipe,
        )
        command = [sys.executable, "-m", "finetune", "train", "--recipe", settings.first_launch_recipe]
        command += ["--output", str(runs)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        if subprocess.run(command, env=env).returncode != 0:
            raise SettingsError(f"training the first-launch pair failed; run python {' '.join(command[1:])} to see why")
        pair = latest_pair(runs)
        if pair is None:
            raise SettingsError(f"training finished but {runs}/ holds no selected lima-1000 / lima-1030 pair")
    zero_shot, dialogue = (str(p) for p in pair)
    return settings.left or zero_shot, settings.right or dialogue
