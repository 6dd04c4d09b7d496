"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UnlearnError(Exception):
    """Bad input a user can act on (a file, a field, a value). Message is one line."""


class DivergenceError(UnlearnError):
    """Training produced a non-finite loss and was stopped."""
