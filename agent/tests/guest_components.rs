//! The agent starts the REAL attestation-agent and confidential-data-hub of
//! this workspace as kata's agent does, hands them the initdata's aa.toml and
//! cdh.toml, and relaunches the attestation-agent after a SIGKILL.
//!
//! The component binaries belong to other packages, so `CARGO_BIN_EXE_*` does
//! not name them: [`component_bins`] takes them from
//! `CVM_GUEST_COMPONENTS_BIN_DIR`, else from this test's target directory,
//! where `cargo test --workspace` (what `make test` runs) has just built
//! them; only when they are missing there does it build them (`cargo build -p
//! attestation-agent -p confidential-data-hub`; cargo releases its lock once
//! the tests run). A bare `cargo test -p cvm-agent` may find them stale.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ctl, stdout, Agent};

/// A directory holding `attestation-agent` and `confidential-data-hub`.
fn component_bins() -> PathBuf {
    if let Some(dir) = std::env::var_os("CVM_GUEST_COMPONENTS_BIN_DIR") {
        return dir.into();
    }
    // <target>/debug/deps/guest_components-HASH → <target>
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).expect("test binary under <target>/<profile>/deps").to_owned();
    let profile_dir = exe.ancestors().nth(2).unwrap().to_owned();
    if ["attestation-agent", "confidential-data-hub"].iter().all(|b| profile_dir.join(b).is_file()) {
        return profile_dir;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build");
    if profile_dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["-p", "attestation-agent", "-p", "confidential-data-hub", "--target-dir"])
        .arg(&target)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p attestation-agent -p confidential-data-hub failed");
    profile_dir
}

/// kata's bin dir layout (`<dir>/<component name>`), linked to the built binaries.
fn bin_dir(work: &Path) -> PathBuf {
    let built = component_bins();
    let dir = work.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["attestation-agent", "confidential-data-hub"] {
        let src = built.join(name);
        assert!(src.is_file(), "{} missing", src.display());
        std::os::unix::fs::symlink(&src, dir.join(name)).unwrap();
    }
    dir
}

/// An initdata device image whose aa.toml and cdh.toml the components need to
/// start at all here: the sample attester (this host has no TEE, so without
/// the aa.toml the attestation-agent refuses to start) and a CDH socket in
/// the test's run directory (without the cdh.toml it would bind the default
/// /run/confidential-containers/cdh.sock and the agent would time out).
fn initdata_image(work: &Path, run: &Path) -> PathBuf {
    let aa = format!("[attester]\ntype = \"sample\"\n\n[measurement]\neventlog = \"{}/eventlog\"\n", work.display());
    let cdh = format!(
        "socket = \"unix://{run}/cdh.sock\"\n\n[aa]\naa_socket = \"unix://{run}/attestation-agent/attestation-agent.sock\"\n\n\
         [image]\nwork_dir = \"{work}/image\"\n",
        run = run.display(),
        work = work.display()
    );
    let doc = format!("version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"aa.toml\" = '''\n{aa}'''\n\"cdh.toml\" = '''\n{cdh}'''\n");
    let img = work.join("initdata.img");
    std::fs::write(&img, cvm_agent::initdata::device_image(doc.as_bytes())).unwrap();
    img
}

/// Children of `pid` whose command name starts with `comm`.
fn children_named(pid: u32, comm: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
            let name = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            // comm is truncated to 15 bytes
            if comm.starts_with(name.trim()) && !name.trim().is_empty() {
                out.push(child);
            }
        }
    }
    out
}

