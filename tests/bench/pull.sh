#!/usr/bin/env bash
# Image-pull benchmark: image-pull (ours) against the gunzip|tar floor,
# skopeo copy + umoci unpack, and containerd's `ctr images pull`, all pulling
# the same synthetic ~500 MB, 5-layer gzip image from a local docker-registry
# over plain HTTP on 127.0.0.1. Every run starts from a cold store.
#
#     bash tests/bench/pull.sh            (make bench-pull)
#
# Environment knobs (defaults in brackets):
#   BENCH_RUNS=5           measured runs per tool (medians are reported)
#   BENCH_SIZE_MB=500      uncompressed image size
#   BENCH_LAYERS=5         layers
#   BENCH_FILES=4000       regular files in the image
#   BENCH_SEED=20240501    generator seed
#   BENCH_TOOLS="ours-flatten ours-auto floor skopeo-umoci ctr"
#   BENCH_MCL_SWEEP=""     e.g. "1 2 4": extra `--rootfs auto --max-concurrent-layers K` rows
#   BENCH_IMAGE_PULL=PATH  use this image-pull binary instead of building the release one
#   BENCH_WRITE_DOC=1|0    refresh "## Image pull" in docs/BENCHMARKS.md
#                          [1 only for the default size and tool set]
#   BENCH_TMPDIR=DIR       scratch space [$TMPDIR or /tmp]; needs ~3x the image size free
#
# Exit status: 0 when every tool ran (targets that MISS are reported, not
# fatal); non-zero when something could not be set up or a tool failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/bench
RUNS=${BENCH_RUNS:-5}
SIZE_MB=${BENCH_SIZE_MB:-500}
LAYERS=${BENCH_LAYERS:-5}
FILES=${BENCH_FILES:-4000}
SEED=${BENCH_SEED:-20240501}
DEFAULT_TOOLS="ours-flatten ours-auto floor skopeo-umoci ctr"
TOOLS=${BENCH_TOOLS:-$DEFAULT_TOOLS}
MCL_SWEEP=${BENCH_MCL_SWEEP:-}
# Bump when the generator's output changes; the cache key also hashes gen_image.py.
GEN_VERSION=v1
TARGET=x86_64-unknown-linux-gnu
if [[ -z ${BENCH_WRITE_DOC:-} ]]; then
  if [[ $SIZE_MB == 500 && $LAYERS == 5 && $FILES == 4000 && $TOOLS == "$DEFAULT_TOOLS" ]]; then
    BENCH_WRITE_DOC=1
  else
    BENCH_WRITE_DOC=0
  fi
fi

STARTED=$EPOCHREALTIME
log() { printf '[bench-pull %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer"
SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo

# ------------------------------------------------------------------ tools
need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v umoci >/dev/null || need+=(umoci)
{ command -v ctr && command -v containerd; } >/dev/null || need+=(containerd)
command -v curl >/dev/null || need+=(curl)
[[ -x /usr/bin/time ]] || need+=(time)
command -v python3 >/dev/null || need+=(python3)
command -v gzip >/dev/null || need+=(gzip)
command -v tar >/dev/null || need+=(tar)
. "$ROOT/tests/bench/bench_lib.sh"
install_missing ${need[@]+"${need[@]}"}
[[ $(id -u) == 0 ]] || die "needs root (tar -x preserving owners, overlay mounts, containerd)"

# ------------------------------------------------------------------ scratch + cleanup
T=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/bench-pull.XXXXXX")
REG_PID=
CD_PID=
cleanup() {
  local rc=$?
  set +e
  stop_pid "$CD_PID"
  stop_pid "$REG_PID"
  unmount_under "$T"
  if [[ ${BENCH_KEEP_TMP:-0} == 1 ]]; then log "kept $T"; else rm -rf "$T"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ our binary
# The tree's state when the binary is built (not when the report is written).
COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(cd "$ROOT" && git status --porcelain -- image-rs Cargo.toml Cargo.lock 2>/dev/null) ]]; then
  COMMIT="$COMMIT + uncommitted image-rs changes"
fi
if [[ -n ${BENCH_IMAGE_PULL:-} ]]; then
  OURS=$(readlink -f "$BENCH_IMAGE_PULL")
  COMMIT="$OURS (given by BENCH_IMAGE_PULL)"
