"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UnlearnError(Exception):
    """Bad input a user can act on (a file, a field, a value). Message is one line."""


class DivergenceError(UnlearnError):
    """Training produced a non-finite loss and was stopped."""


class TrainingInterrupted(UnlearnError):
    """Training was stopped by Ctrl-C (SIGINT) after saving a checkpoint; the CLI exits 130."""

    exit_code = 130

    def __init__(self, message: str, checkpoint: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint
