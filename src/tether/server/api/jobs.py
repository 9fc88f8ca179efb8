"""Jobs: submit an action to hosts, a segment or the estate; follow, list and cancel."""

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from tether.protocol import ACTIONS, JobState, Permission
from tether.server.api.deps import PlatformDep, require, source_of
from tether.server.api.job_schemas import (
    ActionOut,
    ApprovalDecision,
    ApprovalOut,
    BatchOut,
    HostSelection,
    JobFollowOut,
    JobOut,
    JobSubmit,
    OutputPieceOut,
)
from tether.server.services.approvals import ApprovalView
from tether.server.services.jobs import BatchView, JobView, Selection
from tether.server.services.platform import Platform
from tether.server.services.users import User

router = APIRouter(tags=["jobs"])

Reader = Annotated[User, Depends(require(Permission.RESULTS_READ))]


def approval_out(view: ApprovalView) -> ApprovalOut:
    # The requester's user id stays inside (ApprovalOut does not declare it): the API names
    # people by their username.
    return ApprovalOut.of(view)


def _maybe_approval(view: ApprovalView | None) -> ApprovalOut | None:
    return approval_out(view) if view is not None else None


def _job(view: JobView) -> JobOut:
    return JobOut.of(view)


async def selection_of(platform: Platform, body: HostSelection) -> Selection:
    """The service's selection for a request's hosts (by id or hostname), segment or all."""
    host_ids = None
    if body.hosts is not None:
        host_ids = [await platform.hosts.resolve(ref) for ref in body.hosts]
    return Selection(host_ids=host_ids, segment=body.segment, everything=body.all)


def batch_out(view: BatchView) -> BatchOut:
    return BatchOut(
        id=view.id,
        action=view.action,
        selection=view.selection,
        created_by=view.created_by,
        created_at=view.created_at,
        counts=view.counts,
        jobs=[_job(j) for j in view.jobs],
        refused=view.refused,
        approval=_maybe_approval(view.approval),
        notice=view.notice,
    )


@router.get("/actions", response_model=list[ActionOut])
async def list_actions(_user: Reader) -> list[ActionOut]:
    """Every action an agent can run, with its argument schema (declared in tether.protocol)."""
    return [
        ActionOut(
            name=spec.name,
            description=spec.description,
            permission=spec.permission.value,
            response=spec.response,
            tier=spec.tier.value if spec.response else None,
            library_tier=spec.library_tier.value if spec.library_tier else None,
            timeout_seconds=spec.timeout_seconds,
            args_schema=spec.args.model_json_schema(),
        )
        for spec in ACTIONS.values()
    ]


@router.post("/jobs", response_model=BatchOut, status_code=201)
async def submit_job(
    body: JobSubmit,
    request: Request,
    platform: PlatformDep,
    user: Annotated[User, Depends(require(Permission.HOSTS_READ))],
) -> BatchOut:
    """Queue the action for each selected host; online hosts get it at once.

    Seeing hosts is the least a caller needs; the rest depends on the action (its declared
    permission; for a response action the Active Response role, a passed second factor and a
    segment with Active Response on) and is checked by the service.
    """
    args = body.args
    if body.script is not None:
        # Resolved now, so the submission's audit record holds the library text that will run.
        chosen = body.script
        args = await platform.scripts.run_args(user, body.action, chosen.name, chosen.version, args)
    batch = await platform.jobs.submit(
        user,
        body.action,
        args,
        await selection_of(platform, body),
        ttl=timedelta(seconds=body.ttl_seconds) if body.ttl_seconds is not None else None,
        not_after=body.not_after,
        timeout_seconds=body.timeout_seconds,
        from_library=body.script is not None,
        source=source_of(request),
    )
    return batch_out(batch)


@router.get("/jobs", response_model=list[JobOut])
async def list_jobs(
    platform: PlatformDep,
    _user: Reader,
    state: Annotated[list[JobState] | None, Query()] = None,
    host: str | None = None,
    batch: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[JobOut]:
    host_id = (await platform.hosts.get(host)).id if host is not None else None
    views = await platform.jobs.find(
        states=list(state) if state else None, host_id=host_id, batch_id=batch, limit=limit
    )
    return [_job(v) for v in views]


@router.get("/jobs/{job_id}", response_model=JobOut)
async def get_job(job_id: str, platform: PlatformDep, _user: Reader) -> JobOut:
    job = _job(await platform.jobs.get(job_id))
    job.integrity = await platform.bindings.job_problem(job_id)
    return job


@router.get("/jobs/{job_id}/output", response_model=JobFollowOut)
async def follow_job(
    job_id: str,
    platform: PlatformDep,
    _user: Reader,
    after: Annotated[int, Query(ge=0)] = 0,
    wait: Annotated[float, Query(ge=0, le=30)] = 0,
) -> JobFollowOut:
    """Output stored after `after`; with `wait`, hold the answer until there is some or the
    job ends (long poll, at most 30 s)."""
    job, pieces = await platform.jobs.follow(job_id, after=after, wait=wait)
    return JobFollowOut(
        job=_job(job),
        output=[OutputPieceOut.of(p) for p in pieces],
        cursor=pieces[-1].id if pieces else after,
    )


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
async def cancel_job(
    job_id: str,
    request: Request,
    platform: PlatformDep,
    user: Annotated[User, Depends(require(Permission.ACTIVE_RESPONSE))],
) -> JobOut:
    """Cancel a pending job at once, or ask the agent to stop a delivered or running one."""
    return _job(await platform.jobs.cancel(job_id, user, source=source_of(request)))


@router.get("/batches/{batch_id}", response_model=BatchOut)
async def get_batch(batch_id: str, platform: PlatformDep, _user: Reader) -> BatchOut:
    return batch_out(await platform.jobs.batch(batch_id))


@router.post("/jobs/{job_id}/approve", response_model=ApprovalOut)
async def approve_job(
    job_id: str,
    body: ApprovalDecision,
    request: Request,
    platform: PlatformDep,
    user: Annotated[User, Depends(require(Permission.ACTIVE_RESPONSE))],
) -> ApprovalOut:
    """Approve the request the job belongs to (its whole batch): a different person than the
    requester, holding at least the action's tier; never a service token."""
    view = await platform.approvals.approve(
        job_id, user, reason=body.reason, source=source_of(request)
    )
    return approval_out(view)


@router.post("/jobs/{job_id}/reject", response_model=ApprovalOut)
async def reject_job(
    job_id: str,
    body: ApprovalDecision,
    request: Request,
    platform: PlatformDep,
    user: Annotated[User, Depends(require(Permission.ACTIVE_RESPONSE))],
) -> ApprovalOut:
    """Reject the request the job belongs to, with the reason; its waiting jobs end rejected."""
    view = await platform.approvals.reject(
        job_id, user, reason=body.reason or "", source=source_of(request)
    )
    return approval_out(view)


@router.get("/approvals", response_model=list[ApprovalOut])
async def list_approvals(platform: PlatformDep, _user: Reader) -> list[ApprovalOut]:
    """Requests for approval nobody has decided yet, oldest first."""
    return [approval_out(v) for v in await platform.approvals.pending()]
