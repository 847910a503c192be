#!/usr/bin/env bash
# Cost of the agent's request policy. (1) The container lifecycle (create +
# start + wait + remove of /bin/true, through the agent over a unix socket)
# with the confidential default policy, with allow-all, and with no policy
# engine at all (a `bench-no-policy` build), medians of RUNS (default 30) in
# interleaved blocks. (2) In-process evaluation time per request kind for the
# shipped confidential policy and the genpolicy-shaped pod policy of the
# tests; with KATA_RULES_POLICY=FILE and KATA_RULES_CASES=FILE also for a
# policy built from kata's genpolicy rules.rego (not shipped here: kata's
# Rego is theirs). Writes the "Agent request policy" section of
# docs/BENCHMARKS.md. Needs root.
set -euo pipefail

RUNS=${RUNS:-30}
ROUNDS=${ROUNDS:-200}
BLOCKS=3
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=bench-policy
started=$(date +%s)
. "$ROOT/tests/bench/agent_common.sh"

echo "building the no-policy baseline agent and the evaluation bench..."
(cd "$ROOT" && RUSTFLAGS="${GUEST_RUSTFLAGS:--C target-feature=+crt-static}" cargo build -q --release --target "$TARGET" \
  -p cvm-agent --bin cvm-agent --features bench-no-policy)
cp "$REL/cvm-agent" "$W/cvm-agent-no-policy"
(cd "$ROOT" && RUSTFLAGS="${GUEST_RUSTFLAGS:--C target-feature=+crt-static}" cargo build -q --release --target "$TARGET" \
  -p cvm-agent --bin cvm-agent --example policy_bench)

# The confidential policy, with the bench bundle's directory added to its
# root-path allow-list (the bundle is not under /run/kata-containers); the
# rules and their cost are unchanged.
sed 's|"root_prefixes": \[|"root_prefixes": ["/tmp/", |' "$ROOT/agent/policy/confidential.rego" > "$W/confidential.rego"
grep -q '"/tmp/", ' "$W/confidential.rego" || { echo "could not widen root_prefixes" >&2; exit 1; }

per_block=$(( (RUNS + BLOCKS - 1) / BLOCKS ))
: > "$W/none.us"; : > "$W/allow-all.us"; : > "$W/confidential.us"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for blk in $(seq "$BLOCKS"); do
  echo "block $blk/$BLOCKS: $per_block runs each"
  AGENT="$W/cvm-agent-no-policy" start_agent none
  "$CLIENT" "$W/agent.sock" "$B" "$per_block" "n$blk" >> "$W/none.us"; stop_agent
  AGENT="$REL/cvm-agent" start_agent allow-all
  "$CLIENT" "$W/agent.sock" "$B" "$per_block" "a$blk" >> "$W/allow-all.us"; stop_agent
  AGENT="$REL/cvm-agent" start_agent confidential KATA_AGENT_POLICY_FILE="$W/confidential.rego"
  "$CLIENT" "$W/agent.sock" "$B" "$per_block" "c$blk" >> "$W/confidential.us"; stop_agent
  grep -q "decision=\"allow\"" "$W/agent-confidential.log" || { echo "no policy decisions logged" >&2; exit 1; }
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

EVAL=$REL/examples/policy_bench
"$EVAL" "$ROOT/agent/policy/confidential.rego" "$ROOT/agent/tests/policy/confidential/testcases.json" "$ROUNDS" > "$W/eval-confidential.txt"
"$EVAL" "$ROOT/agent/tests/policy/pod/policy.rego" "$ROOT/agent/tests/policy/pod/testcases.json" "$ROUNDS" > "$W/eval-pod.txt"
if [ -n "${KATA_RULES_POLICY:-}" ] && [ -n "${KATA_RULES_CASES:-}" ]; then
  "$EVAL" "$KATA_RULES_POLICY" "$KATA_RULES_CASES" "$ROUNDS" > "$W/eval-kata.txt"
fi
elapsed=$(( $(date +%s) - started ))

python3 "$ROOT/tests/bench/policy_report.py" "$W" "$ROOT/docs/BENCHMARKS.md" \
  "$(git -C "$ROOT" rev-parse --short HEAD)" "$load_before" "$load_after" "$elapsed" "$RUNS" "$ROUNDS"
