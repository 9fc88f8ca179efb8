import ipaddress
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.agent.isolation.policies import policy
from tether.agent.errors import IsolationFailed
from tether.agent.isolation.state import DesiredIsolation, IsolationStore
from tether.agent.state import StateDir
from tether.protocol.isolation import AllowRule, IsolationMode

SINCE = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def test_nothing_stored_means_not_isolated(tmp_path: Path) -> None:
    desired = IsolationStore(StateDir(tmp_path)).load()
    assert desired == DesiredIsolation()
    assert desired.policy() is None


def test_round_trip_private_file_and_policy(tmp_path: Path) -> None:
    store = IsolationStore(StateDir(tmp_path / "state"))
    applied = policy(IsolationMode.FULL, AllowRule(cidr="10.0.0.0/8", ports=(22,)))
    store.save(DesiredIsolation.isolated_by(applied, SINCE, "iptables"))
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    assert json.loads(store.path.read_text())["platform"] == ["192.0.2.10", "2001:db8::10"]
    loaded = store.load()
    assert loaded.policy() == applied
    assert loaded.status(installed=True).backend == "iptables"
    # What the firewall holds wins: rules gone means not isolated, whatever was asked.
    assert loaded.status(installed=False).isolated is False
    assert loaded.addresses() == (
        ipaddress.ip_address("192.0.2.10"),
        ipaddress.ip_address("2001:db8::10"),
    )


@pytest.mark.parametrize(
    "text", ["{", '{"isolated": "maybe"}', '{"platform": ["host.example"]}', '{"extra": 1}']
)
def test_a_damaged_file_is_one_sentence(tmp_path: Path, text: str) -> None:
    store = IsolationStore(StateDir(tmp_path))
    store.path.write_text(text)
    with pytest.raises(
        IsolationFailed,
        match=r"is damaged, so the agent does not know whether this host should be isolated\.$",
    ):
        store.load()
