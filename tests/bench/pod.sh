#!/usr/bin/env bash
# CoCo pod start under QEMU (`cvm-vm bench-pod`): per VM boot (demo initdata,
# attestation-agent + data hub in the guest), QEMU start -> the app's
# StartContainer and its first stdout line (its image guest-pulled,
# decrypted and signature-checked); CreateContainer of a ~100 MiB encrypted,
# signed image cold then warm in the same VM; the agent's idle RSS from
# GetMetrics. Reference: the host's `image-pull` CLI pulling the same image
# from the same registry. Writes the "Pod start" section of docs/BENCHMARKS.md.
# Usage: tests/bench/pod.sh [RUNS]   (after `make rootfs`, which builds image-pull)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
img=target/rootfs
pull=target/x86_64-unknown-linux-gnu/release/image-pull
[ -e "$img/initramfs" ] && [ -e "$img/vmlinux" ] || { echo "run make rootfs first" >&2; exit 1; }
[ -x "$pull" ] || { echo "no $pull: run make release" >&2; exit 1; }
cargo build -q -p vm-harness --bin cvm-vm
vm=target/debug/cvm-vm
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
t0=$(date +%s)
out=$("$vm" bench-pod --runs "$runs" | tee /dev/stderr)
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
kv() { awk -v k="$1" '$1 == k {print $2}' <<<"$out"; }
table=$(grep '^|' <<<"$out")
head=$(grep '^pod start (' <<<"$out")
accel=$(sed -n 's/^pod start (\([a-z]*\), \([0-9]*\) MiB, \([0-9]*\) vCPU.*/\1/p' <<<"$head")
mem=$(sed -n 's/^pod start ([a-z]*, \([0-9]*\) MiB.*/\1/p' <<<"$head")
big=$(grep '^  big image ' <<<"$out" | sed 's/^  big image [^ ]*: //; s/ ([0-9.]* s to build.*//')
size=$(stat -L -c %s "$img/initramfs")
sum=$(sha256sum <"$img/initramfs" | cut -d' ' -f1)
commit=$(git rev-parse --short HEAD)

section=$(cat <<MD
## Pod start

Written by \`tests/bench/pod.sh\` on $(date -u '+%Y-%m-%d %H:%M') UTC ($(( $(date +%s) - t0 )) s), commit $commit. Reproduce with \`make bench-pod\` (after \`make rootfs\`).

- **What:** \`cvm-vm bench-pod --runs $runs\`: $runs VM boots, each running the CoCo demo's pod as kata's shim does
  (network RPCs, CreateSandbox, pause by \`image_guest_pull\`, the app's image pulled by the data hub in the
  guest: key released by the test KBS after attestation, cosign signature checked), then two more
  containers of one big image (CreateContainer → StartContainer → WaitProcess → RemoveContainer each),
  then GetMetrics with every container removed, before DestroySandbox. Medians of $runs.
- **VM:** accelerator **$accel**, **$mem MiB** (the harness's default; enough: the guest's store is on the
  /run tmpfs, which gets half the RAM, and the big image's layers take ~100 MiB there),
  1 vCPU, initramfs $size bytes (sha256 \`${sum:0:16}…\`).
- **Big image:** $big; encrypted for the KBS-held key and signed by the owner's key exactly as the demo
  image is (the guest's policy accepts nothing else). Random bytes, so the compressed size is the size.
- **Cold vs warm:** the first CreateContainer of the big image is the VM's first pull of it; the second
  (another container, same image, same VM) resolves the manifest, checks the signature and unwraps the
  layer keys again, and finds every layer in the data hub's store.
- **Host reference:** \`image-pull\` on this host, same registry and image, same signature policy and
  decryption (the KBS resources served from a directory, \`--key-source-dir\`; 10.0.2.2:PORT remapped to
  127.0.0.1 by a registries.conf entry so the signed identity matches), fresh store on /dev/shm,
  one cold pull after each VM run.
- **Machine:** $(nproc) cores, load average before / after $load_before / $load_after (other builds ran
  concurrently; TCG is CPU-bound, so wall times stretch with load).

$table

Ratios (medians): warm ÷ cold CreateContainer **$(kv ratio_warm_cold)×**; guest cold pull under TCG ÷ host
\`image-pull\` **$(kv ratio_guest_host)×** ($(kv guest_cold_mib_s) MiB/s in the guest vs $(kv host_mib_s) MiB/s native).
The guest's pull is TCG-bound (every instruction of the TLS, AES-CTR/HMAC decryption, gunzip and
SHA-256 emulated, on one vCPU, against the host CLI's native code and up to 3 layers at once); KVM
was not measured (this machine's /dev/kvm is kvm_pvm).
MD
)
python3 - "$section" <<'PY'
import sys
sys.path.insert(0, "tests/bench")
from bench_doc import replace_section
replace_section("docs/BENCHMARKS.md", "## Pod start", sys.argv[1])
PY
echo "pod start: warm/cold $(kv ratio_warm_cold), guest/host $(kv ratio_guest_host); docs/BENCHMARKS.md updated"
