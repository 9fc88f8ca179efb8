#!/usr/bin/env bash
# Runs the same tests from two commits at the same time, so both see the same load on a shared
# machine, and prints their durations and the seconds each test slept (scripts/sleepmeter.py).
# Usage: scripts/compare-test-speed.sh BASE_COMMIT TEST_PATH... (pytest -k etc. go after --).
# Example: scripts/compare-test-speed.sh 4c4f5e9 tests/e2e/test_tiers.py
# The product code is this worktree's (.venv) for both: the base commit lends only its tests.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base="${1:?Give the base commit first, then the tests to run.}"
shift
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git -C "$root" archive "$base" tests pyproject.toml | tar -x -C "$work"
mkdir "$work/plugin"
cp "$root/scripts/sleepmeter.py" "$work/plugin/"
run() {
  (cd "$1" && CI=true PYTHONPATH="$work/plugin" "$root/.venv/bin/pytest" -p no:cacheprovider \
    -p sleepmeter --basetemp="$work/tmp-$2" --durations=30 "${@:3}" >"$work/$2.log" 2>&1) || true
}
run "$work" base "$@" &
run "$root" head "$@" &
wait
for side in base head; do
  echo "== $side"
  grep -E "^(SLEEPMETER|[0-9.]+s (call|setup))|passed|failed" "$work/$side.log" || true
done
