"""``python -m finetune COMMAND``: the command line of the training side.

Input mistakes end with one line per problem on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from common import cli
from common.cli import UserError

Run = Callable[[argparse.Namespace], int]


def command(
    commands: argparse._SubParsersAction, run: Run, help: str, on_run_dir: bool = False
) -> argparse.ArgumentParser:
    """The subcommand ``run`` runs: named after it (run_check_served: check-served), described by its docstring.
    ``on_run_dir``: its first argument is a run folder."""
    name = run.__name__.removeprefix("run_").replace("_", "-")
    parser = commands.add_parser(name, help=help, description=inspect.getdoc(run))
    parser.set_defaults(run=run)
    if on_run_dir:
        parser.add_argument("run_dir", type=Path, help="a run folder, e.g. runs/quick-cpu/lima-1030")
    return parser


def add_data_parser(commands: argparse._SubParsersAction) -> None:
    what = "build and check the two training sets (zero-shot, dialogue) and every prompt set (openers, dev, studies)"
    parser = command(commands, run_data, what)
    parser.add_argument("--check", action="store_true", help="validate everything and print the stats table")
    parser.add_argument(
        "--lima",
        default="sample",
        metavar="sample|hub|PATH",
        help="single-turn data: 'sample' (offline, default: dialogues/sample_single_turn.jsonl stands in for "
        "LIMA's 1,000), 'hub' (GAIR/lima, gated: needs HF_TOKEN and its terms accepted), or a LIMA-format "
        "train.jsonl; LIMA's test.jsonl, beside it or in the Hugging Face cache, is checked too",
    )
    parser.add_argument(
        "--dialogues",
        default=None,
        metavar="DIR|lima",
        help="folder laid out like dialogues/ (default: the project's), or 'lima' for LIMA's own 30 dialogues",
    )
    parser.add_argument(
        "--tokenizer",
        default="bundled:gemma-3-270m",
        help="tokenizer for the token counts: bundled:gemma-3-270m (default), a local dir, or a Hub id",
    )
    parser.add_argument("--max-length", type=int, default=2048, help="training length in tokens (default 2048)")
    parser.add_argument("--json", action="store_true", help="with --check, print the table as one JSON object")
    parser.add_argument("--out", type=Path, default=None, help="also write zero-shot.jsonl and dialogue.jsonl here")


def run_data(args: argparse.Namespace) -> int:
    """Load LIMA (or the offline sample) and the dialogues, validate every file, and with --check print a summary
    like the paper's Table 1. Without --check, print what the two sets hold."""
    from finetune import data

    checked = data.load_data(args.lima, args.dialogues or data.DIALOGUES_DIR)
    warnings = list(checked.warnings)
    if args.check:
        from finetune.base_models import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)

        def count(texts: list[str]) -> list[int]:
            if not texts:
                return []
            return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

        warnings += data.oversized(checked.sets.dialogue, count, args.max_length)
        table = data.stats_table(checked, count, args.max_length)
    for warning in warnings:
        print(warning, file=sys.stderr)
    if args.out is not None:
        for path in data.write_sets(checked.sets, args.out):
            print(f"wrote {data.display_path(path)}", file=sys.stderr)
    if not args.check:
        print(checked.sets.describe())
    elif args.json:
        print(json.dumps(table))
    else:
        print(data.format_table(table, args.tokenizer))
        print(f"\nvalid: {len(warnings)} warning(s)")
    return 0


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    parser = command(
        commands, run_train, "train the zero-shot (lima-1000) and dialogue (lima-1030) models with a LIMA recipe"
    )
    parser.add_argument("--recipe", required=True, help="recipe name (quick-cpu, single-gpu, lima-7b, ...) or YAML")
    parser.add_argument("--model", choices=["zero-shot", "dialogue", "both"], default="both")
    parser.add_argument("--base", help="override the recipe's base: bundled:gemma-3-270m, a model folder, a Hub id")
    parser.add_argument("--lima", metavar="sample|hub|PATH", help="override the recipe's single-turn data")
    parser.add_argument("--dialogues", metavar="DIR|lima", help="override the recipe's multi-turn dialogues")
    parser.add_argument("--output", type=Path, default=Path("runs"), help="where runs go (default: runs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its last epoch")


