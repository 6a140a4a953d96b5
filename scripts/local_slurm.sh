#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for tests and CI (Debian, run as root).
#
#   scripts/local_slurm.sh install   # apt-get the missing packages (idempotent, quick when done)
#   scripts/local_slurm.sh start     # munge, mariadb, slurmdbd, slurmctld, slurmd; wait until idle
#   scripts/local_slurm.sh status    # sinfo and each daemon; exit 0 if healthy, 1 otherwise
#   scripts/local_slurm.sh stop      # stop what `start` started, by pid file (TERM, wait, KILL)
#   scripts/local_slurm.sh env       # export lines the tests need (none at present)
#
# State (configs copies, databases, spool, pid files, logs) lives in $HPC_BLISS_SLURM_DIR
# (default /tmp/hpc-bliss-slurm); `start` wipes the state of a previous, dead cluster.
# slurm.conf and slurmdbd.conf are written to /etc/slurm, where sinfo/sbatch/srun/sacct look
# without any environment variable. Other settings: HPC_BLISS_SLURM_TIMEOUT (seconds to wait
# for the cluster, default 90), HPC_BLISS_SLURM_DB_PORT (MariaDB TCP port on 127.0.0.1,
# default 3307, so that a MariaDB already on 3306 is left alone).
set -euo pipefail

STATE_DIR="${HPC_BLISS_SLURM_DIR:-/tmp/hpc-bliss-slurm}"
TIMEOUT="${HPC_BLISS_SLURM_TIMEOUT:-90}"
DB_PORT="${HPC_BLISS_SLURM_DB_PORT:-3307}"
CLUSTER=hpcbliss
CONF_DIR=/etc/slurm
MARKER="# Written by hpc_bliss scripts/local_slurm.sh"
STAMP=.hpc-bliss-slurm # a file in STATE_DIR: only such a directory is ever wiped
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server libpmix-dev)
# Daemons in start order; `stop` goes the other way.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

export DEBIAN_FRONTEND=noninteractive

T0=${EPOCHREALTIME/./}
say() { echo "[local_slurm] $*"; }
die() {
  echo "[local_slurm] ERROR: $*" >&2
  exit 1
}
# Seconds since the script started, e.g. "1.23 s".
elapsed() {
  local us=$((${EPOCHREALTIME/./} - T0))
  printf '%d.%02d s' $((us / 1000000)) $((us % 1000000 / 10000))
}
step_t=0
step_begin() { step_t=${EPOCHREALTIME/./}; }
step_done() { # step_done NAME MESSAGE
  local us=$((${EPOCHREALTIME/./} - step_t))
  printf '[local_slurm] %-10s %s (%d.%02d s)\n' "$1" "$2" $((us / 1000000)) $((us % 1000000 / 10000))
}

need_root() { [[ $EUID -eq 0 ]] || die "run as root (it installs packages and writes /etc/slurm)"; }

# ---------------------------------------------------------------------------------------------
# Process helpers. A dead daemon may linger as a zombie here (no real init reaps it), which
# fools pgrep and `kill -0`: a pid counts as alive only if /proc says it is not a zombie.
alive() {
  local pid=$1 stat
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) } # the field after "(comm) " is the state
  [[ ${stat%% *} != Z && ${stat%% *} != X ]]
}
pidfile() { echo "$STATE_DIR/run/$1.pid"; }
daemon_pid() { # prints the pid of a daemon this script started, if it is alive
  local f pid
  f=$(pidfile "$1")
  [[ -s $f ]] || return 1
  pid=$(tr -dc 0-9 <"$f")
  alive "$pid" || return 1
  echo "$pid"
}
wait_for() { # wait_for SECONDS COMMAND... : poll every 0.2 s until COMMAND succeeds
  local deadline=$((${EPOCHREALTIME/./} + $1 * 1000000))
  shift
  until "$@" >/dev/null 2>&1; do
    ((${EPOCHREALTIME/./} < deadline)) || return 1
    sleep 0.2
  done
}
stop_pid() { # stop_pid NAME PID: TERM, wait up to 15 s, then KILL
  local name=$1 pid=$2 i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 75; i++)); do
    alive "$pid" || {
      say "$(printf '%-10s stopped (pid %s)' "$name" "$pid")"
      return 0
    }
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.2
  say "$(printf '%-10s killed (pid %s did not stop on TERM within 15 s)' "$name" "$pid")"
}
log_tail() { # log_tail FILE...: the last lines of each log, for error messages
  local f
  for f in "$@"; do
    [[ -s $f ]] || continue
    echo "---- last lines of $f" >&2
    tail -n 25 "$f" >&2
  done
}

