#!/usr/bin/env bash
# A real single-node SLURM on 127.0.0.1 with two fake GPUs, to run the launcher's SLURM path on one machine
# (tests, CI, trying it out). Debian bookworm's SLURM 22.05, as root, without systemd.
#
#   slurm/local-cluster.sh start    install (first time, ~15 s) and start; returns when the node is idle
#   slurm/local-cluster.sh stop     cancel its jobs, then end the daemons it started, by PID
#   slurm/local-cluster.sh status   which of its daemons run, and sinfo
#
# Writes /etc/slurm/{slurm,gres,slurmdbd}.conf (never over files it did not write itself) and keeps state,
# logs and PIDs under $FLEXPOOL_SLURM_DIR (default /tmp/flexpool-slurm), which each start wipes: every start
# is a fresh cluster with an empty accounting database.
set -euo pipefail

DIR=${FLEXPOOL_SLURM_DIR:-/tmp/flexpool-slurm}
DB_PORT=${FLEXPOOL_SLURM_DB_PORT:-33061}  # a private MariaDB: not 3306, so a system one is left alone
ETC=/etc/slurm
MARK="# written by flexpool-repro slurm/local-cluster.sh"
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order; stop goes in reverse
# rsync: the launcher snapshots the code with it before submitting (submitit's RsyncSnapshot).
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server rsync)

say() { echo "local-cluster: $*"; }
die() { echo "local-cluster: error: $*" >&2; exit 1; }

pid_of() { cat "$DIR/pids/$1" 2>/dev/null || true; }

alive() {  # the recorded PID still runs the program we started (not a reused PID)
  local pid; pid=$(pid_of "$1")
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

spawn() {  # run a daemon in its foreground mode as a background process of its own session; record its PID
  local name=$1; shift
  setsid "$@" </dev/null >>"$DIR/log/$name.out" 2>&1 &
  echo $! >"$DIR/pids/$name"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll until the command succeeds
  local seconds=$1 what=$2; shift 2
  for _ in $(seq $((seconds * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "$what did not come up in ${seconds}s; see $DIR/log/"
}

install() {
  local missing=0
  for cmd in slurmctld slurmd slurmdbd sbatch sacct munged mariadbd rsync; do
    command -v "$cmd" >/dev/null || missing=1
  done
  [ $missing = 0 ] && return
  command -v apt-get >/dev/null || die "SLURM is not installed and there is no apt-get to install it"
  say "installing ${PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

write_config() {
  for f in slurm.conf gres.conf slurmdbd.conf; do
    if [ -e "$ETC/$f" ] && ! grep -qF "$MARK" "$ETC/$f"; then
      die "$ETC/$f exists and was not written by this script: is this a real SLURM machine? Not touching it."
    fi
  done
  mkdir -p "$ETC"
  local node host
  # The node as slurmd detects it: a larger RealMemory than detected would drain the node.
  node=$(slurmd -C | head -n 1)
  host=$(echo "$node" | sed -E 's/^NodeName=([^ ]+).*/\1/')
  # Fake GPUs: gres needs File= entries, and they must be device files; symlinks to /dev/null pass.
  ln -sf /dev/null "$DIR/dev/gpu0"
  ln -sf /dev/null "$DIR/dev/gpu1"
  cat >"$ETC/gres.conf" <<EOF
$MARK
NodeName=$host Name=gpu File=$DIR/dev/gpu[0-1]
EOF
  cat >"$ETC/slurm.conf" <<EOF
$MARK
ClusterName=flexpool
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups without systemd: track processes by parent PID, bind no tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=5
# Schedule a batch job at once: a job round trip drops from ~3 s to ~1 s. A requeued (preempted) job waits
# cred_expire + 1 s before it may start again (default 120 s) and is then picked up by the main scheduler
# loop (every sched_interval, default 60 s): both short, so a requeue takes seconds, not minutes.
SchedulerParameters=batch_sched_delay=0,sched_interval=2
AuthInfo=cred_expire=10
# submitit polls sacct: without accounting a cancelled job never reads as finished.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
$node NodeAddr=127.0.0.1 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$ETC/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$ETC/slurmdbd.conf"  # slurmdbd refuses a config others can read (it holds the DB password)
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munge already runs; using it"
    return
  fi
  [ -s /etc/munge/munge.key ] || setpriv --reuid=munge --regid=munge --init-groups mungekey --create
  mkdir -p /run/munge && chown munge:munge /run/munge  # munged runs as munge and insists on owning it
  spawn munged setpriv --reuid=munge --regid=munge --init-groups munged -F
  wait_for 10 munged sh -c 'munge -n | unmunge'
}

start_mariadb() {
  local sock="$DIR/mysql/mysqld.sock"
  mkdir -p "$DIR/mysql" && chown mysql:mysql "$DIR/mysql"
  mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user=mysql --skip-test-db \
    --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.out" 2>&1
  spawn mariadbd mariadbd --no-defaults --user=mysql --datadir="$DIR/mysql" --socket="$sock" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve --log-error="$DIR/log/mariadb.log"
  wait_for 30 mariadbd mariadb --no-defaults --socket="$sock" -e 'select 1'
  mariadb --no-defaults --socket="$sock" -e "CREATE DATABASE slurm_acct_db;
    CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages, writes /etc/slurm, starts daemons)"
  if alive slurmctld && alive slurmd && alive slurmdbd; then
    say "already running"
    return
  fi
  stop >/dev/null  # leftovers of a half-started cluster
  install
  rm -rf "$DIR"
  mkdir -p "$DIR"/{pids,log,run,ctld,slurmd,dev}
  chmod 755 "$DIR"
  write_config
  start_munge
  start_mariadb
  spawn slurmdbd slurmdbd -D
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster flexpool >/dev/null
  spawn slurmctld slurmctld -D
  spawn slurmd slurmd -D
  local host; host=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=([^ ]+).*/\1/')
  wait_for 30 slurmctld scontrol ping
  # A node drained by an earlier bad config stays drained: resume it.
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  wait_for 30 "node $host" sh -c "sinfo -h -n '$host' -o %t | grep -qx idle"
  say "up: node $host with gpu:2 in partition debug; logs in $DIR/log"
}

stop() {
  # Jobs first, through SLURM, so none of their processes outlive the daemons.
  if alive slurmctld; then
    squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null || true
    for _ in $(seq 50); do
      [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  local i name pid
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    name=${DAEMONS[i]}
    if alive "$name"; then
      pid=$(pid_of "$name")
      kill "$pid"
      for _ in $(seq 50); do
        alive "$name" || break
        sleep 0.2
      done
      alive "$name" && kill -9 "$pid"
      say "stopped $name ($pid)"
    fi
    rm -f "$DIR/pids/$name"
  done
}

status() {
  for name in "${DAEMONS[@]}"; do
    if alive "$name"; then echo "$name: running ($(pid_of "$name"))"; else echo "$name: not running"; fi
  done
  alive slurmctld && sinfo
  return 0
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
