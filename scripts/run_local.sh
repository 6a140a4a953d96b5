#!/usr/bin/env bash
# README command 1: run the main job end to end on a small local default (no cluster needed).
# Usage: scripts/run_local.sh [CONFIG] [key=value ...]   (default config: configs/local.yaml)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh"
config="${1:-$root/configs/local.yaml}"
[ $# -gt 0 ] && shift
cd "$root"
exec "${HPC_BLISS_VENV:-$root/.venv}/bin/hpc-bliss" pipeline "$config" "$@"
