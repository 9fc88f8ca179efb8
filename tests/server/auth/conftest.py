import pytest


@pytest.fixture(autouse=True)
def fast_password_hashing() -> None:
    """Overrides the speed-up of tests/server/conftest.py: these tests use the real parameters."""
