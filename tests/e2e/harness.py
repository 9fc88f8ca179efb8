"""Real processes for the end-to-end tests: a platform, CLI identities and agents over loopback.

Every child is started in its own process group and registered with `Children`, which kills the
group and every descendant at teardown, whatever the test did.
"""

import atexit
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

from tests.ports import free_port as free_port  # re-exported: e2e tests take it from here
from tether.server.auth.totp import from_base32, time_step, totp

# What the platform answers a sensitive change from a session whose last code is too old.
STEP_UP_SENTENCE = "This change needs a fresh second-factor code"

T = TypeVar("T")

# Short intervals so the tests see presence changes quickly; the settings read TETHER_* variables.
PLATFORM_ENV = {
    "TETHER_HEARTBEAT_SECONDS": "5",
    "TETHER_LAST_SEEN_FLUSH_SECONDS": "0.5",
    "TETHER_LOG_FORMAT": "json",
    "PYTHONUNBUFFERED": "1",
}


def tether_command() -> list[str]:
    """The installed `tether` script next to this interpreter, else `python -m tether`."""
    script = Path(sys.executable).with_name("tether")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tether"]


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any TETHER_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(PLATFORM_ENV)
    env.update(extra)
    return env


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "the condition",
) -> T:
    """Poll until `condition` returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"Timed out after {timeout:.1f} s waiting for {what}.")
        time.sleep(interval)


# Using the previous step's code needs the platform to still be in this step when it checks it;
# a login on a loaded two-core machine can take several seconds, so use it in the first half only.
PREVIOUS_STEP_MARGIN_SECONDS = 15.0


class Authenticator:
    """The phone for one TOTP secret, spending each time step at most once.

    The platform accepts a code once, only for a step later than the last one it accepted, and
    within one step of drift either side. So up to three codes are available at once: the
    previous step's (while enough of this step is left), this step's and the next one's. Only
    when all three are spent does `code` wait for the clock to open the next step.
    """

    def __init__(self, secret: str, code_at: Callable[[str, int], str] | None = None) -> None:
        self.secret = secret
        self._code_at = code_at or (lambda secret, at: totp(from_base32(secret), at))
        self._last: int | None = None

    def code(self) -> str:
        now = time.time()
        current = time_step(now)
        left_in_step = 30 - now % 30
        earliest = current - 1 if left_in_step > PREVIOUS_STEP_MARGIN_SECONDS else current
        step = earliest if self._last is None else max(earliest, self._last + 1)
        if step > current + 1:
            # All three spent: the next step's code becomes valid when the clock reaches it.
            time.sleep(left_in_step + 0.1)
            return self.code()
        self._last = step
        return self._code_at(self.secret, step * 30)


@dataclass
class Proc:
    """One child process whose stdout and stderr go to a log file."""

    name: str
    popen: "subprocess.Popen[bytes]"
    log: Path
    descendants: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def remember_descendants(self) -> set[int]:
        """Record the current descendants, so teardown can reach those in other sessions."""
        try:
            found = {p.pid for p in psutil.Process(self.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            found = set()
        self.descendants |= found
        return found


class Children:
    """Every process a test started; `kill_all` leaves none behind."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self._count = 0

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        self._count += 1
        log = self.logs / f"{self._count:02d}-{name}.log"
        with log.open("wb") as handle:
            popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in reversed(self.procs):
            pids = proc.descendants | proc.remember_descendants()
            if proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=10)
        self.procs.clear()


@dataclass
class Cli:
    """One analyst identity: its own config folder."""

    config_dir: Path
    env: dict[str, str]
    # Where a fresh authenticator code comes from when a sensitive change asks for one (step-up:
    # the session-wide admin outlives the 5-minute window); None answers nothing.
    step_up: Callable[[], str] | None = None

    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 60
    ) -> "subprocess.CompletedProcess[str]":
        result = self._run(args, stdin, timeout)
        if (
            result.returncode != 0
            and self.step_up is not None
            and STEP_UP_SENTENCE in result.stderr
            and "--code" not in args
        ):
            # The platform refused before changing anything: the same command with a code.
            result = self._run((*args, "--code", self.step_up()), stdin, timeout)
        return result

    def _run(
        self, args: tuple[str, ...], stdin: str | None, timeout: float
    ) -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            [*tether_command(), *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            # Wide enough that rich does not shorten the readable tables.
            env={**self.env, "TETHER_CONFIG_DIR": str(self.config_dir), "COLUMNS": "250"},
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        """Run a command that must succeed; returns its stdout."""
        result = self.run(*args, stdin=stdin)
        assert result.returncode == 0, (
            f"tether {' '.join(args)} exited {result.returncode}: {result.stderr}{result.stdout}"
        )
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def profile(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.config_dir / "profile.json").read_text())
        return data

    def api(self) -> httpx.Client:
        """A direct API client with this identity's session, for fast polling."""
        current = self.profile()
        return httpx.Client(
            base_url=f"{current['server']}/api/v1",
            verify=ssl.create_default_context(cadata=current["ca_pem"]),
            headers={"authorization": f"Bearer {current['token']}"},
            timeout=10.0,
        )


