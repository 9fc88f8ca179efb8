#!/usr/bin/env bash
# The quickstart: install Tether into .venv, then run a platform on embedded SQLite plus a local
# agent (`tether up`). Ctrl-C stops both; running it again resumes the same data.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
exec "$root/.venv/bin/tether" up "$@"
