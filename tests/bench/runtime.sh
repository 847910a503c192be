#!/usr/bin/env bash
# Container start latency: create + start + wait (+ delete) of /bin/true on
# one busybox bundle, through the agent over a unix socket (one ttrpc
# connection kept open, as a shim does) against `crun run` and `runc run`.
# Medians of RUNS runs per tool (default 30), in interleaved blocks; writes
# the "Container runtime" section of docs/BENCHMARKS.md. Needs root.
set -euo pipefail

RUNS=${RUNS:-30}
BLOCKS=3
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=bench-runtime
command -v crun >/dev/null || { echo "missing crun: run 'make deps' (apt-get install crun runc busybox-static)" >&2; exit 1; }

started=$(date +%s)
. "$ROOT/tests/bench/agent_common.sh"
start_agent main

per_block=$(( (RUNS + BLOCKS - 1) / BLOCKS ))
: > "$W/agent.us"; : > "$W/crun.us"; : > "$W/runc.us"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# Each timed loop runs in bash with $EPOCHREALTIME (no fork for the clock).
peer_loop() { # tool root prefix count out
  local tool=$1 root=$2 prefix=$3 n=$4 out=$5 i t0 t1
  for i in $(seq "$n"); do
    t0=$EPOCHREALTIME
    "$tool" --root "$root" run -b "$B" "$prefix-$i" </dev/null >/dev/null
    t1=$EPOCHREALTIME
    echo "$t0 $t1" | awk '{printf "%d\n", ($2-$1)*1e6}' >> "$out"
  done
}
export -f peer_loop
export B
for blk in $(seq "$BLOCKS"); do
  echo "block $blk/$BLOCKS: $per_block runs each"
  "$CLIENT" "$W/agent.sock" "$B" "$per_block" "a$blk" >> "$W/agent.us"
  # crun refuses hybrid cgroups here: run it without the v2 mount, in a
  # private mount namespace (see shared/PEERS.md); the setup is not timed.
  unshare -m --propagation private bash -c "umount /sys/fs/cgroup/unified 2>/dev/null || true; peer_loop crun '$W/crun' c$blk $per_block '$W/crun.us'"
  peer_loop runc "$W/runc" "r$blk" "$per_block" "$W/runc.us"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(( $(date +%s) - started ))

python3 "$ROOT/tests/bench/runtime_report.py" "$W" "$ROOT/docs/BENCHMARKS.md" \
  "$(git -C "$ROOT" rev-parse --short HEAD)" "$load_before" "$load_after" "$elapsed" \
  "$(crun --version | head -1)" "$(runc --version | head -1)" "$RUNS"
