"""Durations and moments as typed on the command line."""

import re
from datetime import UTC, datetime

from tether.cli.errors import UsageError

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """'90s', '15m', '24h', '7d' as seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise UsageError(f"{text!r} is not a duration like 30m, 24h or 7d.")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_instant(text: str) -> datetime:
    """An ISO 8601 time with its zone ('2026-12-01T08:00Z', '...T09:00+01:00')."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise UsageError(
            f"{text!r} is not a time with a zone like 2026-12-01T08:00Z or 2026-12-01T09:00+01:00."
        )
    return moment


def short_time(value: object) -> str:
    """An ISO timestamp from the platform as 'YYYY-MM-DD HH:MM:SSZ' (UTC); '-' for none."""
    if not isinstance(value, str):
        return "-"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
