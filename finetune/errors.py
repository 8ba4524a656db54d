"""The one exception type a user sees: a mistake in their input, explained in one line each."""


class UserError(Exception):
    """An input mistake (bad file, unknown flag value, missing access). The CLI prints each line, exits 2.

    Never raise this for a bug in our own code: those should keep their traceback.
    """

    def __init__(self, *lines: str):
        self.lines = [str(line) for line in lines]
        super().__init__("\n".join(self.lines))
