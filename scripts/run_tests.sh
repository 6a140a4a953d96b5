#!/usr/bin/env bash
# README command 2: run the test suite (extra arguments go to pytest, e.g. -m "not slow").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh"
cd "$root"
exec "${HPC_BLISS_VENV:-$root/.venv}/bin/python" -m pytest "$@"
