#!/usr/bin/env bash
# Confidential data hub benchmark, both parts in the same run, against a local
# docker-registry over plain HTTP on 127.0.0.1 (access log on):
#  1. PullImage through `confidential-data-hub` (called over its unix socket by
#     the pull_bench example, the generated ttrpc client) against the
#     `image-pull` CLI on the same ~100 MB (compressed), 5-layer image
#     (tests/bench/gen_image.py), every run cold (fresh daemon and store / fresh
#     --work-dir), interleaved. Target: CDH ≤ 1.05× the CLI (medians).
#  2. 4 images sharing the base layer of that image, each with a small layer
#     of its own (tests/bench/gen_shared.py), pulled through one fresh CDH all
#     at once (4 connections) vs one after another: wall-time ratio, and how
#     many times the registry served the shared base blob (must be 1).
#
#     bash tests/bench/cdh.sh             (make bench-cdh)
#
# Environment knobs (defaults in brackets):
#   BENCH_RUNS=5           measured runs per variant, both parts (medians are reported)
#   BENCH_SIZE_MB=260      uncompressed size of the part-1 image (~100 MB gzip)
#   BENCH_BIN_DIR=DIR      use confidential-data-hub, image-pull and pull_bench from DIR (no build)
#   BENCH_WRITE_DOC=1|0    refresh "## Confidential data hub" in docs/BENCHMARKS.md [1 for the default size]
#   BENCH_TMPFS=1|0        stores and bundles on a private tmpfs [1]; 0: in BENCH_TMPDIR
#   BENCH_TMPFS_MB=4096    its size
#   BENCH_TMPDIR=DIR       scratch space [$TMPDIR or /tmp] (registry storage; stores too with BENCH_TMPFS=0)
#
# Exit status: 0 when every pull succeeded (a MISS is reported, not fatal);
# non-zero when something could not be set up or a pull failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/bench
RUNS=${BENCH_RUNS:-5}
SIZE_MB=${BENCH_SIZE_MB:-260}
LAYERS=5 FILES=2000 SEED=20240501 SHARED=4
# Bump when the generators' output changes; the cache keys also hash the scripts.
GEN_VERSION=v1
TARGET=x86_64-unknown-linux-gnu
BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/release
WRITE_DOC=${BENCH_WRITE_DOC:-$([[ $SIZE_MB == 260 ]] && echo 1 || echo 0)}

STARTED=$EPOCHREALTIME
log() { printf '[bench-cdh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer"
SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo

need=()
for t in docker-registry skopeo curl python3; do command -v $t >/dev/null || need+=($t); done
[[ -x /usr/bin/time ]] || need+=(time)
. "$ROOT/tests/bench/bench_lib.sh"
install_missing ${need[@]+"${need[@]}"}
[[ $(id -u) == 0 ]] || die "needs root (unpack preserving owners, overlay mounts)"

# ------------------------------------------------------------------ scratch + cleanup
T=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/bench-cdh.XXXXXX")
REG_PID=
CDH_PID=
cleanup() {
  local rc=$?
  set +e
  stop_pid "$CDH_PID"
  stop_pid "$REG_PID"
  unmount_under "$T"
  if [[ ${BENCH_KEEP_TMP:-0} == 1 ]]; then log "kept $T"; else rm -rf "$T"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ binaries
COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(cd "$ROOT" && git status --porcelain -- confidential-data-hub image-rs protos Cargo.toml Cargo.lock 2>/dev/null) ]] ||
  COMMIT="$COMMIT + uncommitted changes"
if [[ -n ${BENCH_BIN_DIR:-} ]]; then
  BIN_DIR=$(readlink -f "$BENCH_BIN_DIR")
  BIN_DIR_EXAMPLES=$BIN_DIR
  COMMIT="binaries given by BENCH_BIN_DIR"
else
  log "building confidential-data-hub, image-pull and the pull_bench client (release, static)"
  (cd "$ROOT" && RUSTFLAGS="${GUEST_RUSTFLAGS:--C target-feature=+crt-static}" cargo build -q --release --target $TARGET \
    -p confidential-data-hub -p image-rs --bins --example pull_bench) || die "cargo build failed"
  BIN_DIR_EXAMPLES=$BIN_DIR/examples
fi
# Copied at once: the target dir may be shared with other builds, which
# overwrite the uplifted binaries.
mkdir -p "$T/bin"
cp "$BIN_DIR/confidential-data-hub" "$BIN_DIR/image-pull" "$BIN_DIR_EXAMPLES/pull_bench" "$T/bin/" ||
  die "release binaries missing under $BIN_DIR"
CDH=$T/bin/confidential-data-hub
CLI=$T/bin/image-pull
CLIENT=$T/bin/pull_bench

