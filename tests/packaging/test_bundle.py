"""The frozen agent bundle: its own interpreter runs scripts as a venv agent does, and holds no
platform code."""

import json
import os
import subprocess
import time
from pathlib import Path

from tests.packaging.conftest import bundle_cache
from tether.agent.script_child import EXIT_AGENT_GONE, GO
from tether.packaging.bundle import Bundle, build_bundle

SCRIPT = """
import csv, importlib.util, json, sqlite3, ssl, sys, xml.etree.ElementTree
import psutil
from tether import script
absent = [m for m in ("sqlalchemy", "fastapi", "uvicorn", "greenlet", "psycopg", "tether.server",
                      "tether.cli", "PyInstaller") if importlib.util.find_spec(m) is not None]
print(json.dumps({"frozen": getattr(sys, "frozen", False), "executable": sys.executable,
                  "utf8": sys.flags.utf8_mode, "write_through": sys.stdout.write_through,
                  "present": absent, "pid": psutil.Process().pid, "row": callable(script.row)}))
raise RuntimeError("the script's own error")
"""


def _child(bundle: Bundle, script: Path, go: bytes) -> subprocess.CompletedProcess[str]:
    # As the agent starts it: this process is the "agent" the child ties its life to.
    return subprocess.run(
        [str(bundle.executable), "script-child", str(script), str(os.getpid())],
        input=go.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_script_runs_on_the_bundles_own_interpreter(agent_bundle: Bundle, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    done = _child(agent_bundle, script, GO)
    assert done.returncode == 1
    seen = json.loads(done.stdout.splitlines()[0])
    assert seen["frozen"] is True
    assert Path(seen["executable"]) == agent_bundle.executable
    assert seen["utf8"] == 1
    assert seen["write_through"] is True
    assert seen["present"] == []
    assert seen["row"] is True
    # The traceback starts at the script, as in a venv agent (tether.script._launch).
    assert done.stderr.startswith("Traceback"), done.stderr
    assert 'File "' + str(script) in done.stderr
    assert "RuntimeError: the script's own error" in done.stderr


def test_a_bundle_script_child_never_runs_without_the_agents_go(
    agent_bundle: Bundle, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    script = tmp_path / "script.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    done = _child(agent_bundle, script, b"")
    assert done.returncode == EXIT_AGENT_GONE
    assert not marker.exists()


def test_the_bundle_holds_no_platform_files(agent_bundle: Bundle) -> None:
    names = {p.name.lower() for p in agent_bundle.directory.rglob("*")}
    for platform_part in ("sqlalchemy", "fastapi", "uvicorn", "greenlet", "psycopg", "tkinter"):
        assert not any(n.startswith(platform_part) for n in names), platform_part
    assert not any(n.startswith("libtk") for n in names)


def test_a_second_build_comes_from_the_cache(agent_bundle: Bundle) -> None:
    started = time.monotonic()
    again = build_bundle(bundle_cache())
    assert not again.built_now
    assert again.directory == agent_bundle.directory
    assert time.monotonic() - started < 5


def test_the_bundled_agent_imports_all_it_needs_and_says_what_is_missing(
    agent_bundle: Bundle, tmp_path: Path
) -> None:
    # Everything `run` imports loads; then the agent refuses the empty state in one sentence.
    state = tmp_path / "state"
    done = subprocess.run(
        [str(agent_bundle.executable), "run", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "ModuleNotFound" not in done.stderr
    assert "enroll" in done.stderr.lower(), done.stderr
