"""Every API route x every kind of caller x the host's segment Active Response on and off.

One row per (method, path) with the exact status each caller gets. A route without a row fails
`test_every_route_has_a_row` by name; adding a route means adding one line here.

Requests that would change state aim at things that do not exist (404) or carry a body the
service refuses after the permission check (422), so every cell can run against one platform.
"""

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from tether.protocol import Role, Tier
from tether.server.app import create_app
from tether.server.auth.totp import new_secret, to_base32
from tether.server.services.platform import Platform
from tether.server.services.users import User
from tether.server.store.tables import segments

from ..support import add_host
from .conftest import login
from .test_routes import http_routes

PASSWORD = "a long enough password"
# The callers, in the order of each row's statuses:
#   anonymous         no session
#   analyst           role analyst
#   collect           the collect tier of Active Response, second factor passed
#   respond           the respond tier, second factor passed
#   script            the script tier (what the single responder role was), second factor passed
#   responder_no_mfa  the script tier, no second factor yet: the session may only enroll one
#   admin_no_mfa      role admin, password only: like responder_no_mfa, it reaches nothing but
#                     enrolling, and enrolling needs an admin's code (docs/adr/0034)
#   admin             role admin, second factor passed
#   admin_responder   the first admin: admin and the script tier, second factor passed
CALLERS = (
    "anonymous",
    "analyst",
    "collect",
    "respond",
    "script",
    "responder_no_mfa",
    "admin_no_mfa",
    "admin",
    "admin_responder",
)
Statuses = tuple[int, int, int, int, int, int, int, int, int]


@dataclass(frozen=True)
class Row:
    method: str
    path: str
    expect: Statuses
    # When the host's segment has Active Response off, if that changes anything.
    when_off: Statuses | None = None
    # The URL to call when `path` has parameters; "{host}" is the test host's id.
    url: str | None = None
    body: Any = None
    # Routes that end the session get a fresh one for each call.
    own_session: bool = False


ALL_200 = (200, 200, 200, 200, 200, 200, 200, 200, 200)
SIGNED_IN = (401, 200, 200, 200, 200, 200, 200, 200, 200)
READERS = (401, 200, 200, 200, 200, 403, 403, 200, 200)
ADMINS = (401, 403, 403, 403, 403, 403, 403, 200, 200)
ADMINS_404 = (401, 403, 403, 403, 403, 403, 403, 404, 404)
RESPONDERS = (401, 403, 200, 200, 200, 403, 403, 403, 200)
RESPONDERS_404 = (401, 403, 404, 404, 404, 403, 403, 403, 404)
RESULTS = (401, 200, 200, 200, 200, 403, 403, 403, 200)
RESULTS_404 = (401, 404, 404, 404, 404, 403, 403, 403, 404)
WEB_READERS = (303, 200, 200, 200, 200, 303, 303, 200, 200)
WEB_RESPONDERS = (303, 403, 200, 200, 200, 303, 303, 403, 200)
WEB_CHANGE = (303, 403, 403, 403, 403, 403, 403, 403, 403)
WEB_ADMINS = (303, 403, 403, 403, 403, 303, 303, 200, 200)
# A page's change sent without the CSRF token: login first, then the enrollment page, then 403.
WEB_CHANGE_BY_FORM = (303, 403, 403, 403, 403, 303, 303, 403, 403)
WEB_RESULTS = (303, 200, 200, 200, 200, 303, 303, 403, 200)
WEB_RESULTS_404 = (303, 404, 404, 404, 404, 303, 303, 403, 404)
WEB_SESSION_CHANGE = (303, 403, 403, 403, 403, 303, 303, 403, 403)

