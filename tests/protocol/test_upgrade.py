"""What an agent upgrade signs and how its endings read; versions a rollout carries pass the
gateway's checks in both protocol versions the platform speaks (docs/adr/0046, 0051)."""

import json
from datetime import UTC, datetime

import pytest

from tether.protocol import OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION, Hello, OsInfo
from tether.protocol.compat import version_refusal
from tether.protocol.upgrade import PURPOSE, outcome_of, signed_statement, valid_version


def test_the_signed_statement_is_canonical_and_names_its_purpose() -> None:
    statement = signed_statement("0.1.1", "a" * 64, 123)
    assert json.loads(statement) == {
        "purpose": PURPOSE,
        "sha256": "a" * 64,
        "size": 123,
        "version": "0.1.1",
    }
    assert statement == signed_statement("0.1.1", "a" * 64, 123)
    assert b" " not in statement
    assert statement != signed_statement("0.1.1", "a" * 64, 124)


@pytest.mark.parametrize("version", ["0.1.0", "0.1.0+rehearsal", "1.2.3~rc1", "2026.12_7-x"])
def test_versions_a_rollout_carries_are_valid_and_served_in_both_protocol_versions(
    version: str,
) -> None:
    assert valid_version(version)
    for protocol in (OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION):
        hello = Hello(
            protocol_version=protocol,
            agent_version=version,
            hostname="web-1",
            os=OsInfo(family="linux", name="Linux", version="6.1"),
            addresses=[],
            boot_time=datetime.now(UTC),
        )
        assert version_refusal(hello.protocol_version) is None


@pytest.mark.parametrize("version", ["", "../etc", ".hidden", "a/b", "1..2", "x" * 65, "v 1"])
def test_a_version_that_would_be_a_bad_directory_name_is_not_valid(version: str) -> None:
    assert not valid_version(version)


@pytest.mark.parametrize(
    ("state", "error", "outcome"),
    [
        ("succeeded", None, "upgraded"),
        (
            "failed",
            "Rolled back to 0.1.0: version 0.1.1 exited with status 1 before it connected.",
            "rolled back",
        ),
        ("failed", "Refused: the bundle's signature does not verify.", "refused"),
        ("failed", "The transfer was cut off.", "failed"),
        ("timed_out", None, "failed"),
    ],
)
def test_an_upgrade_job_ending_reads_as_its_outcome(
    state: str, error: str | None, outcome: str
) -> None:
    assert outcome_of(state, error) == outcome