# ------------------------------------------------------------------ images (cached)
GEN_HASH=$(cat "$HERE/gen_image.py" "$HERE/gen_shared.py" | sha256sum | cut -c1-12)
CACHE=$ROOT/target/bench-cache/cdh-$GEN_VERSION-$GEN_HASH-s$SEED-${SIZE_MB}m-${LAYERS}l-${FILES}f
if [[ ! -f $CACHE/shared/shared.json ]]; then
  log "generating the ${SIZE_MB} MB image and the $SHARED shared-base images into $CACHE (once; cached)"
  mkdir -p "$(dirname "$CACHE")"
  rm -rf "$CACHE.tmp"
  python3 "$HERE/gen_image.py" "$CACHE.tmp/image" --size-mb "$SIZE_MB" --layers "$LAYERS" --files "$FILES" \
    --seed "$SEED" --tag 1 >/dev/null || die "image generation failed"
  python3 "$HERE/gen_shared.py" "$CACHE.tmp/image" "$CACHE.tmp/image/bench-image.json" "$CACHE.tmp/shared" \
    --count "$SHARED" --seed "$SEED" >/dev/null || die "shared-base image generation failed"
  rm -rf "$CACHE" && mv "$CACHE.tmp" "$CACHE"
else
  log "using cached images $CACHE"
fi
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"d": d}))' "$1" "$2"; }
MANIFEST_DIGEST=$(jget "$CACHE/image/bench-image.json" 'd["manifest_digest"]')
mapfile -t LAYER_DIGESTS < <(jget "$CACHE/image/bench-image.json" '"\n".join(l["digest"] for l in d["layers"])')
BASE_DIGEST=$(jget "$CACHE/shared/shared.json" 'd["base_digest"]')

# ------------------------------------------------------------------ registry
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
IMAGE=$REG/bench:1
REG_LOG=$T/registry.log
mkdir -p "$T/registry"
cat >"$T/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  formatter: text
storage:
  filesystem:
    rootdirectory: $T/registry
http:
  addr: $REG
EOF
docker-registry serve "$T/registry.yml" >"$REG_LOG" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -fs "http://$REG/v2/" >/dev/null && break; sleep 0.1; done
curl -fs "http://$REG/v2/" >/dev/null || { cat "$REG_LOG" >&2; die "docker-registry did not start"; }
manifest_of() { # manifest_of REPO TAG: the digest the registry serves
  curl -fsI -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REG/v2/$1/manifests/$2" |
    tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest" {print $2}'
}
log "pushing the images to $REG"
skopeo copy -q --dest-tls-verify=false "oci:$CACHE/image:1" "docker://$IMAGE" >/dev/null || die "skopeo push failed"
[[ $(manifest_of bench 1) == "$MANIFEST_DIGEST" ]] || die "registry serves another manifest for $IMAGE"
SHARED_PULLS=()
for ((i = 1; i <= SHARED; i++)); do
  skopeo copy -q --dest-tls-verify=false "oci:$CACHE/shared:s$i" "docker://$REG/shared$i:1" >/dev/null ||
    die "skopeo push of shared$i failed"
  want=$(jget "$CACHE/shared/shared.json" "d['images'][$((i - 1))]['manifest_digest']")
  [[ $(manifest_of "shared$i" 1) == "$want" ]] || die "registry serves another manifest for shared$i:1"
done
# Warm the registry's page cache so every run reads the blobs from memory.
for d in "${LAYER_DIGESTS[@]}"; do curl -fs "http://$REG/v2/bench/blobs/$d" >/dev/null; done
grep -q "\"GET /v2/bench/blobs/$BASE_DIGEST HTTP" "$REG_LOG" || die "the registry's access log does not show blob GETs"

# ------------------------------------------------------------------ the daemon
start_cdh() { # start_cdh DIR: a fresh daemon with an empty store under DIR
  local dir=$1 i
  mkdir -p "$dir"
  CDH_SOCK=$dir/cdh.sock
  # No attestation-agent socket: the pull is not recorded in the runtime
  # measurements (the daemon warns and goes on, as guest-components does).
  cat >"$dir/cdh.toml" <<EOF
socket = "unix://$CDH_SOCK"

[aa]
aa_socket = "unix://$dir/no-attestation-agent.sock"

[image]
work_dir = "$dir/work"

[[image.registry_config.registry]]
prefix = "$REG"
location = "$REG"
insecure = true
EOF
  "$CDH" -c "$dir/cdh.toml" >/dev/null 2>"$dir/cdh.log" &
  CDH_PID=$!
  for i in $(seq 400); do
    [[ -S $CDH_SOCK ]] && return 0
    kill -0 "$CDH_PID" 2>/dev/null || break
    sleep 0.05
  done
  cat "$dir/cdh.log" >&2
  die "confidential-data-hub did not listen on $CDH_SOCK"
}
stop_cdh() {
  stop_pid "$CDH_PID"
  CDH_PID=
}

