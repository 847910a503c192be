//! Replays policy test cases through the real agent over ttrpc.
//!
//! Each directory under `tests/policy/` holds a policy and a `testcases.json`
//! in kata's genpolicy test format (a list of `{description, allowed, kind,
//! request}`, `kind` being the request message name, CopyFile given in the
//! policy's converted view), plus an optional `message_contains` that a
//! denial's status must carry. The agent is started with that policy; every
//! request goes over the wire exactly as a shim would send it, in order (the
//! policy state carries over from one case to the next, as in kata), and the
//! verdict is read from the answer: PERMISSION_DENIED (or, for
//! ReadStreamRequest, an empty read) is a denial, anything else got past the
//! policy to the handler.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cvm_agent::ctl::{self, CtlError, Target};
use serde::Deserialize;

mod common;
use common::Agent;

#[derive(Debug, Deserialize)]
struct Case {
    description: String,
    allowed: bool,
    kind: String,
    request: serde_json::Value,
    #[serde(default)]
    message_contains: Option<String>,
}

/// The method a shim calls with each request kind.
fn method_of(kind: &str) -> &'static str {
    match kind {
        "CreateContainerRequest" => "CreateContainer",
        "CreateSandboxRequest" => "CreateSandbox",
        "ExecProcessRequest" => "ExecProcess",
        "RemoveContainerRequest" => "RemoveContainer",
        "CopyFileRequest" => "CopyFile",
        "ReadStreamRequest" => "ReadStdout",
        "WriteStreamRequest" => "WriteStdin",
        "CloseStdinRequest" => "CloseStdin",
        "SetPolicyRequest" => "SetPolicy",
        "SetGuestDateTimeRequest" => "SetGuestDateTime",
        "OnlineCPUMemRequest" => "OnlineCPUMem",
        "MemHotplugByProbeRequest" => "MemHotplugByProbe",
        "UpdateInterfaceRequest" => "UpdateInterface",
        "UpdateRoutesRequest" => "UpdateRoutes",
        "AddARPNeighborsRequest" => "AddARPNeighbors",
        "StartContainerRequest" => "StartContainer",
        "SignalProcessRequest" => "SignalProcess",
        "WaitProcessRequest" => "WaitProcess",
        "GetMetricsRequest" => "GetMetrics",
        "GuestDetailsRequest" => "GetGuestDetails",
        "DestroySandboxRequest" => "DestroySandbox",
        other => panic!("test case kind {other} has no method in this replay"),
    }
}

/// kata's test files give CopyFile as the policy sees it; the wire carries
/// the mode bits and the symlink target as data.
fn copy_file_on_the_wire(view: &serde_json::Value) -> serde_json::Value {
    let kind = match view["file_type"].as_str() {
        Some("Regular") => libc::S_IFREG,
        Some("Directory") => libc::S_IFDIR,
        Some("Symlink") => libc::S_IFLNK,
        _ => libc::S_IFSOCK,
    };
    let mode = view["file_mode"].as_u64().unwrap_or(0o644) as u32 & 0o7777;
    let data: Vec<u8> = view["symlink_target"].as_str().map(|t| t.as_bytes().to_vec()).unwrap_or_default();
    serde_json::json!({
        "path": view["path"],
        "file_mode": kind | mode,
        "dir_mode": view["dir_mode"].as_u64().unwrap_or(0o755),
        "uid": view["uid"].as_i64().unwrap_or(0),
        "gid": view["gid"].as_i64().unwrap_or(0),
        "file_size": data.len(),
        "data": data,
    })
}

