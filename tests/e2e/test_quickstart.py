"""`tether up`: platform plus local agent in one command; Ctrl-C stops both; a rerun resumes."""

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tether.server.auth.totp import from_base32, totp

from .harness import (
    Children,
    Cli,
    Proc,
    clean_env,
    free_port,
    tether_command,
    wait_for,
    wait_online,
)

pytestmark = pytest.mark.e2e

BANNER_END = "Press Ctrl-C to stop."


@pytest.fixture
def up_children(tmp_path: Path) -> Iterator[Children]:
    registry = Children(tmp_path / "logs")
    try:
        yield registry
    finally:
        registry.kill_all()


def start_up(
    children: Children, data: Path, api_port: int, agent_port: int, env: dict[str, str]
) -> Proc:
    proc = children.spawn(
        "up",
        [
            *tether_command(),
            "up",
            "--data",
            str(data),
            "--listen",
            f"127.0.0.1:{api_port}",
            "--agent-listen",
            f"127.0.0.1:{agent_port}",
        ],
        env,
    )

    def ready() -> bool:
        assert proc.alive(), f"tether up exited early:\n{proc.output()}"
        return BANNER_END in proc.output()

    wait_for(ready, timeout=90, interval=0.2, what="the tether up banner")
    # The platform and the agent run in sessions of their own: remember them for teardown.
    assert len(proc.remember_descendants()) >= 2
    return proc


def stop_up(proc: Proc, how: signal.Signals = signal.SIGINT) -> None:
    """Ctrl-C (or SIGTERM, SIGHUP) to `tether up` alone: it must stop the agent and the
    platform and exit 0."""
    descendants = proc.remember_descendants()
    assert descendants
    proc.popen.send_signal(how)
    assert proc.wait(timeout=40) == 0, proc.output()
    leftovers = [pid for pid in descendants if psutil.pid_exists(pid)]
    assert leftovers == [], f"still running after tether up stopped: {leftovers}"
    assert "Stopped. Run 'tether up' again" in proc.output()


def test_up_runs_stops_cleanly_and_resumes(up_children: Children, tmp_path: Path) -> None:
    data = tmp_path / "data"
    api_port, agent_port = free_port(), free_port()
    env = clean_env(TETHER_CONFIG_DIR=str(tmp_path / "up-cli"))
    url = f"https://127.0.0.1:{api_port}"

    first = start_up(up_children, data, api_port, agent_port, env)
    banner = first.output()
    assert f"API:            {url}/api/v1" in banner
    assert f"Web UI:         {url}/ " in banner
    match = re.search(r"Admin password: (\S+)\s+\(shown once", banner)
    assert match is not None, banner
    password = match.group(1)
    assert (data / "admin-password").read_text().strip() == password
    mfa = json.loads((data / "admin-password.mfa.json").read_text())
    assert f"Admin TOTP:     {mfa['uri']}" in banner
    assert mfa["uri"].startswith("otpauth://totp/Tether:admin?secret=" + mfa["secret"])
    assert "\u2580" in banner or "\u2584" in banner or "\u2588" in banner  # the terminal QR

    cli = Cli(tmp_path / "analyst", env)
    # The quickstart used this step's code to enroll its agent; each code is accepted once, so
    # log in with the next step's (one step of drift is allowed).
    code = totp(from_base32(mfa["secret"]), time.time() + 30)
    cli.ok(
        "login",
        "--server",
        url,
        "--ca",
        str(data / "ca.pem"),
        "-u",
        "admin",
        "--password-stdin",
        "--code",
        code,
        stdin=password + "\n",
    )
    host_id = str(json.loads((data / "agent" / "identity.json").read_text())["host_id"])
    with cli.api() as api:
        wait_online(api, host_id, timeout=30)
    (host,) = cli.json("hosts")
    assert host["id"] == host_id
    assert host["online"] is True
    stop_up(first)

    second = start_up(up_children, data, api_port, agent_port, env)
    banner = second.output()
    assert password not in banner  # no new password, and the old one is not shown again
    assert f"Admin password: in {data / 'admin-password'}" in banner
    assert (data / "admin-password").read_text().strip() == password
    with cli.api() as api:
        wait_online(api, host_id, timeout=30)
    hosts = cli.json("hosts")
    assert [h["id"] for h in hosts] == [host_id]  # the same agent, not a second enrollment

    # A second quickstart on the same ports is refused in one sentence, before starting
    # anything (it used to report the running one's health as its own, then die).
    clash = up_children.spawn(
        "up-again",
        [
            *tether_command(),
            "up",
            "--data",
            str(tmp_path / "other-data"),
            "--listen",
            f"127.0.0.1:{api_port}",
            "--agent-listen",
            f"127.0.0.1:{agent_port}",
        ],
        env,
    )
    assert clash.wait(timeout=60) == 1
    assert clash.output().strip().splitlines()[-1] == (
        f"tether: 127.0.0.1:{api_port} is already in use (is another 'tether up' still "
        "running?); stop it, or choose another address with --listen."
    )
    assert "Tether is running." not in clash.output()

    # The agent dying leaves the platform up, and the quickstart says how to restart it.
    (agent_pid,) = [
        pid
        for pid in second.remember_descendants()
        if psutil.pid_exists(pid) and "agent" in psutil.Process(pid).cmdline()
    ]
    psutil.Process(agent_pid).kill()
    restart = f"tether agent run --state-dir {data / 'agent'}"
    wait_for(lambda: restart in second.output(), timeout=10, interval=0.2, what="the restart hint")
    assert second.alive()
    with cli.api() as api:
        wait_for(
            lambda: not api.get(f"/hosts/{host_id}").json()["online"],
            timeout=20,
            interval=0.2,
            what="the host shown offline",
        )
    stop_up(second, signal.SIGTERM)
