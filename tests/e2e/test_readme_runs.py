"""The README's "Using it", run top to bottom against a real platform and a real agent (issue 18
item 11): each command of its sh block (taken with tests/test_readme.py's own parser) runs as a
`tether` subprocess, its placeholders replaced by real values as the sequence goes, and must exit
0; a few checks show the commands did what they say.

The endpoint is this machine, so the test runs in a network namespace of its own (everything:
platform, agent, CLI) and isolation's firewall rules never reach the machine's own network; and
the two endpoint paths the README names are replaced by files in the test's folder (see
ENDPOINT_PATHS)."""

import contextlib
import ctypes
import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import netns
from tests.test_readme import ROOT, commands, using_it

from .conftest import running_agent
from .harness import Authenticator, Children, Cli, Platform, host_by_id, wait_for

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple 42"

# Lines of "Using it" this test does not run, each with the reason. The test fails if a line
# named here is no longer in the README, so the list cannot outlive the lines it excuses.
SKIPPED = {
    "tether shell HOST": "interactive (a terminal session); the --command line after it runs the "
    "same session non-interactively",
    "tether agent upgrade --bundle agent.tar.gz --segment servers --max-parallel 5 --code 123456": (
        "upgrades packaged agents only (built by PyInstaller, minutes of build); covered by "
        "tests/packaging/test_upgrade.py"
    ),
}
# Lines that change the endpoint's firewall: run only in a network namespace of the test's own
# (root, `ip` and `nft`; tests/netns), skipped elsewhere rather than isolate the machine itself.
ISOLATION = ("tether isolate HOST", "tether unisolate HOST")

QUICKSTART_SERVER = "https://127.0.0.1:8443"
QUICKSTART_CA = "~/.local/share/tether/quickstart/ca.pem"


def readme_lines() -> list[list[str]]:
    return list(commands(using_it()))


def line_of(words: list[str]) -> str:
    return " ".join(words)


