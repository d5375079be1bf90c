#!/usr/bin/env bash
# `make demo` / `make demo-stop`: a three-node Corral cluster on 127.0.100.1-3 with
# its state under ./.demo, running one test-guest instance on each node and one
# `mirror` instance (db1) whose disk is copied synchronously from n2 to n3.
set -euo pipefail
cd "$(dirname "$0")/.."
TOP=$PWD
DEMO=$TOP/.demo
VENV=${VENV:-$TOP/.venv}
GUEST=${CORRAL_GUEST_DIR:-/var/cache/corral/guest}
NODES=(n1 n2 n3)
# Its own loopback addresses: the tests use 127.0.0.x and others, with ports of their own (disk exports
# from 11000), so `make test` and `make demo` run side by side.
NET=127.0.100

corral() { CORRAL_SOCKET="$DEMO/$1/run/agent.sock" "$VENV/bin/corral" "${@:2}"; }

stop_qemus() {
  # QEMU, the disk exports and the fence keeper outlive the agent by design: stop the demo's own by pidfile.
  for pidfile in "$DEMO"/*/run/instances/*/qemu.pid "$DEMO"/*/run/replication/*.pid "$DEMO"/*/run/fence-keeper.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null | grep -q -- "$DEMO/"; then  # a stale pid: no such file
      case $pidfile in
        */replication/*) echo "==> stopping disk export $(basename "$pidfile" .pid) (pid $pid)" ;;
        */fence-keeper.pid) echo "==> stopping the fence keeper of $(basename "$(dirname "$(dirname "$pidfile")")") (pid $pid)" ;;
        *) echo "==> stopping instance $(basename "$(dirname "$pidfile")") (QEMU pid $pid)" ;;
      esac
      kill "$pid" 2>/dev/null || true
    fi
  done
}

stop() {
  for node in "${NODES[@]}"; do
    pidfile=$DEMO/$node/supervisor.pid
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      echo "==> stopping the agent of $node (supervisor pid $pid)"
      kill "$pid"
      for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  stop_qemus
  rm -rf "$DEMO"
  echo "demo stopped and removed"
}

write_config() {  # node index
  local node=n$1 dir=$DEMO/n$1
  mkdir -p "$dir/images" "$dir/log"
  ln -sf "$GUEST/base.qcow2" "$dir/images/busybox-guest.qcow2"
  # Variables go in through printf, the rest through quoted here-documents: nothing in the text
  # (such as the backticks of a comment) is ever run by the shell.
  {
    printf '[node]\nname = "%s"\naddress = "%s.%s"\n\n' "$node" "$NET" "$1"
    cat <<'TOML'
[ports]
api = 17947
rapi = 15080
gossip = 17946
serf_rpc = 17373
etcd_client = 12379
etcd_peer = 12380

TOML
    printf '[paths]\nstate_dir = "%s"\nrun_dir = "%s"\nlog_dir = "%s"\n' "$dir/state" "$dir/run" "$dir/log"
    printf 'os_search_paths = ["%s"]\nimage_paths = ["%s"]\n' "$TOP/packaging/os" "$dir/images"
    printf 'kernel_dirs = ["/boot", "%s"]\n\n' "$GUEST"  # the test guest's kernel, wherever it was built
    cat <<'TOML'
[agent]
drills = true    # the README tour runs `corral drill master-failover`
TOML
  } > "$dir/agent.toml"
}

start_agent() {  # node index
  local dir=$DEMO/n$1
  echo "==> starting corral-agent for node n$1 on $NET.$1 (log: .demo/n$1/agent.log)"
  # Under a restart loop, as systemd's Restart=on-failure would run it: the drill kills agents.
  setsid "$TOP/packaging/supervise-agent.sh" "$VENV/bin/corral-agent" --config "$dir/agent.toml" \
    >"$dir/agent.log" 2>&1 < /dev/null &
  echo $! > "$dir/supervisor.pid"
  for _ in $(seq 1 300); do [ -S "$dir/run/agent.sock" ] && break; sleep 0.1; done  # 30 s: a loaded host starts Python slowly
  [ -S "$dir/run/agent.sock" ] || { echo "the agent of n$1 did not start; see .demo/n$1/agent.log"; exit 1; }
}

wait_until() {  # seconds, description, command...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq 1 $((seconds * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "warning: gave up after $seconds s waiting for $what"
  return 1
}

booted() { grep -q CORRAL-GUEST-BOOTED "$DEMO/$1/log/console/$2.console.log"; }

three_candidates() { corral n1 cluster info --json | grep -q '"n3"' && corral n1 cluster info --json | grep -q '"n2"'; }

start() {
  if ls "$DEMO"/*/supervisor.pid >/dev/null 2>&1; then
    echo "a demo is already here; \`make demo-stop\` first to start over"
    exit 1
  fi
  stop_qemus  # leftovers of an earlier demo whose agents died
  rm -rf "$DEMO"
  for i in 1 2 3; do write_config "$i"; start_agent "$i"; done
  corral n1 cluster init --name demo \
    --hv "accel=tcg,kernel_path=$GUEST/vmlinuz,initrd_path=$GUEST/initrd.img,kernel_args=quiet"
  for i in 2 3; do
    token=$(corral n1 node add "n$i" --address "$NET.$i" --json | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    corral "n$i" cluster join "$NET.1:17947" --token "$token"
  done
  echo "==> waiting for n2 and n3 to become master candidates (etcd members)"
  wait_until 90 "three master candidates" three_candidates || true
  for i in 1 2 3; do
    corral n1 instance add "web$i" --os busybox-guest --node "n$i" --memory 256M --disk 256M,format=qcow2
  done
  corral n1 instance add db1 --os busybox-guest --disk-template mirror --node n2:n3 --memory 256M --disk 256M \
    --auto-failover yes --priority critical
  echo "==> waiting for the guests to boot"
  for i in 1 2 3; do wait_until 60 "web$i to boot" booted "n$i" "web$i" || true; done
  wait_until 60 "db1 to boot" booted n2 db1 || true
  corral n1 node list
  echo
  corral n1 instance list
  cat <<MSG

The demo cluster is running: three agents (n1, n2, n3) on $NET.1-3, state in .demo/.
Point corral at any node and look around:

  export PATH=$VENV/bin:\$PATH
  export CORRAL_SOCKET=$DEMO/n1/run/agent.sock     # or n2, n3: every node answers
  corral cluster info
  corral node list
  corral instance info web1
  corral instance console web1      # Ctrl-] to detach
  corral instance info db1          # a mirror instance: its disk is copied to n3 as it writes
  corral instance migrate db1       # live migration to n3; prints the guest's pause

Run the master-failover drill from a node that is not the master:

  CORRAL_SOCKET=$DEMO/n3/run/agent.sock corral drill master-failover --rounds 3

Lose db1's node on purpose: n2 is cut off, stops db1 itself, and db1 runs on n3:

  CORRAL_SOCKET=$DEMO/n1/run/agent.sock corral drill node-loss n2

Stop it all with: make demo-stop
MSG
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
