"""Fixtures for the end-to-end tests: one platform for the session, CLI identities, agents."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Agent, Children, Cli, Platform, wait_online


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A platform initialised and running for the whole session; killed at the end."""
    root = tmp_path_factory.mktemp("platform")
    children = Children(root / "logs")
    try:
        shared = Platform(root, children)
        shared.init()
        shared.start()
        yield shared
    finally:
        children.kill_all()


@pytest.fixture(scope="session")
def admin(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """The admin, logged in with the CLI in its own config folder."""
    return platform.login(tmp_path_factory.mktemp("admin-cli"))


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    """Processes that live for one test."""
    registry = Children(tmp_path / "logs")
    try:
        yield registry
    finally:
        registry.kill_all()


def enrolled_agent(
    platform: Platform, admin: Cli, children: Children, state_dir: Path, segment: str = "default"
) -> Agent:
    """An endpoint enrolled with a fresh one-use token (not started)."""
    token = admin.json("enroll-token", "create", "--segment", segment, "--uses", "1")["token"]
    agent = Agent(state_dir, children, platform.env)
    result = agent.enroll(token)
    assert result.returncode == 0, result.stderr
    assert f"Enrolled as host {agent.host_id}" in result.stdout
    return agent


def running_agent(
    platform: Platform, admin: Cli, children: Children, state_dir: Path, segment: str = "default"
) -> Agent:
    """An endpoint enrolled, started and seen online."""
    agent = enrolled_agent(platform, admin, children, state_dir, segment)
    agent.start()
    with admin.api() as api:
        wait_online(api, agent.host_id, timeout=20)
    return agent


@pytest.fixture(scope="module")
def responding(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Platform, Cli, Children]]:
    """A platform of the module's own, with segment "ir" where Active Response is on."""
    root = tmp_path_factory.mktemp("responding-platform")
    children = Children(root / "logs")
    try:
        platform = Platform(root, children)
        platform.init()
        platform.start()
        admin = platform.login(root / "admin-cli")
        admin.ok("segment", "create", "ir")
        admin.ok("segment", "set", "ir", "--active-response", "on")
        yield platform, admin, children
    finally:
        children.kill_all()


@pytest.fixture(scope="module")
def endpoint(
    responding: tuple[Platform, Cli, Children], tmp_path_factory: pytest.TempPathFactory
) -> Agent:
    """A running agent in segment "ir" of the module's `responding` platform."""
    platform, admin, children = responding
    return running_agent(platform, admin, children, tmp_path_factory.mktemp("ep"), segment="ir")
