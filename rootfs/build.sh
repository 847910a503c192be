#!/usr/bin/env bash
# Builds the confidential VM's guest image: an initramfs (cpio newc) with the
# statically linked agent as /init, the other guest binaries when they exist,
# a minimal /etc with CA certificates, the kernel modules the agent loads at
# boot (from Debian's linux-image-amd64), and a busybox rootfs for the
# end-to-end test container. Also extracts the kernel to an uncompressed ELF
# (PVH entry), which boots about twice as fast under TCG.
#
# Reproducible: the same inputs give the same bytes (every mtime is
# SOURCE_DATE_EPOCH, entries sorted, owner root:root, inodes renumbered,
# compression without timestamps). Prints sha256 and size.
#
# Usage: rootfs/build.sh BIN_DIR OUT_DIR     (root: it creates device nodes)
# Env:   KVER (kernel release; default: newest /boot/vmlinuz-*),
#        SOURCE_DATE_EPOCH (default 0), COMPRESS (gzip|zstd|none, default gzip).
set -euo pipefail

bin_dir=${1:?usage: build.sh BIN_DIR OUT_DIR}
out=${2:?usage: build.sh BIN_DIR OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
epoch=${SOURCE_DATE_EPOCH:-0}
compress=${COMPRESS:-gzip}

die() { echo "rootfs: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (device nodes /dev/console and /dev/null go into the image)"
for tool in cpio modprobe busybox sha256sum; do
  command -v "$tool" >/dev/null || die "$tool not found (make rootfs-deps installs cpio, kmod, busybox-static)"
done

if [ -z "${KVER:-}" ]; then
  KVER=$(ls /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V | tail -n1)
  [ -n "$KVER" ] || die "no /boot/vmlinuz-*: install linux-image-amd64"
fi
moddir=/lib/modules/$KVER
[ -f "$moddir/modules.dep" ] || die "$moddir/modules.dep missing: install linux-image-$KVER"
[ -x "$bin_dir/cvm-agent" ] || die "$bin_dir/cvm-agent missing: run make release"
if ! file_out=$(LC_ALL=C file -b "$bin_dir/cvm-agent" 2>/dev/null) || [[ "$file_out" != *"statically linked"* && "$file_out" != *"static-pie linked"* ]]; then
  command -v file >/dev/null && die "$bin_dir/cvm-agent is not statically linked ($file_out)"
fi

mkdir -p "$out"
stage=$(mktemp -d "$out/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
r=$stage/root
mkdir -p "$r"

# --- layout ----------------------------------------------------------------
install -d -m 0755 "$r"/{dev,proc,sys,run,etc,root,usr/bin,usr/sbin,usr/local/bin,usr/share/cvm,lib/modules,var}
install -d -m 1777 "$r"/tmp
ln -s usr/bin "$r/bin"
ln -s usr/sbin "$r/sbin"
# The kernel opens /dev/console for init before devtmpfs is mounted.
mknod -m 0600 "$r/dev/console" c 5 1
mknod -m 0666 "$r/dev/null" c 1 3

# --- binaries ----------------------------------------------------------------
install -m 0755 "$bin_dir/cvm-agent" "$r/usr/bin/cvm-agent"
ln -s usr/bin/cvm-agent "$r/init"
# Optional binaries, at the paths their launchers use: the guest components
# where kata's agent starts them (/usr/local/bin, `agent.guest_components_procs`).
for opt in usr/bin/image-pull usr/local/bin/attestation-agent usr/local/bin/confidential-data-hub; do
  name=${opt##*/}
  if [ -x "$bin_dir/$name" ]; then
    install -D -m 0755 "$bin_dir/$name" "$r/$opt"
  else
    echo "rootfs: $name not built, left out"
  fi
done

# --- /etc ----------------------------------------------------------------------
cp -r "$here/etc/." "$r/etc/"
[ -f /etc/ssl/certs/ca-certificates.crt ] || die "no CA bundle: install ca-certificates"
install -d -m 0755 "$r/etc/ssl/certs"
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/ca-certificates.crt"
printf 'KERNEL=%s\n' "$KVER" >>"$r/etc/os-release"
# The agent's request policy: the confidential default (agent/policy/). The
# agent refuses to serve without it; initdata's policy.rego replaces it.
# allow-all.rego is deliberately not shipped: nothing in the image can select it.
install -d -m 0755 "$r/etc/kata-opa"
install -m 0644 "$here/../agent/policy/confidential.rego" "$r/etc/kata-opa/default-policy.rego"

# --- kernel modules ------------------------------------------------------------
# Closure of what modules.load names, by modprobe's own resolver; built-in
# modules resolve to nothing. Compressed modules are stored decompressed, so
# the agent's finit_module needs no in-kernel decompressor.
kdst=$r/lib/modules/$KVER
mkdir -p "$kdst"
grep -v '^#' "$here/modules.load" | awk 'NF{print $1}' >"$stage/wanted"
: >"$stage/load"
: >"$stage/files"
while read -r spec; do
  name=${spec%\?}
  if ! deps=$(modprobe --show-depends -S "$KVER" "$name" 2>/dev/null); then
    [ "$spec" != "$name" ] && { echo "rootfs: optional module $name not in $KVER, left out"; continue; }
    die "module $name not found for kernel $KVER"
  fi
  echo "$name" >>"$stage/load"
  awk '$1=="insmod"{print $2}' <<<"$deps" >>"$stage/files"
done <"$stage/wanted"
sort -u "$stage/files" | while read -r f; do
  rel=${f#"$moddir"/}
  dst=$kdst/${rel%.xz}; dst=${dst%.zst}; dst=${dst%.gz}
  mkdir -p "$(dirname "$dst")"
  case "$f" in
    *.ko.xz) xz -dc "$f" >"$dst" ;;
    *.ko.zst) zstd -qdc "$f" >"$dst" ;;
    *.ko.gz) gzip -dc "$f" >"$dst" ;;
    *) cp "$f" "$dst" ;;
  esac
  chmod 0644 "$dst"
  echo "${rel}" >>"$stage/kept"
done
# Trim depmod's modules.dep to the shipped files, with plain .ko names.
awk -v list="$stage/kept" 'BEGIN{while((getline l < list)>0) keep[l]=1}
  { m=$1; sub(/:$/,"",m); if(!(m in keep)) next;
    line=m; sub(/\.ko\.(xz|zst|gz)$/,".ko",line); line=line":";
    for(i=2;i<=NF;i++){d=$i; sub(/\.ko\.(xz|zst|gz)$/,".ko",d); line=line" "d}
    print line }' "$moddir/modules.dep" | LC_ALL=C sort >"$kdst/modules.dep"
cp "$stage/load" "$kdst/modules.load"

# --- pause bundle ---
# kata's /pause_bundle: the sandbox container of a pod whose images are pulled
# in the guest runs rootfs/pause with this config.json's process.
[ -x "$bin_dir/pause" ] || die "$bin_dir/pause missing (the pause bundle's program): run make release"
install -d -m 0755 "$r/pause_bundle/rootfs"
install -m 0755 "$bin_dir/pause" "$r/pause_bundle/rootfs/pause"
cat >"$r/pause_bundle/config.json" <<'JSON'
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": {"uid": 65535, "gid": 65535},
    "args": ["/pause"],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    "cwd": "/",
    "noNewPrivileges": true
  },
  "root": {"path": "rootfs", "readonly": true}
}
JSON
# --- end pause bundle ---

