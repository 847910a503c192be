#!/bin/sh
# Runs every fuzz target (or those named) for FUZZ_SECONDS each, stopping at
# the first crash, timeout or OOM with a non-zero exit. Used by `make fuzz`
# and, with FUZZ_SECONDS=20 FUZZ_SANITIZER=none, by `make test` (CI).
#   FUZZ_SECONDS    time per target (default 60; 0: build only)
#   FUZZ_TARGETS    space-separated targets (default: all of `cargo fuzz list`)
#   FUZZ_SANITIZER  address (default) or none: without ASan the build is
#                   cheaper and runs about twice the executions; panics,
#                   timeouts and OOMs are caught either way
# cargo-fuzz runs on the nightly toolchain when there is one, else on the
# stable one with RUSTC_BOOTSTRAP=1 (its -Z flags), so a machine with only
# the stable toolchain fuzzes too.
set -eu
cd "$(dirname "$0")/.."
SECONDS_PER=${FUZZ_SECONDS:-60}
SANITIZER=${FUZZ_SANITIZER:-address}
CARGO=${CARGO:-cargo}
if $CARGO +nightly --version >/dev/null 2>&1; then
  fuzz="$CARGO +nightly fuzz"
else
  export RUSTC_BOOTSTRAP=1
  fuzz="$CARGO fuzz"
  echo "fuzz: no nightly toolchain; cargo-fuzz on $($CARGO --version) with RUSTC_BOOTSTRAP=1"
fi
$fuzz --version >/dev/null 2>&1 || {
  echo "cargo-fuzz is needed: cargo install --locked cargo-fuzz (make deps does it)" >&2
  exit 1
}
TARGETS=${FUZZ_TARGETS:-$($fuzz list --fuzz-dir fuzz)}
sh fuzz/seed.sh
start=$(date +%s)
$fuzz build --fuzz-dir fuzz -s "$SANITIZER"
echo "fuzz: build (sanitizer: $SANITIZER) took $(( $(date +%s) - start ))s"
[ "$SECONDS_PER" = 0 ] && exit 0

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
  if ! $fuzz run --fuzz-dir fuzz -s "$SANITIZER" "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$SECONDS_PER" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="fuzz/artifacts/$t/"; then
    echo >&2
    echo "FUZZ FAILURE in $t; the input is in fuzz/artifacts/$t/:" >&2
    ls -t "fuzz/artifacts/$t" | head -3 | sed "s|^|  fuzz/artifacts/$t/|" >&2
    # CI keeps only its log: the input goes there too, to be saved from it.
    newest=$(ls -t "fuzz/artifacts/$t" | head -1)
    [ -n "$newest" ] && { echo "Its bytes (base64 -d > fuzz/regressions/$t/<what-it-found>):" >&2; base64 -w0 "fuzz/artifacts/$t/$newest" >&2; echo >&2; }
    echo "Reproduce: $fuzz run --fuzz-dir fuzz -s $SANITIZER $t fuzz/artifacts/$t/<file>" >&2
    echo "Then keep it as a regression input, replayed by \`cargo test\` of $(owner "$t"):" >&2
    echo "  mkdir -p fuzz/regressions/$t && cp fuzz/artifacts/$t/<file> fuzz/regressions/$t/<what-it-found>" >&2
    exit 1
  fi
done
echo "fuzz: $(echo $TARGETS | wc -w) targets ran ${SECONDS_PER}s each without a finding; $(( $(date +%s) - start ))s in all"
