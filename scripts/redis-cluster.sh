#!/usr/bin/env bash
# A throwaway Redis Cluster on 127.0.0.1 for tests and trying out `m3 bank push` / `m3 serve
# --bank redis://...` (docs/redis-cluster.md):
#
#   scripts/redis-cluster.sh start DIR BASE_PORT   6 redis-server processes: 3 masters, 3 replicas
#   scripts/redis-cluster.sh stop DIR              kills (SIGKILL) every process start left in DIR
#
# Ports: clients on BASE_PORT .. BASE_PORT+5, the cluster bus on BASE_PORT+6 .. BASE_PORT+11
# (cluster-port), so a cluster needs 12 consecutive free ports; keep BASE_PORT below 32768 (the
# ephemeral range). Everything the servers write (config, nodes.conf, logs, pid files, a replica's
# sync file) stays under DIR/<port>/; nothing is persisted (no RDB snapshots, no AOF).
#
# Tuned for fault tests: cluster-node-timeout 1000 ms (a failover takes a few seconds),
# cluster-require-full-coverage no (when a slot range is lost the others keep being served),
# cluster-replica-validity-factor 0 (a replica always may take over), repl-diskless-sync-delay 0.
# `start` returns once every node reports cluster_state:ok and every replica's link to its
# master is up, or fails (exit 1, stopping what it started) after 60 s.
set -euo pipefail

usage() {
  echo "usage: $0 start DIR BASE_PORT | stop DIR" >&2
  exit 2
}

stop_cluster() {
  local dir=$1
  [ -d "$dir" ] || return 0
  local pids=()
  for pf in "$dir"/*/redis.pid; do
    [ -f "$pf" ] || continue
    local pid
    pid=$(cat "$pf" 2>/dev/null || true)
    # Only a redis-server this script started (the pid file could be stale and the pid reused).
    if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "redis-server"; then
      kill -9 "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$pf"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do
      # Gone, or a zombie waiting for its parent (init) to reap it: either way it serves nothing.
      [ -e "/proc/$pid" ] || break
      [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = "Z" ] && break
      sleep 0.05
    done
  done
}

cmd=${1:-}
case "$cmd" in
  start)
    [ $# -eq 3 ] || usage
    dir=$2
    base=$3
    command -v redis-server >/dev/null || { echo "redis-cluster.sh: redis-server is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
    command -v redis-cli >/dev/null || { echo "redis-cluster.sh: redis-cli is not installed" >&2; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    nodes=()
    for i in 0 1 2 3 4 5; do
      port=$((base + i))
      bus=$((base + 6 + i))
      nd="$dir/$port"
      mkdir -p "$nd"
      rm -f "$nd/nodes.conf" "$nd/redis.pid"
      cat >"$nd/redis.conf" <<EOF
port $port
cluster-port $bus
bind 127.0.0.1
protected-mode no
daemonize yes
dir $nd
pidfile $nd/redis.pid
logfile $nd/redis.log
cluster-enabled yes
cluster-config-file $nd/nodes.conf
cluster-node-timeout 1000
cluster-require-full-coverage no
cluster-replica-validity-factor 0
save ""
appendonly no
repl-diskless-sync yes
repl-diskless-sync-delay 0
EOF
      if ! redis-server "$nd/redis.conf"; then
        echo "redis-cluster.sh: redis-server on port $port did not start (see $nd/redis.log)" >&2
        stop_cluster "$dir"
        exit 1
      fi
      nodes+=("127.0.0.1:$port")
    done
    up() { redis-cli -p "$1" ping 2>/dev/null | grep -q PONG; }
    for i in 0 1 2 3 4 5; do
      port=$((base + i))
      for _ in $(seq 1 200); do up "$port" && break; sleep 0.05; done
      if ! up "$port"; then
        echo "redis-cluster.sh: redis-server on port $port does not answer (port taken? see $dir/$port/redis.log)" >&2
        stop_cluster "$dir"
        exit 1
      fi
    done
    if ! redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1; then
      echo "redis-cluster.sh: redis-cli --cluster create failed:" >&2
      tail -5 "$dir/create.log" >&2
      stop_cluster "$dir"
      exit 1
    fi
    ready() {
      local port
      for i in 0 1 2 3 4 5; do
        port=$((base + i))
        redis-cli -p "$port" cluster info 2>/dev/null | grep -q "cluster_state:ok" || return 1
        local repl
        repl=$(redis-cli -p "$port" info replication 2>/dev/null)
        if echo "$repl" | grep -q "role:slave"; then
          echo "$repl" | grep -q "master_link_status:up" || return 1
          echo "$repl" | grep -q "master_sync_in_progress:0" || return 1
        fi
      done
    }
    for _ in $(seq 1 600); do
      ready && { echo "redis cluster up: ${nodes[*]} (dir $dir)"; exit 0; }
      sleep 0.1
    done
    echo "redis-cluster.sh: the cluster did not reach cluster_state:ok with its replicas in sync within 60 s" >&2
    stop_cluster "$dir"
    exit 1
    ;;
  stop)
    [ $# -eq 2 ] || usage
    stop_cluster "$2"
    ;;
  *)
    usage
    ;;
esac
