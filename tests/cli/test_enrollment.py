import pytest

from tether.cli.errors import CliError
from tether.cli.times import parse_duration

from .conftest import Cli


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


async def test_a_token_is_revoked_by_its_text_and_listed_as_revoked(cli: Cli) -> None:
    created = await cli("enroll-token", "create", "--uses", "3")
    assert created.code == 0, created.stderr
    token = created.stdout.strip()

    revoked = await cli("enroll-token", "revoke", token)

    assert revoked.code == 0, revoked.stderr
    assert revoked.stdout.strip() == (
        "Revoked enrollment token 1 (segment default, 0 of 3 use(s) spent)."
    )
    listed = await cli("enroll-token", "list")
    (line,) = [row for row in listed.stdout.splitlines() if "default" in row]
    assert "revoked by admin" in line
    again = await cli("enroll-token", "revoke", "1")
    assert again.code == 1
    assert again.stderr == "tether: Enrollment token 1 is already revoked.\n"


async def test_a_token_for_a_mistyped_segment_is_refused(cli: Cli) -> None:
    refused = await cli("enroll-token", "create", "--segment", "servres")
    assert refused.code == 1
    assert refused.stderr == (
        "tether: No segment is named 'servres'; create it first ('tether segment create "
        "servres').\n"
    )
    assert (await cli("enroll-token", "list", "--json")).stdout.strip() == "[]"
