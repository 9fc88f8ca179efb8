"""The answer a page route gives when a service refuses or a form field is malformed.

The application's handlers for `PlatformError` and `RequestValidationError` answer the REST API
in JSON ({"detail": ...}); a browser that posted a form must get a page with that one sentence
instead, and the console's script (static/console.js, which asks for JSON) the {"error": ...}
it reads from the console's other answers.
"""

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from tether.server.web.templating import render

HEADINGS = {
    400: "Not valid",
    403: "Not allowed",
    404: "Not found",
    409: "Not possible now",
    413: "Too large",
    422: "Not valid",
    429: "Too many attempts",
}

# pydantic's error types for a number outside its bounds.
RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def page_error(
    request: Request, status: int, sentence: str, headers: dict[str, str] | None = None
) -> Response:
    """The refusal as the page (or console.js) expects it."""
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"error": sentence}, status_code=status, headers=headers)
    heading = HEADINGS.get(status, "Not possible")
    response = render(request, "message.html", status, heading=heading, message=sentence)
    response.headers.update(headers or {})
    return response


def validation_sentence(exc: RequestValidationError) -> str:
    """One sentence about the first field a request got wrong, in the page's words."""
    errors = exc.errors()
    if not errors:
        return "The request is not valid."
    first: dict[str, Any] = errors[0]
    # The location's first item says where the field was (body, query, path, ...).
    where = [str(p) for p in first.get("loc", ())][1:]
    name = where[-1] if where else "request"
    limit = (first.get("ctx") or {}).get("max_length")
    kind = first.get("type", "")
    if kind == "string_too_long" and limit is not None:
        return f"The field {name} holds at most {limit} characters."
    if kind.startswith(("int_", "float_")) or kind in RANGE_ERRORS:
        return f"The field {name} must be a number in the allowed range."
    if kind == "missing":
        return f"The field {name} is missing."
    return f"The field {name} is not valid: {first.get('msg', 'not valid')}."
