from tether.cli.output import plain


def test_plain_neutralises_terminal_escapes() -> None:
    assert plain("evil\x1b]0;pwned\x07name\r\n") == "evil?]0;pwned?name??"
    assert plain("ws-01.corp") == "ws-01.corp"
    assert plain(42) == "42"