fn metrics(agent: &Agent) -> String {
    let out = ctl(&["--addr", &agent.addr(), "call", "GetMetrics"]);
    assert!(out.status.success(), "GetMetrics: {}", common::stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    v["metrics"].as_str().unwrap_or_default().to_owned()
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

#[test]
fn real_components_start_with_initdata_configs_and_a_killed_aa_is_relaunched() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let run = w.join("run");
    let bins = bin_dir(w);
    let img = initdata_image(w, &run);
    // kata's config file keys; api-server-rest is not part of this workspace.
    let config = w.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "server_addr = \"unix://{}\"\nguest_components_procs = \"confidential-data-hub\"\n\
             launch_process_timeout = {{ secs = 20, nanos = 0 }}\ndev_mode = false\nnot_a_kata_key = 1\n",
            w.join("agent.sock").display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let mut agent = Agent::start_with(w, |cmd| {
        cmd.arg("--config")
            .arg(&config)
            .arg("--initdata-device")
            .arg(&img)
            .arg("--guest-components-bin-dir")
            .arg(&bins)
            .arg("--guest-components-run-dir")
            .arg(&run);
    });
    let boot = started.elapsed();
    // The agent serves only after both sockets exist (kata's order).
    let aa_sock = run.join("attestation-agent/attestation-agent.sock");
    let cdh_sock = run.join("cdh.sock");
    assert!(is_socket(&aa_sock) && is_socket(&cdh_sock), "{}", agent.log_text());
    // initdata was extracted for them, 0700.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(run.join("initdata")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(run.join("initdata/initdata.toml").is_file());
    let log = agent.log_text();
    assert!(log.contains("not_a_kata_key") && log.contains("dev_mode"), "config warnings missing: {log}");
    // The AA ran with kata's arguments and the initdata's aa.toml.
    assert!(log.contains("--initdata-toml") && log.contains("aa.toml"), "{log}");
    assert!(log.contains("SAMPLE attester"), "the AA did not read the initdata's aa.toml: {log}");

    let pid = agent.child.id();
    let aa = children_named(pid, "attestation-agent");
    let cdh = children_named(pid, "confidential-data-hub");
    assert_eq!((aa.len(), cdh.len()), (1, 1), "{log}");
    let m = metrics(&agent);
    assert!(m.contains("cvm_agent_guest_component_up{name=\"attestation-agent\"} 1"), "{m}");
    assert!(m.contains("cvm_agent_guest_component_up{name=\"confidential-data-hub\"} 1"), "{m}");
    assert!(m.contains("cvm_agent_guest_component_restarts_total{name=\"attestation-agent\"} 0"), "{m}");

    // SIGKILL the AA: the supervisor relaunches it and its socket comes back.
    let killed = Instant::now();
    assert_eq!(unsafe { libc::kill(aa[0], libc::SIGKILL) }, 0);
    wait_for("the AA relaunched", Duration::from_secs(30), || {
        metrics(&agent).contains("cvm_agent_guest_component_restarts_total{name=\"attestation-agent\"} 1")
            && metrics(&agent).contains("cvm_agent_guest_component_up{name=\"attestation-agent\"} 1")
    });
    let relaunch = killed.elapsed();
    let aa2 = children_named(pid, "attestation-agent");
    assert_eq!(aa2.len(), 1);
    assert_ne!(aa2[0], aa[0]);
    assert!(is_socket(&aa_sock));
    std::os::unix::net::UnixStream::connect(&aa_sock).expect("the relaunched AA serves");
    // The CDH was not touched.
    assert_eq!(children_named(pid, "confidential-data-hub"), cdh);
    assert!(metrics(&agent).contains("cvm_agent_guest_component_restarts_total{name=\"confidential-data-hub\"} 0"));

    let out = ctl(&["--addr", &agent.addr(), "call", "GetGuestDetails", r#"{"mem_block_size":true}"#]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let log = agent.log_text();
    assert!(log.contains("attestation-agent=running") && log.contains("restarts=1"), "{log}");
    assert!(log.contains("guest component exited") && log.contains("restarting guest component"), "{log}");

    // SIGTERM: the agent stops the components before it exits.
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).success(), "{}", agent.log_text());
    for p in aa2.iter().chain(&cdh) {
        assert!(!Path::new(&format!("/proc/{p}")).exists(), "component {p} outlived the agent");
    }
    println!("boot with both components {boot:?}; AA relaunched {relaunch:?} after SIGKILL");
}

#[test]
fn without_the_api_server_rest_binary_no_component_starts_and_the_agent_serves() {
    // kata's default procs (api-server-rest) with a bin dir that lacks it.
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let empty = w.join("bin");
    std::fs::create_dir(&empty).unwrap();
    // The other two are there (never run: kata checks the whole plan first).
    std::fs::write(empty.join("attestation-agent"), "").unwrap();
    std::fs::write(empty.join("confidential-data-hub"), "").unwrap();
    let agent = Agent::start(
        w,
        &[
            "--guest-components-bin-dir",
            empty.to_str().unwrap(),
            "--guest-components-run-dir",
            w.join("run").to_str().unwrap(),
        ],
    );
    let log = agent.log_text();
    assert!(log.contains("api-server-rest") && log.contains("none started"), "{log}");
    assert!(children_named(agent.child.id(), "attestation-agent").is_empty());
    assert!(!metrics(&agent).contains("cvm_agent_guest_component_up"));
}
