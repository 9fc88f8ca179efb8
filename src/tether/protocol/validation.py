"""How a refusal of a malformed message describes it: bounded, whatever was sent."""

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from tether.protocol.text import excerpt

# How much of a rejected value or field name a refusal quotes; the rest is its length and hash.
QUOTED_CHARACTERS = 40


def first_error(exc: ValidationError) -> tuple[str, dict[str, object]]:
    """The first problem as a bounded phrase, and the evidence of what was received.

    pydantic quotes the input in some messages (a wrong `type` tag comes back whole, a megabyte
    if that is what was sent), and field names in `loc` are the sender's dict keys: everything
    quoted is cut and escaped, and the whole is identified by its length and SHA-256 instead.
    """
    err: ErrorDetails = exc.errors(include_url=False)[0]
    where = ".".join(excerpt(str(p), QUOTED_CHARACTERS).text for p in err["loc"]) or "message"
    if err["type"] == "union_tag_invalid":
        tag = excerpt(str((err.get("ctx") or {}).get("tag", "")), QUOTED_CHARACTERS)
        return f"unknown message type '{tag.text}'", {"type": tag.as_record()}
    evidence: dict[str, object] = {}
    value = err.get("input")
    if isinstance(value, str):
        evidence["value"] = excerpt(value, QUOTED_CHARACTERS).as_record()
    return f"{where}: {excerpt(err['msg'], 160).text}", evidence
