"""The channel declaration both ends read: framing and the checks on rows."""

import pytest

from tether.script import channel
from tether.script.channel import ChannelFormatError, check_row, decode, encode


def test_encode_and_decode_round_trip_one_line() -> None:
    line = encode({"id": 1, "method": "row", "args": {"fields": {"a": "b\nc"}}})
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert decode(line) == {"id": 1, "method": "row", "args": {"fields": {"a": "b\nc"}}}


def test_encode_refuses_nan() -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        encode({"x": float("nan")})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"nope", "The message is not valid JSON."),
        (b"Infinity", "Infinity is not a JSON number."),
        (b'"text"', "The message is not a JSON object."),
        (b"[" * 100_000 + b"]" * 100_000, "The message is not valid JSON."),
        (b'{"n": ' + b"9" * 5000 + b"}", "The message is not valid JSON."),
    ],
)
def test_decode_refuses_with_a_sentence(line: bytes, message: str) -> None:
    with pytest.raises(ChannelFormatError, match=message):
        decode(line)


def test_check_row_accepts_json_scalars() -> None:
    fields = {"s": "x", "i": -(2**63), "f": 1.5, "b": False, "n": None}
    assert check_row(fields) == fields


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ([1], "must be an object"),
        ({}, "at least one field"),
        ({f"k{i}": i for i in range(channel.MAX_ROW_FIELDS + 1)}, "at most 64 fields"),
        ({"": 1}, "field names are 1 to 64 printable"),
        ({"k" * 65: 1}, "field names are 1 to 64 printable"),
        ({"a\nb": 1}, "field names are 1 to 64 printable"),
        ({"big": 2**63}, "integer past 64 bits"),
        ({"inf": float("inf")}, "not finite"),
        ({"long": "x" * (channel.MAX_FIELD_VALUE_CHARS + 1)}, "longer than 4096"),
        ({"list": [1]}, "must be a string, number, boolean or null, not list"),
    ],
)
def test_check_row_refuses(fields: object, message: str) -> None:
    with pytest.raises(ChannelFormatError, match=message):
        check_row(fields)


def test_addresses_round_trip() -> None:
    assert channel.parse_address(channel.unix_address("/run/x.sock")) == ("unix", "/run/x.sock")
    assert channel.parse_address(channel.tcp_address(4242)) == ("tcp", ("127.0.0.1", 4242))


@pytest.mark.parametrize("address", ["", "unix:", "tcp:10.0.0.1:80", "tcp:127.0.0.1:x", "http://x"])
def test_other_addresses_are_refused(address: str) -> None:
    with pytest.raises(ChannelFormatError):
        channel.parse_address(address)
