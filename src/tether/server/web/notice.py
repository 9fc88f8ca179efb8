"""The confirmation line after a change: post/redirect/get with the sentence in a cookie.

Every change is a POST answered by a redirect, so a reload never sends it again. The sentence
travels in a short-lived cookie rather than the query string: a link someone else crafted cannot
make the page claim that a change was made. The cookie is scoped to the pages that show it.
"""

from urllib.parse import quote, unquote

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

NOTICE_COOKIE = "tether_notice"
# Long enough for the redirect to be followed, short enough that it never shows up later.
NOTICE_SECONDS = 60
NOTICE_LIMIT = 1024


def done(url: str, sentence: str, *, path: str) -> Response:
    """Redirect to `url` (under `path`), which then shows `sentence` once as its confirmation."""
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(
        NOTICE_COOKIE,
        quote(sentence),
        max_age=NOTICE_SECONDS,
        path=path,
        secure=True,
        httponly=True,
        samesite="strict",
    )
    return response


def read_notice(request: Request) -> str | None:
    """The confirmation a redirect left for this page, if any."""
    notice = request.cookies.get(NOTICE_COOKIE)
    return unquote(notice)[:NOTICE_LIMIT] if notice is not None else None


def forget_notice(request: Request, response: Response, *, path: str) -> None:
    """Delete the confirmation with this answer, so it is shown once."""
    if NOTICE_COOKIE in request.cookies:
        response.delete_cookie(
            NOTICE_COOKIE, path=path, secure=True, httponly=True, samesite="strict"
        )
