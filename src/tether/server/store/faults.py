"""Storage faults: a full disk or database, told apart from every other error so the platform can
refuse with one sentence (HTTP 503) and count it, instead of answering a bare 500."""

import errno
import logging

from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

STORAGE_FULL = (
    "The platform's storage is full, so nothing was changed; an operator must free space on the "
    "platform's data disk or database."
)
_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
# SQLite: SQLITE_FULL's message; PostgreSQL: SQLSTATE 53100 disk_full, 53200 out_of_memory.
_FULL_SQLSTATES = frozenset({"53100", "53200"})


def is_storage_full(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) says the disk or the database is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        if isinstance(current, DBAPIError):
            original = current.orig
            if getattr(original, "sqlstate", None) in _FULL_SQLSTATES:
                return True
            if "database or disk is full" in str(original):
                return True
        current = current.__cause__ or current.__context__
    return False


class FaultCounter:
    """Storage faults seen by this process, by where they struck (for /metrics and the log)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.output_lost_bytes = 0

    def count(self, where: str, exc: BaseException) -> None:
        self.counts[where] = self.counts.get(where, 0) + 1
        log.error("Storage is full (%s): %s", where, exc)
