import re

import pytest

from tether.protocol import ENDPOINT_TEXT, TRUNCATION_MARKER, clip, escape_text, safe_text
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
