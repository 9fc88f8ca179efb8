import logging
from collections.abc import Iterator

import pytest

from tether.logs import configure


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    library = logging.getLogger("websockets")
    library_level = library.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    library.setLevel(library_level)


def test_the_websocket_library_is_quiet_at_info() -> None:
    configure("info")
    assert logging.getLogger("tether.agent").isEnabledFor(logging.INFO)
    assert not logging.getLogger("websockets.server").isEnabledFor(logging.INFO)
    assert logging.getLogger("websockets.server").isEnabledFor(logging.WARNING)


def test_debug_shows_the_websocket_library_again() -> None:
    configure("info")
    configure("debug")
    assert logging.getLogger("websockets.server").isEnabledFor(logging.DEBUG)
