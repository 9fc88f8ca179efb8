"""The platform speaks the current and the previous protocol version; an agent reads a newer
platform's optional fields without failing."""

import json
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import pytest
from pydantic import BaseModel, ConfigDict, StrictBool

from tether.protocol import (
    ACTIONS,
    OLDEST_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    JobRequest,
    Policy,
    ProtocolError,
    Welcome,
    close_reason,
    parse_platform_message,
)
from tether.protocol.compat import ADDITIONS, frame_for, speaks, version_refusal
from tether.protocol.isolation import AllowRule
from tether.protocol.messages import AnyPlatformMessage


class PolicyOfVersion1(BaseModel):
    """The policy as an agent of protocol version 1 declared it: unknown fields refused."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["policy"]
    segment: str
    active_response: StrictBool


class FilePutArgsOfVersion1(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str
    size: int
    path: str
    overwrite: StrictBool = False


def policy() -> Policy:
    return Policy(
        segment="servers",
        active_response=True,
        isolation_allow=(AllowRule(cidr="10.0.0.0/8", ports=(443,)),),
    )


def put_job(mode: str | None) -> str:
    args: dict[str, Any] = {"sha256": "0" * 64, "size": 3, "path": "/tmp/fix.sh"}
    args["mode"] = mode
    return JobRequest(job_id="j1", action="files.put", args=args).model_dump_json()


# Negotiation ------------------------------------------------------------------------------------


def test_the_current_and_the_previous_version_are_served() -> None:
    assert OLDEST_PROTOCOL_VERSION == PROTOCOL_VERSION - 1
    for version in (PROTOCOL_VERSION, OLDEST_PROTOCOL_VERSION):
        assert speaks(version)
        assert version_refusal(version) is None


def test_an_older_agent_is_told_to_upgrade_itself() -> None:
    too_old = OLDEST_PROTOCOL_VERSION - 1
    assert not speaks(too_old)
    assert version_refusal(too_old) == (
        f"This platform speaks protocol version {PROTOCOL_VERSION} (and "
        f"{OLDEST_PROTOCOL_VERSION} during an upgrade), not {too_old}; upgrade the agent."
    )


def test_a_newer_agent_is_told_to_upgrade_the_platform_first() -> None:
    too_new = PROTOCOL_VERSION + 1
    assert not speaks(too_new)
    refusal = version_refusal(too_new)
    assert refusal is not None
    assert f"protocol version {PROTOCOL_VERSION}, not {too_new}" in refusal
    assert refusal.endswith("upgrade the platform before its agents.")


@pytest.mark.parametrize("version", [-1, 10**30])
def test_any_refusal_fits_a_close_frame(version: int) -> None:
    refusal = version_refusal(version)
    assert refusal is not None
    assert len(close_reason(refusal).encode()) <= 123


# Frames in the previous version's shape ---------------------------------------------------------


def test_a_current_agent_gets_the_frame_untouched() -> None:
    frame = policy().model_dump_json()
    assert frame_for(frame, PROTOCOL_VERSION) is frame


def test_the_previous_version_gets_the_policy_its_agents_parse() -> None:
    frame = policy().model_dump_json()
    old = frame_for(frame, OLDEST_PROTOCOL_VERSION)
    assert "isolation_allow" not in json.loads(old)
    parsed = PolicyOfVersion1.model_validate_json(old)
    assert (parsed.segment, parsed.active_response) == ("servers", True)
    # The proof the shape matters: the current frame is what the old agent refused.
    with pytest.raises(ValueError, match="isolation_allow"):
        PolicyOfVersion1.model_validate_json(frame)


def test_a_deploy_without_a_mode_reaches_the_previous_version_as_before() -> None:
    old = json.loads(frame_for(put_job(None), OLDEST_PROTOCOL_VERSION))
    assert old["action"] == "files.put"
    FilePutArgsOfVersion1.model_validate(old["args"])
    assert "mode" not in old["args"]


def test_a_deploy_with_a_mode_is_sent_whole_so_an_agent_that_cannot_set_it_refuses() -> None:
    # Leaving the mode out would deploy the file 0600 where 0755 was asked: never quietly.
    old = json.loads(frame_for(put_job("0755"), OLDEST_PROTOCOL_VERSION))
    assert old["args"]["mode"] == "0755"
    with pytest.raises(ValueError, match="mode"):
        FilePutArgsOfVersion1.model_validate(old["args"])


def test_other_frames_reach_the_previous_version_unchanged() -> None:
    # A `mode` is only an addition in a deploy's arguments: another action keeps its own.
    other = JobRequest(
        job_id="j2", action="isolation.isolate", args={"mode": None, "allow": []}
    ).model_dump_json()
    for frame in (other, "[1, 2]", '"policy"'):
        assert frame_for(frame, OLDEST_PROTOCOL_VERSION) == frame


class WelcomeOfVersion1(BaseModel):
    """The welcome as an agent of protocol version 1 declared it: unknown fields refused."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["welcome"]
    host_id: str
    server_time: datetime
    heartbeat_seconds: int


