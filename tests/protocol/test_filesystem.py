from typing import Any

import pytest
from pydantic import ValidationError

from tether.protocol import (
    DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
    MAX_PATH,
    FileEntry,
    FileHash,
    FileHashArgs,
    FileList,
    FileListArgs,
)


def entry(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": "notes.txt",
        "type": "file",
        "size": 12,
        "mode": "0644",
        "owner": "root",
        "group": "root",
        "mtime": "2030-01-01T00:00:00Z",
        "atime": "2030-01-01T00:00:00Z",
        "ctime": "2030-01-01T00:00:00Z",
    }
    fields.update(changes)
    return fields


@pytest.mark.parametrize("path", ["/", "/var/log", "C:\\Windows", "c:/Users", "\\\\fs01\\share"])
def test_absolute_paths_of_every_system_are_accepted(path: str) -> None:
    assert FileListArgs(path=path).path == path
    assert FileHashArgs(path=path).path == path


@pytest.mark.parametrize(
    "path", ["", "etc/passwd", "./x", "C:relative", "~/x", "/x\x00y", "/" + "a" * MAX_PATH]
)
def test_other_paths_are_refused(path: str) -> None:
    with pytest.raises(ValidationError):
        FileListArgs(path=path)
    with pytest.raises(ValidationError):
        FileHashArgs(path=path)


def test_relative_path_error_says_what_to_do() -> None:
    with pytest.raises(ValidationError, match="the path must be absolute"):
        FileListArgs(path="etc")


def test_list_limit_default_and_bounds() -> None:
    assert FileListArgs(path="/").limit == DEFAULT_LIST_LIMIT
    assert FileListArgs(path="/", limit=MAX_LIST_LIMIT).limit == MAX_LIST_LIMIT
    for bad in (0, MAX_LIST_LIMIT + 1, "10"):
        with pytest.raises(ValidationError):
            FileListArgs.model_validate({"path": "/", "limit": bad})


def test_hash_algorithms_default_unique_and_known() -> None:
    assert FileHashArgs(path="/x").algorithms == ["sha256"]
    assert FileHashArgs.model_validate(
        {"path": "/x", "algorithms": ["md5", "sha1"]}
    ).algorithms == [
        "md5",
        "sha1",
    ]
    for bad in ([], ["sha256", "sha256"], ["crc32"], "sha256"):
        with pytest.raises(ValidationError):
            FileHashArgs.model_validate({"path": "/x", "algorithms": bad})


def test_file_list_round_trips_through_json() -> None:
    listing = FileList(
        path="/tmp",
        entries=[
            FileEntry.model_validate(entry()),
            FileEntry.model_validate(
                entry(name="link", type="symlink", target="../a\\x0ab", escaped=True)
            ),
        ],
        truncated=True,
    )
    assert FileList.model_validate_json(listing.model_dump_json()) == listing


def test_entry_fields_may_be_null_when_unreadable() -> None:
    unknown = FileEntry.model_validate(
        entry(size=None, mode=None, owner=None, group=None, mtime=None, atime=None, ctime=None)
    )
    assert unknown.target is None
    assert unknown.escaped is False


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "a\nb"},
        {"name": "\x1b[2J"},
        {"name": ""},
        {"target": "/etc/\x07"},
        {"owner": "ro\x00ot"},
        {"type": "fifo"},
        {"mode": "755"},
        {"mode": "rwxr-xr-x"},
        {"size": -1},
        {"mtime": "2030-01-01T00:00:00"},
        {"inode": 5},
    ],
)
def test_entry_refuses_what_a_hostile_agent_could_send(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FileEntry.model_validate(entry(**bad))


def test_file_hash_digests_are_lowercase_hex_of_their_length() -> None:
    ok = FileHash(path="/x", size=1, mtime=None, sha256="0" * 64, sha1="0" * 40, md5="0" * 32)
    assert ok.sha1 == "0" * 40
    for bad in ({"sha256": "0" * 40}, {"sha1": "0" * 64}, {"md5": "G" * 32}, {"path": "/x\n"}):
        with pytest.raises(ValidationError):
            FileHash.model_validate({"path": "/x", "size": 1, "mtime": None, **bad})