# --- busybox rootfs for the end-to-end test container --------------------------
bb=$r/usr/share/cvm/busybox
install -d -m 0755 "$bb"/{bin,etc,proc,sys,dev,tmp,root}
install -m 0755 "$(command -v busybox)" "$bb/bin/busybox"
for applet in sh echo cat ls sleep true false id hostname env ps mount; do
  ln -s busybox "$bb/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$bb/etc/passwd"
printf 'root:x:0:\n' >"$bb/etc/group"

# --- pack --------------------------------------------------------------------------
find "$r" -exec touch -h -d "@$epoch" {} +
name=initramfs.cpio
case "$compress" in
  gzip) comp=(gzip -n -9); name=$name.gz ;;
  zstd) comp=(zstd -q -19 -T1 --no-progress); name=$name.zst ;;
  none) comp=(cat) ;;
  *) die "COMPRESS must be gzip, zstd or none" ;;
esac
(cd "$r" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) | "${comp[@]}" >"$stage/$name"
rm -f "$out"/initramfs.cpio*
mv "$stage/$name" "$out/$name"
ln -sf "$name" "$out/initramfs"

# --- kernel: uncompressed ELF (PVH entry) --------------------------------------------
vmlinuz=/boot/vmlinuz-$KVER
if [ ! -f "$out/vmlinux-$KVER" ]; then
  off=$(LC_ALL=C grep -aboP '\xfd7zXZ\x00' "$vmlinuz" | head -n1 | cut -d: -f1)
  [ -n "$off" ] || die "$vmlinuz has no XZ payload (extract-vmlinux logic handles XZ only)"
  tail -c +$((off + 1)) "$vmlinuz" | xz -dc 2>/dev/null >"$stage/vmlinux" || true
  [ "$(head -c 4 "$stage/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] || die "extracting $vmlinuz failed"
  mv "$stage/vmlinux" "$out/vmlinux-$KVER"
fi
ln -sf "vmlinux-$KVER" "$out/vmlinux"

sum=$(sha256sum "$out/$name" | cut -d' ' -f1)
size=$(stat -c %s "$out/$name")
echo "rootfs: $out/$name  sha256 $sum  $size bytes ($(( (size + 1023) / 1024 )) KiB), kernel $KVER, modules: $(tr '\n' ' ' <"$kdst/modules.load")"
echo "$sum  $name" >"$out/SHA256SUMS"
