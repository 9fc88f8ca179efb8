"""Text that an endpoint reports about itself: file names, command lines, user names.

Such text is chosen by whoever controls the endpoint and ends up in analysts' terminals and web
pages. The agent escapes it with `escape_text` before sending; the platform validates it against
`ENDPOINT_TEXT`, so an agent that skips the escaping (compromised, or old) is refused, not shown.
"""

import hashlib
import re
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Excerpt:
    """A bounded, showable form of text someone else chose, with what identifies the whole.

    For records and logs: `text` is escaped (no control or bidirectional character survives) and
    cut to its limit; `length` and `sha256` still tell what was received, so a megabyte that was
    cut to 64 characters can be matched against a copy kept elsewhere.
    """

    text: str
    length: int
    sha256: str

    def as_record(self) -> dict[str, str | int]:
        return {"text": self.text, "length": self.length, "sha256": self.sha256}


def excerpt(text: str, limit: int = 64) -> Excerpt:
    """`text` escaped and clipped to `limit` characters, with its length and SHA-256 (of its
    UTF-8, lone surrogates kept as they are).

    Only the first `limit` characters are escaped, so a huge input costs one hash, not a copy.
    """
    head = escape_text(text[: limit + 1])[0]
    if len(text) > limit or len(head) > limit:
        head = head[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return Excerpt(text=head, length=len(text), sha256=digest)


def fit_bytes(text: str, limit: int) -> str:
    """`text` escaped and cut to at most `limit` bytes of UTF-8 (never inside a character),
    ending in "..." when it was cut: for fields whose limit is in bytes, like a close reason."""
    escaped = escape_text(text)[0]
    encoded = escaped.encode("utf-8")
    if len(encoded) <= limit:
        return escaped
    return encoded[: limit - 3].decode("utf-8", "ignore") + "..."