else
  log "building image-pull (release, static)"
  (cd "$ROOT" && RUSTFLAGS="${GUEST_RUSTFLAGS:--C target-feature=+crt-static}" cargo build -q --release --target $TARGET -p image-rs) \
    || die "cargo build failed"
  OURS=$ROOT/target/$TARGET/release/image-pull
fi
[[ -x $OURS ]] || die "no image-pull binary at $OURS"
COMMIT="$COMMIT; binary sha256 $(sha256sum "$OURS" | cut -c1-12), built $(date -u -r "$OURS" '+%Y-%m-%d %H:%M UTC')"

# ------------------------------------------------------------------ image (cached)
GEN_HASH=$(sha256sum "$HERE/gen_image.py" | cut -c1-12)
CACHE=$ROOT/target/bench-cache/pull-$GEN_VERSION-$GEN_HASH-s$SEED-${SIZE_MB}m-${LAYERS}l-${FILES}f
if [[ ! -f $CACHE/bench-image.json ]]; then
  log "generating the ${SIZE_MB} MB image into $CACHE (once; cached)"
  mkdir -p "$(dirname "$CACHE")"
  rm -rf "$CACHE.tmp"
  python3 "$HERE/gen_image.py" "$CACHE.tmp" --size-mb "$SIZE_MB" --layers "$LAYERS" --files "$FILES" \
    --seed "$SEED" --tag 1 >/dev/null || die "image generation failed"
  rm -rf "$CACHE" && mv "$CACHE.tmp" "$CACHE"
else
  log "using cached image $CACHE"
fi
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"d": d}))' "$CACHE/bench-image.json" "$1"; }
MANIFEST_DIGEST=$(jget 'd["manifest_digest"]')
mapfile -t LAYER_DIGESTS < <(jget '"\n".join(l["digest"] for l in d["layers"])')

# ------------------------------------------------------------------ registry
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
IMAGE=$REG/bench:1
mkdir -p "$T/registry"
cat >"$T/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $T/registry
http:
  addr: $REG