def test_a_version_1_agent_gets_a_welcome_without_the_address_list() -> None:
    welcome = Welcome(
        host_id="h",
        server_time=datetime(2030, 1, 1, tzinfo=UTC),
        heartbeat_seconds=20,
        agent_addresses=("wss://a.example:8444", "wss://[::1]:8444"),
    ).model_dump_json()
    with pytest.raises(ValueError, match="agent_addresses"):
        WelcomeOfVersion1.model_validate_json(welcome)
    old = WelcomeOfVersion1.model_validate_json(frame_for(welcome, OLDEST_PROTOCOL_VERSION))
    assert old.host_id == "h"
    # The current agent reads the list.
    current = parse_platform_message(frame_for(welcome, PROTOCOL_VERSION))
    assert isinstance(current, Welcome)
    assert current.agent_addresses == ("wss://a.example:8444", "wss://[::1]:8444")


@pytest.mark.parametrize(
    "address",
    ["ws://a:8444", "wss://a", "wss://a:8444/path", "wss://user@a:8444", "wss://a b:1", ""],
)
def test_a_welcome_with_a_malformed_address_is_refused(address: str) -> None:
    frame = json.dumps(
        {
            "type": "welcome",
            "host_id": "h",
            "server_time": "2030-01-01T00:00:00Z",
            "heartbeat_seconds": 20,
            "agent_addresses": [address],
        }
    )
    with pytest.raises(ProtocolError):
        parse_platform_message(frame)


def test_every_addition_names_a_field_of_the_current_message_and_what_it_means() -> None:
    models = {m.model_fields["type"].default: m for m in get_args(AnyPlatformMessage)}
    for addition in ADDITIONS:
        assert OLDEST_PROTOCOL_VERSION < addition.version <= PROTOCOL_VERSION
        assert addition.meaning
        if addition.action is None:
            assert addition.field in models[addition.message].model_fields
        else:
            assert addition.field in ACTIONS[addition.action].args.model_fields


# An agent reading a newer platform --------------------------------------------------------------


def test_an_agent_ignores_a_newer_platforms_optional_policy_field() -> None:
    frame = json.dumps(
        {"type": "policy", "segment": "servers", "active_response": False, "later": {"x": 1}}
    )
    parsed = parse_platform_message(frame)
    assert isinstance(parsed, Policy)
    assert parsed.active_response is False


def test_an_agent_ignores_new_fields_of_a_job_but_never_new_arguments() -> None:
    frame = json.dumps(
        {"type": "job", "job_id": "j", "action": "system.noop", "args": {}, "priority": 3}
    )
    parsed = parse_platform_message(frame)
    assert isinstance(parsed, JobRequest)
    assert parsed.args == {}


@pytest.mark.parametrize(
    ("frame", "named"),
    [
        # Nested structures stay strict: an allowlist rule the agent half-read is not one.
        (
            {
                "type": "policy",
                "segment": "s",
                "active_response": True,
                "isolation_allow": [{"cidr": "10.0.0.0/8", "proto": "tcp"}],
            },
            "proto",
        ),
        # Transfer messages are a state machine both sides must read alike.
        ({"type": "transfer.ack", "transfer_id": "0" * 32, "offset": 0, "later": 1}, "later"),
        # An unknown field does not excuse another error beside it.
        ({"type": "policy", "segment": "s", "active_response": "yes", "later": 1}, "active"),
    ],
)
def test_what_an_agent_does_not_ignore(frame: dict[str, Any], named: str) -> None:
    with pytest.raises(ProtocolError, match=named):
        parse_platform_message(json.dumps(frame))
