"""The agent stays lean: its imports and its install pull in none of the platform's libraries."""

import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys

from packaging.markers import Marker
from packaging.requirements import Requirement

# Libraries only the platform (or the analyst CLI's QR code, or the bundle builder) uses.
PLATFORM_ONLY = {
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "greenlet",
    "alembic",
    "mako",
    "aiosqlite",
    "psycopg",
    "psycopg-binary",
    "argon2-cffi",
    "argon2-cffi-bindings",
    "jinja2",
    "segno",
    "prometheus-client",
    "python-multipart",
    "pydantic-settings",
    "pyinstaller",
}
PLATFORM_MODULES = {
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "greenlet",
    "alembic",
    "aiosqlite",
    "psycopg",
    "argon2",
    "jinja2",
    "segno",
    "prometheus_client",
    "multipart",
    "pydantic_settings",
    "PyInstaller",
}

# What `tether-agent run` and `enroll` import, in a fresh interpreter. structlog imports greenlet
# when it happens to be installed (as SQLAlchemy installs it in the dev environment): the finder
# makes it absent, as it is where only the agent is installed, so the agent must do without it.
_PROBE = """
import importlib.abc, json, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "greenlet" or name.startswith("greenlet."):
            raise ImportError("greenlet is not installed with the agent")
        return None

sys.meta_path.insert(0, Absent())
import tether.agent.entry, tether.agent.commands, tether.agent.connection, tether.agent.enroll
import tether.agent.scripts, tether.agent.isolation, tether.logs
import uvloop
print(json.dumps(sorted(sys.modules)))
"""


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_agent_process_imports_no_platform_library() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    tops = {name.split(".")[0] for name in loaded}
    assert tops & PLATFORM_MODULES == set()
    assert not any(
        n.startswith(("tether.server", "tether.cli", "tether.packaging")) for n in loaded
    )
    assert "tether.agent.connection" in loaded  # the probe did import the agent


def _closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution installing these requirements pulls in (extras not asked for left out)."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = _normal(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for text in importlib.metadata.requires(requirement.name) or []:
            child = Requirement(text)
            environment = {"extra": ""}
            if child.marker is None or child.marker.evaluate(environment):
                todo.append(child)
    return seen


def test_installing_the_agent_pulls_no_platform_library() -> None:
    core = [
        Requirement(text)
        for text in importlib.metadata.requires("tether") or []
        if Requirement(text).marker is None
        or Marker(str(Requirement(text).marker)).evaluate({"extra": ""})
    ]
    pulled = _closure(core)
    assert pulled & PLATFORM_ONLY == set()
    assert {"pydantic", "websockets", "cryptography", "psutil"} <= pulled
    # 25 today (pydantic, websockets, cryptography, typer and httpx with theirs); the platform: 49+.
    assert len(pulled) <= 30, sorted(pulled)


def test_the_platform_extra_holds_the_platform() -> None:
    extras = [
        Requirement(text)
        for text in importlib.metadata.requires("tether") or []
        if Requirement(text).marker is not None
        and Marker(str(Requirement(text).marker)).evaluate({"extra": "platform"})
    ]
    assert {_normal(r.name) for r in extras} >= {"fastapi", "sqlalchemy", "uvicorn", "pyinstaller"}


def test_totp_is_the_platforms_not_the_protocols() -> None:
    assert importlib.util.find_spec("tether.protocol.totp") is None
    assert importlib.util.find_spec("tether.server.auth.totp") is not None


# What a running, idle agent has imported: `tether-agent run` up to its connection.
_IDLE_PROBE = """
import json, sys
import tether.agent.entry, tether.agent.commands, tether.agent.connection, tether.logs
import tether.agent.isolation, tether.agent.state, uvloop
print(json.dumps(sorted(sys.modules)))
"""


def test_the_idle_agent_leaves_what_idle_does_not_need_unimported() -> None:
    """Each of these cost the idle agent resident memory (docs/adr/0052): cryptography's
    bindings ~9 MiB (only enrolling needs them), Pygments ~2 MiB (structlog's pretty
    tracebacks), the action modules and the script machinery ~1 MiB (the first job loads them)."""
    done = subprocess.run(
        [sys.executable, "-c", _IDLE_PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert "tether.agent.connection" in loaded
    for lazy in (
        "cryptography",
        "pygments",
        "rich.traceback",
        "tether.agent.actions.scripts",
        "tether.agent.actions.processes",
        "tether.agent.actions.files",
        "tether.agent.scripts",
    ):
        assert lazy not in loaded, f"{lazy} is imported by an idle agent"
