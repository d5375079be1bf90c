#!/usr/bin/env bash
# `make demo` / `make demo-stop`: a one-node Corral cluster on 127.0.0.1 with
# its state under ./.demo, running one instance booted from the test guest.
set -euo pipefail
cd "$(dirname "$0")/.."
TOP=$PWD
DEMO=$TOP/.demo
VENV=${VENV:-$TOP/.venv}
GUEST=${CORRAL_GUEST_DIR:-/var/cache/corral/guest}
export CORRAL_SOCKET=$DEMO/run/agent.sock
CORRAL="$VENV/bin/corral"

stop_qemus() {
  # QEMU outlives the agent by design: stop the demo's own instances by pidfile.
  for pidfile in "$DEMO"/run/instances/*/qemu.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$DEMO/run"; then
      echo "==> stopping instance QEMU pid $pid"
      kill "$pid" 2>/dev/null || true
    fi
  done
}

stop() {
  if [ -f "$DEMO/agent.pid" ]; then
    pid=$(cat "$DEMO/agent.pid")
    if kill -0 "$pid" 2>/dev/null; then
      echo "==> stopping the demo agent (pid $pid)"
      kill "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  stop_qemus
  rm -rf "$DEMO"
  echo "demo stopped and removed"
}

start() {
  if [ -f "$DEMO/agent.pid" ] && kill -0 "$(cat "$DEMO/agent.pid")" 2>/dev/null; then
    echo "the demo is already running; \`make demo-stop\` first to start over"
    exit 1
  fi
  stop_qemus  # leftovers of an earlier demo whose agent died
  rm -rf "$DEMO"
  mkdir -p "$DEMO/images" "$DEMO/log"
  ln -s "$GUEST/base.qcow2" "$DEMO/images/busybox-guest.qcow2"
  cat > "$DEMO/agent.toml" <<TOML
[node]
name = "demo1"
address = "127.0.0.1"

[ports]
api = 17947
gossip = 17946
serf_rpc = 17373
etcd_client = 12379
etcd_peer = 12380

[paths]
state_dir = "$DEMO/state"
run_dir = "$DEMO/run"
log_dir = "$DEMO/log"
os_search_paths = ["$TOP/packaging/os"]
image_paths = ["$DEMO/images"]
TOML
  echo "==> starting corral-agent for node demo1 (log: .demo/log/agent.log)"
  setsid "$VENV/bin/corral-agent" --config "$DEMO/agent.toml" >"$DEMO/log/agent.log" 2>&1 < /dev/null &
  echo $! > "$DEMO/agent.pid"
  for _ in $(seq 1 100); do [ -S "$CORRAL_SOCKET" ] && break; sleep 0.1; done
  [ -S "$CORRAL_SOCKET" ] || { echo "the agent did not start; see .demo/log/agent.log"; exit 1; }
  $CORRAL cluster init --name demo \
    --hv "accel=tcg,kernel_path=$GUEST/vmlinuz,initrd_path=$GUEST/initrd.img,kernel_args=quiet"
  $CORRAL instance add web1 --os busybox-guest --memory 256M --disk 256M,format=qcow2
  echo "==> waiting for web1 to boot"
  booted=no
  for _ in $(seq 1 120); do
    if grep -q CORRAL-GUEST-BOOTED "$DEMO"/log/console/web1.console.log 2>/dev/null; then booted=yes; break; fi
    sleep 0.5
  done
  [ $booted = yes ] || echo "warning: web1 printed no boot marker within 60 s; see \`corral instance info web1\`"
  $CORRAL instance list
  cat <<MSG

The demo cluster is running: one agent (node demo1) on 127.0.0.1, state in .demo/.
Point corral at it and look around:

  export CORRAL_SOCKET=$CORRAL_SOCKET
  export PATH=$VENV/bin:\$PATH
  corral cluster info
  corral node list
  corral instance info web1
  corral instance console web1      # Ctrl-] to detach

Stop it all with: make demo-stop
MSG
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
