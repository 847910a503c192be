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
TARGET=x86_64-unknown-linux-gnu
REL="$ROOT/target/$TARGET/release"

[ "$(id -u)" = 0 ] || { echo "bench-runtime needs root (namespaces, cgroups)" >&2; exit 1; }
for tool in crun runc busybox python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run 'make deps' (apt-get install crun runc busybox-static)" >&2; exit 1; }
done

started=$(date +%s)
echo "building the static release agent and the bench client..."
(cd "$ROOT" && RUSTFLAGS="${GUEST_RUSTFLAGS:--C target-feature=+crt-static}" cargo build -q --release --target "$TARGET" -p cvm-agent --bin cvm-agent --example runtime_bench)
AGENT=${BENCH_AGENT:-$REL/cvm-agent}
CLIENT=$REL/examples/runtime_bench

W=$(mktemp -d /tmp/bench-runtime.XXXXXX)
agent_pid=
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  # The (empty) cgroup directories the agent made under its parent.
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [ -d "${h}cvm-bench" ] && find "${h}cvm-bench" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  rm -rf "$W"
}
trap cleanup EXIT

# One bundle for all three: busybox rootfs, `runc spec` defaults, /bin/true.
B=$W/bundle
mkdir -p "$B/rootfs/bin" "$B/rootfs/proc" "$B/rootfs/sys" "$B/rootfs/dev" "$B/rootfs/tmp" "$B/rootfs/etc"
cp /bin/busybox "$B/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$B/rootfs/bin/$a"; done
(cd "$B" && runc spec)
python3 - "$B/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c["process"]["args"] = ["/bin/true"]
c["process"]["terminal"] = False
c["root"]["readonly"] = True
json.dump(c, open(p, "w"), indent=1)
PY

CVM_AGENT_RUN_DIR=$W/run CVM_AGENT_CGROUP_PARENT=cvm-bench "$AGENT" --server-addr "unix://$W/agent.sock" --log-level warn 2>"$W/agent.log" &
agent_pid=$!
for _ in $(seq 200); do [ -S "$W/agent.sock" ] && break; sleep 0.05; done
[ -S "$W/agent.sock" ] || { cat "$W/agent.log"; exit 1; }

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
