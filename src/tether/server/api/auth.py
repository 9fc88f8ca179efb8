"""Login (password, then second factor), logout, the caller's identity, MFA enrollment."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from tether.server.api.deps import PlatformDep, UserDep, bearer_token, source_of
from tether.server.api.schemas import LoginRequest, LoginResponse, SecondFactorRequest, WhoAmI
from tether.server.api.user_schemas import MfaConfirm, MfaEnrollment, MfaEnrollStart, RecoveryCodes
from tether.server.errors import Invalid
from tether.server.services.users import Session, Stage, enroll_first

public = APIRouter(tags=["auth"])
router = APIRouter(tags=["auth"])


def _answer(session: Session) -> LoginResponse:
    return LoginResponse(
        token=session.token,
        username=session.user.username,
        roles=sorted(session.user.roles),
        expires_at=session.expires_at,
        stage=session.stage.value,
        mfa_verified=session.user.mfa_verified,
        message=enroll_first(session.user.username) if session.stage is Stage.ENROLL else None,
    )


@public.post("/auth/login", response_model=LoginResponse)
async def login(body: LoginRequest, request: Request, platform: PlatformDep) -> LoginResponse:
    """The password step. The answer's `stage` says what comes next."""
    session = await platform.users.login(
        body.username, body.password, source=source_of(request), client=body.client
    )
    return _answer(session)


@public.post("/auth/login/mfa", response_model=LoginResponse)
async def login_second_factor(
    body: SecondFactorRequest, request: Request, platform: PlatformDep
) -> LoginResponse:
    """The second step: the token from the password step plus a TOTP or recovery code."""
    if (body.code is None) == (body.recovery_code is None):
        raise Invalid("Send either a code or a recovery code.")
    session = await platform.users.second_factor(
        body.token,
        code=body.code,
        recovery_code=body.recovery_code,
        source=source_of(request),
        client=body.client,
    )
    return _answer(session)


@router.post("/auth/logout", status_code=204)
async def logout(
    request: Request,
    user: UserDep,
    platform: PlatformDep,
    token: Annotated[str, Depends(bearer_token)],
) -> None:
    await platform.users.logout(token, user, source=source_of(request))


@router.get("/auth/whoami", response_model=WhoAmI)
async def whoami(user: UserDep) -> WhoAmI:
    return WhoAmI(
        username=user.username,
        roles=sorted(user.roles),
        permissions=sorted(p.value for p in user.permissions),
        tier=user.tier.value if user.tier is not None else None,
        mfa_enabled=user.mfa_enabled,
        mfa_verified=user.mfa_verified,
        enrollment_only=user.enrollment_only,
        external=user.external,
        organisation=user.organisation,
    )


@router.post("/auth/mfa/enroll", response_model=MfaEnrollment)
async def mfa_enroll(
    request: Request,
    user: UserDep,
    platform: PlatformDep,
    body: MfaEnrollStart | None = None,
) -> MfaEnrollment:
    """A TOTP secret for the caller, pending until confirmed with a code. A session that has
    not passed a second factor needs the enrollment code an admin issued; asking again from
    the same session answers the same pending secret."""
    started = await platform.users.mfa.start_enrollment(
        user.id,
        user.username,
        actor=user.actor,
        enrolled=user.mfa_enabled,
        verified=user.mfa_verified,
        session_hash=user.session_hash,
        enrollment_code=body.enrollment_code if body is not None else None,
        source=source_of(request),
    )
    return MfaEnrollment(secret=started.secret, uri=started.uri, qr_svg=started.qr_svg)


@router.post("/auth/mfa/cancel", status_code=204)
async def mfa_cancel(request: Request, user: UserDep, platform: PlatformDep) -> None:
    """Forget the enrollment this session started (a new one needs a new enrollment code)."""
    await platform.users.mfa.cancel_enrollment(
        user.id, user.actor, session_hash=user.session_hash, source=source_of(request)
    )


@router.post("/auth/mfa/confirm", response_model=RecoveryCodes)
async def mfa_confirm(
    body: MfaConfirm, request: Request, user: UserDep, platform: PlatformDep
) -> RecoveryCodes:
    """Activate the pending secret; this session counts as having passed the second factor."""
    codes = await platform.users.mfa.confirm_enrollment(
        user.id, user.actor, body.code, session_hash=user.session_hash, source=source_of(request)
    )
    return RecoveryCodes(recovery_codes=codes)