EOF
docker-registry serve "$T/registry.yml" >"$T/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -fs "http://$REG/v2/" >/dev/null && break; sleep 0.1; done
curl -fs "http://$REG/v2/" >/dev/null || { cat "$T/registry.log" >&2; die "docker-registry did not start"; }
log "pushing the image to $IMAGE"
skopeo copy -q --dest-tls-verify=false "oci:$CACHE:1" "docker://$IMAGE" >/dev/null || die "skopeo push failed"
got=$(curl -fsI -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REG/v2/bench/manifests/1" |
  tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest" {print $2}')
[[ $got == "$MANIFEST_DIGEST" ]] || die "registry serves manifest $got, expected $MANIFEST_DIGEST"
# Warm the registry's page cache so every tool reads the blobs from memory.
for d in "${LAYER_DIGESTS[@]}"; do curl -fs "http://$REG/v2/bench/blobs/$d" >/dev/null; done

# ------------------------------------------------------------------ containerd
CD_SNAPSHOTTER=overlayfs
CD_NOTE=
start_containerd() { # fresh root/state each time
  local cd=$T/containerd
  CD_SOCK=$cd/c.sock
  rm -rf "$cd" && mkdir -p "$cd"
  cat >"$cd/config.toml" <<EOF
version = 2
root = "$cd/root"
state = "$cd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$CD_SOCK"
[ttrpc]
  address = "$CD_SOCK.ttrpc"
[debug]
  address = "$cd/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$cd/opt"
EOF
  containerd --config "$cd/config.toml" >"$cd/containerd.log" 2>&1 &
  CD_PID=$!
  local i
  for i in $(seq 200); do ctr --address "$CD_SOCK" version >/dev/null 2>&1 && return 0; sleep 0.05; done
  cat "$cd/containerd.log" >&2
  die "containerd did not start"
}
stop_containerd() {
  stop_pid "$CD_PID"
  CD_PID=
  unmount_under "$T/containerd"
  rm -rf "$T/containerd"
}
if [[ " $TOOLS " == *" ctr "* ]]; then
  start_containerd
  if ! ctr --address "$CD_SOCK" plugins ls 2>/dev/null | awk '$2=="overlayfs" && $NF=="ok"' | grep -q .; then
    CD_SNAPSHOTTER=native
    CD_NOTE="containerd's overlayfs snapshotter is not usable here; ctr was measured with --snapshotter native"
    log "WARNING: $CD_NOTE"
  fi
  stop_containerd
fi

# ------------------------------------------------------------------ measuring
RESULTS=$T/results.tsv     # tool run wall user sys rss_kb
CHECKS=$T/checks.tsv       # tool  files bytes  (first round only)
NOTES=$T/notes.txt
: >"$RESULTS"; : >"$CHECKS"; : >"$NOTES"
R=$T/run                   # per-run scratch, recreated (cold) every time

fresh_run_dir() {
  unmount_under "$R"
  rm -rf "$R"
  mkdir -p "$R"
  sync # no dirty pages of the previous run are written back during this one
}

# timed OUTFILE CMD...: runs CMD under GNU time; sets WALL CPU_U CPU_S RSS (KiB)
timed() {
  local out=$1; shift
  local t0 t1
  t0=$EPOCHREALTIME
  if ! /usr/bin/time -f '%U %S %M' -o "$R/time.$out" "$@" >"$R/$out.stdout" 2>"$R/$out.stderr"; then
    log "FAILED: $*"
    tail -n 20 "$R/$out.stderr" >&2
    return 1
  fi
  t1=$EPOCHREALTIME
  WALL=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
  read -r CPU_U CPU_S RSS < <(tail -n 1 "$R/time.$out")
}

tree_sig() { find "$1" -xdev -type f -printf '%s\n' | awk '{n++; s+=$1} END {print n+0, s+0}'; }

run_ours() { # run_ours TOOLNAME ROOTFS [extra args]
  local name=$1 mode=$2; shift 2
  timed ours "$OURS" --work-dir "$R/work" --plain-http --rootfs "$mode" "$@" "$IMAGE" "$R/bundle" ||
    die "$name failed"
  local kind
  kind=$(grep -o 'rootfs [a-z]*' "$R/ours.stderr" | tail -n 1 | cut -d' ' -f2)
  if [[ $mode == auto && $kind != overlay ]]; then
    grep -qx "$name: auto fell back to '$kind'" "$NOTES" ||
      echo "$name: auto fell back to '$kind'" >>"$NOTES"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$ROUND" "$WALL" "$CPU_U" "$CPU_S" "$RSS" >>"$RESULTS"
  ((ROUND > 1)) || printf '%s\t%s\n' "$name" "$(tree_sig "$R/bundle/rootfs")" >>"$CHECKS"
  unmount_under "$R"
}

run_floor() {
  mkdir -p "$R/root"
  timed floor bash "$HERE/floor.sh" "http://$REG/v2/bench/blobs" "$R/root" "${LAYER_DIGESTS[@]}" ||
    die "floor failed"
  printf 'floor\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$WALL" "$CPU_U" "$CPU_S" "$RSS" >>"$RESULTS"
}

run_skopeo_umoci() {
  local w1 u1 s1 r1
  timed skopeo skopeo copy -q --src-tls-verify=false "docker://$IMAGE" "oci:$R/layout:t" || die "skopeo copy failed"
  w1=$WALL u1=$CPU_U s1=$CPU_S r1=$RSS
  printf 'skopeo-copy\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$WALL" "$CPU_U" "$CPU_S" "$RSS" >>"$RESULTS"
  timed umoci umoci unpack --image "$R/layout:t" "$R/bundle" || die "umoci unpack failed"
  printf 'umoci-unpack\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$WALL" "$CPU_U" "$CPU_S" "$RSS" >>"$RESULTS"
  printf 'skopeo-umoci\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" \
    "$(python3 -c "print(f'{$w1 + $WALL:.3f}')")" \
    "$(python3 -c "print(f'{$u1 + $CPU_U:.2f}')")" \
    "$(python3 -c "print(f'{$s1 + $CPU_S:.2f}')")" \
    "$((r1 > RSS ? r1 : RSS))" >>"$RESULTS"
  ((ROUND > 1)) || printf 'skopeo-umoci\t%s\n' "$(tree_sig "$R/bundle/rootfs")" >>"$CHECKS"
}

CLK_TCK=$(getconf CLK_TCK)
proc_cpu() { awk -v hz="$CLK_TCK" '{ printf "%.2f %.2f\n", $14 / hz, $15 / hz }' "/proc/$1/stat"; } # utime stime
run_ctr() {
  start_containerd
  local u0 s0 u1 s1 hwm snaps
  read -r u0 s0 < <(proc_cpu "$CD_PID")
  timed ctr ctr --address "$CD_SOCK" -n bench images pull --plain-http --snapshotter "$CD_SNAPSHOTTER" "$IMAGE" ||
    die "ctr images pull failed"
  read -r u1 s1 < <(proc_cpu "$CD_PID")
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$CD_PID/status")
  # The pull must have unpacked: one committed snapshot per layer.
  snaps=$(ctr --address "$CD_SOCK" -n bench snapshots --snapshotter "$CD_SNAPSHOTTER" ls | awk '$NF=="Committed"' | wc -l)
  ((snaps == LAYERS)) || die "ctr pull left $snaps committed snapshots, expected $LAYERS (not unpacked?)"
  # CPU: the ctr client plus what the daemon spent during the pull; RSS: the daemon's peak (VmHWM).
  printf 'ctr\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$WALL" \
    "$(python3 -c "print(f'{$CPU_U + $u1 - $u0:.2f}')")" "$(python3 -c "print(f'{$CPU_S + $s1 - $s0:.2f}')")" \
    "$((hwm > RSS ? hwm : RSS))" >>"$RESULTS"
  stop_containerd
}

run_tool() {
  fresh_run_dir
  case $1 in
    ours-flatten) run_ours ours-flatten flatten ;;
    ours-auto) run_ours ours-auto auto ;;
    ours-auto-mcl*) run_ours "$1" auto --max-concurrent-layers "${1#ours-auto-mcl}" ;;
    floor) run_floor ;;
    skopeo-umoci) run_skopeo_umoci ;;
    ctr) run_ctr ;;
    *) die "unknown tool $1" ;;
  esac
  log "round $ROUND/$RUNS $(tail -n 1 "$RESULTS" | awk '{printf "%s: %ss wall, %.1fs CPU, %d MiB peak", $1, $3, $4 + $5, $6 / 1024}')"
}

