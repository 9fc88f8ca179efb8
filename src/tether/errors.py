"""The root of every error Tether raises on purpose.

Each layer subclasses it once, so callers can catch a whole layer, and the CLI can turn any of
them into one plain sentence without a traceback.
"""


class TetherError(Exception):
    """Something went wrong that a user can understand from the message alone."""
