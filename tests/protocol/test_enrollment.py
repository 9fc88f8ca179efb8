import base64
import json

import pytest

from tether.protocol import EnrollmentToken, EnrollRequest, InvalidEnrollmentToken, ProtocolError
from tether.protocol.enrollment import TOKEN_PREFIX


def token() -> EnrollmentToken:
    return EnrollmentToken(
        server_url="https://tether.example:8443",
        agent_url="wss://tether.example:8444",
        secret="s" * 43,
        ca_sha256="ab" * 32,
    )


def encode_raw(data: object) -> str:
    raw = json.dumps(data).encode()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_round_trip() -> None:
    text = token().encode()
    assert text.startswith(TOKEN_PREFIX)
    assert "\n" not in text
    assert " " not in text
    assert EnrollmentToken.decode(text) == token()


def test_surrounding_whitespace_is_ignored() -> None:
    assert EnrollmentToken.decode(f"  {token().encode()}\n") == token()


def test_error_is_a_protocol_error() -> None:
    assert issubclass(InvalidEnrollmentToken, ProtocolError)


@pytest.mark.parametrize(
    "text", ["", "hello", "eyJzZXJ2ZXJfdXJsIjoiaHR0cHM6Ly94In0", "tether-enroll-v2.abc"]
)
def test_foreign_string_is_not_a_token(text: str) -> None:
    with pytest.raises(InvalidEnrollmentToken, match="not a Tether enrollment token"):
        EnrollmentToken.decode(text)


def test_truncated_token_is_damaged() -> None:
    text = token().encode()
    with pytest.raises(InvalidEnrollmentToken, match="damaged; copy it again in full"):
        EnrollmentToken.decode(text[: len(text) // 2])


def test_garbage_body_is_damaged() -> None:
    with pytest.raises(InvalidEnrollmentToken, match="damaged"):
        EnrollmentToken.decode(TOKEN_PREFIX + "!!!not-base64!!!")


@pytest.mark.parametrize(
    "change",
    [
        {"server_url": "http://tether.example:8443"},
        {"agent_url": "ws://tether.example:8444"},
        {"server_url": "https://tether.example:8443/path"},
        {"ca_sha256": "AB" * 32},
        {"ca_sha256": "ab" * 31},
        {"secret": "short"},
        {"extra": "field"},
    ],
)
def test_token_with_wrong_content_is_damaged(change: dict[str, str]) -> None:
    data = {**token().model_dump(), **change}
    with pytest.raises(InvalidEnrollmentToken, match="damaged"):
        EnrollmentToken.decode(encode_raw(data))


def test_token_missing_a_field_is_damaged() -> None:
    data = token().model_dump()
    del data["ca_sha256"]
    with pytest.raises(InvalidEnrollmentToken, match="damaged"):
        EnrollmentToken.decode(encode_raw(data))


def test_enroll_request_refuses_control_characters_in_hostname() -> None:
    with pytest.raises(ValueError, match="hostname"):
        EnrollRequest(secret="s" * 40, csr_pem="x" * 200, hostname="bad\x1b]0;title\x07")
