"""The Session History's filters: times as a browser's datetime-local field and as scripts send
them."""

from datetime import UTC, datetime

import pytest

from tether.server.api.audit_filters import BAD_TIME, audit_search
from tether.server.errors import Invalid
from tether.server.services.platform import Platform

from .conftest import (  # noqa: F401 (fixtures)
    platform,
    platform_template,
)


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("2026-11-29T10:00", datetime(2026, 11, 29, 10, 0, tzinfo=UTC)),
        ("2026-11-29T10:00Z", datetime(2026, 11, 29, 10, 0, tzinfo=UTC)),
        # An offset is kept, not thrown away: 10:00 at +05:00 is 05:00 UTC.
        ("2026-11-29T10:00+05:00", datetime(2026, 11, 29, 5, 0, tzinfo=UTC)),
    ],
)
async def test_times_are_read_as_utc_or_with_their_own_offset(
    platform: Platform,  # noqa: F811
    text: str,
    meant: datetime,
) -> None:
    search = await audit_search(platform, {"since": text, "until": text})
    assert search.since == meant
    assert search.until == meant


async def test_a_time_that_is_not_one_is_refused_in_one_sentence(
    platform: Platform,  # noqa: F811
) -> None:
    with pytest.raises(Invalid) as refused:
        await audit_search(platform, {"since": "yesterday"})
    assert str(refused.value) == BAD_TIME