read -r -a tools <<<"$TOOLS"
for k in $MCL_SWEEP; do tools+=("ours-auto-mcl$k"); done
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "measuring ${tools[*]}: $RUNS rounds, tools interleaved"
for ((ROUND = 1; ROUND <= RUNS; ROUND++)); do
  n=${#tools[@]}
  for ((j = 0; j < n; j++)); do # rotate the order each round
    run_tool "${tools[(j + ROUND - 1) % n]}"
  done
done
fresh_run_dir
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------ report
ELAPSED=$(python3 -c "print(f'{$EPOCHREALTIME - $STARTED:.0f}')")
CMDLINE="make bench-pull"
for v in BENCH_RUNS BENCH_SIZE_MB BENCH_LAYERS BENCH_FILES BENCH_SEED BENCH_TOOLS BENCH_MCL_SWEEP; do
  [[ -n ${!v:-} ]] && CMDLINE="$v=\"${!v}\" $CMDLINE"
done
python3 "$HERE/report.py" \
  --results "$RESULTS" --checks "$CHECKS" --notes "$NOTES" --image "$CACHE/bench-image.json" \
  --runs "$RUNS" --elapsed "$ELAPSED" --commit "$COMMIT" --cmdline "$CMDLINE" \
  --load "$LOAD_BEFORE / $LOAD_AFTER" --ctr-snapshotter "$CD_SNAPSHOTTER" --ctr-note "$CD_NOTE" \
  --ctr-version "$(containerd --version | awk '{print $3}')" \
  --skopeo-version "$(skopeo --version | awk '{print $3}')" --umoci-version "$(umoci --version | awk '{print $3}')" \
  --doc "$([[ $BENCH_WRITE_DOC == 1 ]] && echo "$ROOT/docs/BENCHMARKS.md")"
mkdir -p "$ROOT/target/bench-results"
SAVED=$ROOT/target/bench-results/pull-$(date -u +%Y%m%dT%H%M%SZ).tsv
cp "$RESULTS" "$SAVED" && log "raw results: $SAVED (tool round wall_s user_s sys_s peak_rss_kib)"
[[ $BENCH_WRITE_DOC == 1 ]] || log "docs/BENCHMARKS.md not updated (non-default settings; BENCH_WRITE_DOC=1 forces it)"