ROWS = [
    # Public.
    Row("GET", "/healthz", ALL_200),
    Row("GET", "/metrics", ALL_200),
    Row("GET", "/api/v1/openapi.json", ALL_200),
    Row("GET", "/api/v1/docs", ALL_200),
    Row("GET", "/api/v1/docs/oauth2-redirect", ALL_200),
    Row("GET", "/api/v1/enroll/ca", ALL_200),
    Row("GET", "/api/v1/enroll/upgrade-key", ALL_200),
    Row("POST", "/api/v1/enroll", (422,) * 9, body={}),
    # An agent package, to whoever holds its link (docs/adr/0052): a made-up one is unknown.
    Row("GET", "/api/v1/agent-packages/{link}/{filename}", (404,) * 9, url="/api/v1/agent-packages/" + "x" * 43 + "/tether-agent.deb"),
    Row("POST", "/api/v1/auth/login", ALL_200, body={"username": "analyst", "password": PASSWORD}),
    Row("POST", "/api/v1/auth/login/mfa", (401,) * 9, body={"token": "x", "code": "123456"}),
    # The caller's own session and second factor.
    Row("GET", "/api/v1/auth/whoami", SIGNED_IN),
    Row("POST", "/api/v1/auth/logout", (401, 204, 204, 204, 204, 204, 204, 204, 204), own_session=True),
    # Without a second factor passed, enrolling needs an enrollment code (none is sent here).
    Row("POST", "/api/v1/auth/mfa/enroll", (401, 403, 200, 200, 200, 403, 403, 200, 200)),
    Row("POST", "/api/v1/auth/mfa/cancel", (401, 204, 204, 204, 204, 204, 204, 204, 204)),
    Row("GET", "/api/v1/auth/sessions", READERS),
    Row("DELETE", "/api/v1/auth/sessions/{session_id}", (401, 404, 404, 404, 404, 403, 403, 404, 404), url="/api/v1/auth/sessions/0123456789abcdef"),
    Row("POST", "/api/v1/auth/mfa/confirm", (401, 422, 422, 422, 422, 422, 422, 422, 422), body={"code": "x"}),
    # Inventory.
    Row("GET", "/api/v1/hosts", READERS),
    Row("GET", "/api/v1/hosts/{ref}", READERS, url="/api/v1/hosts/{host}"),
    Row("POST", "/api/v1/hosts/{ref}/revoke", ADMINS_404, url="/api/v1/hosts/ghost/revoke"),
    Row("POST", "/api/v1/hosts/ping", ADMINS, body={"hosts": [], "timeout_seconds": 1}),
    Row("POST", "/api/v1/hosts/{ref}/move", ADMINS_404, url="/api/v1/hosts/ghost/move", body={"segment": "matrix"}),
    Row("GET", "/api/v1/hosts/{ref}/response-access", RESPONDERS, when_off=(401, 403, 403, 403, 403, 403, 403, 403, 403), url="/api/v1/hosts/{host}/response-access"),
    # Jobs. The no-op is not a response action: it needs hosts.manage, which admins hold.
    Row("GET", "/api/v1/actions", RESULTS),
    Row("POST", "/api/v1/jobs", (401, 403, 403, 403, 403, 403, 403, 201, 201), body={"action": "system.noop", "hosts": ["{host}"]}),
    Row("GET", "/api/v1/jobs", RESULTS),
    Row("GET", "/api/v1/jobs/{job_id}", RESULTS_404, url="/api/v1/jobs/ghost"),
    Row("GET", "/api/v1/jobs/{job_id}/output", RESULTS_404, url="/api/v1/jobs/ghost/output"),
    Row("POST", "/api/v1/jobs/{job_id}/cancel", (401, 403, 404, 404, 404, 403, 403, 403, 404), url="/api/v1/jobs/ghost/cancel"),
    Row("GET", "/api/v1/batches/{batch_id}", RESULTS_404, url="/api/v1/batches/ghost"),
    # Four-eyes approval: any tier with its second factor may try; the service decides who may
    # decide (tests/server/services/test_approvals.py), so a job that does not exist is a 404.
    Row("POST", "/api/v1/jobs/{job_id}/approve", (401, 403, 404, 404, 404, 403, 403, 403, 404), url="/api/v1/jobs/ghost/approve", body={}),
    Row("POST", "/api/v1/jobs/{job_id}/reject", (401, 403, 404, 404, 404, 403, 403, 403, 404), url="/api/v1/jobs/ghost/reject", body={"reason": "no"}),
    Row("GET", "/api/v1/approvals", RESULTS),
    # The script library: read with results.read, changed by the script tier with a second factor.
    Row("GET", "/api/v1/scripts", RESULTS),
    Row("GET", "/api/v1/scripts/{name}", RESULTS_404, url="/api/v1/scripts/ghost"),
    Row("GET", "/api/v1/scripts/{name}/versions", RESULTS_404, url="/api/v1/scripts/ghost/versions"),
    Row("GET", "/api/v1/scripts/{name}/versions/{version}", RESULTS_404, url="/api/v1/scripts/ghost/versions/1"),
    Row("PUT", "/api/v1/scripts/{name}", (401, 403, 403, 403, 422, 403, 403, 403, 422), url="/api/v1/scripts/matrix", body={"source": "def (:", "description": ""}),
    Row("DELETE", "/api/v1/scripts/{name}", (401, 403, 403, 403, 404, 403, 403, 403, 404), url="/api/v1/scripts/ghost"),
    # Live response sessions: the Active Response role with its second factor; starting one also
    # needs the host's segment to have Active Response on.
    Row("POST", "/api/v1/sessions", (401, 403, 201, 201, 201, 403, 403, 403, 201), when_off=(401, 403, 403, 403, 403, 403, 403, 403, 403), body={"host": "{host}"}),
    Row("GET", "/api/v1/sessions", RESPONDERS),
    Row("GET", "/api/v1/sessions/{session_id}", RESPONDERS_404, url="/api/v1/sessions/ghost"),
    Row("POST", "/api/v1/sessions/{session_id}/commands", RESPONDERS_404, url="/api/v1/sessions/ghost/commands", body={"action": "system.noop"}),
    Row("DELETE", "/api/v1/sessions/{session_id}", RESPONDERS_404, url="/api/v1/sessions/ghost"),
    # The file library: listed by readers; uploads and downloads by responders with MFA.
    Row("GET", "/api/v1/files", RESULTS),
    Row("GET", "/api/v1/files/{ref}", RESULTS_404, url="/api/v1/files/ghost"),
    Row("GET", "/api/v1/files/{ref}/content", (401, 403, 404, 404, 404, 403, 403, 403, 404), url="/api/v1/files/ghost/content"),
    Row("POST", "/api/v1/files", (401, 403, 422, 422, 422, 403, 403, 403, 422), url="/api/v1/files?name=bad%2Fname"),
    # Isolation: a response action of the respond tier; the allowlist is the admins' to change.
    Row("POST", "/api/v1/isolation/isolate", (401, 403, 403, 201, 201, 403, 403, 403, 201), when_off=(401, 403, 403, 403, 403, 403, 403, 403, 403), body={"hosts": ["{host}"]}),
    Row("POST", "/api/v1/isolation/release", (401, 403, 403, 201, 201, 403, 403, 403, 201), when_off=(401, 403, 403, 403, 403, 403, 403, 403, 403), body={"hosts": ["{host}"], "mode": "full"}),
    Row("GET", "/api/v1/isolation/allowlist", READERS),
    Row("PUT", "/api/v1/isolation/allowlist", ADMINS, body={"rules": [{"cidr": "10.0.0.0/8"}]}),
    # Segments.
    # Agent upgrades: admin AND the script tier (a plain admin is refused by the service).
    Row("GET", "/api/v1/agent-upgrades", READERS),
    Row("GET", "/api/v1/agent-upgrades/{rollout_id}", (401, 404, 404, 404, 404, 403, 403, 404, 404), url="/api/v1/agent-upgrades/ghost"),
    Row("POST", "/api/v1/agent-upgrades", (401, 403, 403, 403, 403, 403, 403, 403, 404), body={"sha256": "0" * 64, "hosts": ["{host}"]}),
    Row("GET", "/api/v1/segments", READERS),
    Row("POST", "/api/v1/segments", (401, 403, 403, 403, 403, 403, 403, 422, 422), body={"name": "bad/name"}),
    Row("PATCH", "/api/v1/segments/{name}", ADMINS_404, url="/api/v1/segments/ghost", body={"active_response": True}),
    Row("DELETE", "/api/v1/segments/{name}", ADMINS_404, url="/api/v1/segments/ghost"),
    # Enrollment tokens.
    Row("GET", "/api/v1/enrollment-tokens", ADMINS),
    Row("POST", "/api/v1/enrollment-tokens", (401, 403, 403, 403, 403, 403, 403, 201, 201), body={"segment": "default"}),
    # A segment that does not exist: refused before anything is built.
    Row("POST", "/api/v1/agent-packages", ADMINS_404, body={"format": "deb", "segment": "no-such-segment"}),
    Row("POST", "/api/v1/enrollment-tokens/revoke", ADMINS_404, body={"token": "999"}),
    # Session History: the Active Response role alone.
    Row("GET", "/api/v1/audit", RESPONDERS),
    Row("GET", "/api/v1/audit/verify", RESPONDERS),
    Row("POST", "/api/v1/audit/verify", RESPONDERS, body={}),
    Row("GET", "/api/v1/audit/checkpoint", RESPONDERS),
    Row("GET", "/api/v1/audit/export", RESPONDERS),
    # The web UI, called with the same bearer sessions (a browser sends the cookie instead). No
    # session: a redirect to /login; a session that must enroll a second factor first: to
    # /mfa/enroll; a change without the CSRF token: 403 (tests/server/web holds the details).
    Row("GET", "/", (303,) * 9),
    Row("GET", "/login", ALL_200),
    Row("POST", "/login", (403,) * 9),
    Row("GET", "/login/code", (303,) * 9),
    Row("POST", "/login/code", (401,) * 9),
    Row("POST", "/logout", WEB_CHANGE),
    Row("GET", "/mfa/enroll", (303, 200, 200, 200, 200, 200, 200, 200, 200)),
    Row("POST", "/mfa/enroll", WEB_CHANGE),
    Row("POST", "/mfa/confirm", WEB_CHANGE),
    Row("POST", "/mfa/cancel", WEB_CHANGE),
    Row("GET", "/active-response", WEB_READERS),
    Row("GET", "/active-response/hosts", WEB_READERS),
    Row("POST", "/active-response/actions", (303, 403, 403, 403, 403, 303, 303, 403, 403)),
    Row("GET", "/hosts/{ref}", WEB_READERS, url="/hosts/{host}"),
    # The Host page's jobs table alone, polled: results, as the table is.
    Row("GET", "/hosts/{ref}/jobs", WEB_RESULTS, url="/hosts/{host}/jobs"),
    # Admins ping from Active Response, move and revoke on the Host page (docs/adr/0025).
    Row("POST", "/active-response/ping", WEB_CHANGE_BY_FORM),
    Row("POST", "/hosts/{ref}/move", WEB_CHANGE_BY_FORM, url="/hosts/{host}/move"),
    Row("POST", "/hosts/{ref}/revoke", WEB_CHANGE_BY_FORM, url="/hosts/{host}/revoke"),
    Row("POST", "/hosts/{ref}/upgrade", WEB_CHANGE_BY_FORM, url="/hosts/{host}/upgrade"),
    # The Host page's live session (docs/adr/0022). Without the CSRF header every change is 403;
    # a session that must first enroll a second factor is sent to enroll before that check.
    Row("POST", "/hosts/{ref}/session", WEB_SESSION_CHANGE, url="/hosts/{host}/session"),
    Row("POST", "/hosts/{ref}/session/end", WEB_SESSION_CHANGE, url="/hosts/{host}/session/end"),
    Row("POST", "/hosts/{ref}/session/commands", WEB_SESSION_CHANGE, url="/hosts/{host}/session/commands"),
    Row("GET", "/hosts/{ref}/session/jobs/{job_id}/output", (303, 403, 404, 404, 404, 303, 303, 403, 404), url="/hosts/{host}/session/jobs/ghost/output?wait=0"),
    Row("GET", "/hosts/{ref}/session/files", WEB_RESPONDERS, url="/hosts/{host}/session/files"),
    Row("POST", "/hosts/{ref}/session/files", WEB_SESSION_CHANGE, url="/hosts/{host}/session/files"),
    Row("POST", "/hosts/{ref}/session/files/retrieve", WEB_SESSION_CHANGE, url="/hosts/{host}/session/files/retrieve"),
    Row("POST", "/hosts/{ref}/session/files/deploy", WEB_SESSION_CHANGE, url="/hosts/{host}/session/files/deploy"),
    Row("GET", "/hosts/{ref}/session/processes", WEB_RESPONDERS, url="/hosts/{host}/session/processes"),
    Row("POST", "/hosts/{ref}/session/processes", WEB_SESSION_CHANGE, url="/hosts/{host}/session/processes"),
    Row("POST", "/hosts/{ref}/session/processes/kill", WEB_SESSION_CHANGE, url="/hosts/{host}/session/processes/kill"),
    Row("GET", "/session-history", WEB_RESPONDERS),
    Row("GET", "/session-history/verify", WEB_RESPONDERS),
    Row("GET", "/session-history/export", WEB_RESPONDERS),
    # Settings: admins only; a change without the CSRF token is refused before the permission.
    Row("GET", "/settings/team", WEB_ADMINS),
    Row("POST", "/settings/team", WEB_CHANGE_BY_FORM),
    Row("POST", "/settings/team/{username}/roles", WEB_CHANGE_BY_FORM, url="/settings/team/ghost/roles"),
    Row("POST", "/settings/team/{username}/disable", WEB_CHANGE_BY_FORM, url="/settings/team/ghost/disable"),
    Row("POST", "/settings/team/{username}/enable", WEB_CHANGE_BY_FORM, url="/settings/team/ghost/enable"),
    Row("POST", "/settings/team/{username}/mfa-reset", WEB_CHANGE_BY_FORM, url="/settings/team/ghost/mfa-reset"),
    Row("POST", "/settings/team/{username}/enrollment-code", WEB_CHANGE_BY_FORM, url="/settings/team/ghost/enrollment-code"),
    Row("POST", "/settings/step-up", WEB_CHANGE_BY_FORM),
    Row("GET", "/sessions", WEB_READERS),
    Row("POST", "/sessions/{session_id}/end", WEB_CHANGE_BY_FORM, url="/sessions/0123456789abcdef/end"),
    Row("POST", "/settings/team/{username}/external", WEB_CHANGE_BY_FORM, url="/settings/team/ghost/external"),
    Row("GET", "/settings/segments", WEB_ADMINS),
    Row("POST", "/settings/segments", WEB_CHANGE_BY_FORM),
    Row("POST", "/settings/segments/{name}/delete", WEB_CHANGE_BY_FORM, url="/settings/segments/ghost/delete"),
    Row("POST", "/settings/segments/{name}/active-response", WEB_CHANGE_BY_FORM, url="/settings/segments/ghost/active-response"),
    Row("POST", "/settings/segments/{name}/approval", WEB_CHANGE_BY_FORM, url="/settings/segments/ghost/approval"),
    Row("GET", "/settings/configuration", WEB_ADMINS),
    Row("POST", "/settings/configuration", WEB_CHANGE_BY_FORM),
    Row("POST", "/settings/configuration/allowlist", WEB_CHANGE_BY_FORM),
    Row("POST", "/settings/configuration/agent-addresses", WEB_CHANGE_BY_FORM),
    Row("GET", "/settings/enrollment", WEB_ADMINS),
    Row("POST", "/settings/enrollment", WEB_CHANGE_BY_FORM),
    Row("POST", "/settings/enrollment/revoke", WEB_CHANGE_BY_FORM),
    Row("POST", "/settings/enrollment/package", WEB_CHANGE_BY_FORM),
    Row("GET", "/settings/service-tokens", WEB_ADMINS),
    Row("POST", "/settings/service-tokens", WEB_CHANGE_BY_FORM),
    Row("POST", "/settings/service-tokens/{name}/revoke", WEB_CHANGE_BY_FORM, url="/settings/service-tokens/ghost/revoke"),
    # Files: results readers see them; downloads and uploads are the Active Response role's. An
    # upload reads its CSRF token from the form, so a body that is no form is a 400 first.
    Row("GET", "/files", (303, 200, 200, 200, 200, 303, 303, 403, 200)),
    Row("GET", "/files/{ref}", (303, 404, 404, 404, 404, 303, 303, 403, 404), url="/files/ghost"),
    Row("GET", "/files/{ref}/content", (303, 403, 404, 404, 404, 303, 303, 403, 404), url="/files/ghost/content"),
    Row("POST", "/files/upload", (303, 403, 400, 400, 400, 303, 303, 403, 400)),
    # Scripts: read with results.read; the services decide who may save and run.
    Row("GET", "/scripts", WEB_RESULTS),
    Row("GET", "/scripts/{name}", WEB_RESULTS_404, url="/scripts/ghost"),
    Row("GET", "/scripts/-/new", WEB_RESULTS),
    Row("POST", "/scripts/-/save", WEB_CHANGE_BY_FORM),
    Row("POST", "/scripts/-/delete", WEB_CHANGE_BY_FORM),
    Row("GET", "/scripts/-/run", WEB_RESULTS),
    Row("POST", "/scripts/-/run", WEB_CHANGE_BY_FORM),
    Row("GET", "/scripts/-/runs/{batch_id}", WEB_RESULTS_404, url="/scripts/-/runs/ghost"),
    Row("GET", "/scripts/-/runs/{batch_id}/hosts", WEB_RESULTS_404, url="/scripts/-/runs/ghost/hosts"),
    Row("GET", "/scripts/-/runs/{batch_id}/summary", WEB_RESULTS_404, url="/scripts/-/runs/ghost/summary"),
    Row("GET", "/scripts/-/runs/{batch_id}/rows.csv", WEB_RESULTS_404, url="/scripts/-/runs/ghost/rows.csv"),
    Row("POST", "/scripts/-/runs/{batch_id}/cancel", WEB_CHANGE_BY_FORM, url="/scripts/-/runs/ghost/cancel"),
    # Jobs: read with results.read; cancelled by the Active Response role, as in the API.
    Row("GET", "/jobs", WEB_RESULTS),
    Row("GET", "/jobs/-/rows", WEB_RESULTS),
    Row("GET", "/jobs/{job_id}", WEB_RESULTS_404, url="/jobs/ghost"),
    Row("GET", "/jobs/{job_id}/detail", WEB_RESULTS_404, url="/jobs/ghost/detail"),
    Row("POST", "/jobs/{job_id}/cancel", WEB_CHANGE_BY_FORM, url="/jobs/ghost/cancel"),
    Row("POST", "/jobs/{job_id}/approve", WEB_CHANGE_BY_FORM, url="/jobs/ghost/approve"),
    Row("POST", "/jobs/{job_id}/reject", WEB_CHANGE_BY_FORM, url="/jobs/ghost/reject"),
    # The team and the settings.
    Row("GET", "/api/v1/users", ADMINS),
    Row("POST", "/api/v1/users", (401, 403, 403, 403, 403, 403, 403, 422, 422), body={"username": "new", "password": "short"}),
    Row("POST", "/api/v1/users/{username}/disable", ADMINS_404, url="/api/v1/users/ghost/disable"),
    Row("POST", "/api/v1/users/{username}/enable", ADMINS_404, url="/api/v1/users/ghost/enable"),
    Row("PUT", "/api/v1/users/{username}/roles/{role}", ADMINS_404, url="/api/v1/users/ghost/roles/analyst"),
    Row("DELETE", "/api/v1/users/{username}/roles/{role}", ADMINS_404, url="/api/v1/users/ghost/roles/analyst"),
    Row("POST", "/api/v1/users/{username}/mfa/reset", ADMINS_404, url="/api/v1/users/ghost/mfa/reset"),
    Row("POST", "/api/v1/users/{username}/enrollment-code", ADMINS_404, url="/api/v1/users/ghost/enrollment-code"),
    Row("GET", "/api/v1/users/{username}/sessions", ADMINS_404, url="/api/v1/users/ghost/sessions"),
    Row("DELETE", "/api/v1/users/{username}/sessions/{session_id}", ADMINS_404, url="/api/v1/users/ghost/sessions/0123456789abcdef"),
    Row("PUT", "/api/v1/users/{username}/external", ADMINS_404, url="/api/v1/users/ghost/external", body={"external": False}),
    # Service tokens: admins create (with step-up), list and revoke them.
    Row("POST", "/api/v1/service-tokens", (401, 403, 403, 403, 403, 403, 403, 422, 422), body={"name": "bad/name", "tier": "collect", "segments": ["matrix"], "expires_in_seconds": 3600}),
    Row("GET", "/api/v1/service-tokens", ADMINS),
    Row("DELETE", "/api/v1/service-tokens/{name}", ADMINS_404, url="/api/v1/service-tokens/ghost"),
    Row("GET", "/api/v1/settings", ADMINS),
    Row("PATCH", "/api/v1/settings", ADMINS, body={}),
    Row("GET", "/api/v1/settings/agent-addresses", ADMINS),
    Row("PUT", "/api/v1/settings/agent-addresses", ADMINS, body={"addresses": []}),
]  # fmt: skip


