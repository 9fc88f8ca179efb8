#!/usr/bin/env bash
# The whole test suite: install into .venv, then lint, type-check, check import rules, run pytest.
# PostgreSQL tests use TETHER_TEST_POSTGRES (default: postgres@127.0.0.1:5432/test) and are skipped
# with the reason when it is unreachable, except under CI=true, where they must run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
# sslyze for the TLS profile test, in its own environment; without it that test is skipped (and
# fails under CI=true, where .ci/run has installed it already).
bash scripts/sslyze-env.sh || echo "sslyze could not be installed; the TLS profile test will be skipped." >&2
echo "== ruff"; .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy (strict)"; .venv/bin/mypy
# The agent as Windows sees it: its win32-only branches are type-checked too (no Windows here).
echo "== mypy (strict, the agent for Windows)"; .venv/bin/mypy --platform win32 src/tether/agent
echo "== import rules"; .venv/bin/lint-imports
# Two workers, each taking whole files (--dist loadfile): a module's fixtures and its platform
# stay on one worker. Arguments after the command override or add to these (e.g. `-n 0`).
echo "== pytest"; .venv/bin/pytest -n 2 --dist loadfile "$@"
