#!/usr/bin/env bash
# Run corral-agent and start it again when it dies, as systemd's Restart=on-failure
# does on a real node. For the demo and tests, where there is no systemd.
# Usage: supervise-agent.sh /path/to/corral-agent --config FILE
# SIGTERM stops the agent and this loop. Exit codes 0 (clean stop) and 2 (bad
# config: restarting cannot help) end the loop too. A node powered off by a
# drill is held down by the agent itself (it waits out <run_dir>/drill-held-down
# before starting), so this loop needs to know nothing about drills.
set -u
child=0
stopping=0
on_term() {
  stopping=1
  [ "$child" -gt 0 ] && kill -TERM "$child" 2>/dev/null
}
trap on_term TERM INT
while [ "$stopping" = 0 ]; do
  "$@" &
  child=$!
  wait "$child"
  rc=$?
  # `wait` returns early when a trapped signal arrives: wait for the agent itself.
  while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
  [ "$stopping" = 1 ] && break
  case $rc in 0|2) break ;; esac
  echo "supervise-agent: corral-agent (pid $child) exited with status $rc; starting it again in 1 s" >&2
  sleep 1
done
