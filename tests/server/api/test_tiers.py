"""The tiers through the API: the action listing, whoami, and live-session commands per tier."""

from collections.abc import Mapping

import httpx

from tether.protocol import Role
from tether.protocol.shell import cat_command, python_command
from tether.server.auth.totp import new_secret, to_base32
from tether.server.services.platform import Platform

from .conftest import login
from .test_live_sessions import _host

PASSWORD = "a long enough password"


async def _tiered(
    platform: Platform, client: httpx.AsyncClient, name: str, role: Role
) -> dict[str, str]:
    created = await platform.users.create(name, PASSWORD, {role})
    secret = new_secret()
    await platform.users.mfa.enroll_directly(created.id, secret)
    return await login(client, name, PASSWORD, platform=platform, secret=to_base32(secret))


async def test_the_action_listing_and_whoami_show_tiers(
    platform: Platform, client: httpx.AsyncClient
) -> None:
    rita = await _tiered(platform, client, "rita", Role.COLLECT)
    me = (await client.get("/api/v1/auth/whoami", headers=rita)).json()
    assert (me["roles"], me["tier"]) == (["collect"], "collect")
    listed = (await client.get("/api/v1/actions", headers=rita)).json()
    tiers = {a["name"]: (a["tier"], a["library_tier"]) for a in listed}
    assert tiers["processes.kill"] == ("respond", None)
    assert tiers["files.get"] == ("collect", None)
    assert tiers["script.run"] == ("script", "respond")
    assert tiers["system.noop"] == (None, None)


async def test_live_session_commands_follow_the_tier(
    platform: Platform, client: httpx.AsyncClient
) -> None:
    await _host(platform)
    await platform.scripts.save(
        "hello", "print('hi')\n", "Says hi.", None, actor="admin", source_addr="t"
    )
    rita = await _tiered(platform, client, "rita", Role.COLLECT)
    rosa = await _tiered(platform, client, "rosa", Role.RESPOND)
    sessions = {}
    for name, headers in (("rita", rita), ("rosa", rosa)):
        started = await client.post("/api/v1/sessions", json={"host": "web-1"}, headers=headers)
        assert started.status_code == 201, started.text
        sessions[name] = started.json()["id"]

    async def send(who: str, headers: dict[str, str], body: Mapping[str, object]) -> httpx.Response:
        return await client.post(
            f"/api/v1/sessions/{sessions[who]}/commands", json=body, headers=headers
        )

    # collect: ls, ps and cat; kill, py and a library run are refused in one sentence each.
    cat = cat_command("/etc/hostname")
    for body in (
        {"action": "files.list", "args": {"path": "/"}},
        {"action": "processes.list", "args": {}},
        {"action": cat.action, "args": cat.args},
    ):
        answer = await send("rita", rita, body)
        assert answer.status_code == 201, answer.text
    refused = await send("rita", rita, {"action": "processes.kill", "args": {"pid": 42}})
    assert refused.status_code == 403
    assert refused.json()["detail"] == "rita has the collect tier; kill needs respond."
    library = {"action": "script.run", "args": {}, "script": {"name": "hello"}}
    refused = await send("rita", rita, library)
    assert refused.json()["detail"] == "rita has the collect tier; a library script needs respond."

    # respond: the library script by name; `py` and the library's text sent as source are not.
    answer = await send("rosa", rosa, library)
    assert answer.status_code == 201, answer.text
    assert answer.json()["args"]["name"] == "hello v1"
    py = python_command("1 + 1")
    for body in (
        {"action": py.action, "args": py.args},
        {"action": "script.run", "args": {"source": "print('hi')\n", "params": {}}},
    ):
        refused = await send("rosa", rosa, body)
        assert refused.status_code == 403
        assert refused.json()["detail"] == (
            "rosa has the respond tier; an arbitrary script needs script."
        )
    # The attacker's try: a library run with source of its own beside the name.
    mixed = {"action": "script.run", "args": {"source": "import os"}, "script": {"name": "hello"}}
    refused = await send("rosa", rosa, mixed)
    assert refused.status_code == 422
    assert refused.json()["detail"] == "Give either a library script or args.source, not both."
