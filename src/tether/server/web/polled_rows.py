"""Job tables that follow their jobs without a reload (the Jobs list, the Host page's jobs).

The page's `<tbody>` polls a fragment every two seconds while it shows a job that has not ended;
the fragment is the whole `<tbody>` again, swapped in place (outerHTML), so it carries its own
next poll or, once every shown job has ended, none and the polling stops. The poll's address
holds a digest of what the rows showed: when nothing they show has changed, the answer is an
empty 204, which htmx does not swap (the DOM, a half-pressed Cancel button included, stays).
"""

import hashlib
from collections.abc import Sequence

from fastapi import Request

from tether.protocol import FINAL_STATES
from tether.server.services.jobs import JobView

# The query parameter that carries the digest of the rows the page shows.
SEEN = "seen"


def digest(jobs: Sequence[JobView]) -> str:
    """What the rows show that can change, in 16 hex digits (a change detector, not a secret)."""
    # A transfer's progress changes its row too.
    shown = [
        (
            *(j.id, j.state, j.cancel_requested_by, j.error, j.hostname, j.finished_at),
            *(j.transfer_bytes, j.transfer_rate),
        )
        for j in jobs
    ]
    return hashlib.sha256(repr(shown).encode()).hexdigest()[:16]


def unfinished(jobs: Sequence[JobView]) -> bool:
    """Whether any shown job has not ended, so its row may still change."""
    return any(j.state not in FINAL_STATES for j in jobs)


def unchanged(request: Request, jobs: Sequence[JobView]) -> bool:
    """Whether the poll's rows are the ones the page already shows."""
    return request.query_params.get(SEEN, "")[:64] == digest(jobs)