fn replay(dir: &Path, policy: &Path) -> String {
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("testcases.json")).unwrap()).expect("testcases.json");
    assert!(!cases.is_empty());
    let work = tempfile::tempdir().unwrap();
    let agent = Agent::start_with(work.path(), |cmd| {
        cmd.arg("--server-addr")
            .arg(format!("unix://{}", work.path().join("agent.sock").display()))
            .arg("--policy-file")
            .arg(policy)
            // The host picks the log level; decisions must be logged anyway.
            .args(["--log-level", "error"])
            .env("CVM_AGENT_RUN_DIR", work.path().join("run"))
            .env("CVM_AGENT_STORAGE_BASE", work.path().join("storage"))
            .env("CVM_AGENT_CGROUP_PARENT", format!("cvm-policy-replay-{}", std::process::id()));
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut failures = Vec::new();
    rt.block_on(async {
        let target = Target { addr: agent.addr().parse().unwrap(), hybrid_vsock_port: None };
        let client = target.connect(Duration::from_secs(5)).await.unwrap();
        for case in &cases {
            let method = method_of(&case.kind);
            let body = if case.kind == "CopyFileRequest" {
                copy_file_on_the_wire(&case.request)
            } else {
                case.request.clone()
            };
            let answer = ctl::call_on(&client, method, &body.to_string(), Duration::from_secs(20)).await;
            let (allowed, message) = match &answer {
                Err(CtlError::Status { code, message, .. }) if *code == ttrpc::Code::PERMISSION_DENIED as i32 => {
                    (false, message.clone())
                }
                Ok(reply) if case.kind == "ReadStreamRequest" => {
                    let v: serde_json::Value = serde_json::from_str(reply).unwrap();
                    let empty = v["data"].as_array().is_none_or(|d| d.is_empty())
                        && v["data"].as_str().is_none_or(str::is_empty);
                    (!empty, String::new())
                }
                Err(CtlError::Status { .. }) | Ok(_) => (true, String::new()),
                Err(other) => panic!("{}: {} failed on the transport: {other}", dir.display(), case.description),
            };
            let mut wrong = allowed != case.allowed;
            if !allowed && !wrong && case.kind != "ReadStreamRequest" {
                wrong = !message.starts_with(&format!("{} is blocked by policy", case.kind))
                    || case.message_contains.as_ref().is_some_and(|m| !message.contains(m.as_str()));
            }
            if wrong {
                failures.push(format!(
                    "{}: expected allowed={} for {:?}, got {answer:?}",
                    case.description, case.allowed, case.kind
                ));
            }
        }
    });
    assert!(failures.is_empty(), "{}:\n{}\nagent log:\n{}", dir.display(), failures.join("\n"), agent.log_text());
    // Every decision was audited although the level is `error`.
    let log = agent.log_text();
    assert!(log.contains("policy_audit"), "{log}");
    log
}

fn data_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy").join(name)
}

#[test]
fn the_confidential_default_refuses_what_a_hostile_host_tries_and_allows_the_pod_lifecycle() {
    let log = replay(&data_dir("confidential"), Path::new(common::CONFIDENTIAL));
    assert!(!log.contains("ALLOW-ALL"), "{log}");
}

#[test]
fn a_genpolicy_shaped_pod_policy_keeps_state_across_requests() {
    let dir = data_dir("pod");
    replay(&dir, &dir.join("policy.rego"));
}

#[test]
fn allow_all_allows_every_kind_and_says_so_loudly() {
    let log = replay(&data_dir("allow-all"), Path::new(common::ALLOW_ALL));
    assert!(log.contains("ALLOW-ALL POLICY"), "{log}");
}

/// Starts an agent on `dir` with the given extra arguments.
fn agent_with(dir: &Path, args: &[&std::ffi::OsStr]) -> Agent {
    Agent::start_with(dir, |cmd| {
        cmd.arg("--server-addr").arg(format!("unix://{}", dir.join("agent.sock").display())).args(args);
    })
}

fn call(agent: &Agent, method: &str, body: serde_json::Value) -> Result<String, CtlError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let target = Target { addr: agent.addr().parse().unwrap(), hybrid_vsock_port: None };
        let client = target.connect(Duration::from_secs(5)).await.unwrap();
        ctl::call_on(&client, method, &body.to_string(), Duration::from_secs(10)).await
    })
}

