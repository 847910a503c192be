#!/bin/sh
# Runs every fuzz target (or those named) for FUZZ_SECONDS each, stopping at
# the first crash, timeout or OOM with a non-zero exit. Used by `make fuzz`.
#   FUZZ_SECONDS  time per target (default 60)
#   FUZZ_TARGETS  space-separated targets (default: all of `cargo fuzz list`)
set -eu
cd "$(dirname "$0")/.."
SECONDS_PER=${FUZZ_SECONDS:-60}
CARGO=${CARGO:-cargo}
nightly="$CARGO +nightly"
$nightly fuzz --version >/dev/null 2>&1 || {
  echo "cargo-fuzz on a nightly toolchain is needed: rustup toolchain install nightly && cargo +nightly install cargo-fuzz" >&2
  exit 1
}
TARGETS=${FUZZ_TARGETS:-$($nightly fuzz list --fuzz-dir fuzz)}
sh fuzz/seed.sh
$nightly fuzz build --fuzz-dir fuzz

# Which crate's `fuzzing` module (and regression test) owns a target.
owner() {
  case $1 in
    agent_request|flow_frames|oci_plan) echo cvm-agent ;;
    kbs_rcar) echo attestation-agent ;;
    initdata) echo "cvm-agent and attestation-agent" ;;
    configs) echo "cvm-agent, attestation-agent and confidential-data-hub" ;;
    *) echo image-rs ;;
  esac
}

for t in $TARGETS; do
  echo "== fuzz $t for ${SECONDS_PER}s"
  mkdir -p "fuzz/artifacts/$t"
  if ! $nightly fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$SECONDS_PER" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="fuzz/artifacts/$t/"; then
    echo >&2
    echo "FUZZ FAILURE in $t; the input is in fuzz/artifacts/$t/:" >&2
    ls -t "fuzz/artifacts/$t" | head -3 | sed "s|^|  fuzz/artifacts/$t/|" >&2
    echo "Reproduce: cargo +nightly fuzz run --fuzz-dir fuzz $t fuzz/artifacts/$t/<file>" >&2
    echo "Then keep it as a regression input, replayed by \`cargo test\` of $(owner "$t"):" >&2
    echo "  mkdir -p fuzz/regressions/$t && cp fuzz/artifacts/$t/<file> fuzz/regressions/$t/<what-it-found>" >&2
    exit 1
  fi
done
echo "fuzz: all targets ran ${SECONDS_PER}s without a finding"
