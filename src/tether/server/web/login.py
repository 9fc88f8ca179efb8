"""Log in (password, then the second factor), log out, and enroll a second factor.

The same service calls as the API's /auth routes, so throttling and the audit of every attempt
are the same; the web only keeps the tokens in HttpOnly cookies instead of handing them out.
"""

import re
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from tether.server.api.deps import PlatformDep, source_of
from tether.server.errors import PlatformError, Throttled, Unauthenticated
from tether.server.services.platform import Platform
from tether.server.services.users import Session, Stage, User
from tether.server.web.access import WebUserDep
from tether.server.web.security import (
    LOGIN_CSRF_COOKIE,
    PENDING_COOKIE,
    SESSION_COOKIE,
    clear_cookie,
    csrf_token_for,
    new_login_csrf,
    session_token,
    set_cookie,
    tokens_match,
)
from tether.server.web.templating import render

public = APIRouter()
router = APIRouter()
# The API already names this client kind for the audit log ("cli", "ui", "api").
CLIENT = "ui"
HOME = "/active-response"
# The API's request models refuse these before the service sees them; so do the pages.
MAX_USERNAME, MAX_PASSWORD = 64, 1024
CODE = re.compile(r"[0-9]{6}")
FILL_IN = "Enter your username (at most 64 characters) and your password."
SIX_DIGITS = (
    "Enter the 6-digit code your authenticator app shows now, or one of your recovery codes."
)
MAX_RECOVERY_CODE = 32
PASSWORD_AGAIN = "Start again with your password: this login has expired."


