"""Puts the web UI on the analyst-port application: pages, static files, security headers.

Every response outside the REST API carries the security headers (the API's Swagger page loads
its own assets and keeps FastAPI's defaults).
"""

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.server.web import (
    active_response,
    files,
    host,
    host_admin,
    host_files,
    host_processes,
    host_upgrade,
    jobs,
    live_session,
    login,
    script_runs,
    scripts,
    session_history,
    sessions,
    settings,
)
from tether.server.web.access import (
    CsrfRefused,
    EnrollmentRequired,
    LoginRequired,
    PageForbidden,
)
from tether.server.web.security import SECURITY_HEADERS
from tether.server.web.templating import STATIC, render

STATIC_PATH = "/static"
# Vendored files carry their version in the name, so they never change under one URL.
VENDOR_CACHE = "public, max-age=31536000, immutable"
STATIC_CACHE = "public, max-age=3600"
# Pages show live state and endpoint data: never keep them in a cache.
PAGE_CACHE = "no-store"


# Answered by the application itself, for machines: neither pages nor the REST API.
SERVICE_PATHS = ("/metrics", "/healthz")


def is_page(path: str, api_prefix: str) -> bool:
    """Whether a request path is the web UI's: everything outside the REST API and the
    service endpoints. Pages get the security headers and errors rendered as pages."""
    return not path.startswith(f"{api_prefix}/") and path not in SERVICE_PATHS


class PageSecurityHeaders:
    """Adds the security headers (and the caching rule) to every answer of a page.

    A plain ASGI middleware rather than `@app.middleware("http")`: that one runs each request in
    a task of its own with memory streams between, a cost every API request paid (the profile
    in docs/performance.md) for headers only pages get."""

    def __init__(self, app: ASGIApp, api_prefix: str) -> None:
        self.app = app
        self.api_prefix = api_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_page(scope["path"], self.api_prefix):
            await self.app(scope, receive, send)
            return
        cache_control = _cache_control(scope["path"]).encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != b"cache-control"
                ]
                present = {name.lower() for name, _ in headers}
                for name, value in _SECURITY_HEADERS_RAW:
                    if name not in present:
                        headers.append((name, value))
                headers.append((b"cache-control", cache_control))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_SECURITY_HEADERS_RAW = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]


def _cache_control(path: str) -> str:
    if path.startswith(f"{STATIC_PATH}/vendor/"):
        return VENDOR_CACHE
    if path.startswith(f"{STATIC_PATH}/"):
        return STATIC_CACHE
    return PAGE_CACHE


def _send_to(request: Request, url: str) -> Response:
    """Send the browser to `url`. An htmx request (the table's poll) would follow a redirect and
    swap the login page into the table; told by a header, htmx moves the whole page instead."""
    if request.headers.get("HX-Request") == "true":
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def install(app: FastAPI, *, api_prefix: str) -> None:
    """Add the pages, /static and the headers to `app`."""
    app.include_router(login.public)
    app.include_router(login.router)
    app.include_router(active_response.router)
    app.include_router(host.router)
    app.include_router(host_admin.router)
    app.include_router(host_upgrade.router)
    app.include_router(live_session.router)
    app.include_router(host_files.router)
    app.include_router(host_processes.router)
    app.include_router(session_history.router)
    app.include_router(sessions.router)
    for settings_router in settings.ROUTERS:
        app.include_router(settings_router)
    app.include_router(files.router)
    app.include_router(scripts.router)
    app.include_router(script_runs.router)
    app.include_router(jobs.router)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def home() -> Response:
        return RedirectResponse("/active-response", status_code=303)

    app.add_middleware(PageSecurityHeaders, api_prefix=api_prefix)

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, _exc: LoginRequired) -> Response:
        return _send_to(request, "/login")

    @app.exception_handler(EnrollmentRequired)
    async def to_enrollment(request: Request, _exc: EnrollmentRequired) -> Response:
        return _send_to(request, "/mfa/enroll")

    @app.exception_handler(PageForbidden)
    async def forbidden(request: Request, exc: PageForbidden) -> Response:
        return render(request, "message.html", 403, heading="Not allowed", message=str(exc))

    @app.exception_handler(CsrfRefused)
    async def csrf_refused(request: Request, exc: CsrfRefused) -> Response:
        return render(request, "message.html", 403, heading="Not allowed", message=str(exc))