# ------------------------------------------------------------------ measuring
RESULTS=$T/results.tsv     # part 1: variant round wall user sys rss_kib rootfs_kind library_pull_s
SHARED_TSV=$T/shared.tsv   # part 2: mode round wall base_gets per-pull-seconds
CHECKS=$T/checks.tsv       # variant files bytes (first round only)
: >"$RESULTS"; : >"$SHARED_TSV"; : >"$CHECKS"
R=$T/fs/run                # per-run scratch, recreated (cold) every time
# Stores and bundles live on a tmpfs of their own unless BENCH_TMPFS=0: image-rs
# refuses to fill a filesystem past its free-space reserve (5%), which a
# nearly full disk is already below. Same filesystem for both paths.
mkdir -p "$T/fs"
if [[ ${BENCH_TMPFS:-1} == 1 ]]; then
  mount -t tmpfs -o "size=${BENCH_TMPFS_MB:-4096}m,mode=0755" bench-cdh "$T/fs" || die "cannot mount a tmpfs on $T/fs"
  SCRATCH="a private tmpfs (${BENCH_TMPFS_MB:-4096} MiB)"
else
  SCRATCH="$(df --output=fstype "$T/fs" | tail -n 1) under ${T%/*}"
fi
CLK_TCK=$(getconf CLK_TCK)
proc_cpu() { awk -v hz="$CLK_TCK" '{ printf "%.2f %.2f\n", $14 / hz, $15 / hz }' "/proc/$1/stat"; } # utime stime
tree_sig() { find "$1" -xdev -type f -printf '%s\n' | awk '{n++; s+=$1} END {print n+0, s+0}'; }
rootfs_kind() { if mountpoint -q "$1/rootfs"; then echo overlay; else echo flattened; fi; }
fresh_run_dir() {
  unmount_under "$R"
  rm -rf "$R"
  mkdir -p "$R"
  sync # no dirty pages of the previous run are written back during this one
}

run_cdh() {
  fresh_run_dir
  start_cdh "$R/cdh"
  local u0 s0 u1 s1 hwm wall lib
  read -r u0 s0 < <(proc_cpu "$CDH_PID")
  "$CLIENT" --socket "unix://$CDH_SOCK" "$IMAGE=$R/bundle" >"$R/client.out" 2>"$R/client.err" ||
    { cat "$R/client.err" "$R/cdh/cdh.log" >&2; die "PullImage through the CDH failed"; }
  read -r u1 s1 < <(proc_cpu "$CDH_PID")
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$CDH_PID/status")
  wall=$(awk -F'\t' '$1=="pull" {print $3}' "$R/client.out")
  [[ $(awk -F'\t' '$1=="pull" {print $4}' "$R/client.out") == "$MANIFEST_DIGEST" ]] ||
    die "the CDH answered another manifest digest: $(cat "$R/client.out")"
  # The library's own time for the pull (ImageClient::pull), from the daemon's "pulled" line.
  lib=$(grep ' pulled ' "$R/cdh/cdh.log" | grep -o 'secs=[0-9.]*' | tail -n 1 | cut -d= -f2)
  [[ -n $lib ]] || die "no 'pulled ... secs=' line in the CDH's log"
  printf 'cdh\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$wall" \
    "$(python3 -c "print(f'{$u1 - $u0:.2f}')")" "$(python3 -c "print(f'{$s1 - $s0:.2f}')")" "$hwm" \
    "$(rootfs_kind "$R/bundle")" "$lib" >>"$RESULTS"
  ((ROUND > 1)) || printf 'cdh\t%s\n' "$(tree_sig "$R/bundle/rootfs")" >>"$CHECKS"
  unmount_under "$R"
  stop_cdh
}

run_cli() {
  fresh_run_dir
  local t0 t1 u s rss lib
  t0=$EPOCHREALTIME
  /usr/bin/time -f '%U %S %M' -o "$R/time" "$CLI" --work-dir "$R/work" --plain-http "$IMAGE" "$R/bundle" \
    >/dev/null 2>"$R/cli.err" || { tail -n 20 "$R/cli.err" >&2; die "image-pull failed"; }
  t1=$EPOCHREALTIME
  read -r u s rss < <(tail -n 1 "$R/time")
  # The library's own time for the pull, from `pulled … in 0.71s: …` (10 ms resolution).
  lib=$(grep -o '^pulled .* in [0-9.]*s:' "$R/cli.err" | grep -o '[0-9.]*s:$' | tr -d 's:')
  [[ -n $lib ]] || die "no 'pulled ... in Ns' line on image-pull's stderr"
  printf 'cli\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$(python3 -c "print(f'{$t1 - $t0:.3f}')")" "$u" "$s" "$rss" \
    "$(rootfs_kind "$R/bundle")" "$lib" >>"$RESULTS"
  ((ROUND > 1)) || printf 'cli\t%s\n' "$(tree_sig "$R/bundle/rootfs")" >>"$CHECKS"
  unmount_under "$R"
}

