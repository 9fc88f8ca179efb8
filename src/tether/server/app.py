"""The analyst-port application: REST API under /api/v1, its OpenAPI document, /metrics."""

import logging

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether import __version__
from tether.protocol.step_up import STEP_UP_HEADER
from tether.server.api import (
    agent_packages,
    audit,
    auth,
    enrollment,
    files,
    hosts,
    isolation,
    jobs,
    live_sessions,
    scripts,
    segments,
    service_tokens,
    sessions,
    upgrades,
    users,
)
from tether.server.api.deps import current_user
from tether.server.errors import PlatformError, StepUpRequired, Throttled
from tether.server.metrics import register_access_metrics
from tether.server.services.platform import Platform
from tether.server.services.tls_profile import STRICT_TRANSPORT_SECURITY
from tether.server.store.faults import STORAGE_FULL, is_storage_full
from tether.server.web import install as install_web
from tether.server.web.error_pages import page_error, validation_sentence
from tether.server.web.routes import is_page

API_PREFIX = "/api/v1"
log = logging.getLogger(__name__)

# The only routes that answer without a session. Everything else sits behind `current_user`.
PUBLIC_PATHS = frozenset(
    {
        f"{API_PREFIX}/auth/login",
        # The second login step: the pending token from the first step travels in the body.
        f"{API_PREFIX}/auth/login/mfa",
        f"{API_PREFIX}/enroll",
        f"{API_PREFIX}/enroll/ca",
        # An agent package, to whoever holds its unguessable, expiring link (docs/adr/0052).
        f"{API_PREFIX}/agent-packages/{{link}}/{{filename}}",
        # The public half of the upgrade-signing key, pinned by agents as they enroll.
        f"{API_PREFIX}/enroll/upgrade-key",
        f"{API_PREFIX}/openapi.json",
        f"{API_PREFIX}/docs",
        f"{API_PREFIX}/docs/oauth2-redirect",
        "/metrics",
        "/healthz",
        # The web UI's static files (CSS, vendored htmx) and its login steps; every other page
        # needs a session and sends a browser without one to /login.
        "/static",
        # Sends the browser on to /active-response, which asks for the session.
        "/",
        "/login",
        "/login/code",
    }
)


def _first_problem(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "The request is not valid."
    err = errors[0]
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
    return f"Invalid {where}: {err.get('msg', 'not valid')}."


def create_app(platform: Platform) -> FastAPI:
    app = FastAPI(
        title="Tether",
        version=__version__,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        # FastAPI's default (/docs/oauth2-redirect) would sit outside the API prefix and outside
        # PUBLIC_PATHS: keep it where the list says.
        swagger_ui_oauth2_redirect_url=f"{API_PREFIX}/docs/oauth2-redirect",
        redoc_url=None,
    )
    app.state.platform = platform

    public = APIRouter()
    public.include_router(auth.public)
    public.include_router(enrollment.public)
    public.include_router(agent_packages.public)
    public.include_router(upgrades.public)
    protected = APIRouter(dependencies=[Depends(current_user)])
    for module in (
        auth,
        enrollment,
        agent_packages,
        hosts,
        segments,
        audit,
        users,
        sessions,
        jobs,
        scripts,
        live_sessions,
        files,
        isolation,
        service_tokens,
        upgrades,
    ):
        protected.include_router(module.router)
    app.include_router(public, prefix=API_PREFIX)
    app.include_router(protected, prefix=API_PREFIX)

    install_web(app, api_prefix=API_PREFIX)

    registry = CollectorRegistry()
    Gauge(
        "tether_agents_connected", "Agents connected to this process", registry=registry
    ).set_function(lambda: platform.presence.count)
    registry.register(platform.witnesses.collector())

    faults = Gauge(
        "tether_storage_faults",
        "Requests and agent messages refused or cut short because storage was full, since start",
        ["where"],
        registry=registry,
    )
    lost = Gauge(
        "tether_output_lost_bytes",
        "Job output this process could not store because storage was full",
        registry=registry,
    )
    lost.set_function(lambda: platform.faults.output_lost_bytes)
    register_access_metrics(registry, platform)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        for where, count in platform.faults.counts.items():
            faults.labels(where=where).set(count)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def from_a_page(request: Request) -> bool:
        return is_page(request.url.path, API_PREFIX)

    @app.exception_handler(PlatformError)
    async def platform_error(request: Request, exc: PlatformError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        if isinstance(exc, Throttled):
            headers = {"Retry-After": str(exc.retry_after)}
        if isinstance(exc, StepUpRequired):
            # The CLI asks for the code and sends the request again when it sees this.
            headers = {STEP_UP_HEADER: "required"}
        if from_a_page(request):
            return page_error(request, exc.status_code, str(exc), headers)
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # One sentence for whatever went wrong; a full disk or database is said as such (503).
        if is_storage_full(exc):
            platform.faults.count("request", exc)
            status, sentence = 503, STORAGE_FULL
        else:
            log.error("Request %s %s failed", request.method, request.url.path, exc_info=exc)
            status, sentence = (
                500,
                "The platform failed to carry out the request; its log says why.",
            )
        if from_a_page(request):
            return page_error(request, status, sentence)
        return JSONResponse({"detail": sentence}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if from_a_page(request):
            return page_error(request, 422, validation_sentence(exc))
        return JSONResponse({"detail": _first_problem(exc)}, status_code=422)

    app.add_middleware(StrictTransportSecurity)
    return app


class StrictTransportSecurity:
    """Adds HSTS to every answer of the analyst port (API, pages, errors, /metrics): the port
    speaks only HTTPS, and a browser that has seen it never tries plain HTTP to the name again."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    *message.get("headers", []),
                    (b"strict-transport-security", STRICT_TRANSPORT_SECURITY.encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_hsts)
