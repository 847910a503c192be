//! Components SIGKILLed at random points (seeded) of a key release and of a
//! pull, all real processes: the `attestation-agent` binary (a child here, so
//! it can be killed), the `confidential-data-hub` daemon, the test KBS
//! in-process, and slow relays (image-rs's fault proxy) in front of the KBS
//! and the registry to make the windows wide.
//! - AA killed during a key release: the CDH answers with a clear error naming
//!   the attestation-agent; after a restart the release works.
//! - AA killed during an encrypted pull: the pull completes (its key was out
//!   already) or fails clearly leaving nothing under the bundle; after a
//!   restart the pull works and the rootfs verifies.
//! - CDH killed during a pull: after a restart the pull works, the store holds
//!   only complete layers, no lock is held and no mount is left behind.
//!
//! Replay with the printed seed: `FAULT_SEED=<seed> cargo test -p confidential-data-hub --test crash`.

#[path = "../../image-rs/tests/support/mod.rs"]
mod support;

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::images::{app_image, assert_app_rootfs, push_plain_and_encrypted, random_kek};
use common::{entries, prerequisites, release_bundle, serial, Cdh};
use support::crash::{held_locks, mounts_under, sigkill};
use support::fault_proxy::{seed_from_env, FaultPlan, FaultProxy, Rng};
use support::registry::{Registry, RegistryOptions};
use support::ChildGuard;
use test_kbs::{KbsConfig, TestKbs};

/// The attestation-agent binary of this build (`cargo test --workspace`
/// builds it beside the test binaries); built here when missing.
fn aa_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("attestation-agent");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "attestation-agent", "--bin", "attestation-agent"])
            .status()
            .expect("run cargo build for the attestation-agent binary");
        assert!(status.success() && bin.is_file(), "cannot build {}", bin.display());
    }
    bin
}

/// The test KBS on a runtime of its own.
struct Kbs {
    runtime: tokio::runtime::Runtime,
    kbs: Option<TestKbs>,
}

impl Kbs {
    fn start(resources: HashMap<String, Vec<u8>>) -> Kbs {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let kbs = runtime.block_on(TestKbs::start(KbsConfig { resources, ..KbsConfig::default() })).unwrap();
        Kbs { runtime, kbs: Some(kbs) }
    }
    fn host(&self) -> String {
        self.kbs.as_ref().unwrap().url().trim_start_matches("http://").to_owned()
    }
}

impl Drop for Kbs {
    fn drop(&mut self) {
        if let Some(k) = self.kbs.take() {
            self.runtime.block_on(k.stop());
        }
    }
}

/// The real attestation-agent serving `unix://<dir>/aa.sock`, its KBS at `kbs_url`.
struct Aa {
    child: ChildGuard,
    addr: String,
}

impl Aa {
    fn start(dir: &Path, kbs_url: &str) -> Aa {
        let socket = dir.join("aa.sock");
        let addr = format!("unix://{}", socket.display());
        let config = dir.join("aa.toml");
        std::fs::write(
            &config,
            format!(
                "[token_configs.kbs]\nurl = \"{kbs_url}\"\ninsecure_http = true\n\n[attester]\ntype = \"sample\"\n\n\
                 [server]\nsocket = \"{addr}\"\n\n[kbs_client]\nmax_attempts = 2\nbackoff_ms = 10\ntimeout_secs = 10\n"
            ),
        )
        .unwrap();
        let child = Command::new(aa_bin())
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("aa.log")).unwrap())
            .spawn()
            .expect("start attestation-agent");
        let mut child = ChildGuard::new("attestation-agent", child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Some(status) = child.try_wait() {
                panic!("attestation-agent exited ({status}): {}", std::fs::read_to_string(dir.join("aa.log")).unwrap());
            }
            assert!(Instant::now() < deadline, "attestation-agent did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Aa { child, addr }
    }

    fn kill(&mut self) {
        sigkill(self.child.id());
        self.child.kill();
    }
}

/// Runs `call` on a thread and `kill` once `after` has passed (unless the
/// call returned first), then returns the call's result.
fn kill_during<T: Send>(after: Duration, call: impl FnOnce() -> T + Send, kill: impl FnOnce()) -> T {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let call = s.spawn(|| {
            let r = call();
            done.store(true, Ordering::SeqCst);
            r
        });
        let until = Instant::now() + after;
        while Instant::now() < until && !done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        kill();
        call.join().unwrap()
    })
}

