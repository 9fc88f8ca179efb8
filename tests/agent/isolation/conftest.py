import pytest

from tests.agent.isolation.recording import Reachability, Recorder


@pytest.fixture
def backend() -> Recorder:
    return Recorder()


@pytest.fixture
def probe() -> Reachability:
    return Reachability()
