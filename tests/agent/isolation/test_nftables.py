import pytest

from tests.agent.isolation.policies import policy
from tether.agent.isolation.backend import first_error_line
from tether.agent.isolation.nftables import REMOVE_SCRIPT, replace_script, ruleset
from tether.protocol.isolation import AllowRule, IsolationMode

OUTBOUND = """\
table inet tether_isolation {
	chain input {
		type filter hook input priority filter; policy drop;
		iif "lo" accept
		icmpv6 type { nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } accept
		ip saddr 192.0.2.10 tcp sport 8444 accept
		ct state related ct original ip daddr 192.0.2.10 accept
		ip6 saddr 2001:db8::10 tcp sport 8444 accept
		ct state related ct original ip6 daddr 2001:db8::10 accept
		udp sport 67 udp dport 68 accept
		udp sport 547 udp dport 546 accept
		ip saddr 10.0.0.0/8 accept
		ip6 saddr fd00::/8 meta l4proto { tcp, udp } th sport { 53, 853 } accept
		ip6 saddr fd00::/8 meta l4proto { tcp, udp } th dport { 53, 853 } accept
		ct state invalid drop
		ct state new tcp flags & (fin | syn | rst | ack) != syn drop
		ct direction original accept
	}
	chain output {
		type filter hook output priority filter; policy drop;
		oif "lo" accept
		icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report, mld2-listener-report } accept
		ip daddr 192.0.2.10 tcp dport 8444 accept
		ip6 daddr 2001:db8::10 tcp dport 8444 accept
		udp sport 68 udp dport 67 accept
		udp sport 546 udp dport 547 accept
		ip daddr 10.0.0.0/8 accept
		ip6 daddr fd00::/8 meta l4proto { tcp, udp } th dport { 53, 853 } accept
		ip6 daddr fd00::/8 meta l4proto { tcp, udp } th sport { 53, 853 } accept
		ct direction reply accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ip saddr 10.0.0.0/8 accept
		ip daddr 10.0.0.0/8 accept
		ip6 saddr fd00::/8 meta l4proto { tcp, udp } th sport { 53, 853 } accept
		ip6 saddr fd00::/8 meta l4proto { tcp, udp } th dport { 53, 853 } accept
		ip6 daddr fd00::/8 meta l4proto { tcp, udp } th dport { 53, 853 } accept
		ip6 daddr fd00::/8 meta l4proto { tcp, udp } th sport { 53, 853 } accept
		ct status dnat accept
	}
}
"""

FULL = """\
table inet tether_isolation {
	chain input {
		type filter hook input priority filter; policy drop;
		iif "lo" accept
		icmpv6 type { nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } accept
		ip saddr 192.0.2.10 tcp sport 8444 accept
		ct state related ct original ip daddr 192.0.2.10 accept
		udp sport 67 udp dport 68 accept
		udp sport 547 udp dport 546 accept
	}
	chain output {
		type filter hook output priority filter; policy drop;
		oif "lo" accept
		icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report, mld2-listener-report } accept
		ip daddr 192.0.2.10 tcp dport 8444 accept
		udp sport 68 udp dport 67 accept
		udp sport 546 udp dport 547 accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
	}
}
"""


def test_outbound_mode_ruleset() -> None:
    allow = (AllowRule(cidr="10.1.2.3/8"), AllowRule(cidr="fd00::/8", ports=(853, 53)))
    assert ruleset(policy(IsolationMode.OUTBOUND, *allow)) == OUTBOUND


def test_full_mode_has_no_inbound_or_reply_or_forward_openings() -> None:
    assert ruleset(policy(IsolationMode.FULL, v6=False)) == FULL


def test_replace_is_one_transaction_that_works_with_or_without_the_table() -> None:
    script = replace_script(policy())
    assert script.startswith(
        "table inet tether_isolation\ndelete table inet tether_isolation\ntable inet tether_isolation {\n"
    )
    assert script.count("delete table") == 1
    assert REMOVE_SCRIPT == "table inet tether_isolation\ndelete table inet tether_isolation\n"


@pytest.mark.parametrize(
    ("stderr", "line"),
    [
        (
            "\n/dev/stdin:3:1-5: Error: syntax error\n more\n",
            "/dev/stdin:3:1-5: Error: syntax error",
        ),
        ("bad \x1b[31mcolour\ttab", "bad \\x1b[31mcolour\\ttab"),
        ("", "no error message"),
        ("x" * 400, "x" * 297 + "..."),
    ],
)
def test_a_tools_first_error_line_is_escaped_and_clipped(stderr: str, line: str) -> None:
    assert first_error_line(stderr) == line
