"""``python -m demo.studies generate --db DB --study SPEC``: pre-generate a prompt study's answers (resumable).

The study is a YAML file (``demo.studies.spec``); its answers go into the arena's ratings database, each once per
(source, prompt) with the study's decoding, so raters (and ``python -m demo.judge study``) never wait for one.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from pathlib import Path

from common import cli
from common.cli import UserError
from demo.ratings import Store
from demo.studies.generate import generate
from demo.studies.spec import read_spec


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise UserError(f"{message} (see python -m demo.studies generate --help)")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


DESCRIPTION = (
    "Generate a prompt study's answers once per (source, prompt) with its decoding, into the ratings database, "
    "before raters arrive. Run it again to go on where it stopped: nothing is stored twice."
)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m demo.studies generate", description=DESCRIPTION)
    parser.add_argument("--db", type=Path, required=True, help="the arena's SQLite ratings database")
    parser.add_argument("--study", type=Path, required=True, metavar="SPEC", help="the study's YAML file")
    parser.add_argument("--concurrency", type=_positive, default=8, help="answers asked at once of each source (8)")
    return parser


def _run(argv: list[str]) -> int:
    if argv[:1] != ["generate"]:
        raise UserError("usage: python -m demo.studies generate --db DB --study SPEC [--concurrency N]")
    args = _parser().parse_args(argv[1:])
    spec = read_spec(args.study)
    try:
        store = Store(args.db)
    except (sqlite3.Error, OSError) as err:
        raise UserError(f"cannot open the ratings database {args.db}: {str(err).splitlines()[0]}") from None
    try:
        progress = asyncio.run(generate(store, spec, args.concurrency))
    finally:
        store.close()
    print(f"{spec.name}: {progress.line()}")
    return 1 if progress.failed else 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
