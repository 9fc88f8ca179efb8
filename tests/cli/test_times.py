from datetime import UTC, datetime, timedelta, timezone

import pytest

from tether.cli.errors import UsageError
from tether.cli.times import parse_instant, short_time


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-12-01T08:00Z", datetime(2026, 12, 1, 8, 0, tzinfo=UTC)),
        (
            "2026-12-01T09:00:30+01:00",
            datetime(2026, 12, 1, 9, 0, 30, tzinfo=timezone(timedelta(hours=1))),
        ),
    ],
)
def test_instants(text: str, moment: datetime) -> None:
    assert parse_instant(text) == moment


@pytest.mark.parametrize("text", ["", "2026-12-01T08:00", "2026-12-01", "tomorrow", "08:00Z"])
def test_instants_need_a_date_time_and_zone(text: str) -> None:
    with pytest.raises(UsageError, match="is not a time with a zone like 2026-12-01T08:00Z"):
        parse_instant(text)


def test_short_time_is_utc() -> None:
    assert short_time("2030-01-01T13:00:00+01:00") == "2030-01-01 12:00:00Z"
    assert short_time(None) == "-"
