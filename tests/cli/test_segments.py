from tether.cli.segments import segment_path


def test_segment_names_are_one_path_segment() -> None:
    assert segment_path("lab net") == "/segments/lab%20net"
    assert segment_path("a.b_c-d") == "/segments/a.b_c-d"
    # Never valid names, but the CLI must not turn them into other routes either.
    assert segment_path("../hosts") == "/segments/..%2Fhosts"
    assert segment_path("a?b#c") == "/segments/a%3Fb%23c"
