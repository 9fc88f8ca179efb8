"""What keeps the web UI safe in a browser: response headers, the session cookie, CSRF tokens.

The CSRF token is derived from the session token, so it needs no storage and dies with the
session; a page that can read it (same origin) could read the page anyway. Before a session
exists (the login form), a random token in its own cookie is compared with the form field.
"""

import hashlib
import hmac
import secrets

from fastapi import Request, Response

from tether.server.api.deps import SESSION_COOKIE, bearer_token
from tether.server.errors import Unauthenticated

__all__ = ["SESSION_COOKIE"]

# No inline script or style, no eval: everything the pages run comes from /static.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# The token of a login waiting for its second factor; useless as a session (see Users).
PENDING_COOKIE = "tether_pending"
LOGIN_CSRF_COOKIE = "tether_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
CSRF_REFUSED = "This form has expired; reload the page and try again."


def session_token(request: Request) -> str:
    """The pages' credential: the session cookie (HttpOnly, Secure, SameSite=Strict), or a
    bearer token (harmless here: every change a page takes also needs the CSRF token)."""
    try:
        return bearer_token(request)
    except Unauthenticated:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            return cookie
        raise


def csrf_token_for(session_token: str) -> str:
    """The CSRF token that goes with a session (or pending login) token."""
    return hashlib.sha256(b"tether-web-csrf\0" + session_token.encode()).hexdigest()


def new_login_csrf() -> str:
    return secrets.token_urlsafe(32)


def tokens_match(expected: str | None, sent: str | None) -> bool:
    if not expected or not sent:
        return False
    return hmac.compare_digest(expected.encode(), sent.encode())


async def sent_csrf(request: Request) -> str | None:
    """The CSRF token of a request: the htmx header, else the form field."""
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    form = await request.form()
    value = form.get(CSRF_FIELD)
    return value if isinstance(value, str) else None


def set_cookie(response: Response, name: str, value: str, *, path: str = "/") -> None:
    # HTTPS only (DESIGN.md section 2); Strict keeps other sites' links and forms from carrying it.
    response.set_cookie(name, value, path=path, httponly=True, secure=True, samesite="strict")


def clear_cookie(response: Response, name: str, *, path: str = "/") -> None:
    response.delete_cookie(name, path=path, httponly=True, secure=True, samesite="strict")
