"""Arguments and results of the file-system actions: `files.list` and `files.hash`.

Names, owners and link targets come from the endpoint: the agent escapes them
(`tether.protocol.text`) and the platform validates them here against ENDPOINT_TEXT.
"""

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
)

from tether.protocol.text import ENDPOINT_TEXT

MAX_PATH = 4096
# A deployable file mode: three octal digits, or four with a leading 0 (no setuid, setgid or
# sticky bit).
FILE_MODE_PATTERN = r"^0?[0-7]{3}$"
DEFAULT_LIST_LIMIT = 10_000
MAX_LIST_LIMIT = 50_000

# POSIX `/...`, Windows `C:\...` or `C:/...`, and UNC `\\server\share`: the endpoint decides
# which of these it can open; the platform only refuses what is relative on every system.
_ABSOLUTE = re.compile(r"^(?:/|[A-Za-z]:[\\/]|\\\\)")


def _absolute_path(path: str) -> str:
    if "\x00" in path:
        raise ValueError("the path must not contain a NUL character")
    if not _ABSOLUTE.match(path):
        raise ValueError("the path must be absolute, such as /var/log or C:\\Windows")
    return path


# A path an analyst asks about: absolute, as the endpoint spells it.
AbsolutePath = Annotated[
    str, Field(min_length=1, max_length=MAX_PATH), AfterValidator(_absolute_path)
]
# A path or name the endpoint reports, escaped and bounded.
EndpointPath = Annotated[str, Field(max_length=MAX_PATH, pattern=ENDPOINT_TEXT)]
EntryName = Annotated[str, Field(min_length=1, max_length=1024, pattern=ENDPOINT_TEXT)]
AccountName = Annotated[str, Field(min_length=1, max_length=256, pattern=ENDPOINT_TEXT)]

HashAlgorithm = Literal["sha256", "sha1", "md5"]
EntryType = Literal["file", "dir", "symlink", "other"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileListArgs(_Model):
    """Arguments of `files.list`."""

    path: AbsolutePath
    limit: Annotated[StrictInt, Field(ge=1, le=MAX_LIST_LIMIT)] = DEFAULT_LIST_LIMIT


class FileEntry(_Model):
    """One directory entry, as it is (a symbolic link is described, not followed).

    A field the agent could not read (the entry vanished or access was refused) is null. Times
    are UTC; `ctime` is the inode change time on POSIX and the creation time on Windows.
    """

    name: EntryName
    type: EntryType
    size: Annotated[StrictInt, Field(ge=0)] | None
    # Permission bits, including setuid, setgid and sticky, as four octal digits: "0755".
    mode: Annotated[str, Field(pattern=r"^[0-7]{4}$")] | None
    # The user and group names, or their numeric ids when the endpoint has no name for them.
    owner: AccountName | None
    group: AccountName | None
    mtime: AwareDatetime | None
    atime: AwareDatetime | None
    ctime: AwareDatetime | None
    # When the file was created (birth time), where the endpoint records one: Windows, macOS;
    # null on Linux, whose Python has no birth time (statx is not exposed).
    created: AwareDatetime | None = None
    # Where a symbolic link points, as stored in the link.
    target: EndpointPath | None = None
    # The name or target held characters a terminal would act on, shown as `\xNN` escapes: the
    # name on disk differs from `name`, which is itself worth a look.
    escaped: StrictBool = False


class FileList(_Model):
    """Result of `files.list`: entries ordered by name."""

    path: EndpointPath
    entries: Annotated[list[FileEntry], Field(max_length=MAX_LIST_LIMIT)]
    # More entries exist than are listed: the limit or the result's byte budget was hit.
    truncated: StrictBool


def _unique(algorithms: list[HashAlgorithm]) -> list[HashAlgorithm]:
    if len(set(algorithms)) != len(algorithms):
        raise ValueError("each algorithm may be named once")
    return algorithms


def _sha256_only() -> list[HashAlgorithm]:
    return ["sha256"]


class FileHashArgs(_Model):
    """Arguments of `files.hash`."""

    path: AbsolutePath
    algorithms: Annotated[
        list[HashAlgorithm], Field(min_length=1, max_length=3), AfterValidator(_unique)
    ] = Field(default_factory=_sha256_only)


class FileHash(_Model):
    """Result of `files.hash`: the digests asked for, the others null.

    `size` is the number of bytes hashed; `mtime` is null when the file's time is out of range.
    """

    path: EndpointPath
    size: Annotated[StrictInt, Field(ge=0)]
    mtime: AwareDatetime | None
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    sha1: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")] | None = None
    md5: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None


class FileGetArgs(_Model):
    """Arguments of `files.get`: retrieve one regular file from the endpoint to the platform.

    The bytes travel as a transfer whose id is `transfer_id_for(job_id)`: both sides derive it,
    so a retry after a reconnect or a platform restart resumes the same partial file.
    """

    path: AbsolutePath
    # The endpoint refuses a file larger than this before sending a byte (the platform's own
    # cap applies too).
    max_bytes: Annotated[StrictInt, Field(ge=1, le=64 * 1024**3)] = 4 * 1024**3


class LinkFollowed(_Model):
    """The path retrieved was a symbolic link: the agent followed it (docs/adr/0033).

    What the link said, where that led, who made the link, and the owner, mode and time of the
    file actually read, named as that file's and never as the link's.
    """

    # Where the link points, as stored in it (relative links stay relative).
    target: EndpointPath
    # The file the agent read: the link's target with every link resolved.
    resolved: EndpointPath
    # The link's own owner: who made it.
    link_owner: AccountName | None
    # The file read: its owner, permission bits and modification time.
    owner: AccountName | None
    mode: Annotated[str, Field(pattern=r"^[0-7]{4}$")] | None
    mtime: AwareDatetime | None
    # The target or resolved path held characters a terminal would act on, shown escaped.
    escaped: StrictBool = False


class FileGetResult(_Model):
    """What the endpoint says of the file it sent; the platform verified size and SHA-256.

    `mtime`, `owner` and `mode` describe the file at `path`. When `path` is a symbolic link they
    are null, because the link has no content of its own, and `link` says where it led and
    describes the file read there.
    """

    path: EndpointPath
    size: Annotated[StrictInt, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    mtime: AwareDatetime | None
    owner: AccountName | None
    mode: Annotated[str, Field(pattern=r"^[0-7]{4}$")] | None
    link: LinkFollowed | None = None


class FilePutArgs(_Model):
    """Arguments of `files.put`: write a library file (by SHA-256) to an endpoint path."""

    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[StrictInt, Field(ge=0)]
    path: AbsolutePath
    # Replacing an existing file is a deliberate choice of the analyst.
    overwrite: StrictBool = False
    # Permission bits of the deployed file, in octal ("0755"): read, write and execute only.
    # Setuid, setgid and sticky bits are never deployed this way (docs/adr/0045): the agent
    # runs as root, so a put would otherwise plant a root setuid binary in one step. None
    # keeps the agent's private default (0600). Ignored where the endpoint has no such bits.
    mode: Annotated[str, Field(pattern=FILE_MODE_PATTERN)] | None = None


class FilePutResult(_Model):
    """Where the file now is, verified on the endpoint before it was renamed into place."""

    path: EndpointPath
    size: Annotated[StrictInt, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    # The permission bits the file has now, in octal; None where the endpoint has none.
    mode: Annotated[str, Field(pattern=r"^[0-7]{4}$")] | None = None
