#!/usr/bin/env bash
# Run a command as on a fresh machine: no system MPI and no SLURM, even where they are installed.
# The command sees a PATH whose system folders are replaced by one folder of links to every system
# command but the MPI and SLURM ones, and (as root, in a private mount namespace) the system's
# libmpi files read as empty, so neither mpi4py nor a launcher can find them.
#   usage: scripts/as_fresh_machine.sh COMMAND [ARGS...]
# CI uses it for its first phase, so the README's commands are proven on what a newcomer has,
# whatever the CI machine already holds. Needs root only where a system libmpi exists.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
hidden='^(mpirun|mpiexec|mpiexec\..*|mpirun\..*|orterun|orted|ompi_info|oshrun|prte.*|prun|s(run|batch|info|queue|control|acct|cancel|alloc)|slurm(d|ctld|dbd)|munged?)$'
system_dirs=(/usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin)
links="$(mktemp -d "${TMPDIR:-/tmp}/fresh-path.XXXXXX")"
trap 'rm -rf "$links"' EXIT
for dir in "${system_dirs[@]}"; do
  [ -d "$dir" ] || continue
  for f in "$dir"/*; do
    name="${f##*/}"
    [[ "$name" =~ $hidden ]] && continue
    [ -e "$links/$name" ] || ln -s "$f" "$links/$name"
  done
done
# keep the PATH entries that are not system folders (pyenv, the user's own bin), in order
path=""
IFS=: read -ra entries <<< "$PATH"
for e in "${entries[@]}"; do
  case " ${system_dirs[*]} " in *" $e "*) continue;; esac
  [ -n "$e" ] && path="$path$e:"
done
path="$path$links"
libs=()
for so in /usr/lib/*-linux-gnu/libmpi.so.* /usr/lib/*-linux-gnu/openmpi/lib/libmpi.so* \
          /usr/lib/*-linux-gnu/libmpich.so.*; do
  [ -f "$so" ] && [ ! -L "$so" ] && libs+=("$so")
done
if [ ${#libs[@]} -eq 0 ]; then
  PATH="$path" "$@"
  exit $?
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "[as_fresh_machine] a system libmpi is installed (${libs[0]}); hiding it needs root" >&2
  exit 2
fi
PATH="$path" unshare --mount bash -c '
  n=$1; shift
  for so in "${@:1:$n}"; do mount --bind /dev/null "$so"; done
  shift "$n"
  "$@"' _ "${#libs[@]}" "${libs[@]}" "$@"