def service_token_status(row: Row, expected: Statuses) -> int:
    """What the service token (respond tier, segment "matrix", which holds the test host) gets:
    a public route (or one answering everyone alike) answers it as anyone; a page does not know it (a page takes a person's
    session); live sessions and a person's own session and factor are refused it; every other
    API route answers it as it answers a person of the respond tier."""
    anonymous, respond = expected[0], expected[CALLERS.index("respond")]
    if anonymous not in (401, 303) or len(set(expected)) == 1:
        return anonymous
    if not row.path.startswith("/api/v1/"):
        return anonymous
    if row.path == "/api/v1/auth/whoami":
        return 200
    if row.path.startswith(("/api/v1/auth/", "/api/v1/sessions")):
        return 403
    return respond


def test_every_route_has_a_row(platform: Platform) -> None:
    routes = {(method, path) for method, path, _ in http_routes(create_app(platform))}
    rows = [(r.method, r.path) for r in ROWS]
    assert len(rows) == len(set(rows)), "a route has two rows"
    missing = sorted(routes - set(rows))
    assert not missing, f"routes without a row in ROWS: {missing}"
    stale = sorted(set(rows) - routes)
    assert not stale, f"rows for routes that do not exist: {stale}"


async def _login_as(
    caller: str,
    platform: Platform,
    client: httpx.AsyncClient,
    secrets: dict[str, str],
) -> dict[str, str]:
    if caller == "anonymous":
        return {}
    name, secret = {
        "analyst": ("analyst", None),
        "collect": ("collector", secrets["collector"]),
        "respond": ("responder", secrets["responder"]),
        "script": ("scripter", secrets["scripter"]),
        "responder_no_mfa": ("fresh-responder", None),
        "admin_no_mfa": ("password-admin", None),
        "admin": ("plain-admin", secrets["plain-admin"]),
        "admin_responder": ("admin", secrets["admin"]),
    }[caller]
    password = secrets["admin_password"] if name == "admin" else PASSWORD
    return await login(client, name, password, platform=platform, secret=secret)


