import pytest

from tether.cli.errors import CliError
from tether.cli.times import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800), (" 2h ", 7200), ("0s", 0)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "1w", "-1h", "1.5h", "h", "24 h", "24H", "1h30m"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(CliError, match="is not a duration like 30m, 24h or 7d"):
        parse_duration(text)