fn is_denied(r: &Result<String, CtlError>) -> bool {
    matches!(r, Err(CtlError::Status { code, .. }) if *code == ttrpc::Code::PERMISSION_DENIED as i32)
}

#[test]
fn initdata_policy_replaces_the_policy_file() {
    let dir = tempfile::tempdir().unwrap();
    let confidential = std::fs::read_to_string(common::CONFIDENTIAL).unwrap();
    let doc =
        format!("version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"policy.rego\" = '''\n{confidential}'''\n");
    let img = dir.path().join("initdata.img");
    std::fs::write(&img, cvm_agent::initdata::device_image(doc.as_bytes())).unwrap();
    let allow_all = std::ffi::OsStr::new(common::ALLOW_ALL);
    let agent =
        agent_with(dir.path(), &["--policy-file".as_ref(), allow_all, "--initdata-device".as_ref(), img.as_os_str()]);
    let exec = serde_json::json!({"container_id": "c1", "exec_id": "e1", "process": {"Args": ["sh"]}});
    assert!(is_denied(&call(&agent, "ExecProcess", exec)), "the initdata policy must be in force");
    let log = agent.log_text();
    assert!(log.contains("origin=initdata policy.rego") && !log.contains("ALLOW-ALL"), "{log}");
    drop(agent);

    // A malformed initdata device: the agent refuses to serve at all.
    std::fs::write(&img, b"initdata\xff\xff\xff\xff\xff\xff\xff\xff").unwrap();
    let out = std::process::Command::new(common::AGENT)
        .args(["--server-addr", &format!("unix://{}", dir.path().join("b.sock").display())])
        .arg("--policy-file")
        .arg(common::ALLOW_ALL)
        .arg("--initdata-device")
        .arg(&img)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to serve") && err.contains("initdata.img"), "{err}");
}

#[test]
fn set_policy_replaces_the_policy_only_when_the_policy_in_force_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with(dir.path(), &["--policy-file".as_ref(), common::ALLOW_ALL.as_ref()]);
    // Not Rego: refused by name, and the policy in force stays (still allow-all).
    let bad = call(&agent, "SetPolicy", serde_json::json!({"policy": "package agent_policy\nthis is not rego("}));
    assert!(
        matches!(&bad, Err(CtlError::Status { code, .. }) if *code == ttrpc::Code::INVALID_ARGUMENT as i32),
        "{bad:?}"
    );
    let metrics = call(&agent, "GetMetrics", serde_json::json!({})).unwrap();
    assert!(metrics.contains("cvm_agent_policy_decisions_total"), "{metrics}");
    // allow-all allows SetPolicy; the new policy allows metrics, denies SetPolicy.
    let locked =
        "package agent_policy\nimport rego.v1\ndefault SetPolicyRequest := false\ndefault GetMetricsRequest := true\n";
    call(&agent, "SetPolicy", serde_json::json!({"policy": locked})).unwrap();
    assert!(is_denied(&call(&agent, "SetPolicy", serde_json::json!({"policy": common_allow_all()}))));
    assert!(is_denied(&call(&agent, "ExecProcess", serde_json::json!({"container_id": "c1"}))));
    // The counters saw each verdict.
    let metrics: serde_json::Value =
        serde_json::from_str(&call(&agent, "GetMetrics", serde_json::json!({})).unwrap()).unwrap();
    let text = metrics["metrics"].as_str().unwrap();
    for line in [
        "cvm_agent_policy_decisions_total{method=\"SetPolicy\",decision=\"allow\"} 2",
        "cvm_agent_policy_decisions_total{method=\"SetPolicy\",decision=\"deny\"} 1",
        "cvm_agent_policy_decisions_total{method=\"ExecProcess\",decision=\"deny\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert!(text.contains("cvm_agent_resident_bytes "), "{text}");
    assert!(agent.log_text().contains("policy replaced by SetPolicy"));
}

fn common_allow_all() -> String {
    std::fs::read_to_string(common::ALLOW_ALL).unwrap()
}
