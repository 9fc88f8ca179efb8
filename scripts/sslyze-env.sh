#!/usr/bin/env bash
# Creates .venv-sslyze with sslyze, the TLS scanner tests/e2e/test_transport.py runs against the
# analyst port (Mozilla "intermediate" profile, ADR 0027). A virtual environment of its own:
# sslyze pins cryptography<47, which Tether's own environment must not be held to.
# Safe to run again; does nothing when the pinned version is already there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
venv="$root/.venv-sslyze"
# Pinned: the profile sslyze checks against ships inside it, so a new release may move the bar.
version="6.3.1"
if [ -x "$venv/bin/sslyze" ] &&
  "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('sslyze') != '$version')" 2>/dev/null; then
  exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "sslyze==$version"
