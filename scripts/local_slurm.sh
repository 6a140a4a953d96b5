#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for tests and CI (Debian, run as root).
#
#   scripts/local_slurm.sh install   # apt-get the missing packages (idempotent, quick when done)
#   scripts/local_slurm.sh start     # munge, mariadb, slurmdbd, slurmctld, slurmd; wait until idle
#   scripts/local_slurm.sh start --nodes 2   # the same with two nodes, node1 and node2 (below)
#   scripts/local_slurm.sh status    # sinfo and each daemon; exit 0 if healthy, 1 otherwise
#   scripts/local_slurm.sh stop      # stop what `start` started, by pid file (TERM, wait, KILL)
#   scripts/local_slurm.sh env       # export lines the tests need (none at present)
#
# One node (the default): this host, at 127.0.0.1. N nodes (--nodes N, 2..9, or
# HPC_BLISS_SLURM_NODES=N): node1..nodeN are network namespaces hpcb-n1..hpcb-nN, each with its
# own hostname (UTS namespace) and one interface, mn0, at $NET.K (default 10.77.0.K) on a
# bridge hpcb-br0 ($NET.254, where slurmctld listens). There is no route out of them: MPI, gloo
# and slurm traffic between "nodes" crosses the bridge only. /etc/hosts gets a line per node
# (marked, removed again by `stop`); one slurmd runs inside each namespace. Each node
# advertises one GPU as a GRES count with no device behind it, so --gpus-per-node jobs are
# scheduled as on a GPU cluster; the jobs find no CUDA and run on the CPU.
#
# State (configs copies, databases, spool, pid files, logs) lives in $HPC_BLISS_SLURM_DIR
# (default /tmp/hpc-bliss-slurm); `start` wipes the state of a previous, dead cluster.
# slurm.conf and slurmdbd.conf are written to /etc/slurm, where sinfo/sbatch/srun/sacct look
# without any environment variable. Other settings: HPC_BLISS_SLURM_TIMEOUT (seconds to wait
# for the cluster, default 90), HPC_BLISS_SLURM_DB_PORT (MariaDB TCP port on 127.0.0.1,
# default 3307, so that a MariaDB already on 3306 is left alone), HPC_BLISS_SLURM_NET (the
# first three octets of the nodes' /24 network, default 10.77.0).
set -euo pipefail

STATE_DIR="${HPC_BLISS_SLURM_DIR:-/tmp/hpc-bliss-slurm}"
TIMEOUT="${HPC_BLISS_SLURM_TIMEOUT:-90}"
DB_PORT="${HPC_BLISS_SLURM_DB_PORT:-3307}"
CLUSTER=hpcbliss
CONF_DIR=/etc/slurm
MARKER="# Written by hpc_bliss scripts/local_slurm.sh"
STAMP=.hpc-bliss-slurm # a file in STATE_DIR: only such a directory is ever wiped
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server libpmix-dev iproute2)
# Daemons in start order (then one slurmd per node); `stop` goes the other way.
DAEMONS=(munged mariadbd slurmdbd slurmctld)
NODES="${HPC_BLISS_SLURM_NODES:-}" # nodes asked for; default: as running, else 1
NET="${HPC_BLISS_SLURM_NET:-10.77.0}"
BRIDGE=hpcb-br0
NS_PREFIX=hpcb-n  # namespaces hpcb-n1, hpcb-n2, ...
VETH_PREFIX=hpcb-v # the bridge's end of each node's link
NODE_IF=mn0        # the node's end: one name on every node (GLOO_SOCKET_IFNAME=mn0 fits all)
HOSTS_MARK="# hpc-bliss local_slurm node"

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
node_states() { ctld_up && timeout 10 sinfo -h -N -o %T 2>/dev/null; }
# all_nodes REGEX: the cluster has the nodes this state dir records, each in a matching state.
all_nodes() {
  local states s n
  states=$(node_states) || return 1
  n=$(wc -w <<<"$states")
  ((n > 0 && n == $(recorded_nodes))) || return 1
  for s in $states; do [[ $s =~ ^($1)$ ]] || return 1; done
}
node_ok() { all_nodes 'idle|mixed|allocated|completing'; }
node_idle() { all_nodes idle; }
slurmds_alive() {
  local name
  for name in $(node_names); do daemon_pid "slurmd.$name" >/dev/null || return 1; done
}
# Stops the wait for the nodes when a slurm daemon died (its log says why).
node_idle_or_dead() { node_idle || ! daemon_pid slurmctld >/dev/null || ! slurmds_alive; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; } # port_open ADDRESS PORT
sacct_ok() { timeout 10 sacct -n -X -o JobID >/dev/null 2>&1; }
healthy() {
  local d
  munge_ok || return 1
  for d in mariadbd slurmdbd slurmctld; do daemon_pid "$d" >/dev/null || return 1; done
  slurmds_alive && node_ok && sacct_ok
}