run_shared() { # run_shared sequential|concurrent
  local mode=$1 i mark gets args=()
  fresh_run_dir
  start_cdh "$R/cdh"
  for ((i = 1; i <= SHARED; i++)); do args+=("$REG/shared$i:1=$R/b$i"); done
  mark=$(wc -l <"$REG_LOG")
  "$CLIENT" --socket "unix://$CDH_SOCK" $([[ $mode == concurrent ]] && echo --concurrent) "${args[@]}" \
    >"$R/client.out" 2>"$R/client.err" ||
    { cat "$R/client.err" "$R/cdh/cdh.log" >&2; die "$mode PullImage of the shared-base images failed"; }
  # One access-log line per request: `"GET /v2/<repo>/blobs/<digest> HTTP/1.1" 200 …`.
  gets=$(tail -n +"$((mark + 1))" "$REG_LOG" | grep -c "\"GET /v2/[^ ]*/blobs/$BASE_DIGEST HTTP" || true)
  for ((i = 1; i <= SHARED; i++)); do
    [[ -f $R/b$i/rootfs/app/image-$i.txt ]] || die "$mode: shared$i:1 has no app/image-$i.txt in its rootfs"
  done
  [[ $(tree_sig "$R/b1/rootfs") == "$(tree_sig "$R/b$SHARED/rootfs")" ]] ||
    die "$mode: the shared-base rootfs trees differ in shape"
  printf '%s\t%s\t%s\t%s\t%s\n' "$mode" "$ROUND" "$(awk -F'\t' '$1=="total" {print $3}' "$R/client.out")" "$gets" \
    "$(awk -F'\t' '$1=="pull" {printf "%s%s", sep, $3; sep=","}' "$R/client.out")" >>"$SHARED_TSV"
  unmount_under "$R"
  stop_cdh
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "part 1: CDH PullImage vs image-pull, $RUNS rounds, interleaved (order alternates)"
for ((ROUND = 1; ROUND <= RUNS; ROUND++)); do
  if ((ROUND % 2)); then run_cdh; run_cli; else run_cli; run_cdh; fi
  log "round $ROUND/$RUNS $(tail -n 2 "$RESULTS" | awk '{printf "%s %ss (%s)  ", $1, $3, $7}')"
done
log "part 2: $SHARED shared-base images, concurrent vs sequential, $RUNS rounds, interleaved"
for ((ROUND = 1; ROUND <= RUNS; ROUND++)); do
  if ((ROUND % 2)); then run_shared concurrent; run_shared sequential; else run_shared sequential; run_shared concurrent; fi
  log "round $ROUND/$RUNS $(tail -n 2 "$SHARED_TSV" | awk '{printf "%s %ss, base fetched %s×  ", $1, $3, $4}')"
done
fresh_run_dir
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------ report
ELAPSED=$(python3 -c "print(f'{$EPOCHREALTIME - $STARTED:.0f}')")
python3 "$HERE/cdh_report.py" \
  --results "$RESULTS" --shared "$SHARED_TSV" --checks "$CHECKS" \
  --image "$CACHE/image/bench-image.json" --shared-image "$CACHE/shared/shared.json" \
  --runs "$RUNS" --scratch "$SCRATCH" --elapsed "$ELAPSED" --commit "$COMMIT" --load "$LOAD_BEFORE / $LOAD_AFTER" \
  --cdh-sha "$(sha256sum "$CDH" | cut -c1-12)" --cli-sha "$(sha256sum "$CLI" | cut -c1-12)" \
  --doc "$([[ $WRITE_DOC == 1 ]] && echo "$ROOT/docs/BENCHMARKS.md")"
mkdir -p "$ROOT/target/bench-results"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
cp "$RESULTS" "$ROOT/target/bench-results/cdh-$STAMP.tsv"
cp "$SHARED_TSV" "$ROOT/target/bench-results/cdh-shared-$STAMP.tsv"
log "raw results: target/bench-results/cdh{,-shared}-$STAMP.tsv"
[[ $WRITE_DOC == 1 ]] || log "docs/BENCHMARKS.md not updated (non-default size; BENCH_WRITE_DOC=1 forces it)"
