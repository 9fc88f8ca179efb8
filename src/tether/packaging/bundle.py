"""The agent bundle: `tether.agent` frozen with PyInstaller into a directory that needs no Python.

Layout (one directory, PyInstaller's "onedir"):

    tether-agent/
      tether-agent        the executable: the agent, and with `script-child` a script's process
      _internal/          the embedded interpreter, its standard library, the agent's packages

Onedir rather than onefile: a onefile executable unpacks itself into a temporary directory on
every start, and every script run starts the executable again (docs/adr/0042).

Scripts run on this same interpreter, so the whole standard library goes in (a script may import
`csv` or `xml.etree` although the agent never does), and `tether.script` and psutil with it. The
platform's libraries are excluded by name, so a stray import cannot drag them in.

Builds are cached by content: the key hashes the agent's, the protocol's and the script helper's
sources, the versions of every library frozen, the interpreter and PyInstaller. A second build of
the same inputs copies nothing and returns at once.
"""

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import tether
from tether.packaging.errors import PackagingError

NAME = "tether-agent"
# The executable in the bundle directory: PyInstaller adds .exe on Windows (docs/adr/0052).
EXECUTABLE = NAME + (".exe" if sys.platform == "win32" else "")
# Bumped when the recipe below changes in a way the sources do not show.
RECIPE = "5"
# The parts of tether that go into the bundle; tests pin that the rest stays out.
FROZEN_PARTS = (
    "agent",
    "protocol",
    "script",
    "__init__.py",
    "errors.py",
    "logs.py",
    "lean_structlog.py",
    "workers.py",
)
# Libraries the agent imports (and their own dependencies): their versions enter the cache key.
AGENT_DISTRIBUTIONS = (
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-extensions",
    "typing-inspection",
    "websockets",
    "cryptography",
    "cffi",
    "psutil",
    "typer",
    "click",
    "rich",
    "markdown-it-py",
    "pygments",
    "shellingham",
    "httpx",
    "httpcore",
    "h11",
    "anyio",
    "idna",
    "certifi",
    "structlog",
    "uvloop",
)
# Never in the bundle: the platform's libraries, tether's platform and CLI code, build tools.
EXCLUDED = (
    "tether.server",
    "tether.cli",
    "tether.main",
    "tether.quickstart",
    "tether.packaging",
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "greenlet",
    "alembic",
    "aiosqlite",
    "psycopg",
    "psycopg_binary",
    "argon2",
    "jinja2",
    "segno",
    "prometheus_client",
    "multipart",
    "pydantic_settings",
    "PyInstaller",
    "setuptools",
    "pkg_resources",
    "pip",
    "pytest",
    "mypy",
    "playwright",
    "tkinter",
    "_tkinter",
)
# Standard library parts a script on an endpoint has no use for (GUI, tests, installers).
STDLIB_LEFT_OUT = frozenset(
    {
        "tkinter",
        "_tkinter",
        "turtle",
        "turtledemo",
        "idlelib",
        "test",
        "lib2to3",
        "ensurepip",
        "venv",
        "pydoc_data",
        "distutils",
        "antigravity",
        "this",
        "__phello__",
    }
)
# The bundle's entry script: the whole program is `tether.agent.entry`.
_ENTRY = "from tether.agent.entry import main\n\nmain()\n"


@dataclass(frozen=True)
class Bundle:
    """A built bundle in the cache."""

    directory: Path
    key: str
    built_now: bool
    seconds: float

    @property
    def executable(self) -> Path:
        return self.directory / EXECUTABLE


def default_cache() -> Path:
    """Where builds are kept: $TETHER_BUNDLE_CACHE, else the user's cache directory."""
    chosen = os.environ.get("TETHER_BUNDLE_CACHE")
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tether" / "bundles"


def _tether_root() -> Path:
    return Path(tether.__file__).resolve().parent


def _frozen_sources() -> Iterator[Path]:
    root = _tether_root()
    for part in FROZEN_PARTS:
        path = root / part
        if path.is_file():
            yield path
        else:
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix != ".pyc")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def bundle_key() -> str:
    """The content hash a build is cached under."""
    digest = hashlib.sha256()
    for item in (
        RECIPE,
        sys.version,
        platform.machine(),
        _version("pyinstaller"),
        _version("pyinstaller-hooks-contrib"),
    ):
        digest.update(item.encode() + b"\0")
    for distribution in AGENT_DISTRIBUTIONS:
        digest.update(f"{distribution}=={_version(distribution)}\0".encode())
    root = _tether_root()
    for path in _frozen_sources():
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:32]


