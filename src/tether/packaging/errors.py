"""The one root exception of packaging: a sentence the operator can act on."""

from tether.errors import TetherError


class PackagingError(TetherError):
    """The bundle or a package could not be built."""
