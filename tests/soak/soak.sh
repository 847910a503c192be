#!/usr/bin/env bash
# `make soak`: the agent and the data hub under a steady mix of requests for
# SOAK_SECONDS (default 600), on the static release binaries the guest image
# ships; the test is agent/tests/soak (it samples, judges and fails). Then
# plots the CSV and writes the "## Soak (N min)" section of
# docs/BENCHMARKS.md with the plot as docs/soak-Nmin.png.
#   SOAK_SECONDS      run time (default 600; the documented run is 3600)
#   SOAK_SAMPLE_SECS  sampling period (default 10)
#   SOAK_OUT          CSV, summary and plot (default target/soak)
#   SOAK_DOC=0        do not touch docs/
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
export SOAK_SECONDS=${SOAK_SECONDS:-600}
export SOAK_OUT=${SOAK_OUT:-$ROOT/target/soak}
CARGO=${CARGO:-cargo}
REL=$ROOT/target/x86_64-unknown-linux-gnu/release
[ "$(id -u)" = 0 ] || { echo "soak needs root (namespaces, cgroups, mounts)" >&2; exit 1; }
command -v gnuplot >/dev/null || {
  echo "installing gnuplot-nox (the soak's plot)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnuplot-nox; } >/dev/null
}

make -s release >/dev/null
mkdir -p "$SOAK_OUT"
echo "soak: ${SOAK_SECONDS}s on $(nproc) cores; progress every ${SOAK_SAMPLE_SECS:-10}s, output in $SOAK_OUT"
status=0
CI=true CVM_AGENT_TEST_BIN=$REL/cvm-agent CVM_AGENT_TEST_CDH=$REL/confidential-data-hub CVM_AGENT_TEST_PAUSE=$REL/pause \
  $CARGO test -q -p cvm-agent --test soak -- --ignored --exact soak --nocapture || status=$?

min=$(( SOAK_SECONDS / 60 ))
if [ -s "$SOAK_OUT/soak.csv" ]; then
  gnuplot -e "csv='$SOAK_OUT/soak.csv'; png='$SOAK_OUT/soak.png'; title='cvm-agent soak, ${min} min'" tests/soak/plot.gp
  echo "plot: $SOAK_OUT/soak.png"
fi
if [ "${SOAK_DOC:-1}" != 0 ] && [ -s "$SOAK_OUT/summary.md" ]; then
  cp "$SOAK_OUT/soak.png" "docs/soak-${min}min.png"
  python3 - "$SOAK_OUT/summary.md" "$min" <<'PY'
import datetime, os, sys
sys.path.insert(0, "tests/bench")
from bench_doc import replace_section
summary, minutes = open(sys.argv[1]).read(), sys.argv[2]
heading = f"## Soak ({minutes} min)"
section = (
    f"{heading}\n\n"
    f"`make soak SOAK_SECONDS={int(minutes) * 60}` on {datetime.date.today()} ({os.cpu_count()} cores): the static release "
    "agent and data hub, driven over ttrpc by agent/tests/soak: 2 workers of container lifecycles (12 KiB of stdout, "
    "stderr), execs in one container (4 KiB stdin round trips through cat, a terminal, SIGKILL of a sleep), guest pulls "
    "of two images (gzip, zstd) from a local registry through the data hub, a 32 MiB-limited container OOM-killed every "
    "few seconds with one GetOOMEvent long poll open, and StatsContainer + GetMetrics once a second. Judged after the "
    "warm-up: the median of the last third of the load against the first third, and the idle state after the load "
    "against the idle state after the warm-up.\n\n"
    f"{summary}\n![soak plot](soak-{minutes}min.png)\n"
)
replace_section("docs/BENCHMARKS.md", heading, section)
PY
  echo "docs/BENCHMARKS.md: section \"Soak (${min} min)\" written"
fi
exit $status
