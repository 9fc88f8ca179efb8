import hashlib
import json
from typing import Any

import pytest

from tether.protocol import (
    MAX_CLOSE_REASON_BYTES,
    PROTOCOL_VERSION,
    Heartbeat,
    Hello,
    JobOutput,
    JobRequest,
    JobStatus,
    Policy,
    ProtocolError,
    Welcome,
    close_reason,
    parse_agent_message,
    parse_platform_message,
)


def hello_dict(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "hello",
        "protocol_version": PROTOCOL_VERSION,
        "agent_version": "0.1.0",
        "hostname": "ws-042.corp.example",
        "os": {"family": "linux", "name": "Linux", "version": "6.1.0-18-amd64"},
        "addresses": ["10.0.0.5", "fe80::1"],
        "boot_time": "2030-01-01T00:00:00Z",
    }
    message.update(changes)
    return message


def test_valid_hello_is_parsed() -> None:
    message = parse_agent_message(json.dumps(hello_dict()))
    assert isinstance(message, Hello)
    assert message.hostname == "ws-042.corp.example"
    assert message.os.family == "linux"
    assert message.addresses == ["10.0.0.5", "fe80::1"]
    assert message.boot_time.tzinfo is not None


def test_hello_round_trips_through_its_json() -> None:
    message = parse_agent_message(json.dumps(hello_dict()))
    assert parse_agent_message(message.model_dump_json()) == message


def test_heartbeat_and_job_status_are_parsed() -> None:
    assert isinstance(parse_agent_message('{"type":"heartbeat"}'), Heartbeat)
    status = parse_agent_message(
        json.dumps({"type": "job.status", "job_id": "j1", "state": "succeeded", "result": {}})
    )
    assert isinstance(status, JobStatus)
    assert status.state == "succeeded"


def test_unknown_field_is_refused_and_named() -> None:
    with pytest.raises(ProtocolError, match="sneaky"):
        parse_agent_message(json.dumps(hello_dict(sneaky=True)))


def test_unknown_field_in_nested_model_is_refused() -> None:
    os_info = {"family": "linux", "name": "Linux", "version": "6", "kernel": "x"}
    with pytest.raises(ProtocolError, match="kernel"):
        parse_agent_message(json.dumps(hello_dict(os=os_info)))


def test_oversize_address_list_is_refused() -> None:
    parse_agent_message(json.dumps(hello_dict(addresses=["10.0.0.1"] * 64)))
    with pytest.raises(ProtocolError, match="addresses"):
        parse_agent_message(json.dumps(hello_dict(addresses=["10.0.0.1"] * 65)))


def test_oversize_hostname_is_refused() -> None:
    parse_agent_message(json.dumps(hello_dict(hostname="h" * 255)))
    with pytest.raises(ProtocolError, match="hostname"):
        parse_agent_message(json.dumps(hello_dict(hostname="h" * 256)))


@pytest.mark.parametrize(
    "hostname",
    ["evil\x1b[31m", "line\nbreak", "nul\x00", "del\x7f", "", "csi\x9b31m", "dc01\u202etxt.exe"],
)
def test_hostname_with_control_or_bidi_characters_or_empty_is_refused(hostname: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_agent_message(json.dumps(hello_dict(hostname=hostname)))
    assert str(refused.value) == (
        "Malformed agent message "
        "(hello.hostname: 1 to 255 characters, no control or bidi characters)."
    )
    assert len(close_reason(str(refused.value)).encode()) <= MAX_CLOSE_REASON_BYTES
    assert close_reason(str(refused.value)) == str(refused.value)


def test_a_megabyte_message_type_is_refused_with_an_excerpt_its_length_and_hash() -> None:
    tag = "\x1b]0;owned\x07\u202e" + "A" * 1_000_000
    with pytest.raises(ProtocolError) as refused:
        parse_agent_message(json.dumps({"type": tag}))
    message = str(refused.value)
    assert message == (
        "Malformed agent message (unknown message type "
        "'\\x1b]0;owned\\x07\\u202eAAAA...[truncated]')."
    )
    assert refused.value.evidence == {
        "type": {
            "text": "\\x1b]0;owned\\x07\\u202eAAAA...[truncated]",
            "length": len(tag),
            "sha256": hashlib.sha256(tag.encode()).hexdigest(),
        }
    }
    assert len(message.encode()) <= MAX_CLOSE_REASON_BYTES


def test_a_long_field_name_is_quoted_cut_in_the_refusal() -> None:
    key = "k" * 100_000
    with pytest.raises(ProtocolError) as refused:
        parse_agent_message(json.dumps(hello_dict(**{key: 1})))
    assert len(str(refused.value)) < 300
    assert "...[truncated]: Extra inputs are not permitted" in str(refused.value)


@pytest.mark.parametrize("address", ["10.0.0.1; rm -rf /", "x", "a" * 65])
def test_address_that_is_not_an_address_is_refused(address: str) -> None:
    with pytest.raises(ProtocolError, match="addresses"):
        parse_agent_message(json.dumps(hello_dict(addresses=[address])))


def test_oversize_job_error_is_refused() -> None:
    frame = {"type": "job.status", "job_id": "j1", "state": "failed", "error": "e" * 4097}
    with pytest.raises(ProtocolError, match="error"):
        parse_agent_message(json.dumps(frame))


def test_binary_frame_is_refused() -> None:
    with pytest.raises(ProtocolError, match="binary frame"):
        parse_agent_message(json.dumps(hello_dict()).encode())
    with pytest.raises(ProtocolError, match="binary frame"):
        parse_platform_message(b'{"type":"welcome"}')


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"nonsense"}',
        '{"type":"welcome","host_id":"h","server_time":"2030-01-01T00:00:00Z","heartbeat_seconds":5}',
        '{"protocol_version":1}',
        '["hello"]',
        "not json at all",
        "",
    ],
)
def test_wrong_or_missing_type_is_refused(frame: str) -> None:
    with pytest.raises(ProtocolError, match=r"^Malformed agent message \(.+\)\.$"):
        parse_agent_message(frame)


