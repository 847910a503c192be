# Sourced by the agent benchmarks (runtime.sh, arena.sh) once they have set
# ROOT and BENCH (their name). Builds the static release agent and the bench
# client, makes a work dir $W with an OCI bundle $B of busybox-static
# (`runc spec` defaults, /bin/true on a read-only rootfs), and offers
# start_agent / stop_agent. Everything is removed on exit.

TARGET=x86_64-unknown-linux-gnu
REL="$ROOT/target/$TARGET/release"
[ "$(id -u)" = 0 ] || { echo "$BENCH needs root (namespaces, cgroups)" >&2; exit 1; }
for tool in runc busybox python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run 'make deps'" >&2; exit 1; }
done

echo "building the static release agent and the bench client..."
(cd "$ROOT" && RUSTFLAGS="${GUEST_RUSTFLAGS:--C target-feature=+crt-static}" cargo build -q --release --target "$TARGET" -p cvm-agent --bin cvm-agent --example runtime_bench)
AGENT=${BENCH_AGENT:-$REL/cvm-agent}
CLIENT=$REL/examples/runtime_bench

W=$(mktemp -d "/tmp/$BENCH.XXXXXX")
CGROUP_PARENT=cvm-$BENCH
agent_pid=
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  # The (empty) cgroup directories the agent made under its parent.
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [ -d "${h}$CGROUP_PARENT" ] && find "${h}$CGROUP_PARENT" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  rm -rf "$W"
}
trap cleanup EXIT

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

# Starts the agent on $W/agent.sock (its log in $W/agent-LABEL.log) with
# the given extra VAR=value environment (the policy is allow-all unless
# KATA_AGENT_POLICY_FILE=... is among them); sets agent_pid.
start_agent() { # label [VAR=value...]
  local label=$1
  shift
  rm -f "$W/agent.sock"
  env KATA_AGENT_POLICY_FILE="$ROOT/agent/policy/allow-all.rego" "$@" CVM_AGENT_RUN_DIR="$W/run-$label" CVM_AGENT_CGROUP_PARENT="$CGROUP_PARENT" \
    "$AGENT" --server-addr "unix://$W/agent.sock" --log-level warn 2>"$W/agent-$label.log" &
  agent_pid=$!
  for _ in $(seq 200); do [ -S "$W/agent.sock" ] && break; sleep 0.05; done
  [ -S "$W/agent.sock" ] || { cat "$W/agent-$label.log"; exit 1; }
}

stop_agent() {
  kill "$agent_pid"
  wait "$agent_pid" 2>/dev/null || true
  agent_pid=
}
