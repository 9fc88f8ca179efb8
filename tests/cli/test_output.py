import json

import pytest

from tether.cli.output import emit_json, json_text, one_line, plain, table, terminal_text


def test_plain_neutralises_terminal_escapes() -> None:
    assert plain("evil\x1b]0;pwned\x07name\r\n") == "evil?]0;pwned?name??"
    assert plain("ws-01.corp") == "ws-01.corp"
    assert plain(42) == "42"


def test_terminal_text_drops_escape_sequences_and_keeps_lines() -> None:
    assert terminal_text("a\x1b]0;pwned\x07b") == "ab"
    assert terminal_text("a\x1b[2Jb") == "ab"
    assert terminal_text("a\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\") == "alink"
    assert terminal_text("one\r\ntwo\tcol\n") == "one\ntwo\tcol\n"
    assert terminal_text("c1\x9b2Jx \x85nel \x00nul \x7fdel") == "c1x ?nel ?nul ?del"
    assert terminal_text("cut\x1b") == "cut"  # a sequence split across pieces leaves no ESC


def test_plain_covers_c1_controls() -> None:
    assert plain("a\x9b2Jb") == "a?2Jb"


def test_one_line_squeezes_and_cuts() -> None:
    assert one_line("failed\n\x1b[2J  twice") == "failed twice"
    assert one_line("x" * 50, 10) == "x" * 9 + "…"


def test_table_cells_are_not_markup(capsys: pytest.CaptureFixture[str]) -> None:
    table([{"name": "[link=http://evil]x[/link] [bold]b"}], [("name", "Name")])
    out = capsys.readouterr().out
    assert "[link=http://evil]x[/link] [bold]b" in out
    assert "\x1b" not in out


# An endpoint names itself: a right-to-left override makes "ws-01<RLO>exe.gpj" read as a
# different name, and C1 controls act on some terminals.
LOOK_ALIKE = "ws-01\u202eexe.gpj\u2066x\u2069\x9b2J"


def test_plain_and_terminal_text_cover_bidi_overrides() -> None:
    assert plain(LOOK_ALIKE) == "ws-01?exe.gpj?x??2J"
    assert terminal_text("a\u202eb\n") == "a?b\n"
    assert one_line("error from \u202dhost\u202c") == "error from ?host?"


def test_json_output_escapes_what_a_terminal_or_reader_would_act_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    emit_json({"hostname": LOOK_ALIKE, "error": "del\x7f nel\x85", "ok": "Zürich"})
    out = capsys.readouterr().out
    assert "\u202e" not in out
    assert "\x9b" not in out
    assert "\x85" not in out
    assert '"hostname": "ws-01\\u202eexe.gpj\\u2066x\\u2069\\u009b2J"' in out
    assert "Zürich" in out  # other text stays readable
    # The values are exact for a script that parses them.
    assert json.loads(out) == {"hostname": LOOK_ALIKE, "error": "del\x7f nel\x85", "ok": "Zürich"}
    assert json_text('{"a": "\u2067"}') == '{"a": "\\u2067"}'


def test_a_piped_table_is_never_folded_at_80_columns(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    host_id = "5f0c1d2e-8a9b-4c7d-9e1f-203a4b5c6d7e"
    rows = [
        {"id": host_id, "hostname": "ws-finance-laptop-0042.corp.example", "os": "Ubuntu 24.04"}
    ]
    table(rows, [("id", "ID"), ("hostname", "Hostname"), ("os", "OS")])
    lines = capsys.readouterr().out.splitlines()
    (row,) = [line for line in lines if host_id in line]
    assert "ws-finance-laptop-0042.corp.example" in row
    assert "Ubuntu 24.04" in row
    assert len(row) > 80
