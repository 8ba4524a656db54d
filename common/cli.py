"""The one way every command says an input mistake: one line per problem on stderr, ``error: ...``, exit 2.

A mistake in what the user gave (a file, a flag's value, an access they lack) is a ``UserError``; the runner
prints it and returns 2, so no traceback reaches a user for it. Any other exception is a bug of ours and keeps
its traceback.

    def main(argv: list[str] | None = None) -> int: ...

    if __name__ == "__main__":
        sys.exit(cli.run(main))
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

Args = TypeVar("Args")

PREFIX = "error: "
INPUT_ERROR_STATUS = 2  # argparse's own status for a bad command line: one status for every input mistake


class UserError(Exception):
    """An input mistake (bad file, unknown flag value, missing access), one line per problem.

    Never raise this for a bug in our own code: those should keep their traceback.
    """

    def __init__(self, *lines: object):
        self.lines = [str(line) for line in lines]
        super().__init__("\n".join(self.lines))


def error_lines(exc: BaseException) -> list[str]:
    """What the user reads: each line of the error once prefixed ``error: `` (a line may carry it already)."""
    lines = getattr(exc, "lines", None) or str(exc).splitlines() or [type(exc).__name__]
    return [line if line.startswith(PREFIX) else PREFIX + line for line in map(str, lines)]


def run(
    main: Callable[[Args], Any],
    argv: Args = None,
    *,
    input_errors: Sequence[type[BaseException]] = (),
    quiet: bool = False,
) -> int:
    """Call ``main(argv)``; an input error becomes its lines on stderr and status 2. ``argv`` is passed on as it
    is (a command's parsed arguments will do as well as a list of strings).

    ``input_errors``: more exception types that mean an input mistake (a command's own, not derived from
    UserError). ``quiet``: say nothing, only return 2 (under a distributed launch every process meets the same
    mistake, and one of them says it). A ``main`` that returns no status (a benchmark returning its figures)
    succeeded: 0.
    """
    try:
        status = main(argv)
    except (UserError, *input_errors) as exc:
        if not quiet:
            for line in error_lines(exc):
                print(line, file=sys.stderr)
        return INPUT_ERROR_STATUS
    return status if isinstance(status, int) else 0
