"""Whether a response action may run on a host: checked at submission and again at dispatch.

A response action needs all of these, checked in this order so the reason given is the first
one a user can do something about:

1. the user holds an Active Response tier (the action's own tier is checked by `Jobs.submit`);
2. the session passed the second factor;
3. the host is not revoked;
4. the host's segment has Active Response on;
5. the agent did not report response actions switched off locally.

At dispatch the user was already checked at submission; only the host's state is checked again,
so a job queued while its host sat in an enabled segment fails, unsent, once the host has left
it or the switch was turned off (`authorize_dispatch`). The agent checks its own copy of the
switch as well (docs/adr/0008); this module is the platform's half.
"""

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import Permission
from tether.server.errors import Forbidden, NotFound
from tether.server.services.users import User
from tether.server.store.tables import hosts, segments

_READ_CHUNK = 500

NO_PERMISSION = (
    "You need an Active Response tier (collect, respond or script) to run response actions."
)
NO_SECOND_FACTOR = (
    "Your session has not passed the second factor; log in with your authenticator code "
    "to run response actions."
)


@dataclass(frozen=True)
class ResponseState:
    """What decides, on the host's side, whether a response action may run there."""

    host_id: str
    hostname: str
    revoked: bool
    segment: str
    segment_active_response: bool
    disabled_locally: bool
    # The segment's four-eyes setting ("off", "respond", "script") and how long a request for
    # approval may wait there (docs/adr/0039).
    segment_approval: str = "off"
    approval_timeout_seconds: int = 86400


def user_refusal(user: User) -> str | None:
    """Why `user` may not run response actions at all, or None."""
    if Permission.ACTIVE_RESPONSE not in user.permissions:
        return NO_PERMISSION
    if not user.mfa_verified:
        return NO_SECOND_FACTOR
    return None


def host_refusal(state: ResponseState) -> str | None:
    """Why no response action may run on this host now, or None."""
    if state.revoked:
        return f"Host {state.hostname} is revoked, so no response action can run on it."
    if not state.segment_active_response:
        return (
            f"Active Response is off in segment {state.segment}, "
            f"so response actions on {state.hostname} are refused."
        )
    if state.disabled_locally:
        return (
            f"Response actions are switched off locally on {state.hostname} "
            "by its endpoint owner's agent setting."
        )
    return None


class ResponseAccess:
    """The one place that says yes or no to a response action on a host."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def states_of(self, host_ids: list[str]) -> dict[str, ResponseState]:
        """The response state of each existing host among `host_ids`, read now."""
        found: dict[str, ResponseState] = {}
        async with self._engine.connect() as conn:
            for start in range(0, len(host_ids), _READ_CHUNK):
                rows = await conn.execute(
                    select(
                        hosts.c.id,
                        hosts.c.hostname,
                        hosts.c.revoked_at,
                        hosts.c.response_disabled_locally,
                        segments.c.name,
                        segments.c.active_response,
                        segments.c.approval,
                        segments.c.approval_timeout_seconds,
                    )
                    .join(segments, segments.c.id == hosts.c.segment_id)
                    .where(hosts.c.id.in_(host_ids[start : start + _READ_CHUNK]))
                )
                for row in rows:
                    found[row.id] = ResponseState(
                        host_id=row.id,
                        hostname=row.hostname,
                        revoked=row.revoked_at is not None,
                        segment=row.name,
                        segment_active_response=bool(row.active_response),
                        disabled_locally=bool(row.response_disabled_locally),
                        segment_approval=row.approval,
                        approval_timeout_seconds=int(row.approval_timeout_seconds),
                    )
        return found

    async def state_of(self, host_id: str) -> ResponseState:
        state = (await self.states_of([host_id])).get(host_id)
        if state is None:
            raise NotFound(f"No host has the id {host_id!r}.")
        return state

    async def authorize_response(self, user: User, host_id: str) -> ResponseState:
        """At submission: raise Forbidden with the reason unless `user` may act on the host now."""
        refusal = user_refusal(user)
        if refusal is not None:
            raise Forbidden(refusal)
        return await self.authorize_dispatch(host_id)

    async def authorize_dispatch(self, host_id: str) -> ResponseState:
        """At dispatch: raise Forbidden with the reason unless the host still allows it."""
        state = await self.state_of(host_id)
        refusal = host_refusal(state)
        if refusal is not None:
            raise Forbidden(refusal)
        return state

    async def dispatch_refusals(self, host_ids: list[str]) -> dict[str, str]:
        """For a batch about to be sent: the reason for each host that must not get its job.

        A host that no longer exists is refused too; hosts missing from the answer may be sent.
        """
        states = await self.states_of(host_ids)
        refusals: dict[str, str] = {}
        for host_id in host_ids:
            state = states.get(host_id)
            if state is None:
                refusals[host_id] = f"No host has the id {host_id!r}."
            elif (reason := host_refusal(state)) is not None:
                refusals[host_id] = reason
        return refusals
