"""The served certificate's end: seconds left for /metrics, a log warning 30 days before."""

import logging
from datetime import timedelta

import pytest

from tether.server.services.pki import CertificateAuthority
from tether.server.services.server_certificate import CertificateWatch

from ..support import FakeClock


def test_the_watch_warns_only_in_the_last_30_days(
    ca: CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    cert, _ = ca.issue_server("tether.example", [])
    end = cert.not_valid_after_utc
    clock = FakeClock(end - timedelta(days=31))
    watch = CertificateWatch(cert, clock)
    caplog.set_level(logging.WARNING)
    assert watch.seconds_left() == 31 * 86400
    assert not watch.warn_if_ending()
    assert caplog.messages == []
    clock.advance(timedelta(days=2))
    assert watch.warn_if_ending()
    assert caplog.messages == [
        f"The server certificate expires on {end:%Y-%m-%d %H:%M} UTC, in 29 days; run "
        "'tether server renew-cert --data DIR' and restart the platform."
    ]
    clock.advance(timedelta(days=30))
    assert watch.seconds_left() < 0
    assert watch.warn_if_ending()
    assert caplog.messages[-1] == (
        f"The server certificate expired on {end:%Y-%m-%d %H:%M} UTC; run "
        "'tether server renew-cert --data DIR' and restart the platform."
    )