# ---------------------------------------------------------------------------------------------
# Health checks (each quiet, exit status only).
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
db_ok() { mariadb-admin --no-defaults --socket="$STATE_DIR/mysql/mysqld.sock" ping >/dev/null 2>&1; }
ctld_up() { timeout 10 scontrol ping >/dev/null 2>&1; } # instant; sinfo retries for 9 s
node_state() { ctld_up && timeout 10 sinfo -h -o %T 2>/dev/null | head -n 1; }
node_ok() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }
node_idle() { [[ $(node_state) == idle ]]; }
# Stops the wait for the node when a slurm daemon died (its log says why).
node_idle_or_dead() {
  node_idle || ! daemon_pid slurmctld >/dev/null || ! daemon_pid slurmd >/dev/null
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
sacct_ok() { timeout 10 sacct -n -X -o JobID >/dev/null 2>&1; }
healthy() {
  local d
  munge_ok || return 1
  for d in mariadbd slurmdbd slurmctld slurmd; do daemon_pid "$d" >/dev/null || return 1; done
  node_ok && sacct_ok
}

# ---------------------------------------------------------------------------------------------
cmd_install() {
  need_root
  local p missing=() status policy=/usr/sbin/policy-rc.d made_policy=0
  for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    say "install: all packages present (${PACKAGES[*]}) ($(elapsed))"
    return 0
  fi
  say "install: apt-get install ${missing[*]}"
  # Without systemd, package scripts would start munge/mariadb/slurm from /etc/init.d on
  # their default paths and ports; `start` runs its own. Forbid that during the install.
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  local apt=(apt-get -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef
    -o Dpkg::Options::=--force-confold)
  local log
  log=$(mktemp)
  # Refresh stale or missing package lists first; retry once after a refresh on failure.
  if [[ -z $(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null) ]]; then
    apt-get update -qq </dev/null >>"$log" 2>&1 || true
  fi
  if ! "${apt[@]}" install "${missing[@]}" </dev/null >>"$log" 2>&1; then
    apt-get update -qq </dev/null >>"$log" 2>&1 || true
    "${apt[@]}" install "${missing[@]}" </dev/null >>"$log" 2>&1 || {
      tail -n 30 "$log" >&2
      die "apt-get install failed (full log: $log)"
    }
  fi
  rm -f "$log"
  if ((made_policy)); then
    rm -f "$policy"
    trap - EXIT
  fi
  say "install: done ($(elapsed))"
}

# ---------------------------------------------------------------------------------------------
write_configs() {
  local host=$1 dbpass=$2 f
  # A slurm.conf we did not write (e.g. on a real cluster node) is kept aside, once.
  for f in slurm.conf slurmdbd.conf; do
    if [[ -e $CONF_DIR/$f ]] && ! grep -qF "$MARKER" "$CONF_DIR/$f" &&
      [[ ! -e $CONF_DIR/$f.before-hpc-bliss ]]; then
      cp -p "$CONF_DIR/$f" "$CONF_DIR/$f.before-hpc-bliss"
      say "kept the existing $CONF_DIR/$f as $f.before-hpc-bliss"
    fi
  done
  mkdir -p "$CONF_DIR"
  cat >"$CONF_DIR/slurm.conf.new" <<EOF
$MARKER (state in $STATE_DIR)
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
# Lets the node claim more CPUs/memory than it has, so several multi-task jobs fit.
SlurmdParameters=config_overrides
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
MailProg=/bin/true
NodeName=$host NodeAddr=127.0.0.1 CPUs=8 Sockets=1 CoresPerSocket=8 ThreadsPerCore=1 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
  mv "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"
  chmod 644 "$CONF_DIR/slurm.conf"
  (
    umask 077
    cat >"$CONF_DIR/slurmdbd.conf.new" <<EOF
$MARKER (state in $STATE_DIR)
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$dbpass
StorageLoc=slurm_acct_db
PidFile=$(pidfile slurmdbd)
LogFile=$STATE_DIR/log/slurmdbd.log
EOF
  )
  mv "$CONF_DIR/slurmdbd.conf.new" "$CONF_DIR/slurmdbd.conf"
  chmod 600 "$CONF_DIR/slurmdbd.conf"
  cp -p "$CONF_DIR/slurm.conf" "$CONF_DIR/slurmdbd.conf" "$STATE_DIR/"
}

start_munge() {
  step_begin
  if munge_ok; then
    step_done munge "already running (not started by this script; left alone)"
    return 0
  fi
  [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key is missing: run '$0 install'"
  install -d -o munge -g munge -m 0755 /run/munge
  # A munged that died leaves its pid file and socket behind; they would stop a new one.
  local old
  old=$(cat /run/munge/munged.pid 2>/dev/null | tr -dc 0-9 || true)
  if [[ -n $old ]] && ! alive "$old"; then
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  fi
  runuser -u munge -- /usr/sbin/munged </dev/null >>"$STATE_DIR/log/munged.log" 2>&1 ||
    die "munged did not start: $(tail -n 5 "$STATE_DIR/log/munged.log" 2>/dev/null)
$(tail -n 10 /var/log/munge/munged.log 2>/dev/null)"
  wait_for 10 munge_ok || {
    tail -n 20 /var/log/munge/munged.log >&2 2>/dev/null || true
    die "munge does not answer 'munge -n'"
  }
  wait_for 5 test -s /run/munge/munged.pid || die "munged wrote no /run/munge/munged.pid"
  cp /run/munge/munged.pid "$(pidfile munged)"
  step_done munge "started (pid $(daemon_pid munged || true))"
}

sql() { mariadb --no-defaults --socket="$STATE_DIR/mysql/mysqld.sock" -u root -e "$1"; }

start_mariadb() {
  local dbpass=$1 db=$STATE_DIR/mysql
  step_begin
  install -d -o mysql -g mysql -m 0750 "$db" "$db/data"
  mariadb-install-db --no-defaults --user=mysql --datadir="$db/data" --skip-test-db \
    --auth-root-authentication-method=socket </dev/null >"$STATE_DIR/log/mariadb-install.log" 2>&1 ||
    {
      log_tail "$STATE_DIR/log/mariadb-install.log"
      die "mariadb-install-db failed"
    }
  step_done mariadb "data directory initialised"
  step_begin
  ! port_open "$DB_PORT" ||
    die "port $DB_PORT on 127.0.0.1 is already in use: set HPC_BLISS_SLURM_DB_PORT to a free port"
  chown mysql:mysql "$STATE_DIR/run" # mariadbd (as mysql) writes its pid file there
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$db/data" \
    --socket="$db/mysqld.sock" --pid-file="$(pidfile mariadbd)" \
    --log-error="$STATE_DIR/log/mariadb.log" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --innodb-lock-wait-timeout=900 --skip-log-bin </dev/null >/dev/null 2>&1 &
  wait_for "$TIMEOUT" db_ok || {
    log_tail "$STATE_DIR/log/mariadb.log"
    die "mariadbd did not answer within $TIMEOUT s"
  }
  sql "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
       CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$dbpass';
       CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$dbpass';
       GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
       GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" ||
    die "could not create the slurm_acct_db database"
  step_done mariadb "started on 127.0.0.1:$DB_PORT (pid $(daemon_pid mariadbd))"
}

# The daemon's pid file names a live process and its port accepts connections.
listening() { daemon_pid "$1" >/dev/null && port_open "$2"; }
start_slurm_daemon() { # start_slurm_daemon NAME PORT: each daemonizes and writes its pid file
  local name=$1 port=$2 logs=("$STATE_DIR/log/$1.out" "$STATE_DIR/log/$1.log")
  step_begin
  ! port_open "$port" || die "port $port (for $name) is already in use: is another SLURM running?"
  /usr/sbin/"$name" </dev/null >>"$STATE_DIR/log/$name.out" 2>&1 || {
    log_tail "${logs[@]}"
    die "$name failed to start"
  }
  # Wait until it listens (slurmctld dies if slurmdbd is not listening yet); stop waiting
  # early if it died.
  local deadline=$((${EPOCHREALTIME/./} + TIMEOUT * 1000000))
  until listening "$name" "$port"; do
    if ((${EPOCHREALTIME/./} > deadline)) || { [[ -s $(pidfile "$name") ]] && ! daemon_pid "$name" >/dev/null; }; then
      log_tail "${logs[@]}"
      die "$name is not listening on port $port (pid file $(pidfile "$name"))"
    fi
    sleep 0.2
  done
  step_done "$name" "started (pid $(daemon_pid "$name"), port $port)"
}

cmd_start() {
  need_root
  local c
  for c in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sinfo sacct; do
    command -v "$c" >/dev/null || [[ -x /usr/sbin/$c ]] || die "$c not found: run '$0 install' first"
  done
  if [[ -d $STATE_DIR ]] && healthy; then
    say "already up and healthy (state in $STATE_DIR); nothing to do ($(elapsed))"
    return 0
  fi
  # A previous cluster that is dead or half up: stop what is left of it, then wipe its state.
  if [[ -e $STATE_DIR/$STAMP ]]; then
    cmd_stop quiet
    rm -rf "$STATE_DIR"
    say "wiped the stale state in $STATE_DIR"
  elif [[ -d $STATE_DIR && -n $(ls -A "$STATE_DIR") ]]; then
    die "$STATE_DIR exists, is not empty and was not made by this script: refusing to wipe it"
  fi
  mkdir -p "$STATE_DIR"/{run,log,ctld,spool}
  chmod 755 "$STATE_DIR" "$STATE_DIR/log"
  touch "$STATE_DIR/$STAMP"
  local host dbpass
  host=$(hostname -s)
  dbpass=$(od -An -N12 -tx1 /dev/urandom | tr -dc 0-9a-f)
  write_configs "$host" "$dbpass"
  say "wrote $CONF_DIR/slurm.conf and slurmdbd.conf (node $host, state in $STATE_DIR)"

  start_munge
  start_mariadb "$dbpass"
  start_slurm_daemon slurmdbd 6819
  start_slurm_daemon slurmctld 6817
  start_slurm_daemon slurmd 6818

  step_begin
  wait_for "$TIMEOUT" node_idle_or_dead || true
  if ! node_idle; then
    log_tail "$STATE_DIR/log/slurmctld.log" "$STATE_DIR/log/slurmd.log"
    echo "sinfo: $(sinfo 2>&1)" >&2
    daemon_pid slurmctld >/dev/null || die "slurmctld died (see its log above)"
    daemon_pid slurmd >/dev/null || die "slurmd died (see its log above)"
    die "node not idle within $TIMEOUT s (state: '$(node_state)')"
  fi
  step_done node "idle"
  step_begin
  wait_for "$TIMEOUT" sacct_ok || {
    log_tail "$STATE_DIR/log/slurmdbd.log" "$STATE_DIR/log/slurmctld.log" "$STATE_DIR/log/mariadb.log"
    echo "sacct: $(sacct -n -X 2>&1 | tail -n 3)" >&2
    die "sacct does not answer within $TIMEOUT s"
  }
  step_done sacct "answers"
  say "cluster up in $(elapsed): $(sinfo -h -o '%P %D %T %N %C' | head -n 1)"
}

cmd_stop() {
  local quiet=${1:-} d pid stopped=0 i
  # Cancel leftover jobs first, so that their slurmstepd and tasks end with them.
  if daemon_pid slurmctld >/dev/null && [[ -n $(timeout 10 squeue -h -o %i 2>/dev/null) ]]; then
    timeout 10 scancel --full $(squeue -h -o %i) 2>/dev/null || true
    wait_for 10 sh -c '[ -z "$(squeue -h -o %i)" ]' || true
    say "cancelled the jobs still queued or running"
  fi
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    d=${DAEMONS[i]}
    if pid=$(daemon_pid "$d"); then
      stop_pid "$d" "$pid"
      stopped=1
    fi
    rm -f "$(pidfile "$d")" 2>/dev/null || true
  done
  if [[ -z $quiet ]]; then
    ((stopped)) && say "stopped ($(elapsed))" || say "nothing running (state dir $STATE_DIR)"
  fi
}

cmd_status() {
  local d pid ok=0 line
  if [[ -d $STATE_DIR ]]; then
    echo "state dir: $STATE_DIR"
  else
    echo "state dir: $STATE_DIR (absent: never started here)"
  fi
  if munge_ok; then echo "munge:     ok (munge -n)"; else
    echo "munge:     NOT answering"
    ok=1
  fi
  for d in mariadbd slurmdbd slurmctld slurmd; do
    if pid=$(daemon_pid "$d"); then
      printf '%-10s alive (pid %s)\n' "$d:" "$pid"
    else
      printf '%-10s NOT running\n' "$d:"
      ok=1
    fi
  done
  if command -v sinfo >/dev/null && ctld_up && line=$(timeout 10 sinfo 2>&1); then
    echo "$line"
    node_ok || {
      echo "node:      not usable (state '$(node_state)')"
      ok=1
    }
  else
    line=
    command -v sinfo >/dev/null && { line=$(scontrol ping 2>&1 | head -n 1) || true; }
    echo "sinfo:     ${line:-not installed}"
    ok=1
  fi
  if sacct_ok; then echo "sacct:     answers"; else
    echo "sacct:     NOT answering"
    ok=1
  fi
  ((ok == 0)) && echo "healthy" || echo "NOT healthy (start it with: scripts/local_slurm.sh start)"
  return $ok
}

cmd_env() {
  # Nothing to export: the configs are in /etc/slurm, where the SLURM commands look by default,
  # and `srun --mpi=pmix` starts Open MPI ranks as root without OMPI_ALLOW_RUN_AS_ROOT (only
  # mpirun checks it). Prints a comment, so `eval "$(scripts/local_slurm.sh env)"` is safe.
  echo "# local_slurm: no environment variables needed (configs in $CONF_DIR)"
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
*)
  echo "usage: $0 {install|start|stop|status|env}" >&2
  exit 2
  ;;
esac
