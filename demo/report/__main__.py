"""``python -m demo.report``: the summary (and with ``--out`` every registered figure, summary.md and
report.json), ``python -m demo.report export``: every rating with its turn, or ``python -m demo.report redact``:
take a conversation down. Bad input: one line, exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path

from common import cli
from demo.report.counting import build_report
from demo.report.export import export, studies_path
from demo.report.figures import FIGURES, write_figures
from demo.report.markdown import markdown
from demo.report.reading import ReportError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise ReportError(f"{message} (see python -m demo.report --help)")


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    """Both commands read the database that ``--db`` names."""
    parser = _Parser(prog=prog, description=description)
    parser.add_argument("--db", type=Path, required=True, help="the arena's SQLite ratings database")
    return parser


def _report_parser() -> argparse.ArgumentParser:
    parser = _parser(
        "python -m demo.report",
        "Sum up the ratings database like the paper's Figure 7. "
        "`python -m demo.report export --help` for the data export.",
    )
    parser.add_argument(
        "--from-mirror",
        metavar="DIR_OR_REPO",
        action="append",
        help="first rebuild --db (a new file) from the event log: a mirror folder of events-*.jsonl files or a"
        " Hub dataset repo (owner/name, with HF_TOKEN); may be given more than once",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    written = ", ".join(entry.file for entry in FIGURES)
    parser.add_argument("--out", type=Path, help=f"also write {written}, summary.md and report.json here")
    parser.add_argument(
        "--a-model", help="the model whose verdict wins are counted (default: the later name, e.g. lima-1030)"
    )
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    return parser


def _export_parser() -> argparse.ArgumentParser:
    parser = _parser("python -m demo.report export", "Write every rating with its turn and context.")
    parser.add_argument("--format", required=True, help="jsonl | csv | hf (a datasets folder)")
    parser.add_argument("--out", type=Path, required=True, help="the file (jsonl, csv) or folder (hf) to write")
    parser.add_argument("--push-to-hub", metavar="REPO", help="with --format hf: also push, private, with HF_TOKEN")
    return parser


def _redact_parser() -> argparse.ArgumentParser:
    parser = _parser(
        "python -m demo.report redact",
        "Take a conversation down: append a redaction event, after which every report, export, rebuild and later"
        " mirror copy withholds its messages, answers and typed names (its ratings still count, under a"
        " pseudonym). The events already logged or published are not rewritten.",
    )
    parser.add_argument("--conversation", required=True, metavar="ID", help="the conversation's id (in its events)")
    parser.add_argument("--reason", default="", help="why (published with the redaction: do not repeat the text)")
    return parser


def _redact(argv: list[str]) -> None:
    from demo import ratings

    args = _redact_parser().parse_args(argv)
    if not args.db.is_file():
        raise ReportError(f"no ratings database at {args.db}: pass --db with the file the arena writes")
    try:
        store = ratings.Store(args.db)
    except sqlite3.Error as exc:
        raise ReportError(f"cannot open {args.db}: {exc}") from None
    try:
        done = store.redact(args.conversation, args.reason)
    except ratings.NotAllowed as exc:
        raise ReportError(str(exc)) from None
    finally:
        store.close()
    said = "taken down" if done else "was already taken down"
    print(f"conversation {args.conversation} {said}: its texts are withheld from now on ({args.db})")


def _export(argv: list[str]) -> None:
    args = _export_parser().parse_args(argv)
    out = export(args.db, args.format, args.out, args.push_to_hub)
    studies = studies_path(out)
    also = f" and {studies}" if args.format != "hf" and studies.exists() else ""
    print(f"wrote {out}{also}" + (f" and pushed {args.push_to_hub}" if args.push_to_hub else ""))


def _rebuild(db: Path, sources: list[str]) -> None:
    """``--from-mirror``: write ``db`` anew from the event log before reporting on it."""
    from demo import mirror, ratings

    try:
        store = ratings.Store(db)
    except sqlite3.Error as exc:
        raise ReportError(f"cannot open {db}: {exc}") from None
    try:
        summary = mirror.rebuild(sources, store, token=os.environ.get("HF_TOKEN"))
    except mirror.MirrorError as exc:
        raise ReportError(str(exc)) from None
    finally:
        store.close()
    print(f"{mirror.describe(summary)} into {db}", file=sys.stderr)


def _report(argv: list[str]) -> None:
    args = _report_parser().parse_args(argv)
    if args.from_mirror:
        _rebuild(args.db, args.from_mirror)
    report = build_report(args.db, a_model=args.a_model, resamples=args.resamples, seed=args.seed)
    summary = markdown(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_figures(report, args.out)
        (args.out / "summary.md").write_text(summary, encoding="utf-8")
        (args.out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(report, ensure_ascii=False) if args.json else summary, end="\n" if args.json else "")


def _run(argv: list[str]) -> int:
    if argv[:1] == ["export"]:
        _export(argv[1:])
    elif argv[:1] == ["redact"]:
        _redact(argv[1:])
    else:
        _report(argv)
    return 0


def main(argv: list[str] | None = None) -> int:
    # ReportError is an input error (common.cli.UserError); so is a file the OS refuses (--out, a locked database).
    return cli.run(_run, sys.argv[1:] if argv is None else argv, input_errors=(OSError,))


if __name__ == "__main__":
    sys.exit(main())
