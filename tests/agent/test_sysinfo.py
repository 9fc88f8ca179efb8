import ipaddress

from tether.agent import sysinfo
from tether.protocol import PROTOCOL_VERSION, Hello, parse_agent_message


def test_hello_is_a_valid_protocol_message() -> None:
    hello = sysinfo.hello("endpoint-under-test")
    assert hello.protocol_version == PROTOCOL_VERSION
    assert hello.hostname == "endpoint-under-test"
    assert hello.os.family == sysinfo.os_family()
    assert isinstance(parse_agent_message(hello.model_dump_json()), Hello)


def test_addresses_exclude_loopback_and_are_bounded() -> None:
    found = sysinfo.addresses(limit=3)
    assert len(found) <= 3
    for text in found:
        assert not ipaddress.ip_address(text).is_loopback
        assert "%" not in text
