"""Issue 13's attacker at the login, on a real platform: a flood of wrong passwords from one
address neither grows the audit chain without bound nor keeps the real user out from another
address, and X-Forwarded-For names the client only when a proxy the operator trusts sends it.

Loopback is a whole /8 on Linux: a client bound to 127.0.0.2 reaches the platform on 127.0.0.1
from another source address, as a second machine would.
"""

import re
from collections.abc import Iterator

import httpx
import pytest

from .harness import Children, Cli, Platform, audit_records, restart

PASSWORD = "ann's long enough password"
ATTACKER = "127.0.0.1"
USER = "127.0.0.2"
PROXY = "127.0.0.3"
FORGED = "203.0.113.77"
# C1 control characters (CSI, NEL) and far too long: the worst an HTTP header may carry.
HOSTILE = {"user-agent": b"evil\x9b2J\x85" + b"A" * 500}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, Cli]]:
    """A platform of the module's own (it is restarted), trusting one proxy, with analyst ann."""
    root = tmp_path_factory.mktemp("login-flood")
    children = Children(root / "logs")
    try:
        platform = Platform(root, children)
        platform.init_args = ["--trusted-proxy", PROXY]
        platform.init()
        platform.start()
        admin = platform.login(root / "admin-cli")
        admin.ok(
            "user", "add", "ann", "--role", "analyst", "--password-stdin", stdin=PASSWORD + "\n"
        )
        yield platform, admin
    finally:
        children.kill_all()


def client_from(platform: Platform, address: str) -> httpx.Client:
    """An API client whose connections come from `address`."""
    return httpx.Client(
        base_url=f"{platform.url}/api/v1",
        verify=platform.ssl_context(),
        transport=httpx.HTTPTransport(verify=platform.ssl_context(), local_address=address),
        timeout=10.0,
    )


def log_in(client: httpx.Client, password: str, **headers: str | bytes) -> httpx.Response:
    raw = [
        (name.encode(), value if isinstance(value, bytes) else value.encode())
        for name, value in headers.items()
    ]
    return client.post("/auth/login", json={"username": "ann", "password": password}, headers=raw)


def test_a_flood_from_one_address_leaves_the_chain_bounded_and_the_user_in(
    guarded: tuple[Platform, Cli],
) -> None:
    platform, admin = guarded
    before = len(audit_records(admin))
    with client_from(platform, ATTACKER) as attacker:
        answers = [log_in(attacker, "wrong password!", **HOSTILE) for _ in range(200)]
        # The attacker throttled itself: right after a failure, even the right password waits.
        log_in(attacker, "wrong password!", **HOSTILE)
        assert log_in(attacker, PASSWORD, **HOSTILE).status_code == 429
    statuses = [a.status_code for a in answers]
    assert statuses[:5] == [401] * 5
    assert answers[0].json() == {"detail": "The username or password is wrong."}
    first_wait = next(a for a in answers if a.status_code == 429)
    assert re.fullmatch(
        r"Too many failed logins; try again in (1 second|\d+ seconds)\.",
        first_wait.json()["detail"],
    )
    assert first_wait.headers["retry-after"].isdigit()
    # Only the growing delay's rare openings reach the password check.
    assert statuses.count(401) < 15
    assert set(statuses) == {401, 429}
    # ann, at her own address, is not kept out.
    with client_from(platform, USER) as user:
        response = log_in(user, PASSWORD)
    assert response.status_code == 200, response.text
    assert response.json()["username"] == "ann"

    restart(platform)
    new = audit_records(admin)[before:]
    summaries = [r for r in new if r["action"] == "auth.login.failures"]
    assert len(summaries) == 1
    assert summaries[0]["target"] == ATTACKER
    assert summaries[0]["details"]["count"] == 202
    assert summaries[0]["details"]["accounts"] == ["ann"]
    # Cut to 60 characters, control characters shown as "?".
    assert summaries[0]["source"] == f"{ATTACKER} evil?2J?" + "A" * 52
    logins = [r for r in new if r["action"] == "auth.login"]
    assert [(r["actor"], r["outcome"]) for r in logins] == [("ann", "success")]
    assert logins[0]["source"].startswith(f"{USER} ")
    # 203 attempts, a bounded handful of records (the summary, ann's login, the restart's own).
    assert len(new) <= 5, [r["action"] for r in new]


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(guarded: tuple[Platform, Cli]) -> None:
    platform, admin = guarded
    before = len(audit_records(admin))
    # A local client that is no configured proxy cannot write a source address of its choice.
    with client_from(platform, USER) as stranger:
        assert log_in(stranger, PASSWORD, **{"x-forwarded-for": FORGED}).status_code == 200
    # The operator's proxy can: the record names the client behind it.
    with client_from(platform, PROXY) as proxy:
        assert log_in(proxy, PASSWORD, **{"x-forwarded-for": "198.51.100.8"}).status_code == 200
    logins = [r for r in audit_records(admin)[before:] if r["action"] == "auth.login"]
    assert [r["source"].split(" ")[0] for r in logins] == [USER, "198.51.100.8"]
    assert not any(FORGED in str(r) for r in audit_records(admin))


def test_every_answer_of_the_analyst_port_carries_hsts(guarded: tuple[Platform, Cli]) -> None:
    platform, _ = guarded
    with client_from(platform, USER) as client:
        for path in ("/healthz", "/api/v1/auth/whoami", "/login", "/metrics", "/no-such-page"):
            response = client.get(f"{platform.url}{path}")
            assert response.headers["strict-transport-security"] == (
                "max-age=63072000; includeSubDomains"
            ), path
