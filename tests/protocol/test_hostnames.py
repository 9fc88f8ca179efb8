"""Which hostnames a list shows with the host's id beside them."""

from tether.protocol.hostnames import shared_hostnames


def test_a_name_two_hosts_carry_is_shared_and_one_host_listed_twice_is_not() -> None:
    pairs = [("web01", "a"), ("web01", "b"), ("db01", "c"), ("db01", "c"), ("mail", "d")]
    assert shared_hostnames(pairs) == {"web01"}


def test_names_that_read_alike_are_shared_under_every_spelling() -> None:
    pairs = [("WEB01", "a"), ("web01.", "b"), ("web\u200b01", "c"), ("web02", "d")]
    assert shared_hostnames(pairs) == {"WEB01", "web01.", "web\u200b01"}


def test_nothing_listed_shares_nothing() -> None:
    assert shared_hostnames([]) == frozenset()