def test_the_skipped_lines_are_lines_of_the_readme() -> None:
    lines = {line_of(words) for words in readme_lines()}
    for skipped in [*SKIPPED, *ISOLATION]:
        assert skipped in lines, f"{skipped!r} is not a line of README's Using it any more"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def own_network() -> Iterator[bool]:
    """This thread (and every process it starts) in a fresh network namespace with loopback up;
    back in the original one afterwards. Yields False, changing nothing, where that is not
    possible (not root, no `ip`/`nft`)."""
    if netns.unavailable() is not None:
        yield False
        return
    libc = ctypes.CDLL(None, use_errno=True)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(netns.CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            yield True
        finally:
            if libc.setns(original, netns.CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original namespace")
    finally:
        os.close(original)


class Sequence:
    """The state the README's lines build up, and how each line's words become real ones."""

    def __init__(self, platform: Platform, tmp: Path, host_id: str) -> None:
        self.platform = platform
        self.host_id = host_id
        self.admin = Cli(tmp / "admin-cli", platform.env)
        self.rita = Cli(tmp / "rita-cli", platform.env)
        self.rita_phone: Authenticator | None = None
        self.enrollment_code = ""
        self.id = ""
        self.pid = ""

    def code_for(self, cli: Cli) -> str:
        if cli is self.rita:
            assert self.rita_phone is not None, "rita has no second factor yet"
            return self.rita_phone.code()
        return self.platform.admin_code()

    def words(self, words: list[str], cli: Cli, endpoint_paths: dict[str, Path]) -> list[str]:
        real = {
            "HOST": self.host_id,
            "CODE": self.enrollment_code,
            "DIR": str(self.platform.data),
            "ID": self.id,
            "PID": self.pid,
            QUICKSTART_SERVER: self.platform.url,
            QUICKSTART_CA: str(self.platform.ca),
            **{path: str(local) for path, local in endpoint_paths.items()},
        }
        out = []
        for i, word in enumerate(words):
            if word == "123456" and words[i - 1] == "--code":
                out.append(self.code_for(cli))
            elif word.startswith("src/tether/"):
                out.append(str(ROOT / word))  # the repository's example, from any folder
            else:
                out.append(real.get(word, word))
        return out


def run(cli: Cli, line: str, args: list[str], stdin: str | None = None) -> str:
    """Run `tether ARGS` (a `> FILE` at the end writes stdout there); it must exit 0."""
    target = None
    if ">" in args:
        args, target = args[: args.index(">")], args[args.index(">") + 1]
    result = cli.run(*args, stdin=stdin, timeout=120)
    assert result.returncode == 0, (
        f"README line: {line}\nran: tether {' '.join(args)}\nexit {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    if target is not None:
        Path(target).write_text(result.stdout)
    return result.stdout


def run_other(line: str, words: list[str]) -> None:
    """A line that is not `tether` (printf, chmod), with its `> FILE`."""
    target = None
    if ">" in words:
        words, target = words[: words.index(">")], words[words.index(">") + 1]
    result = subprocess.run(words, capture_output=True, text=True, check=False, timeout=30)
    assert result.returncode == 0, f"README line: {line}\n{result.stderr}"
    if target is not None:
        Path(target).write_text(result.stdout)


def host(cli: Cli, host_id: str) -> dict[str, Any]:
    with cli.api() as api:
        found = host_by_id(api, host_id)
    assert found is not None
    return found


def job_state(cli: Cli, job_id: str) -> str:
    with cli.api() as api:
        response = api.get(f"/jobs/{job_id}")
    response.raise_for_status()
    return str(response.json()["state"])


def isolation_state(cli: Cli, host_id: str) -> str:
    return str((host(cli, host_id).get("isolation") or {}).get("state") or "not isolated")


def test_the_using_it_sequence_runs_top_to_bottom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    with own_network() as namespaced:
        children = Children(tmp_path / "logs")
        try:
            ran = run_sequence(tmp_path, monkeypatch, children, namespaced)
        finally:
            children.kill_all()
    print(f"ran {ran} README commands in {time.monotonic() - started:.1f} s")


def run_sequence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, children: Children, namespaced: bool
) -> int:
    platform = Platform(tmp_path / "platform", children)
    platform.init()
    platform.start()
    setup = platform.login(tmp_path / "setup-cli")
    agent = running_agent(platform, setup, children, tmp_path / "agent")

    # The endpoint is this machine: the README's endpoint paths become files of the test's own
    # (there may be no /var/log/auth.log here, and nothing is written under /usr/local/bin).
    endpoint = tmp_path / "endpoint"
    (endpoint / "bin").mkdir(parents=True)
    auth_log = endpoint / "auth.log"
    auth_log.write_bytes(b"Dec  8 00:00:01 ws-1 sshd[42]: Accepted publickey for rita\n" * 5000)
    endpoint_paths = {
        "/var/log/auth.log": auth_log,
        "/usr/local/bin/fix.sh": endpoint / "bin/fix.sh",
    }

    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text("import time\n\ntime.sleep(120)\n")
    work = tmp_path / "work"
    (work / "evidence").mkdir(parents=True)
    monkeypatch.chdir(work)
    seq = Sequence(platform, tmp_path, agent.host_id)
    admin, rita = seq.admin, seq.rita
    awaiting: list[str] = []
    other: Cli | None = None  # a second admin session, for `sessions end`
    ran = 0

    for words in readme_lines():
        line = line_of(words)
        if line in SKIPPED or (line in ISOLATION and not namespaced):
            continue
        env = {}
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            name, _, value = words[0].partition("=")
            env[name] = value
            words = words[1:]
        if words[0] != "tether":
            run_other(line, words)
            continue
        cli = rita if env.get("TETHER_CONFIG_DIR", "").endswith("tether-rita") else admin
        args = words[1:]
        stdin = None

        # What the line needs before it runs: an ID the preceding listing prints, a password.
        if args[0] == "login":
            user = args[args.index("-u") + 1]
            args = [*args, "--password-stdin"]
            if user == "admin" or seq.rita_phone is not None:  # rita has no factor yet
                args += ["--code", "123456"]
            stdin = (platform.admin_password if user == "admin" else PASSWORD) + "\n"
        elif args[:2] == ["user", "add"]:
            stdin = f"{PASSWORD}\n{PASSWORD}\n"  # the password prompt, and its confirmation
        elif args[:2] == ["job", "show"]:
            # A job still running, so that the cancel has something to stop.
            admin.ok("run", agent.host_id, str(sleeper), "--detach")
            jobs = admin.json("jobs")
            seq.id = next(
                str(j["id"]) for j in jobs if j["state"] in ("queued", "delivered", "running")
            )
        elif args[:2] == ["jobs", "--state"]:
            # Rita (respond tier) asks for two library-script runs on the four-eyes segment.
            for _ in range(2):
                rita.ok("run", "--segment", "servers", "--script", "Process Control")
            listed = admin.json(*args)
            awaiting = [str(j["id"]) for j in listed if j["state"] == "awaiting_approval"]
            assert len(awaiting) >= 2, listed
        elif args[:2] == ["job", "approve"]:
            seq.id = awaiting[0]
        elif args[:2] == ["job", "reject"]:
            seq.id = awaiting[1]
        elif args[:2] == ["enroll-token", "revoke"]:
            tokens = admin.json("enroll-token", "list")
            seq.id = next(str(t["id"]) for t in tokens if t.get("segment") == "servers")
        elif args[:2] == ["sessions", "end"]:
            other = platform.login(tmp_path / "admin-laptop")  # a second session to end
            sessions = admin.json("sessions")
            seq.id = next(str(s["id"]) for s in sessions if not s["current"])
        elif args[:2] == ["server", "enrollment-code"]:
            # The chain is intact after the whole sequence; then break glass, platform down.
            assert "intact" in admin.ok("audit", "verify").lower()
            assert platform.stop() == 0

        real = seq.words(args, cli, endpoint_paths)
        began = time.monotonic()
        out = run(cli, line, real, stdin)
        print(f"{time.monotonic() - began:5.1f} s  {line}")
        ran += 1

        # What the line says it does.
        if args[0] == "login":
            assert "Logged in to" in out, out
            if cli is admin:
                admin.step_up = platform.admin_code
        elif args == ["hosts"]:
            assert agent.host_id in out or agent.host_id[:8] in out, out
        elif args[:1] == ["ps"]:
            listed = admin.json(*real)
            pids = {str(p["pid"]) for p in listed["processes"]}
            assert agent.proc is not None
            assert str(agent.proc.pid) in pids
            seq.pid = str(agent.proc.pid)
        elif args[:1] == ["get"]:
            (got,) = list((work / "evidence").iterdir())
            assert sha256(got) == sha256(auth_log)
        elif args[:1] == ["put"]:
            placed = endpoint_paths["/usr/local/bin/fix.sh"]
            assert placed.read_bytes() == (work / "fix.sh").read_bytes()
            assert placed.stat().st_mode & 0o777 == 0o755
        elif args[:1] == ["isolate"]:
            wait_for(
                lambda: isolation_state(admin, agent.host_id) == "isolated",
                timeout=30,
                what="the host isolated",
            )
        elif args[:1] == ["unisolate"]:
            wait_for(
                lambda: isolation_state(admin, agent.host_id) == "not isolated",
                timeout=30,
                what="the host no longer isolated",
            )
        elif args[:2] == ["host", "move"]:
            assert host(admin, agent.host_id)["segment"] == "servers"
        elif args[:2] == ["user", "enrollment-code"]:
            match = re.search(r"\b[A-Z0-9]{4,}(?:-[A-Z0-9]{4,})+\b", out)
            assert match is not None, out
            seq.enrollment_code = match.group(0)
        elif args[:2] == ["mfa", "enroll"]:
            match = re.search(r"^Secret: (\S+)$", out, re.M)
            assert match is not None, out
            seq.rita_phone = Authenticator(match.group(1))
        elif args[:2] == ["audit", "verify"]:
            assert "intact" in out.lower(), out
        elif args[:2] == ["job", "cancel"]:
            wait_for(
                lambda: job_state(admin, seq.id) == "cancelled",
                timeout=30,
                what="the job cancelled",
            )
        elif args[:2] == ["job", "approve"]:
            assert job_state(admin, awaiting[0]) != "awaiting_approval"
        elif args[:2] == ["job", "reject"]:
            assert job_state(admin, awaiting[1]) == "rejected"
        elif args[:2] == ["sessions", "end"]:
            assert other is not None
            assert other.run("whoami").returncode != 0  # that session ended
        elif args[:2] == ["host", "revoke"]:
            wait_for(
                lambda: host(admin, agent.host_id)["online"] is False,
                timeout=20,
                what="the revoked host offline",
            )

    assert (work / "triage.csv").stat().st_size > 0
    assert json.loads((work / "cp.json").read_text())
    assert (work / "audit.jsonl").read_text().strip()
    return ran
