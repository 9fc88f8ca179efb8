"""Fixtures of the end-to-end isolation tests: one namespaced platform per module, a fresh agent
per test (tests/netns/world.py)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netns
from tests.e2e.harness import Children
from tests.netns.world import TABLE, NamespacedPlatform, World


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    netns.skip_unless_available()
    root = tmp_path_factory.mktemp("isolation")
    children = Children(root / "logs")
    with netns.topology() as net:
        try:
            platform = NamespacedPlatform(root, children, net)
            platform.init()
            platform.start()
            admin = platform.login(root / "admin-cli")
            admin.ok("segment", "create", "ir")
            admin.ok("segment", "set", "ir", "--active-response", "on")
            built = World(net, platform, admin)
            built.point_name_at(net.platform_v4)
            yield built
        finally:
            children.kill_all()


@pytest.fixture
def endpoint(world: World, tmp_path: Path) -> Iterator[World]:
    """A fresh agent in the endpoint namespace for each test; no isolation left behind."""
    world.point_name_at(world.net.platform_v4)
    world.enroll(tmp_path / "agent")
    world.start_agent()
    try:
        yield world
    finally:
        if world.agent is not None and world.agent.alive():
            world.agent.popen.kill()
            world.agent.wait(10)
        for table in (TABLE, "tether_script_isolation"):
            world.net.run(world.net.endpoint, "nft", "delete", "table", "inet", table, check=False)
        world.point_name_at(world.net.platform_v4)
