"""`tether up`: a platform on embedded SQLite plus a local agent enrolled into it.

It runs the same commands an operator would (`server init`, `server run`, an enrollment token,
`agent enroll`, `agent run`) as child processes, so what works here works in a real deployment.
Running it again resumes the same data directory.
"""

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer

from tether.agent.enroll import enroll
from tether.agent.state import StateDir
from tether.cli import profile
from tether.cli.client import Api
from tether.cli.mfa import terminal_qr
from tether.errors import TetherError
from tether.server.auth.totp import from_base32, totp


class QuickstartError(TetherError):
    """The quickstart could not bring the platform or the agent up."""


def _default_data() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tether" / "quickstart"


def _tether(*args: str) -> list[str]:
    return [sys.executable, "-m", "tether", *args]


def _wait_healthy(url: str, ca_pem: str, child: subprocess.Popen[bytes], timeout: float) -> None:
    context = ssl.create_default_context(cadata=ca_pem)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise QuickstartError(f"The platform exited with status {child.returncode}; see above.")
        try:
            if httpx.get(f"{url}/healthz", verify=context, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise QuickstartError(f"The platform did not answer at {url} within {timeout:.0f} s.")


def _admin_session(url: str, ca_pem: str, password: str, mfa_file: Path) -> str:
    """Log the admin in, computing the second-factor code from the secret `server init` wrote."""
    api = Api(url, ca_pem)
    try:
        answer = api.post(
            "/auth/login", json={"username": "admin", "password": password, "client": "cli"}
        )
        if answer["stage"] == "second_factor":
            try:
                secret = from_base32(json.loads(mfa_file.read_text())["secret"])
            except (OSError, ValueError, KeyError) as exc:
                raise QuickstartError(
                    f"{mfa_file} is gone or damaged, so the local agent cannot enroll."
                ) from exc
            answer = api.post(
                "/auth/login/mfa",
                json={"token": answer["token"], "code": totp(secret, time.time()), "client": "cli"},
            )
    finally:
        api.close()
    token: str = answer["token"]
    return token


class _StopSignal(Exception):
    """SIGTERM or SIGHUP reached `tether up`: stop both children as Ctrl-C does."""


def _on_stop_signal(signum: int, _frame: object) -> None:
    raise _StopSignal(signal.Signals(signum).name)


# Signals that stop the quickstart cleanly besides Ctrl-C (SIGHUP does not exist on Windows).
_STOP_SIGNALS = [signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]


def _refuse_taken(address: str, option: str) -> None:
    """Refuse to start, in one sentence, when something already listens on `address`: the
    platform would die on it, and the health check would have reached the other listener."""
    host, _, port = address.rpartition(":")
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_STREAM
        )[0]
    except (OSError, ValueError) as exc:
        raise QuickstartError(f"{option} {address} is not a HOST:PORT this machine has.") from exc
    with socket.socket(family, kind, proto) as probe:
        # As the platform binds: a port left in TIME_WAIT by the last run is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(where)
        except OSError as exc:
            raise QuickstartError(
                f"{address} is already in use (is another 'tether up' still running?); stop "
                f"it, or choose another address with {option}."
            ) from exc


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in reversed(children):  # the agent first, then the platform
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def up(
    data: Annotated[
        Path | None, typer.Option("--data", help="Data directory to create or reuse.")
    ] = None,
    listen: Annotated[str, typer.Option(help="Analyst port HOST:PORT.")] = "127.0.0.1:8443",
    agent_listen: Annotated[str, typer.Option(help="Agent port HOST:PORT.")] = "127.0.0.1:8444",
) -> None:
    """Start a platform on embedded SQLite plus a local agent; Ctrl-C stops both."""
    data = (data or _default_data()).resolve()
    password_file = data / "admin-password"
    mfa_file = data / "admin-password.mfa.json"
    first_run = not (data / "config.json").exists()
    if first_run:
        subprocess.run(
            _tether(
                "server",
                "init",
                "--data",
                str(data),
                "--hostname",
                "localhost",
                "--listen",
                listen,
                "--agent-listen",
                agent_listen,
                "--admin-password-file",
                str(password_file),
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    ca_pem = (data / "ca.pem").read_text()
    host, _, port = listen.rpartition(":")
    url = f"https://{host}:{port}"
    _refuse_taken(listen, "--listen")
    _refuse_taken(agent_listen, "--agent-listen")
    children: list[subprocess.Popen[bytes]] = []
    for stop_signal in _STOP_SIGNALS:
        signal.signal(stop_signal, _on_stop_signal)
    try:
        server = subprocess.Popen(
            _tether(
                "server",
                "run",
                "--data",
                str(data),
                "--listen",
                listen,
                "--agent-listen",
                agent_listen,
            ),
            start_new_session=True,
        )
        children.append(server)
        _wait_healthy(url, ca_pem, server, timeout=60)
        agent_state = StateDir(data / "agent")
        password = password_file.read_text().strip() if password_file.exists() else None
        if not agent_state.is_enrolled():
            if password is None:
                raise QuickstartError(f"{password_file} is gone, so the local agent cannot enroll.")
            admin = Api(url, ca_pem, _admin_session(url, ca_pem, password, mfa_file))
            token = admin.post(
                "/enrollment-tokens",
                json={"segment": "default", "uses": 1, "expires_in_seconds": 600},
            )["token"]
            # An idle keep-alive connection would make the platform wait for it when it stops.
            admin.close()
            enroll(token, agent_state)
        agent = subprocess.Popen(
            _tether("agent", "run", "--state-dir", str(agent_state.root)), start_new_session=True
        )
        children.append(agent)
        _print_banner(url, data, password if first_run else None, password_file, mfa_file)
        _watch(server, agent, agent_state.root)
    except (KeyboardInterrupt, _StopSignal):
        typer.echo("\nStopping the agent and the platform...", err=True)
    finally:
        # A second signal must not cut the stop short and leave a child behind.
        for stop_signal in _STOP_SIGNALS:
            signal.signal(stop_signal, signal.SIG_IGN)
        _stop(children)
        for stop_signal in _STOP_SIGNALS:
            signal.signal(stop_signal, signal.SIG_DFL)
    typer.echo("Stopped. Run 'tether up' again to resume with the same data.", err=True)


def _watch(
    server: subprocess.Popen[bytes], agent: subprocess.Popen[bytes], agent_state: Path
) -> None:
    """Wait until the platform exits (an error) or a signal stops the quickstart. The agent
    exiting leaves the platform up, so what a host going offline looks like can be seen, and
    says how to start the agent again."""
    watched: subprocess.Popen[bytes] | None = agent
    while server.poll() is None:
        if watched is not None and watched.poll() is not None:
            typer.echo(
                f"The agent exited with status {watched.returncode}; the platform keeps running. "
                f"Start the agent again in another terminal with: tether agent run --state-dir "
                f"{agent_state}",
                err=True,
            )
            watched = None
        time.sleep(0.5)
    raise QuickstartError(f"The platform exited with status {server.returncode}; stopping.")


def _print_banner(
    url: str, data: Path, password: str | None, password_file: Path, mfa_file: Path
) -> None:
    try:
        profile.load()
        has_profile = True
    except TetherError:
        has_profile = False
    # The CLI prompts for the authenticator code after the password.
    login = f"tether login --server {url} --ca {data / 'ca.pem'} --username admin"
    lines = [
        "",
        "Tether is running.",
        f"  Web UI:         {url}/  (log in as admin; the browser must trust {data / 'ca.pem'})",
        f"  API:            {url}/api/v1  (OpenAPI: {url}/api/v1/docs)",
        f"  Agent port:     local agent enrolled, state in {data / 'agent'}",
        f"  Data:           {data}",
    ]
    if password is not None:
        uri = json.loads(mfa_file.read_text())["uri"]
        lines = [
            "",
            "The admin's second factor: scan this into an authenticator app (or add the URI).",
            terminal_qr(uri),
            *lines,
            f"  Admin password: {password}   (shown once; also in {password_file}, mode 0600)",
            f"  Admin TOTP:     {uri}",
            f"                  (secret and recovery codes in {mfa_file}, mode 0600)",
        ]
    else:
        lines.append(f"  Admin password: in {password_file}")
        lines.append(f"  Admin TOTP:     secret and recovery codes in {mfa_file}")
    lines += [
        f"  Log in:         {login}",
        "  Then try:       tether hosts",
        "Press Ctrl-C to stop.",
    ]
    if not has_profile:
        lines.insert(-1, f"  (CLI config:    {profile.config_dir()})")
    typer.echo("\n".join(lines))
