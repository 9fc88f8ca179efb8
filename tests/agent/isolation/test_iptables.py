from tests.agent.isolation.policies import policy
from tether.agent.isolation.iptables import (
    IN,
    Saved,
    apply_script,
    chain_rules,
    parse_save,
    remove_script,
)
from tether.protocol.isolation import AllowRule, IsolationMode

V4_OUTBOUND = """\
*filter
:TETHER-ISO-IN - [0:0]
:TETHER-ISO-OUT - [0:0]
:TETHER-ISO-FWD - [0:0]
-A TETHER-ISO-IN -i lo -j ACCEPT
-A TETHER-ISO-OUT -o lo -j ACCEPT
-A TETHER-ISO-IN -s 192.0.2.10/32 -p tcp -m tcp --sport 8444 -j ACCEPT
-A TETHER-ISO-IN -m conntrack --ctstate RELATED --ctorigdst 192.0.2.10/32 -j ACCEPT
-A TETHER-ISO-OUT -d 192.0.2.10/32 -p tcp -m tcp --dport 8444 -j ACCEPT
-A TETHER-ISO-IN -p udp -m udp --sport 67 --dport 68 -j ACCEPT
-A TETHER-ISO-OUT -p udp -m udp --sport 68 --dport 67 -j ACCEPT
-A TETHER-ISO-IN -s 10.0.0.0/8 -j ACCEPT
-A TETHER-ISO-OUT -d 10.0.0.0/8 -j ACCEPT
-A TETHER-ISO-FWD -s 10.0.0.0/8 -j ACCEPT
-A TETHER-ISO-FWD -d 10.0.0.0/8 -j ACCEPT
-A TETHER-ISO-IN -m conntrack --ctstate INVALID -j DROP
-A TETHER-ISO-IN -p tcp ! --syn -m conntrack --ctstate NEW -j DROP
-A TETHER-ISO-IN -m conntrack --ctdir ORIGINAL -j ACCEPT
-A TETHER-ISO-OUT -m conntrack --ctdir REPLY -j ACCEPT
-A TETHER-ISO-FWD -m conntrack --ctstate DNAT -j ACCEPT
-A TETHER-ISO-IN -j DROP
-A TETHER-ISO-OUT -j DROP
-A TETHER-ISO-FWD -j DROP
-I INPUT 1 -j TETHER-ISO-IN
-I OUTPUT 1 -j TETHER-ISO-OUT
-I FORWARD 1 -j TETHER-ISO-FWD
COMMIT
"""


def test_ipv4_outbound_script_declares_fills_and_jumps_to_the_chains() -> None:
    allow = (AllowRule(cidr="10.0.0.0/8"), AllowRule(cidr="fd00::/8", ports=(53,)))
    assert apply_script(policy(IsolationMode.OUTBOUND, *allow), 4, Saved()) == V4_OUTBOUND


def test_jumps_already_first_are_left_and_others_moved_to_the_top() -> None:
    saved = parse_save(
        "*filter\n:INPUT ACCEPT [0:0]\n:TETHER-ISO-IN - [0:0]\n:TETHER-ISO-OUT - [0:0]\n"
        "-A INPUT -j TETHER-ISO-IN\n-A OUTPUT -j ACCEPT\n-A OUTPUT -j TETHER-ISO-OUT\nCOMMIT\n"
    )
    assert saved.leading == {"TETHER-ISO-IN"}
    script = apply_script(policy(), 4, saved).splitlines()
    assert [line for line in script if line.startswith(("-I ", "-D "))] == [
        "-D OUTPUT -j TETHER-ISO-OUT",
        "-I OUTPUT 1 -j TETHER-ISO-OUT",
        "-I FORWARD 1 -j TETHER-ISO-FWD",
    ]


