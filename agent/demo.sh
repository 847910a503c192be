#!/usr/bin/env bash
# Local demo: cvm-agent on a unix socket, driven by cvm-agent-ctl.
# Usage: agent/demo.sh DIR_WITH_BINARIES
set -euo pipefail
bin=${1:?usage: demo.sh DIR_WITH_BINARIES}
work=$(mktemp -d)
sock="$work/agent.sock"
agent_pid=
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/cvm-agent" --server-addr "unix://$sock" --policy-file "$(dirname "$0")/policy/allow-all.rego" --log-format json 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { echo "agent did not start:"; cat "$work/agent.log"; exit 1; }

ctl() { echo "\$ cvm-agent-ctl $*"; "$bin/cvm-agent-ctl" --addr "unix://$sock" "$@"; }
ctl check
ctl version
ctl call CreateContainer '{"container_id":"demo","OCI":{"Version":"1.0.2","Process":{"Args":["/bin/true"]}}}' \
  && { echo "unexpected success"; exit 1; } || echo "(exit $? as expected: the spec names no rootfs)"

kill -TERM "$agent_pid"; wait "$agent_pid"; agent_pid=
echo "--- agent log (JSON lines) ---"
cat "$work/agent.log"
[ ! -e "$sock" ] && echo "agent stopped cleanly and removed its socket"
