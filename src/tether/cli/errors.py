"""The CLI's error: its message is printed as one line and the command exits non-zero."""

from tether.errors import TetherError


class CliError(TetherError):
    exit_code = 1
