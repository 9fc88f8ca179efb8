from tether.protocol import CloseCode


def test_only_refusals_that_retrying_cannot_fix_are_final() -> None:
    final = {code for code in CloseCode if code.is_final}
    assert final == {
        CloseCode.UNKNOWN_CERTIFICATE,
        CloseCode.REVOKED,
        CloseCode.UNSUPPORTED_VERSION,
    }


def test_transient_closes_are_not_final() -> None:
    for code in (
        CloseCode.NORMAL,
        CloseCode.GOING_AWAY,
        CloseCode.MESSAGE_TOO_BIG,
        CloseCode.BAD_FRAME,
        CloseCode.HELLO_TIMEOUT,
        CloseCode.REPLACED,
        CloseCode.IDLE,
    ):
        assert not code.is_final, code


def test_application_codes_are_in_the_application_range() -> None:
    for code in CloseCode:
        assert code < 1016 or 4000 <= code <= 4999, code
    assert len({int(c) for c in CloseCode}) == len(CloseCode)