@pytest.mark.parametrize("active_response", [True, False], ids=["ar-on", "ar-off"])
async def test_route_matrix(
    platform: Platform,
    client: httpx.AsyncClient,
    admin_password: str,
    admin_secret: str,
    active_response: bool,
) -> None:
    users = platform.users
    await users.create("analyst", PASSWORD, {Role.ANALYST})
    await users.create("fresh-responder", PASSWORD, {Role.SCRIPT})
    plain_admin = await users.create("plain-admin", PASSWORD, {Role.ADMIN})
    await users.create("password-admin", PASSWORD, {Role.ADMIN})
    admin_secret_2 = new_secret()
    await users.mfa.enroll_directly(plain_admin.id, admin_secret_2)
    secrets: dict[str, str] = {}
    for name, tier in (
        ("collector", Role.COLLECT),
        ("responder", Role.RESPOND),
        ("scripter", Role.SCRIPT),
    ):
        tier_user, tier_secret = await users.create(name, PASSWORD, {tier}), new_secret()
        await users.mfa.enroll_directly(tier_user.id, tier_secret)
        secrets[name] = to_base32(tier_secret)
    secrets |= {
        "plain-admin": to_base32(admin_secret_2),
        "admin": admin_secret,
        "admin_password": admin_password,
    }
    host = await add_host(platform.engine, "matrix-host", segment="matrix")
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(segments)
            .where(segments.c.name == "matrix")
            .values(active_response=active_response)
        )
    headers = {c: await _login_as(c, platform, client, secrets) for c in CALLERS}
    admin_user = User(1, "admin", frozenset({"admin"}), False)
    issued = await platform.service_tokens.create(
        "soar", Tier.RESPOND, ["matrix"], timedelta(days=1), [], by=admin_user, source="test"
    )
    service = {"authorization": f"Bearer {issued.token}"}

    wrong: list[str] = []
    for row in ROWS:
        expected = row.expect if active_response or row.when_off is None else row.when_off
        url = (row.url or row.path).replace("{host}", host)
        for caller, status in zip(CALLERS, expected, strict=True):
            auth = headers[caller]
            if row.own_session and caller != "anonymous":
                auth = await _login_as(caller, platform, client, secrets)
            body = json.loads(json.dumps(row.body).replace("{host}", host))
            response = await client.request(row.method, url, headers=auth, json=body)
            if response.status_code != status:
                wrong.append(
                    f"{row.method} {row.path} as {caller}: {response.status_code}, "
                    f"expected {status} ({response.text[:120]})"
                )
        status = service_token_status(row, expected)
        auth = service
        body = json.loads(json.dumps(row.body).replace("{host}", host))
        response = await client.request(row.method, url, headers=auth, json=body)
        if response.status_code != status:
            wrong.append(
                f"{row.method} {row.path} as the service token: {response.status_code}, "
                f"expected {status} ({response.text[:120]})"
            )
    assert not wrong, "\n".join(wrong)