def test_wrong_value_type_is_refused() -> None:
    with pytest.raises(ProtocolError, match="protocol_version"):
        parse_agent_message(json.dumps(hello_dict(protocol_version="one")))


def test_platform_messages_are_parsed() -> None:
    welcome = parse_platform_message(
        '{"type":"welcome","host_id":"h1","server_time":"2030-01-01T00:00:00Z","heartbeat_seconds":60}'
    )
    assert isinstance(welcome, Welcome)
    assert welcome.heartbeat_seconds == 60
    job = parse_platform_message(
        JobRequest(job_id="c1", action="system.noop", args={"echo": "x"}).model_dump_json()
    )
    assert isinstance(job, JobRequest)
    assert job.args == {"echo": "x"}


def test_platform_message_from_the_agent_side_is_refused() -> None:
    with pytest.raises(ProtocolError, match=r"^Malformed platform message"):
        parse_platform_message('{"type":"heartbeat"}')


def test_messages_are_immutable() -> None:
    message = parse_agent_message('{"type":"heartbeat"}')
    with pytest.raises(ValueError, match="frozen"):
        message.type = "hello"  # type: ignore[misc]


def test_hello_reports_the_local_response_switch_only_as_a_strict_boolean() -> None:
    assert parse_agent_message(json.dumps(hello_dict())).response_disabled_locally is False  # type: ignore[union-attr]
    message = parse_agent_message(json.dumps(hello_dict(response_disabled_locally=True)))
    assert isinstance(message, Hello)
    assert message.response_disabled_locally is True
    # A compromised endpoint does not get a string or a number read as a switch position.
    for fuzzy in ("true", "no", 1, 0, None, [True]):
        with pytest.raises(ProtocolError, match="response_disabled_locally"):
            parse_agent_message(json.dumps(hello_dict(response_disabled_locally=fuzzy)))


def test_policy_round_trips_and_is_bounded() -> None:
    sent = Policy(segment="lab net", active_response=True)
    received = parse_platform_message(sent.model_dump_json())
    assert received == sent
    assert json.loads(sent.model_dump_json()) == {
        "type": "policy",
        "segment": "lab net",
        "active_response": True,
        "isolation_allow": [],
    }
    for bad in (
        {"type": "policy", "segment": "lab", "active_response": "yes"},
        {"type": "policy", "segment": "", "active_response": False},
        {"type": "policy", "segment": "a\x1b[31m", "active_response": False},
        {"type": "policy", "segment": "lab"},
        {
            "type": "policy",
            "segment": "lab",
            "active_response": False,
            "isolation_allow": [{"cidr": "x"}],
        },
    ):
        with pytest.raises(ProtocolError):
            parse_platform_message(json.dumps(bad))
    # A newer platform's optional field is ignored (tests/protocol/test_compat.py).
    later = {"type": "policy", "segment": "lab", "active_response": False, "extra": 1}
    assert parse_platform_message(json.dumps(later)) == Policy(segment="lab", active_response=False)


def test_an_agent_cannot_send_a_policy() -> None:
    frame = Policy(segment="lab", active_response=True).model_dump_json()
    with pytest.raises(ProtocolError, match="Malformed agent message"):
        parse_agent_message(frame)


def test_an_agent_cannot_send_a_notice_the_platform_would_show_as_its_own() -> None:
    frame = json.dumps(
        {
            "type": "job.output",
            "job_id": "j1",
            "seq": 0,
            "stream": "notice",
            "text": "The platform keeps at most 16777216 bytes and 100000 pieces of output per job; "
            "the rest was dropped.",
        }
    )
    with pytest.raises(ProtocolError, match="Malformed agent message"):
        parse_agent_message(frame)
    assert isinstance(parse_agent_message(frame.replace('"notice"', '"stderr"')), JobOutput)
