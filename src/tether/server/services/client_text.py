"""Text a client chose (a user agent, a user name typed at login), made safe to keep and show.

It goes into signed audit records, database keys and pages: bounded, so a client cannot grow
them, and printable, so it cannot forge a line or a terminal escape in a log or a CSV (and a NUL,
which PostgreSQL refuses in text, never reaches a query).
"""

TEXT_LIMIT = 64


def untrusted_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """`text` cut to `limit` characters, each non-printable one shown as '?'."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])
