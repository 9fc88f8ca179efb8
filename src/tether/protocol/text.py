"""Text that an endpoint reports about itself: file names, command lines, user names.

Such text is chosen by whoever controls the endpoint and ends up in analysts' terminals and web
pages. The agent escapes it with `escape_text` before sending; the platform validates it against
`ENDPOINT_TEXT`, so an agent that skips the escaping (compromised, or old) is refused, not shown.
"""

import re

# Characters a terminal or a browser may act on instead of showing: C0 controls (newline, escape),
# DEL and the C1 controls (0x9b is an 8-bit CSI), and the Unicode bidirectional overrides that
# make a name read differently from what it is ("Trojan Source").
ENDPOINT_TEXT = r"^[^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]*$"

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

# Appended when text was cut to fit its field; plain ASCII so it is itself safe to show.
TRUNCATION_MARKER = "...[truncated]"


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:
        # A byte of a POSIX file name that is not UTF-8, carried by Python's surrogateescape:
        # shown as the byte it was.
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


_UNSAFE_IN_LINES = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def readable(text: str) -> str:
    """`text` as people may read it on a page or in a spreadsheet: every unsafe character
    escaped visibly as `escape_text` does, except newlines and tabs, which keep lines apart.

    For text that arrives unescaped (a hostname, a job's error, a row value, output): what
    the platform shows, never what it stores or hashes."""
    return _UNSAFE_IN_LINES.sub(_escape, text)


def escape_text(text: str) -> tuple[str, bool]:
    """`text` with every unsafe character written as a visible escape (a newline as `\\x0a`),
    and whether anything was escaped.

    Lone surrogates (undecodable file-name bytes) are escaped too, so the result always encodes
    as UTF-8 JSON.
    """
    escaped = _UNSAFE.sub(_escape, text)
    return escaped, escaped != text


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, ending in TRUNCATION_MARKER when it was cut."""
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def safe_text(text: str, limit: int) -> str:
    """`text` escaped and clipped to `limit` characters: ready for an ENDPOINT_TEXT field."""
    return clip(escape_text(text)[0], limit)
