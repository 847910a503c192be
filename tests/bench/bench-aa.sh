#!/bin/sh
# Key-release latency of the attestation-agent's KBS client against the test
# KBS on loopback: attestation + first resource, each later resource, and the
# peer behaviour (a full RCAR handshake per resource) in the same run.
# Writes the "attestation-agent" section of docs/BENCHMARKS.md.
#   PROFILE=release|dev (default release)   N=resources (default 200)
set -eu
cd "$(dirname "$0")/../.."
PROFILE=${PROFILE:-release}
N=${N:-200}
flag=""
[ "$PROFILE" = release ] && flag="--release"
cargo build -q $flag -p attestation-agent --example bench_kbs
bin=target/$([ "$PROFILE" = release ] && echo release || echo debug)/examples/bench_kbs
ec=$($bin "$N" ec-p256)
rsa=$($bin "$N" rsa-2048)
echo "$ec"; echo "$rsa"
get() { echo "$1" | sed -n "s/^$2=//p"; }
row() {
  echo "| $(get "$1" tee_key) | $(get "$1" first_ms) | $(get "$1" later_p50_ms) | $(get "$1" later_p99_ms) | $(get "$1" handshake_per_resource_p50_ms) | $(get "$1" speedup_vs_handshake_per_resource)x |"
}
section=$(cat <<EOT
## attestation-agent: key release (test KBS on loopback)

Measured by \`tests/bench/bench-aa.sh\` (profile: $PROFILE, $N resources of 32 bytes, sample TEE,
HTTP on 127.0.0.1, $(nproc) cores shared with other builds, $(date -u +%Y-%m-%d)). "Handshake per
resource" is the peer behaviour (a client without session reuse does auth + attest + resource every
time), measured in the same run; the ratio is how much faster a later resource is with our reuse.

| TEE key | attestation + first resource (ms) | later resource p50 (ms) | later p99 (ms) | handshake per resource p50 (ms) | ratio |
|---|---|---|---|---|---|
$(row "$ec")
$(row "$rsa")
EOT
)
doc=docs/BENCHMARKS.md
touch "$doc"
# Replace our own section (up to the next "## " heading), keep everyone else's.
awk -v new="$section" '
  /^## attestation-agent:/ { skip=1; print new; done=1; next }
  /^## / && skip { skip=0 }
  !skip { print }
  END { if (!done) { print ""; print new } }
' "$doc" > "$doc.tmp" && mv "$doc.tmp" "$doc"
echo "updated $doc"
