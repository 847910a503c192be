//! Test fixtures shared by image-rs integration tests: real registries (plain, TLS, basic and
//! bearer-token auth), an OCI image layout writer, a byte relay that cuts downloads, and a
//! seeded fault-injecting relay (fault_proxy.rs).
//!
//! Use from a test crate with `mod support;`. Every fixture cleans up in `Drop` (child processes
//! are killed and reaped, temp dirs removed, server threads joined).
#![allow(dead_code, unused_imports)]

pub mod cli;
pub mod crash;
pub mod fake_registry;
pub mod fault_proxy;
pub mod http;
pub mod layout;
pub mod proxy;
pub mod registry;
pub mod tarball;
pub mod token;

pub use http::{http_get, HttpResponse};
pub use layout::{
    busybox_rootfs_layer, write_index_layout, BuiltImage, BuiltIndex, BuiltLayer, Compression, ImageBuilder, LayerSpec,
    Platform, TarEntry,
};
pub use proxy::{CutAction, CutProxy, ProxiedRequest};
pub use registry::{Registry, RegistryOptions};
pub use token::{TokenOptions, TokenRequest, TokenServer};

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Debian package that provides each tool the fixtures use (for the SKIP message).
fn package_for(tool: &str) -> &str {
    match tool {
        "htpasswd" => "apache2-utils",
        "busybox" => "busybox-static",
        other => other,
    }
}

/// Full path of `tool` if it is an executable on `PATH` (or an absolute path that exists).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if tool.contains('/') {
        let p = PathBuf::from(tool);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| is_exec(p))
}

/// True when running under CI (`CI=true`), where a missing tool is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v.eq_ignore_ascii_case("true")).unwrap_or(false)
}

/// Returns true when `tool` is installed. Otherwise prints `SKIP: <tool> not installed (...)` and
/// returns false so the caller can `return` early; under `CI=true` it panics instead.
pub fn require_tool(tool: &str) -> bool {
    if find_tool(tool).is_some() {
        return true;
    }
    let msg = format!("{tool} not installed (apt-get install -y {}; `make test` installs it)", package_for(tool));
    if in_ci() {
        panic!("CI=true but {msg}");
    }
    eprintln!("SKIP: {msg}");
    false
}

/// `require_tool` for several tools; reports every missing one.
pub fn require_tools(tools: &[&str]) -> bool {
    tools.iter().filter(|t| !require_tool(t)).count() == 0
}

/// A free TCP port on 127.0.0.1 (bound to port 0, then released: callers must retry on collision).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

/// Lowercase hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `sha256:<hex>` digest of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Runs a command to completion and returns its output; panics (with stderr) if it cannot be
/// started or exits non-zero.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A child process that is killed (SIGKILL) and reaped when dropped: no leaks, no zombies.
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    pub fn new(name: &str, child: Child) -> Self {
        ChildGuard { child: Some(child), name: name.to_string() }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child already killed")
    }

    /// `Some(status)` if the process has already exited (it is reaped then).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kills and reaps the process now (idempotent).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or `None` after `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
