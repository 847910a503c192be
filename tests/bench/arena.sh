#!/usr/bin/env bash
# A/B of the agent's malloc tuning (agent/src/memory.rs): one glibc arena
# (what the agent sets) against glibc's default of 8 per core, with K shim
# connections each running N create+start+wait+remove of /bin/true at once.
# Prints wall time, median latency, peak and idle RSS per round; rounds
# alternate the two settings. Needs root. Not part of `make bench`: it
# backs a tuning choice, not an issue's target.
set -euo pipefail

K=${K:-16}; N=${N:-20}; ROUNDS=${ROUNDS:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=bench-arena
. "$ROOT/tests/bench/agent_common.sh" >/dev/null

arenas=$(( 8 * $(nproc) ))
one_round() { # label round [VAR=value for the agent]
  local label=$1 r=$2 k clients=() t0 t1 hwm rss med
  shift 2
  start_agent "$label" "$@"
  "$CLIENT" "$W/agent.sock" "$B" 3 "warm-$label-$r" >/dev/null
  t0=$EPOCHREALTIME
  for k in $(seq "$K"); do
    "$CLIENT" "$W/agent.sock" "$B" "$N" "$label-$r-$k" >"$W/$label-$r-$k.us" &
    clients+=($!)
  done
  wait "${clients[@]}"
  t1=$EPOCHREALTIME
  sleep 12 # tokio's blocking-pool threads exit after 10 s idle
  hwm=$(awk '/VmHWM/{print $2}' "/proc/$agent_pid/status")
  rss=$(awk '/VmRSS/{print $2}' "/proc/$agent_pid/status")
  stop_agent
  med=$(cat "$W/$label-$r-"*.us | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '%-14s round %d: %s s for %d lifecycles, median %d us, peak RSS %d KiB, idle RSS %d KiB\n' \
    "$label" "$r" "$(echo "$t0 $t1" | awk '{printf "%.2f", $2-$1}')" $((K * N)) "$med" "$hwm" "$rss"
}
echo "$K connections x $N lifecycles, $ROUNDS rounds each; glibc default = $arenas arenas"
for r in $(seq "$ROUNDS"); do
  one_round one-arena "$r"
  one_round glibc-default "$r" MALLOC_ARENA_MAX=$arenas
done