fn no_mounts_but(dir: &Path, allowed: &[PathBuf], ctx: &str) {
    let left: Vec<PathBuf> = mounts_under(dir).into_iter().filter(|m| !allowed.contains(m)).collect();
    assert!(left.is_empty(), "{ctx}: mounts left: {left:?}");
}

#[test]
fn attestation_agent_killed_during_a_key_release_then_restarted() {
    if !prerequisites(&[]) {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let kbs = Kbs::start(HashMap::from([("default/config/app".to_string(), b"app-config".to_vec())]));
    // A slow KBS link (200 B/s): the RCAR handshake and the release take about 2 s.
    let proxy = FaultProxy::start(&kbs.host(), FaultPlan::slow(8, Duration::from_millis(40)));
    let mut aa = Aa::start(dir.path(), &proxy.url());
    let cdh = Cdh::start(&dir.path().join("cdh"), &aa.addr, "registry.invalid", "");
    let seed = seed_from_env();
    eprintln!("kill points: FAULT_SEED={seed}");
    let mut rng = Rng::new(seed);
    let (mut failed, mut released) = (0, 0);
    for round in 0..3 {
        let after = Duration::from_millis(20 + rng.below(1500));
        let ctx = format!("round {round}, AA killed after {after:?} (FAULT_SEED={seed})");
        let got =
            kill_during(after, || kbs.runtime.block_on(cdh.get_resource("kbs:///default/config/app")), || aa.kill());
        match got {
            Ok(bytes) => {
                assert_eq!(bytes, b"app-config", "{ctx}");
                released += 1;
            }
            Err((code, message)) => {
                eprintln!("{ctx}: {code:?}: {message}");
                assert!(message.contains("attestation-agent") || message.contains("aa.sock"), "{ctx}: {message}");
                failed += 1;
            }
        }
        // With the AA gone, the CDH says so; restarted, it releases again.
        let (code, message) = kbs.runtime.block_on(cdh.get_resource("kbs:///default/config/app")).unwrap_err();
        assert!(message.contains("attestation-agent") || message.contains("aa.sock"), "{ctx}: {code:?} {message}");
        aa = Aa::start(dir.path(), &proxy.url());
        let bytes = kbs.runtime.block_on(cdh.get_resource("kbs:///default/config/app"));
        assert_eq!(bytes.unwrap_or_else(|e| panic!("{ctx}: after the restart: {e:?}")), b"app-config");
    }
    eprintln!("key release: {failed} cut by the kill, {released} finished before it");
    assert!(failed >= 1, "the kill window missed every release");
}

#[test]
fn attestation_agent_killed_during_an_encrypted_pull_then_restarted() {
    if !prerequisites(&["docker-registry", "skopeo"]) {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let kek = random_kek();
    let kbs = Kbs::start(HashMap::from([("default/key/1".to_string(), kek.clone())]));
    let reg = Registry::start(RegistryOptions::plain());
    push_plain_and_encrypted(&reg, &app_image(21), &kek, dir.path());
    let kbs_link = FaultProxy::start(&kbs.host(), FaultPlan::slow(32, Duration::from_millis(10)));
    let reg_link = FaultProxy::start(&reg.host(), FaultPlan::slow(16 * 1024, Duration::from_millis(20)));
    let mut aa = Aa::start(dir.path(), &kbs_link.url());
    let cdh = Cdh::start(&dir.path().join("cdh"), &aa.addr, &reg_link.host(), "");
    let image = format!("{}/app:enc", reg_link.host());
    let seed = seed_from_env();
    eprintln!("kill points: FAULT_SEED={seed}");
    let mut rng = Rng::new(seed);
    let mut bundles = Vec::new();
    let mut failed = 0;
    for round in 0..3 {
        let after = Duration::from_millis(20 + rng.below(800));
        let ctx = format!("round {round}, AA killed after {after:?} (FAULT_SEED={seed})");
        let bundle = dir.path().join(format!("bundle{round}"));
        let got = kill_during(after, || kbs.runtime.block_on(cdh.pull(&image, &bundle)), || aa.kill());
        match got {
            Ok(_) => {
                assert_app_rootfs(&bundle);
                release_bundle(&bundle);
            }
            Err((code, message)) => {
                eprintln!("{ctx}: {code:?}: {message}");
                assert!(
                    message.contains("attestation-agent") || message.contains("aa.sock"),
                    "{ctx}: the error does not name the attestation-agent: {message}"
                );
                assert!(!bundle.exists(), "{ctx}: a failed pull left {:?}", entries(&bundle));
                failed += 1;
            }
        }
        no_mounts_but(dir.path(), &[], &ctx);
        assert!(held_locks(&cdh.work).is_empty(), "{ctx}: locks held: {:?}", held_locks(&cdh.work));
        // Restarted, the AA releases the key again and the pull completes.
        aa = Aa::start(dir.path(), &kbs_link.url());
        let again = dir.path().join(format!("again{round}"));
        kbs.runtime.block_on(cdh.pull(&image, &again)).unwrap_or_else(|e| panic!("{ctx}: after the restart: {e:?}"));
        assert_app_rootfs(&again);
        release_bundle(&again);
        bundles.push(again);
    }
    eprintln!("encrypted pull: {failed} of 3 cut by the AA's death");
    assert!(support::crash::entries_of(&cdh.work, "staging").is_empty());
}

#[test]
fn data_hub_killed_during_a_pull_then_restarted() {
    if !prerequisites(&["docker-registry", "skopeo"]) {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let kbs = Kbs::start(HashMap::new());
    let mut aa = Aa::start(dir.path(), &format!("http://{}", kbs.host()));
    let reg = Registry::start(RegistryOptions::plain());
    let img = app_image(22);
    let layout = dir.path().join("plain");
    img.write_to_layout(&layout, "t");
    reg.push_oci_layout(&layout, "t", "app:plain");
    // About 300 KB at 100 KB/s: a pull takes about 3 s.
    let reg_link = FaultProxy::start(&reg.host(), FaultPlan::slow(2 * 1024, Duration::from_millis(20)));
    let image = format!("{}/app:plain", reg_link.host());
    let cdh_dir = dir.path().join("cdh");
    let seed = seed_from_env();
    eprintln!("kill points: FAULT_SEED={seed}");
    let mut rng = Rng::new(seed);
    let mut killed = 0;
    for round in 0..3 {
        let cdh = Cdh::start(&cdh_dir, &aa.addr, &reg_link.host(), "");
        let after = Duration::from_millis(20 + rng.below(900));
        let ctx = format!("round {round}, CDH killed after {after:?} (FAULT_SEED={seed})");
        let bundle = dir.path().join(format!("bundle{round}"));
        let got = kill_during(after, || kbs.runtime.block_on(cdh.pull(&image, &bundle)), || sigkill(cdh.pid()));
        match got {
            Ok(_) => {
                assert_app_rootfs(&bundle);
            }
            Err((code, message)) => {
                eprintln!("{ctx}: the client saw {code:?}: {message}");
                killed += 1;
            }
        }
        // A killed daemon's bundle is the caller's to clean up (kata removes the container).
        release_bundle(&bundle);
        drop(cdh);
        no_mounts_but(dir.path(), &[], &ctx);
        assert!(held_locks(&cdh_dir.join("work")).is_empty(), "{ctx}: locks held");
    }
    assert!(killed >= 1, "the kill window missed every pull");
    // Restarted on the same store: the pull completes and verifies; the dead
    // daemons' staging is gone.
    let cdh = Cdh::start(&cdh_dir, &aa.addr, &reg_link.host(), "");
    let bundle = dir.path().join("final");
    kbs.runtime.block_on(cdh.pull(&image, &bundle)).expect("pull after the kills");
    assert_app_rootfs(&bundle);
    release_bundle(&bundle);
    assert!(support::crash::entries_of(&cdh.work, "staging").is_empty(), "dead daemons' staging left");
    assert!(support::crash::temp_records(&cdh.work).is_empty(), "half-written records left");
    assert!(held_locks(&cdh.work).is_empty());
    no_mounts_but(dir.path(), &[], "final");
    aa.kill();
}