def test_ipv6_rules_keep_neighbour_discovery_and_use_the_ipv6_platform_only() -> None:
    rules = chain_rules(policy(IsolationMode.FULL), 6)
    assert rules[:11] == [
        "-A TETHER-ISO-IN -i lo -j ACCEPT",
        "-A TETHER-ISO-OUT -o lo -j ACCEPT",
        "-A TETHER-ISO-IN -p ipv6-icmp -m icmp6 --icmpv6-type 134 -j ACCEPT",
        "-A TETHER-ISO-IN -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT",
        "-A TETHER-ISO-IN -p ipv6-icmp -m icmp6 --icmpv6-type 136 -j ACCEPT",
        "-A TETHER-ISO-IN -p ipv6-icmp -m icmp6 --icmpv6-type 137 -j ACCEPT",
        "-A TETHER-ISO-OUT -p ipv6-icmp -m icmp6 --icmpv6-type 133 -j ACCEPT",
        "-A TETHER-ISO-OUT -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT",
        "-A TETHER-ISO-OUT -p ipv6-icmp -m icmp6 --icmpv6-type 136 -j ACCEPT",
        "-A TETHER-ISO-OUT -p ipv6-icmp -m icmp6 --icmpv6-type 131 -j ACCEPT",
        "-A TETHER-ISO-OUT -p ipv6-icmp -m icmp6 --icmpv6-type 143 -j ACCEPT",
    ]
    assert "-A TETHER-ISO-OUT -d 2001:db8::10/128 -p tcp -m tcp --dport 8444 -j ACCEPT" in rules
    assert not any("192.0.2.10" in rule for rule in rules)
    # Full mode: nothing accepted by conntrack direction.
    assert not any("ctdir" in rule or "DNAT" in rule for rule in rules)
    assert rules[-3:] == [
        "-A TETHER-ISO-IN -j DROP",
        "-A TETHER-ISO-OUT -j DROP",
        "-A TETHER-ISO-FWD -j DROP",
    ]


def test_more_ports_than_one_multiport_match_takes_become_several_rules() -> None:
    ports = tuple(range(1000, 1020))
    rules = chain_rules(policy(IsolationMode.FULL, AllowRule(cidr="10.0.0.0/8", ports=ports)), 4)
    tcp_in = [r for r in rules if r.startswith(f"-A {IN} -s 10.0.0.0/8 -p tcp") and "--sports" in r]
    assert tcp_in == [
        f"-A {IN} -s 10.0.0.0/8 -p tcp -m multiport --sports {','.join(map(str, range(1000, 1015)))} -j ACCEPT",
        f"-A {IN} -s 10.0.0.0/8 -p tcp -m multiport --sports {','.join(map(str, range(1015, 1020)))} -j ACCEPT",
    ]


def test_removal_undoes_only_what_is_there() -> None:
    saved = parse_save(
        "*filter\n:INPUT ACCEPT [0:0]\n:TETHER-ISO-IN - [0:0]\n:TETHER-ISO-OUT - [0:0]\n"
        "-A INPUT -j OTHER\n-A INPUT -j TETHER-ISO-IN\n-A TETHER-ISO-IN -j DROP\nCOMMIT\n"
    )
    assert saved.chains == {"TETHER-ISO-IN", "TETHER-ISO-OUT"}
    assert saved.jumps == {"TETHER-ISO-IN"}
    assert saved.leading == frozenset()
    assert saved.listing() == (
        ":TETHER-ISO-IN - [0:0]\n:TETHER-ISO-OUT - [0:0]\n"
        "-A INPUT -j TETHER-ISO-IN (first: False)\n-A TETHER-ISO-IN -j DROP"
    )
    assert remove_script(saved) == (
        "*filter\n-D INPUT -j TETHER-ISO-IN\n-F TETHER-ISO-IN\n-X TETHER-ISO-IN\n"
        "-F TETHER-ISO-OUT\n-X TETHER-ISO-OUT\nCOMMIT\n"
    )
    assert remove_script(Saved()) is None