# ---------------------------------------------------------------------------------------------
# Nodes. The count is recorded in the state dir by `start`; names and addresses follow from it.
recorded_nodes() { cat "$STATE_DIR/nodes" 2>/dev/null || echo 1; }
node_names() { # this host, or node1..nodeN
  local n i
  n=$(recorded_nodes)
  if ((n == 1)); then hostname -s; else for ((i = 1; i <= n; i++)); do echo "node$i"; done; fi
}
node_addr() { # node_addr NAME
  if [[ $1 =~ ^node([0-9])$ ]] && (($(recorded_nodes) > 1)); then echo "$NET.${BASH_REMATCH[1]}"; else echo 127.0.0.1; fi
}
ctld_addr() { if (($(recorded_nodes) > 1)); then echo "$NET.254"; else echo 127.0.0.1; fi; }

# The bridge, one namespace per node with its link and address, and the /etc/hosts lines.
net_up() {
  local n=$1 i ns used
  used=$(ip -o -4 addr show | awk '{print $2, $4}' | grep -F " $NET." | grep -v "^$BRIDGE " || true)
  [[ -z $used ]] || die "the network $NET.0/24 is already in use here ($used): set HPC_BLISS_SLURM_NET"
  ip link add "$BRIDGE" type bridge
  ip addr add "$NET.254/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for ((i = 1; i <= n; i++)); do
    ns=$NS_PREFIX$i
    ip netns add "$ns"
    ip link add "$VETH_PREFIX$i" type veth peer name "$NODE_IF" netns "$ns"
    ip link set "$VETH_PREFIX$i" master "$BRIDGE"
    ip link set "$VETH_PREFIX$i" up
    ip -n "$ns" addr add "$NET.$i/24" dev "$NODE_IF"
    ip -n "$ns" link set "$NODE_IF" up
    ip -n "$ns" link set lo up
  done
  hosts_lines_removed
  for ((i = 1; i <= n; i++)); do echo "$NET.$i node$i $HOSTS_MARK" >>/etc/hosts; done
}
# /etc/hosts without our lines. Rewritten in place: in containers it is often a bind mount.
hosts_lines_removed() {
  local kept
  grep -qF "$HOSTS_MARK" /etc/hosts 2>/dev/null || return 0
  kept=$(grep -vF "$HOSTS_MARK" /etc/hosts || true)
  printf '%s\n' "$kept" >/etc/hosts
}
# Everything net_up made, found by name: processes left in the namespaces (TERM, then KILL),
# the namespaces (their veth pairs go with them), the bridge, the /etc/hosts lines.
net_down() {
  local ns pids i removed=0
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NS_PREFIX[0-9]+$" || true); do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [[ -n $pids ]]; then
      kill -TERM $pids 2>/dev/null || true
      for ((i = 0; i < 25; i++)); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -z $pids ]] && break
        sleep 0.2
      done
      [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
    fi
    ip netns del "$ns"
    removed=$((removed + 1))
  done
  # A veth pair goes with its namespace, but not always at once: delete our end by name.
  for i in $(ip -o link show 2>/dev/null | grep -oE "$VETH_PREFIX[0-9]+" | sort -u || true); do
    ip link del "$i" 2>/dev/null || true
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
  hosts_lines_removed
  # Nothing of ours may be left: say what is, and fail.
  local left
  left=$({
    ip netns list 2>/dev/null | awk '{print "namespace " $1}' | grep -E " $NS_PREFIX[0-9]+$"
    ip -o link show "$BRIDGE" 2>/dev/null | awk '{print "link " $2}'
    grep -F "$HOSTS_MARK" /etc/hosts | sed 's/^/\/etc\/hosts: /'
  } || true)
  [[ -z $left ]] || die "could not remove: $left"
  ((removed == 0)) || say "removed the namespaces of $removed node(s), $BRIDGE and the /etc/hosts lines"
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
  local host=$1 dbpass=$2 f name nodes="" names=()
  # A slurm.conf we did not write (e.g. on a real cluster node) is kept aside, once.
  for f in slurm.conf slurmdbd.conf gres.conf; do
    if [[ -e $CONF_DIR/$f ]] && ! grep -qF "$MARKER" "$CONF_DIR/$f" &&
      [[ ! -e $CONF_DIR/$f.before-hpc-bliss ]]; then
      cp -p "$CONF_DIR/$f" "$CONF_DIR/$f.before-hpc-bliss"
      say "kept the existing $CONF_DIR/$f as $f.before-hpc-bliss"
    fi
  done
  mkdir -p "$CONF_DIR"
  for name in $(node_names); do
    names+=("$name")
    nodes+="NodeName=$name NodeAddr=$(node_addr "$name") NodeHostname=$name CPUs=8 Sockets=1 CoresPerSocket=8 ThreadsPerCore=1 RealMemory=16000 Gres=gpu:1 State=UNKNOWN
"
  done
  cat >"$CONF_DIR/slurm.conf.new" <<EOF
$MARKER (state in $STATE_DIR)
ClusterName=$CLUSTER
SlurmctldHost=$host($(ctld_addr))
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
# %n: each node's own name, so that the slurmds (and PMIx under TmpFS) never share a file.
SlurmdSpoolDir=$STATE_DIR/spool/%n
TmpFS=$STATE_DIR/tmp/%n
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$STATE_DIR/run/slurmd.%n.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.%n.log
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
MailProg=/bin/true
${nodes%$'\n'}
PartitionName=debug Nodes=$(IFS=,; echo "${names[*]}") Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
  mv "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"
  chmod 644 "$CONF_DIR/slurm.conf"
  # One GPU per node, schedulable, with /dev/null as its device file: no CUDA behind it.
  printf '%s\nName=gpu File=/dev/null\n' "$MARKER" >"$CONF_DIR/gres.conf"
  chmod 644 "$CONF_DIR/gres.conf"
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
  cp -p "$CONF_DIR/slurm.conf" "$CONF_DIR/slurmdbd.conf" "$CONF_DIR/gres.conf" "$STATE_DIR/"
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
  ! port_open 127.0.0.1 "$DB_PORT" ||
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

# The daemon's pid file names a live process and ADDRESS:PORT accepts connections.
listening() { daemon_pid "$1" >/dev/null && port_open "$2" "$3"; }
# start_slurm_daemon NAME ADDRESS PORT COMMAND...: COMMAND daemonizes and writes NAME's pid file.
start_slurm_daemon() {
  local name=$1 addr=$2 port=$3 logs=("$STATE_DIR/log/$1.out" "$STATE_DIR/log/$1.log")
  shift 3
  step_begin
  ! port_open "$addr" "$port" ||
    die "port $port on $addr (for $name) is already in use: is another SLURM running?"
  "$@" </dev/null >>"$STATE_DIR/log/$name.out" 2>&1 || {
    log_tail "${logs[@]}"
    die "$name failed to start"
  }
  # Wait until it listens (slurmctld dies if slurmdbd is not listening yet); stop waiting
  # early if it died.
  local deadline=$((${EPOCHREALTIME/./} + TIMEOUT * 1000000))
  until listening "$name" "$addr" "$port"; do
    if ((${EPOCHREALTIME/./} > deadline)) || { [[ -s $(pidfile "$name") ]] && ! daemon_pid "$name" >/dev/null; }; then
      log_tail "${logs[@]}"
      die "$name is not listening on $addr:$port (pid file $(pidfile "$name"))"
    fi
    sleep 0.2
  done
  step_done "$name" "started (pid $(daemon_pid "$name"), $addr:$port)"
}

# One slurmd per node: here, or inside the node's network namespace under its own hostname
# (nsenter, not `ip netns exec`, which remounts /sys and leaves slurmd without cgroups).
start_slurmds() {
  local name i=0
  for name in $(node_names); do
    i=$((i + 1))
    mkdir -p "$STATE_DIR/spool/$name" "$STATE_DIR/tmp/$name"
    if (($(recorded_nodes) == 1)); then
      start_slurm_daemon "slurmd.$name" 127.0.0.1 6818 /usr/sbin/slurmd -N "$name"
    else
      start_slurm_daemon "slurmd.$name" "$(node_addr "$name")" 6818 \
        nsenter --net="/run/netns/$NS_PREFIX$i" unshare --uts \
        sh -c "hostname $name && exec /usr/sbin/slurmd -N $name"
    fi
  done
}

cmd_start() {
  need_root
  local c want
  for c in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sinfo sacct ip nsenter unshare; do
    command -v "$c" >/dev/null || [[ -x /usr/sbin/$c ]] || die "$c not found: run '$0 install' first"
  done
  want=${NODES:-$(recorded_nodes)}
  [[ $want =~ ^[1-9]$ ]] || die "nodes: '$want' (--nodes or HPC_BLISS_SLURM_NODES): expected 1 to 9"
  if [[ -d $STATE_DIR ]] && (($(recorded_nodes) == want)) && healthy; then
    say "already up and healthy with $want node(s) (state in $STATE_DIR); nothing to do ($(elapsed))"
    return 0
  fi
  # A previous cluster that is dead, half up or of another size: stop what is left of it,
  # then wipe its state.
  if [[ -e $STATE_DIR/$STAMP ]]; then
    cmd_stop quiet
    rm -rf "$STATE_DIR"
    say "wiped the previous state in $STATE_DIR"
  elif [[ -d $STATE_DIR && -n $(ls -A "$STATE_DIR") ]]; then
    die "$STATE_DIR exists, is not empty and was not made by this script: refusing to wipe it"
  fi
  net_down # leftovers of a cluster whose state dir is gone
  mkdir -p "$STATE_DIR"/{run,log,ctld,spool,tmp}
  chmod 755 "$STATE_DIR" "$STATE_DIR/log"
  touch "$STATE_DIR/$STAMP"
  echo "$want" >"$STATE_DIR/nodes"
  local host dbpass
  host=$(hostname -s)
  dbpass=$(od -An -N12 -tx1 /dev/urandom | tr -dc 0-9a-f)
  if ((want > 1)); then
    step_begin
    net_up "$want"
    step_done network "$want namespaces on $BRIDGE ($NET.254): $(node_names | paste -sd ' ')"
  fi
  write_configs "$host" "$dbpass"
  say "wrote $CONF_DIR/slurm.conf, slurmdbd.conf, gres.conf (nodes $(node_names | paste -sd ,), state in $STATE_DIR)"

  start_munge
  start_mariadb "$dbpass"
  start_slurm_daemon slurmdbd 127.0.0.1 6819 /usr/sbin/slurmdbd
  start_slurm_daemon slurmctld 127.0.0.1 6817 /usr/sbin/slurmctld
  start_slurmds

  step_begin
  wait_for "$TIMEOUT" node_idle_or_dead || true
  if ! node_idle; then
    log_tail "$STATE_DIR/log/slurmctld.log" "$STATE_DIR"/log/slurmd.*.log
    echo "sinfo: $(sinfo 2>&1)" >&2
    daemon_pid slurmctld >/dev/null || die "slurmctld died (see its log above)"
    slurmds_alive || die "a slurmd died (see its log above)"
    die "nodes not idle within $TIMEOUT s (states: '$(node_states | paste -sd ' ')')"
  fi
  step_done nodes "idle"
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
  local quiet=${1:-} d pid stopped=0 i name
  # Cancel leftover jobs first, so that their slurmstepd and tasks end with them.
  if daemon_pid slurmctld >/dev/null && [[ -n $(timeout 10 squeue -h -o %i 2>/dev/null) ]]; then
    timeout 10 scancel --full $(squeue -h -o %i) 2>/dev/null || true
    wait_for 10 sh -c '[ -z "$(squeue -h -o %i)" ]' || true
    say "cancelled the jobs still queued or running"
  fi
  local daemons=("${DAEMONS[@]}")
  for name in $(node_names); do daemons+=("slurmd.$name"); done
  for ((i = ${#daemons[@]} - 1; i >= 0; i--)); do
    d=${daemons[i]}
    if pid=$(daemon_pid "$d"); then
      stop_pid "$d" "$pid"
      stopped=1
    fi
    rm -f "$(pidfile "$d")" 2>/dev/null || true
  done
  net_down
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
  echo "nodes:     $(recorded_nodes) ($(node_names | paste -sd ' '))"
  for d in mariadbd slurmdbd slurmctld $(node_names | sed 's/^/slurmd./'); do
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
      echo "nodes:     not all usable (states '$(node_states | paste -sd ' ')')"
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

command=${1:-}
shift || true
while (($#)); do
  case $1 in
  --nodes) NODES=${2:-} && shift 2 || die "--nodes needs a number" ;;
  --nodes=*) NODES=${1#--nodes=} && shift ;;
  *) die "unknown argument '$1' (usage: $0 start [--nodes N])" ;;
  esac
done
case "$command" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
*)
  echo "usage: $0 {install|start [--nodes N]|stop|status|env}" >&2
  exit 2
  ;;
esac
