import pytest

from tether.cli.errors import CliError
from tether.cli.mfa import terminal_qr
from tether.cli.users import parse_date, parse_role


def test_roles_are_checked_with_the_list_in_the_message() -> None:
    assert parse_role("respond") == "respond"
    with pytest.raises(
        CliError,
        match=r"'root' is not a role; the roles are admin, analyst, collect, respond, script\.",
    ):
        parse_role("root")


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2026-12-31", "2026-12-31T23:59:00+00:00"),
        ("2026-12-31T18:00:00+01:00", "2026-12-31T18:00:00+01:00"),
    ],
)
def test_dates(text: str, iso: str) -> None:
    assert parse_date(text) == iso


@pytest.mark.parametrize("text", ["", "tomorrow", "31/12/2026", "2026-13-01"])
def test_bad_dates_are_refused(text: str) -> None:
    with pytest.raises(CliError, match="is not a date like 2026-12-31"):
        parse_date(text)


def test_terminal_qr_draws_blocks() -> None:
    drawn = terminal_qr("otpauth://totp/Tether:a?secret=ABC&issuer=Tether")
    assert len(drawn.splitlines()) > 10
    assert set(drawn) & {"\u2580", "\u2584", "\u2588"}
