from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e import certs
from tether.agent.certificate import check_validity, validity
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


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [
        # UTCTime (before 2050) and GeneralizedTime (from 2050), as RFC 5280 has them.
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2051, 6, 1, tzinfo=UTC)),
    ],
)
def test_the_window_is_read_as_cryptography_reads_it(
    tmp_path: Path, not_before: datetime, not_after: datetime
) -> None:
    from cryptography import x509

    cert = cert_valid(tmp_path, not_before, not_after)
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    assert validity(cert.read_bytes()) == (
        parsed.not_valid_before_utc,
        parsed.not_valid_after_utc,
    )


@pytest.mark.parametrize(
    "pem",
    [
        b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nAgEB\n-----END CERTIFICATE-----\n",
    ],
)
def test_a_malformed_certificate_is_refused_as_unreadable(tmp_path: Path, pem: bytes) -> None:
    path = tmp_path / "agent.pem"
    path.write_bytes(pem)
    with pytest.raises(AgentRefused, match="cannot be read"):
        check_validity(path, now=NOW)


def test_checking_the_certificate_loads_no_cryptography() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from tether.agent.certificate import check_validity, validity; "
        "print('cryptography' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