def _see(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _password_form(
    request: Request, *, error: str | None = None, username: str = "", status_code: int = 200
) -> Response:
    form_csrf = new_login_csrf()
    response = render(
        request,
        "login.html",
        status_code,
        step="password",
        error=error,
        username=username,
        form_csrf=form_csrf,
    )
    set_cookie(response, LOGIN_CSRF_COOKIE, form_csrf, path="/login")
    return response


def _code_form(
    request: Request,
    pending: str,
    *,
    error: str | None = None,
    status_code: int = 200,
    recovery_open: bool = False,
) -> Response:
    return render(
        request,
        "login.html",
        status_code,
        step="code",
        error=error,
        form_csrf=csrf_token_for(pending),
        recovery_open=recovery_open,
    )


def _signed_in(session: Session) -> Response:
    response = _see("/mfa/enroll" if session.stage is Stage.ENROLL else HOME)
    set_cookie(response, SESSION_COOKIE, session.token)
    clear_cookie(response, PENDING_COOKIE, path="/login")
    clear_cookie(response, LOGIN_CSRF_COOKIE, path="/login")
    return response


@public.get("/login")
async def login_page(request: Request) -> Response:
    return _password_form(request)


@public.post("/login")
async def login_password(
    request: Request,
    platform: PlatformDep,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    if not tokens_match(request.cookies.get(LOGIN_CSRF_COOKIE), csrf_token):
        return _password_form(request, error="This form has expired; try again.", status_code=403)
    if not 0 < len(username) <= MAX_USERNAME or not 0 < len(password) <= MAX_PASSWORD:
        return _password_form(
            request, error=FILL_IN, username=username[:MAX_USERNAME], status_code=422
        )
    try:
        session = await platform.users.login(
            username, password, source=source_of(request), client=CLIENT
        )
    except (Unauthenticated, Throttled) as e:
        return _password_form(request, error=str(e), username=username, status_code=e.status_code)
    if session.stage is Stage.SECOND_FACTOR:
        response = _see("/login/code")
        set_cookie(response, PENDING_COOKIE, session.token, path="/login")
        return response
    return _signed_in(session)


@public.get("/login/code")
async def login_code_page(request: Request) -> Response:
    pending = request.cookies.get(PENDING_COOKIE)
    if not pending:
        return _see("/login")
    return _code_form(request, pending)


@public.post("/login/code")
async def login_code(
    request: Request,
    platform: PlatformDep,
    code: Annotated[str, Form()] = "",
    recovery_code: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    """The second step: the authenticator's code, or one of the recovery codes (each works
    once), as `tether login --recovery-code` takes it."""
    pending = request.cookies.get(PENDING_COOKIE)
    if not pending:
        return _password_form(request, error=PASSWORD_AGAIN, status_code=401)
    if not tokens_match(csrf_token_for(pending), csrf_token):
        return _code_form(
            request, pending, error="This form has expired; try again.", status_code=403
        )
    recovery = recovery_code.strip()[:MAX_RECOVERY_CODE]
    if not recovery and not CODE.fullmatch(code.strip()):
        return _code_form(request, pending, error=SIX_DIGITS, status_code=422)
    try:
        if recovery:
            session = await platform.users.second_factor(
                pending, recovery_code=recovery, source=source_of(request), client=CLIENT
            )
        else:
            session = await platform.users.second_factor(
                pending, code=code.strip(), source=source_of(request), client=CLIENT
            )
    except (Unauthenticated, Throttled) as e:
        return _code_form(
            request,
            pending,
            error=str(e),
            status_code=e.status_code,
            recovery_open=bool(recovery),
        )
    return _signed_in(session)


@router.post("/logout")
async def logout(request: Request, user: WebUserDep, platform: PlatformDep) -> Response:
    await platform.users.logout(session_token(request), user, source=source_of(request))
    response = _see("/login")
    clear_cookie(response, SESSION_COOKIE)
    return response


@router.get("/mfa/enroll")
async def enroll_page(request: Request, user: WebUserDep, platform: PlatformDep) -> Response:
    """The enrollment page; an enrollment this session started and has not finished is shown
    again with its secret, so a reload or a mistyped code never replaces what was scanned."""
    pending = await platform.users.mfa.pending_enrollment(user.id, user.username, user.session_hash)
    return render(request, "enroll.html", error=None, enrollment=pending, recovery_codes=None)


@router.post("/mfa/enroll")
async def enroll_start(
    request: Request,
    user: WebUserDep,
    platform: PlatformDep,
    enrollment_code: Annotated[str, Form()] = "",
) -> Response:
    try:
        started = await platform.users.mfa.start_enrollment(
            user.id,
            user.username,
            actor=user.actor,
            enrolled=user.mfa_enabled,
            verified=user.mfa_verified,
            session_hash=user.session_hash,
            enrollment_code=enrollment_code.strip()[:64] or None,
            source=source_of(request),
        )
    except PlatformError as e:
        return await _enroll_error(request, platform, user, e)
    return render(request, "enroll.html", error=None, enrollment=started, recovery_codes=None)


@router.post("/mfa/confirm")
async def enroll_confirm(
    request: Request,
    user: WebUserDep,
    platform: PlatformDep,
    code: Annotated[str, Form()] = "",
) -> Response:
    try:
        codes = await platform.users.mfa.confirm_enrollment(
            user.id,
            user.actor,
            code.strip(),
            session_hash=user.session_hash,
            source=source_of(request),
        )
    except PlatformError as e:
        return await _enroll_error(request, platform, user, e)
    return render(request, "enroll.html", error=None, enrollment=None, recovery_codes=codes)


@router.post("/mfa/cancel")
async def enroll_cancel(request: Request, user: WebUserDep, platform: PlatformDep) -> Response:
    """Forget the pending secret; starting again needs a new enrollment code."""
    await platform.users.mfa.cancel_enrollment(
        user.id, user.actor, session_hash=user.session_hash, source=source_of(request)
    )
    return _see("/mfa/enroll")


async def _enroll_error(
    request: Request, platform: Platform, user: User, error: PlatformError
) -> Response:
    """The page with the refusal, and with the pending secret still shown: a mistyped code must
    not cost the user the secret they just scanned."""
    pending = await platform.users.mfa.pending_enrollment(user.id, user.username, user.session_hash)
    return render(
        request,
        "enroll.html",
        error.status_code,
        error=str(error),
        enrollment=pending,
        recovery_codes=None,
    )