def stdlib_modules() -> list[str]:
    """Every importable standard library module, so scripts can import what they would in a venv."""
    names = {n for n in sys.stdlib_module_names if n not in STDLIB_LEFT_OUT}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found: set[str] = set()
    for name in names:
        package = stdlib / name
        if (package / "__init__.py").is_file():
            for module in package.rglob("*.py"):
                parts = module.relative_to(stdlib).with_suffix("").parts
                if any(p in {"test", "tests", "idle_test"} for p in parts):
                    continue
                found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        elif (
            (stdlib / f"{name}.py").is_file()
            or name in sys.builtin_module_names
            or any((stdlib / "lib-dynload").glob(f"{name}.*.so"))
        ):
            found.add(name)
    return sorted(found)


def _spec(entry: Path, windows: bool = sys.platform == "win32") -> str:
    """The PyInstaller spec: onedir, stdlib and the agent's packages in, the platform out.

    The same recipe on a Windows build host makes the Windows bundle (`tether-agent.exe`):
    there is no uvloop to collect, and no `strip` (PyInstaller advises against it there).
    """
    hidden = [*stdlib_modules(), "tether.script", "tether.script.client", "tether.script.channel"]
    collected = ["tether.agent", "tether.protocol", "tether.script", "psutil"]
    if not windows:
        collected.append("uvloop")
    strip = not windows
    return f"""# Generated by tether.packaging.bundle; do not edit.
from PyInstaller.utils.hooks import collect_submodules

hidden = {hidden!r}
for package in {tuple(collected)!r}:
    hidden += collect_submodules(package)
a = Analysis(
    [{str(entry)!r}],
    hiddenimports=hidden,
    excludes={list(EXCLUDED)!r},
    noarchive=False,
)
pyz = PYZ(a.pure)
# Scripts ran as `python -I -u -X utf8` before the bundle; the bundle's interpreter matches.
options = [("u", None, "OPTION"), ("X utf8", None, "OPTION")]
exe = EXE(
    pyz,
    a.scripts,
    options,
    exclude_binaries=True,
    name={NAME!r},
    strip={strip!r},
    upx=False,
    console=True,
)
coll = COLLECT(exe, a.binaries, a.datas, strip={strip!r}, upx=False, name={NAME!r})
"""


def build_bundle(cache: Path | None = None, *, quiet: bool = True) -> Bundle:
    """The bundle for the installed agent sources: from the cache, or built now (minutes)."""
    cache = cache or default_cache()
    key = bundle_key()
    target = cache / key / NAME
    if (target / EXECUTABLE).is_file():
        return Bundle(target, key, built_now=False, seconds=0.0)
    if importlib.util.find_spec("PyInstaller") is None:
        raise PackagingError(
            "Building the agent bundle needs PyInstaller; install tether[platform] on the platform host."
        )
    cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # Built beside the cache entry, then renamed into place: a half-built bundle is never found.
    with tempfile.TemporaryDirectory(prefix=".build-", dir=cache) as scratch:
        work = Path(scratch)
        entry = work / "tether_agent_entry.py"
        entry.write_text(_ENTRY)
        spec = work / f"{NAME}.spec"
        spec.write_text(_spec(entry))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "PyInstaller",
                "--noconfirm",
                "--log-level",
                "WARN",
                "--distpath",
                str(work / "dist"),
                "--workpath",
                str(work / "build"),
                str(spec),
            ],
            capture_output=quiet,
            text=True,
            check=False,
            env={**os.environ, "PYINSTALLER_CONFIG_DIR": str(work / "config")},
        )
        if result.returncode != 0:
            tail = (result.stderr or "").strip().splitlines()[-1:] or ["no output"]
            raise PackagingError(f"PyInstaller could not build the agent bundle: {tail[0]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            (work / "dist" / NAME).rename(target)
        except OSError:
            # Another build of the same key finished first; theirs is as good as ours.
            if not (target / EXECUTABLE).is_file():
                raise
    return Bundle(target, key, built_now=True, seconds=time.monotonic() - started)


def copy_bundle(bundle: Bundle, output: Path) -> Path:
    """Copy the bundle directory to `output` (which must not exist yet); returns the copy."""
    if output.exists():
        raise PackagingError(f"{output} already exists; give a new directory for the bundle.")
    shutil.copytree(bundle.directory, output, symlinks=True)
    return output
