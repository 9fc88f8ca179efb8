import hashlib
import re

import pytest

from tether.protocol import (
    ENDPOINT_TEXT,
    TRUNCATION_MARKER,
    clip,
    escape_text,
    excerpt,
    fit_bytes,
    hostname_key,
    safe_text,
)
from tether.protocol.text import readable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\nb", "a\\x0ab"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("del\x7f", "del\\x7f"),
        ("csi\x9b2J", "csi\\x9b2J"),
        ("invoice\u202egpj.exe", "invoice\\u202egpj.exe"),
        ("bad\udcff", "bad\\xff"),
        ("lone\ud800", "lone\\ud800"),
        ("nul\x00", "nul\\x00"),
    ],
)
def test_unsafe_characters_become_visible_escapes(raw: str, shown: str) -> None:
    assert escape_text(raw) == (shown, True)


def test_printable_text_is_left_alone() -> None:
    for text in ("<img src=x onerror=alert(1)>", "café 漢字 🙂", "C:\\Windows\\System32", ""):
        assert escape_text(text) == (text, False)


def test_escaped_text_always_satisfies_the_wire_pattern() -> None:
    pattern = re.compile(ENDPOINT_TEXT)
    every = "".join(chr(code) for code in range(0x3000))
    assert not pattern.match(every)
    escaped, changed = escape_text(every)
    assert changed
    assert pattern.match(escaped)
    escaped.encode("utf-8")  # no lone surrogate left


def test_clip_marks_what_it_cut() -> None:
    assert clip("short", 10) == "short"
    cut = clip("x" * 100, 40)
    assert len(cut) == 40
    assert cut.endswith(TRUNCATION_MARKER)
    assert cut.startswith("x" * (40 - len(TRUNCATION_MARKER)))


def test_safe_text_escapes_then_clips() -> None:
    shown = safe_text("\n" * 100, 50)
    assert len(shown) == 50
    assert shown.startswith("\\x0a\\x0a")
    assert shown.endswith(TRUNCATION_MARKER)


def test_readable_escapes_controls_and_bidi_but_keeps_lines() -> None:
    assert readable("ws-01\u202eexe.gpj") == "ws-01\\u202eexe.gpj"
    assert readable("a\x1b[2J\x07b\x9b\x7f") == "a\\x1b[2J\\x07b\\x9b\\x7f"
    assert readable("line one\n\tline two\r") == "line one\n\tline two\\x0d"
    assert readable("Zürich <b>") == "Zürich <b>"


def test_excerpt_keeps_a_bounded_escaped_head_with_the_length_and_hash_of_the_whole() -> None:
    text = "\x1b[2J\u202e" + "z" * 10_000
    cut = excerpt(text, 20)
    assert cut.text == "\\x1b[2J\\u202...[truncated]"[: 20 - len(TRUNCATION_MARKER)] + (
        TRUNCATION_MARKER
    )
    assert len(cut.text) == 20
    assert cut.length == len(text)
    assert cut.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert cut.as_record() == {"text": cut.text, "length": cut.length, "sha256": cut.sha256}


def test_excerpt_of_short_text_is_the_text() -> None:
    assert excerpt("job.status", 20).text == "job.status"
    # A lone surrogate (undecodable file-name byte) is escaped, and still hashed.
    assert excerpt("a\udcff", 20).text == "a\\xff"


def test_fit_bytes_never_cuts_a_character_and_escapes_controls() -> None:
    assert fit_bytes("bell\x07", 123) == "bell\\x07"
    cut = fit_bytes("é" * 100, 123)
    assert len(cut.encode()) <= 123
    assert cut.endswith("...")
    assert cut.startswith("é" * 60)


def test_names_that_read_alike_share_a_key() -> None:
    assert hostname_key("DC01.corp.") == hostname_key("dc01.corp")
    assert hostname_key("\uff24\uff2301") == hostname_key("dc01")  # fullwidth letters
    assert hostname_key("dc\u200d01") == hostname_key("dc01")  # zero-width joiner
    assert hostname_key("dc02") != hostname_key("dc01")
