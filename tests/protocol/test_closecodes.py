from tether.protocol import (
    MAX_CLOSE_REASON_BYTES,
    CloseCode,
    close_reason,
    retry_after,
    retry_reason,
)


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


def test_a_close_reason_is_cut_to_what_a_close_frame_holds() -> None:
    long = close_reason("Malformed agent message (" + "\x1b" * 500 + ").")
    assert len(long.encode()) == MAX_CLOSE_REASON_BYTES
    assert "\x1b" not in long
    assert long.endswith("...")


def test_retry_after_round_trips_through_the_reason() -> None:
    reason = retry_reason("This host sent more frames than its budget allows.", 60)
    assert reason == "This host sent more frames than its budget allows. Reconnect after 60 s."
    assert retry_after(reason) == 60
    assert len(retry_reason("x" * 500, 3600).encode()) <= MAX_CLOSE_REASON_BYTES
    assert retry_after(retry_reason("x" * 500, 3600)) == 3600


def test_a_reason_without_a_retry_time_has_none() -> None:
    assert retry_after("No heartbeat; reconnect.") is None
    assert retry_after("Reconnect after 60 s. but later text") is None
