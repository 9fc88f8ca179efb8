"""The CLI's error: its message is printed as one line and the command exits non-zero."""

from tether.errors import TetherError


class CliError(TetherError):
    exit_code = 1


class UsageError(CliError):
    """A value given on the command line is malformed; exit status 2 like other usage errors."""

    exit_code = 2


class ApiError(CliError):
    """The platform refused a request; `status` is its HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Unreachable(CliError):
    """The platform could not be reached or its connection broke; worth retrying."""
