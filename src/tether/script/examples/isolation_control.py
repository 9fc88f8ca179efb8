"""Isolation Control: show, apply or remove this host's isolation.

Method `agent` asks the agent (tether.script.isolate / unisolate / isolation_status), which
applies its tested rules and tells the platform. Method `direct` shows what a script can do with
the host firewall on its own (Linux, nftables): a table of the script's own that lets through
only loopback, the agent's current connection to the platform and, in outbound mode, replies to
inbound connections; it is tested by connecting to the platform through it and removed again when
that fails. The agent and the platform's inventory do not track direct isolation.
"""

import socket
import subprocess
import sys
from typing import Any, NoReturn

import psutil

import tether.script
from tether.script import ScriptError, row

ACTIONS = ("status", "isolate", "unisolate")
MODES = ("outbound", "full")
METHODS = ("agent", "direct")
TABLE = "tether_script_isolation"


def fail(sentence: str) -> NoReturn:
    """Stop the script with one sentence on stderr and exit code 1, no traceback."""
    sys.exit(sentence)


def read_params() -> dict[str, str]:
    raw = tether.script.params
    if not isinstance(raw, dict):
        fail("The parameters must be an object.")
    unknown = sorted(set(raw) - {"action", "mode", "method"})
    if unknown:
        fail(f"Unknown parameter {unknown[0]!r}; expected action, mode, method.")
    chosen = {
        "action": raw.get("action", "status"),
        "mode": raw.get("mode", "outbound"),
        "method": raw.get("method", "agent"),
    }
    for key, allowed in (("action", ACTIONS), ("mode", MODES), ("method", METHODS)):
        if chosen[key] not in allowed:
            fail(f"Parameter {key!r} must be one of {', '.join(allowed)}.")
    return chosen


# ---- method agent ----------------------------------------------------------------------------


def through_agent(action: str, mode: str) -> dict[str, Any]:
    try:
        if action == "isolate":
            status = tether.script.isolate(mode)
        elif action == "unisolate":
            status = tether.script.unisolate()
        else:
            status = tether.script.isolation_status()
    except ScriptError as exc:
        fail(str(exc))
    return {
        "method": "agent",
        "isolated": bool(status.get("isolated")),
        "mode": status.get("mode") or "",
        "backend": status.get("backend") or "",
        "platform": ", ".join(status.get("platform") or []),
    }


# ---- method direct (Linux, nftables) ---------------------------------------------------------


def nft(script: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        fail("nft is not installed on this host, so the direct method cannot be used.")


def platform_connections() -> list[tuple[str, int]]:
    """Where the agent is connected to now: the platform, as this host reaches it."""
    agent = tether.script.client.agent_pid()
    if agent is None:
        fail("The agent's process id is unknown, so its platform connection cannot be found.")
    try:
        connections = psutil.Process(agent).net_connections(kind="tcp")
    except psutil.Error as exc:
        fail(f"The agent's connections cannot be read: {exc}.")
    found = sorted(
        {
            (c.raddr.ip, c.raddr.port)
            for c in connections
            if c.status == psutil.CONN_ESTABLISHED and c.raddr
        }
    )
    if not found:
        fail("The agent has no connection to the platform now; not isolating.")
    return found


def direct_ruleset(mode: str, platform: list[tuple[str, int]]) -> str:
    allow = []
    for address, port in platform:
        family = "ip6" if ":" in address else "ip"
        allow.append(f"    {family} daddr {address} tcp dport {port} accept")
    inbound = [
        "  chain input {",
        "    type filter hook input priority -5; policy drop;",
        "    iif lo accept",
        "    ct direction reply accept",
        "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept",
        "  }",
    ]
    return "\n".join(
        [
            f"table inet {TABLE}",
            f"delete table inet {TABLE}",
            f"table inet {TABLE} {{",
            "  chain output {",
            "    type filter hook output priority -5; policy drop;",
            "    oif lo accept",
            # Replies to connections that came in (outbound mode keeps inbound working).
            *(["    ct direction reply accept"] if mode == "outbound" else []),
            *allow,
            "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept",
            "  }",
            *(inbound if mode == "full" else []),
            "}",
            "",
        ]
    )


def reachable(platform: list[tuple[str, int]]) -> bool:
    for address, port in platform:
        try:
            with socket.create_connection((address, port), timeout=5):
                return True
        except OSError:
            continue
    return False


def direct_installed() -> bool:
    listed = subprocess.run(
        ["nft", "list", "table", "inet", TABLE], capture_output=True, text=True, timeout=30
    )
    return listed.returncode == 0


def direct(action: str, mode: str) -> dict[str, Any]:
    if sys.platform == "win32":
        fail("The direct method edits nftables and is for Linux; use method agent on Windows.")
    platform: list[tuple[str, int]] = []
    if action == "isolate":
        platform = platform_connections()
        applied = nft(direct_ruleset(mode, platform))
        if applied.returncode != 0:
            fail(f"nft refused the rules: {applied.stderr.strip().splitlines()[0]}.")
        if not reachable(platform):
            nft(f"table inet {TABLE}\ndelete table inet {TABLE}\n")
            fail("The platform was unreachable through the new rules, so they were removed.")
        tether.script.log(f"Isolated directly ({mode}); the agent does not track this table.")
    elif action == "unisolate":
        removed = nft(f"table inet {TABLE}\ndelete table inet {TABLE}\n")
        if removed.returncode != 0:
            fail(f"nft could not remove the table: {removed.stderr.strip().splitlines()[0]}.")
    isolated = direct_installed()
    return {
        "method": "direct",
        "isolated": isolated,
        "mode": mode if isolated and action == "isolate" else "",
        "backend": "nftables (script)",
        "platform": ", ".join(f"{a} port {p}" for a, p in platform),
    }


def main() -> None:
    wanted = read_params()
    if wanted["method"] == "agent":
        state = through_agent(wanted["action"], wanted["mode"])
    else:
        state = direct(wanted["action"], wanted["mode"])
    row(action=wanted["action"], **state)
    print(f"{wanted['action']}: {'isolated' if state['isolated'] else 'not isolated'}.")


main()
