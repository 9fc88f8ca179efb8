from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from tether.protocol import (
    MAX_COMMAND_LINE,
    KilledProcess,
    ProcessInfo,
    ProcessKillArgs,
    ProcessKillResult,
    ProcessList,
    ProcessListArgs,
)


def info(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "pid": 4242,
        "ppid": 1,
        "name": "sshd",
        "user": "root",
        "command_line": "/usr/sbin/sshd -D",
        "started": "2030-01-01T00:00:00Z",
        "executable": "/usr/sbin/sshd",
        "sha256": "a" * 64,
    }
    fields.update(changes)
    return fields


def test_list_args_defaults_and_bounds() -> None:
    args = ProcessListArgs()
    assert (args.hashes, args.name, args.pid, args.user) == (False, None, None, None)
    for bad in (
        {"name": "x" * 257},
        {"user": ""},
        {"pid": -1},
        {"pid": "12"},
        {"hashes": "yes"},
        {"sort": "cpu"},
    ):
        with pytest.raises(ValidationError):
            ProcessListArgs.model_validate(bad)


def test_process_info_from_json_as_the_platform_reads_it() -> None:
    listing = ProcessList.model_validate_json(
        ProcessList(
            processes=[ProcessInfo.model_validate(info())], truncated=False
        ).model_dump_json()
    )
    assert listing.processes[0].started == datetime(2030, 1, 1, tzinfo=UTC)
    assert listing.processes[0].hash_unavailable is None


def test_process_info_allows_nulls_for_what_could_not_be_read() -> None:
    nulls = ProcessInfo.model_validate(
        info(
            ppid=None,
            name=None,
            user=None,
            command_line=None,
            started=None,
            executable=None,
            sha256=None,
            hash_unavailable="access denied",
        )
    )
    assert nulls.hash_unavailable == "access denied"


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "evil\x1b]0;owned\x07"},
        {"command_line": "sh -c 'echo\nrm -rf /'"},
        {"user": "root\x9b"},
        {"executable": "/tmp/\u202eexe.txt"},
        {"command_line": "x" * (MAX_COMMAND_LINE + 1)},
        {"sha256": "A" * 64},
        {"sha256": "a" * 63},
        {"hash_unavailable": "because"},
        {"started": "2030-01-01T00:00:00"},
        {"pid": 2**33},
        {"extra": 1},
    ],
)
def test_process_info_refuses_what_a_hostile_agent_could_send(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ProcessInfo.model_validate(info(**bad))


def test_models_are_frozen() -> None:
    args = ProcessKillArgs(pid=5)
    with pytest.raises(ValidationError):
        args.pid = 1  # type: ignore[misc]


def test_kill_args_are_strict() -> None:
    assert ProcessKillArgs.model_validate({"pid": 7}).tree is False
    for bad in ({"pid": 0}, {"pid": -3}, {"pid": "7"}, {"pid": 7.0}, {"pid": 7, "tree": 1}, {}):
        with pytest.raises(ValidationError):
            ProcessKillArgs.model_validate(bad)


def test_kill_result_needs_the_target_and_known_outcomes() -> None:
    with pytest.raises(ValidationError):
        ProcessKillResult(pid=5, processes=[])
    with pytest.raises(ValidationError):
        KilledProcess.model_validate({"pid": 5, "name": None, "outcome": "maimed"})
    result = ProcessKillResult(
        pid=5, processes=[KilledProcess(pid=5, name="sleep", outcome="killed")]
    )
    assert result.truncated is False