def run_train(args: argparse.Namespace) -> int:
    """Train both models from one base with a recipe from finetune/recipes/ (or a YAML path). Writes
    RUNS/<recipe>/lima-1000 and lima-1030, each with servable epoch-N folders and `selected`."""
    from finetune.recipe import load_recipe

    overrides = [f"{key}={value}" for key in ("base", "lima", "dialogues") if (value := getattr(args, key))]
    recipe = load_recipe(args.recipe, [*args.set, *overrides])
    from finetune.train import train

    models = ["zero-shot", "dialogue"] if args.model == "both" else [args.model]
    for run_dir in train(recipe, models, args.output, resume=args.resume):
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{run_dir}: selected {(run_dir / 'selected').read_text().strip()}")
    return 0


def add_select_parser(commands: argparse._SubParsersAction) -> None:
    parser = command(commands, run_select, "choose which kept epoch of a run is served", on_run_dir=True)
    parser.add_argument("--epoch", type=int, required=True, help="a kept epoch (5..10 in the paper)")


def run_select(args: argparse.Namespace) -> int:
    """Choose which kept epoch of a run is served: RUN_DIR/selected names it, for the arena and the Space."""
    from serving.folder import select

    print(f"{args.run_dir}: selected {select(args.run_dir, args.epoch).name}")
    return 0


def add_dev_parser(commands: argparse._SubParsersAction) -> None:
    what = "answer the held-out dev prompts with every kept epoch of a run, to choose one"
    parser = command(commands, run_dev, what, on_run_dir=True)
    parser.add_argument("--prompts", type=Path, default=None, help="dev prompts (default: dialogues/dev.jsonl)")
    parser.add_argument("--source", metavar="URL", help="a TGI, vLLM or OpenAI-compatible server serving one epoch")
    parser.add_argument("--epoch", type=int, help="the epoch --source serves; without --source: answer with it only")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (or requests at once)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="new-token cap per answer (default 512)")
    parser.add_argument("--temperature", type=float, default=0.7, help="default 0.7; 0 is greedy")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling (default 0.9)")
    parser.add_argument("--repetition-penalty", type=float, default=1.2, help="over the whole context (default 1.2)")


def run_dev(args: argparse.Namespace) -> int:
    """Answer every dev prompt with every kept epoch of RUN_DIR (LIMA chose its epoch by reading such answers)
    with the paper's decoding, into RUN_DIR/dev/epoch-N.jsonl. A rerun skips the prompts a file already answers.
    With --source, a server serving epoch --epoch answers instead."""
    from finetune.data import DEV_FILE, DIALOGUES_DIR
    from finetune.dev import dev_answers
    from serving.backends import Decoding

    decoding = Decoding(args.temperature, args.top_p, args.repetition_penalty, args.max_new_tokens)
    prompts = args.prompts or DIALOGUES_DIR / DEV_FILE
    for line in dev_answers(args.run_dir, prompts, decoding, args.batch_size, args.source, args.epoch):
        print(line)
    return 0


def add_check_served_parser(commands: argparse._SubParsersAction) -> None:
    what = "check a model folder before serving it on TGI, vLLM or transformers serve"
    parser = command(commands, run_check_served, what)
    parser.add_argument("model_dir", type=Path, help="a model folder, e.g. runs/quick-cpu/lima-1030/epoch-3")
    parser.add_argument("--generate", action="store_true", help="also load the model and see it stop at EOT")


def run_check_served(args: argparse.Namespace) -> int:
    """Check that a saved model folder serves as trained: its chat template renders a multi-turn conversation
    byte for byte the same in transformers (Jinja2) and in minijinja as TGI's router runs it,
    generation_config.json stops at EOT, and config.json names the dtype its weights are stored in."""
    from finetune.servable import check_files, check_servable

    problems = check_servable(args.model_dir) if args.generate else check_files(args.model_dir)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{args.model_dir}: {problems[0]}{more}")
    print(f"{args.model_dir}: servable (template identical in TGI's minijinja and Jinja2, stops at EOT)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_parser(commands)
    add_train_parser(commands)
    add_select_parser(commands)
    add_dev_parser(commands)
    add_check_served_parser(commands)
    args = parser.parse_args(argv)
    # Under torchrun / accelerate launch every process runs this: the main one logs and reports, the others
    # say only what goes wrong, tagged with their rank.
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    tag = f"[rank {rank}] " if world > 1 else ""
    logging.basicConfig(level=logging.WARNING, format=f"{tag}%(levelname)s %(name)s: %(message)s")
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.getLogger("finetune").setLevel(level if rank == 0 else logging.WARNING)
    if not args.verbose:  # its retry warnings would repeat, at length, what our one line says
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    # every process meets the same mistake; one of them says it
    return cli.run(args.run, args, quiet=rank != 0)


if __name__ == "__main__":
    sys.exit(main())
