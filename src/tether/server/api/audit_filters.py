"""The Session History's filters read into one `AuditSearch`: the page, its Export link and
`GET /api/v1/audit/export` take the same fields and so find the same records."""

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime

from tether.server.errors import Invalid
from tether.server.services.audit import AuditSearch
from tether.server.services.platform import Platform

FILTERS = ("actor", "target", "kind", "action", "since", "until")
FIELD_LIMIT = 200
# A host filter matching more hosts than this is too vague to be worth a query per host.
MAX_HOSTS = 50
BAD_TIME = "Write times as YYYY-MM-DDTHH:MM (UTC), or with an offset such as +01:00."
JSON_LINES = "application/x-ndjson"


def filter_fields(values: Mapping[str, str]) -> dict[str, str]:
    """The filter fields out of a query string, each cut to a sane length."""
    return {n: values.get(n, "")[:FIELD_LIMIT] for n in FILTERS}


def _time(text: str) -> datetime | None:
    """A datetime-local field's value (UTC), or an ISO time with its own offset as scripts send
    it (`Z`, `+02:00`), which is kept; Invalid when it is neither."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as e:
        raise Invalid(BAD_TIME) from e
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


async def _host_mentions(platform: Platform, text: str) -> tuple[str, ...]:
    """What a record about the host `text` names: the text itself, and the id of each host
    whose name contains it (records name hosts by id)."""
    if not text:
        return ()
    wanted = text.casefold()
    ids = [h.id for h in await platform.hosts.list() if wanted in h.hostname.casefold()]
    return (text, *ids[:MAX_HOSTS])


async def audit_search(platform: Platform, fields: Mapping[str, str]) -> AuditSearch:
    """The search the filter `fields` describe (Invalid for a bad time); an action of another
    kind than the one chosen matches nothing."""
    since, until = _time(fields.get("since", "")), _time(fields.get("until", ""))
    kind = f"{fields['kind']}." if fields.get("kind") else ""
    action = fields.get("action") or kind
    return AuditSearch(
        actor=fields.get("actor", ""),
        mentions=await _host_mentions(platform, fields.get("target", "")),
        action=action,
        since=since,
        until=until,
        nothing=not action.startswith(kind),
    )


async def export_stream(platform: Platform, fields: Mapping[str, str]) -> AsyncIterator[bytes]:
    """The export of the records the filter `fields` match (every record without filters)."""
    return platform.audit.export(await audit_search(platform, fields))
