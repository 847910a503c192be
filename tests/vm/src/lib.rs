//! The QEMU harness: boots the guest image (kernel + initramfs from
//! `make rootfs`) with the agent as PID 1, exposes the guest's vsock as a
//! hybrid-vsock unix socket through `vhost-device-vsock`, and drives the agent
//! the way a kata shim does.
//!
//! - `qemu`: the QEMU command line (pure, unit-tested) and host capability
//!   checks (KVM usable? TDX/SNP available?), refusing clearly when not.
//! - `vm`: the running VM: every process it starts is in its own process
//!   group and is killed by `Drop`, on success, failure or panic alike.
//! - `coco`: the demo's host side (TLS registry, test KBS, an encrypted and
//!   cosign-signed image), made fresh per run.
//! - `coco_pod`: the demo's pod on the VM (pause, app by guest pull, a
//!   stranger-signed image refused), used by `make demo` and its test.
//! - `bench_pod`: `cvm-vm bench-pod`: VM start to the app's output, a
//!   ~100 MiB guest pull cold and warm, the agent's idle RSS, and the same
//!   pull by the host's `image-pull` as the reference.
//! - `initdata`: the initdata disk image, written as kata's runtime does.
//! - `scenario`: the busybox container lifecycle used by the end-to-end test
//!   and by `make demo`.
//! - `shim`: a CoCo pod as kata's Go shim starts it (generated agent messages,
//!   kata's field values), each request timed.
//!
//! This crate never touches the host outside its own temporary directory.

pub mod bench_pod;
pub mod coco;
pub mod coco_pod;
pub mod initdata;
pub mod qemu;
pub mod scenario;
pub mod shim;
pub mod vm;

pub use qemu::{Accel, Confidential, VmSpec};
pub use vm::{Vm, VmError};

use std::path::PathBuf;

/// Workspace root (this crate lives in `tests/vm`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap_or_else(|_| PathBuf::from("."))
}

/// Where `make rootfs` puts the kernel and the initramfs.
pub fn default_image_dir() -> PathBuf {
    std::env::var_os("CVM_IMAGE_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target/rootfs"))
}
