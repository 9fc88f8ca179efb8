from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e import certs
from tether.agent.certificate import check_validity
from tether.agent.errors import AgentRefused

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def cert_valid(tmp_path: Path, not_before: datetime, not_after: datetime) -> Path:
    cert, _, _ = certs.client_cert(
        certs.new_ca("Test CA"), tmp_path, "agent", not_before=not_before, not_after=not_after
    )
    return cert


def test_a_certificate_inside_its_window_passes(tmp_path: Path) -> None:
    cert = cert_valid(tmp_path, NOW - timedelta(days=1), NOW + timedelta(days=1))
    check_validity(cert, now=NOW)


def test_an_expired_certificate_stops_the_agent_with_the_date(tmp_path: Path) -> None:
    cert = cert_valid(tmp_path, NOW - timedelta(days=30), NOW - timedelta(days=1))
    with pytest.raises(AgentRefused, match=r"expired on 2026-05-31 12:00 UTC; enroll the agent"):
        check_validity(cert, now=NOW)


def test_a_certificate_from_the_future_points_at_the_clock(tmp_path: Path) -> None:
    cert = cert_valid(tmp_path, NOW + timedelta(days=1), NOW + timedelta(days=30))
    with pytest.raises(AgentRefused, match="check this endpoint's clock"):
        check_validity(cert, now=NOW)


def test_an_unreadable_certificate_is_reported_not_raised_raw(tmp_path: Path) -> None:
    garbage = tmp_path / "agent.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(AgentRefused, match="cannot be read"):
        check_validity(garbage, now=NOW)
    with pytest.raises(AgentRefused, match="cannot be read"):
        check_validity(tmp_path / "missing.pem", now=NOW)