# What `tether server init` wrote, by everything it is given (hostname, certificate IPs, options,
# TETHER_* environment, PYTHONPATH), copied before the platform first ran. Each init costs a few seconds of CPU (keys, certificates, migrations)
# and a run starts over twenty platforms; a copy is the same files, so every later platform with
# the same options starts from one (its own database, ports and TOTP replay state; the CA, keys
# and admin credentials are the same as the first one's, which no test tells apart). Tests of
# init itself run it: options that fail never make a template.
InitKey = tuple[str, tuple[str, ...], tuple[str, ...], tuple[tuple[str, str], ...]]
_INIT_TEMPLATES: dict[InitKey, Path] = {}


def _remember_init(key: InitKey, platform: "Platform") -> None:
    template = Path(tempfile.mkdtemp(prefix="tether-init-template-"))
    atexit.register(shutil.rmtree, template, True)
    shutil.copytree(platform.data, template / "data")
    shutil.copy2(platform.password_file, template / "admin-password")
    shutil.copy2(platform.mfa_file, template / "admin-password.mfa.json")
    _INIT_TEMPLATES[key] = template


class Platform:
    """One platform data directory and its `tether server run` process."""

    def __init__(self, root: Path, children: Children) -> None:
        self.root = root
        self.data = root / "data"
        self.children = children
        self.api_port = free_port()
        self.agent_port = free_port()
        self.env = clean_env()
        self.password_file = root / "admin-password"
        # Written by `server init` next to the password: the admin's TOTP secret and URI.
        self.mfa_file = root / "admin-password.mfa.json"
        self.proc: Proc | None = None
        self.runs = 0
        self._phone: Authenticator | None = None
        # Where both ports listen, the name in the certificate, and extra addresses for it.
        self.listen_host = "127.0.0.1"
        self.hostname = "localhost"
        self.cert_ips: list[str] = []
        # More `server init` options (checkpoint sinks, --trusted-proxy, ...).
        self.init_args: list[str] = []
        # More `server run` options (--role api, ...).
        self.run_args: list[str] = []

    @property
    def url(self) -> str:
        return f"https://{self.listen_host}:{self.api_port}"

    @property
    def ca(self) -> Path:
        return self.data / "ca.pem"

    @property
    def db(self) -> Path:
        return self.data / "tether.db"

    @property
    def admin_password(self) -> str:
        return self.password_file.read_text().strip()

    @property
    def admin_mfa(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.mfa_file.read_text())
        return data

    def admin_code(self) -> str:
        """An admin TOTP code the platform has not accepted yet (see `Authenticator`)."""
        if self._phone is None:
            self._phone = Authenticator(self.admin_mfa["secret"])
        return self._phone.code()

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def init(self) -> None:
        """`tether server init`, or a copy of what it wrote for an earlier platform of this run
        with the same options (see `_INIT_TEMPLATES`)."""
        # PYTHONPATH too: a platform run from another release's source (tests/e2e/test_upgrade.py)
        # writes that release's files, and the current code's would not start there.
        settings = tuple(
            sorted(
                (k, v) for k, v in self.env.items() if k.startswith("TETHER_") or k == "PYTHONPATH"
            )
        )
        key = (self.hostname, tuple(self.cert_ips), tuple(self.init_args), settings)
        template = _INIT_TEMPLATES.get(key)
        if template is not None:
            shutil.copytree(template / "data", self.data)
            shutil.copy2(template / "admin-password", self.password_file)
            shutil.copy2(template / "admin-password.mfa.json", self.mfa_file)
        else:
            self._run_init()
            _remember_init(key, self)
        assert self.password_file.stat().st_mode & 0o077 == 0
        assert self.mfa_file.stat().st_mode & 0o077 == 0

    def _run_init(self) -> None:
        result = subprocess.run(
            [
                *tether_command(),
                "server",
                "init",
                "--data",
                str(self.data),
                "--hostname",
                self.hostname,
                *(arg for ip in self.cert_ips for arg in ("--ip", ip)),
                "--admin-password-file",
                str(self.password_file),
                *self.init_args,
            ],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr

    def healthy(self) -> bool:
        try:
            response = httpx.get(f"{self.url}/healthz", verify=self.ssl_context(), timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json() == {"status": "ok"}

    def start(self, timeout: float = 30) -> Proc:
        proc = self.spawn()
        self.wait_healthy(timeout)
        return proc

    def spawn(self) -> Proc:
        """Start `tether server run` without waiting for it (see `wait_healthy`), so several
        platforms can start at once."""
        assert self.proc is None or not self.proc.alive(), "the platform is already running"
        self.runs += 1
        self.proc = self.children.spawn(
            f"platform-run{self.runs}",
            [
                *tether_command(),
                "server",
                "run",
                "--data",
                str(self.data),
                "--listen",
                f"{self.listen_host}:{self.api_port}",
                "--agent-listen",
                f"{self.listen_host}:{self.agent_port}",
                *self.run_args,
            ],
            self.env,
        )
        return self.proc

    def wait_healthy(self, timeout: float = 30) -> None:
        proc = self.proc
        assert proc is not None

        def up() -> bool:
            assert proc.alive(), f"the platform exited early:\n{proc.output()}"
            return self.healthy()

        wait_for(up, timeout=timeout, interval=0.1, what="the platform's /healthz")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.alive():
            self.proc.popen.send_signal(sig)
        return self.proc.wait(timeout)

    def log(self) -> str:
        """Everything every run of this platform logged."""
        return "".join(p.output() for p in self.children.procs if p.name.startswith("platform-run"))

    def login(self, config_dir: Path) -> Cli:
        cli = Cli(config_dir, self.env)
        out = cli.ok(
            "login",
            "--server",
            self.url,
            "--ca",
            str(self.ca),
            "-u",
            "admin",
            "--password-stdin",
            "--code",
            self.admin_code(),
            stdin=self.admin_password + "\n",
        )
        assert f"Logged in to {self.url} as admin." in out
        cli.step_up = self.admin_code
        return cli


@dataclass
class Agent:
    """One endpoint identity (a state directory) and, once started, its agent process."""

    state_dir: Path
    children: Children
    env: dict[str, str]
    proc: Proc | None = None

    @property
    def host_id(self) -> str:
        data: dict[str, str] = json.loads((self.state_dir / "identity.json").read_text())
        return data["host_id"]

    @property
    def cert(self) -> Path:
        return self.state_dir / "agent.pem"

    @property
    def key(self) -> Path:
        return self.state_dir / "agent.key"

    def enroll(self, token: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            [
                *tether_command(),
                "agent",
                "enroll",
                "--token",
                token,
                "--state-dir",
                str(self.state_dir),
            ],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            check=False,
        )

    def start(self) -> Proc:
        self.proc = self.children.spawn(
            f"agent-{self.state_dir.name}",
            [*tether_command(), "agent", "run", "--state-dir", str(self.state_dir)],
            self.env,
        )
        return self.proc


def host_by_id(api: httpx.Client, host_id: str) -> dict[str, Any] | None:
    response = api.get("/hosts")
    response.raise_for_status()
    hosts: list[dict[str, Any]] = response.json()
    return next((h for h in hosts if h["id"] == host_id), None)


def wait_online(api: httpx.Client, host_id: str, *, online: bool = True, timeout: float) -> float:
    """Wait until the host's presence is `online`; returns the seconds it took."""
    start = time.monotonic()

    def check() -> bool:
        host = host_by_id(api, host_id)
        return host is not None and host["online"] is online

    wait_for(check, timeout=timeout, interval=0.05, what=f"host {host_id} online={online}")
    return time.monotonic() - start


def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a process (other lines are skipped)."""
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def audit_records(admin: Cli) -> list[dict[str, Any]]:
    """Every audit record in chain order, read page by page from the API with `admin`'s session.

    The API rather than `tether audit list --json` (which prints the same JSON): tests poll this
    while they wait for a record, and each CLI run costs a Python start-up of most of a second.
    """
    records: list[dict[str, Any]] = []
    with admin.api() as api:
        while True:
            response = api.get("/audit", params={"after": len(records), "limit": 1000})
            response.raise_for_status()
            page: list[dict[str, Any]] = response.json()
            records += page
            if len(page) < 1000:
                return records


def restart(platform: Platform) -> None:
    """A clean stop writes the refusal summaries still open; then serve again."""
    assert platform.stop() == 0
    platform.start()
