//! End to end over a unix socket: the real agent binary, driven by the real
//! host client, as a shim would drive it.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{ctl, stderr, stdout, Agent};
use cvm_agent::ctl::{call_on, CtlError, Target, METHODS};
use serde_json::Value;

#[test]
fn check_version_and_an_unimplemented_rpc_through_the_ctl() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let addr = agent.addr();

    let out = ctl(&["--addr", &addr, "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["status"], 1, "SERVING is 1 in grpc.HealthCheckResponse.ServingStatus");

    let out = ctl(&["--addr", &addr, "version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["grpc_version"], "0.0.1");

    // Implemented RPCs check their input: no rootfs, no container.
    let body = r#"{"container_id":"c1","OCI":{"Version":"1.0.2","Process":{"Args":["/bin/true"]}}}"#;
    let out = ctl(&["--addr", &addr, "call", "CreateContainer", body]);
    assert_eq!(out.status.code(), Some(1), "a ttrpc status exits 1: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("INVALID_ARGUMENT (3)") && err.contains("Root.Path"), "{err}");

    let out = ctl(&["--addr", &addr, "call", "MemHotplugByProbe", "{}"]);
    assert_eq!(out.status.code(), Some(1), "a ttrpc status exits 1: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("UNIMPLEMENTED (12)"), "{err}");
    assert!(err.contains("/grpc.AgentService/MemHotplugByProbe"), "{err}");
    assert!(stdout(&out).is_empty());
}

#[test]
fn request_body_from_a_file_and_body_errors() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let addr = agent.addr();
    let file = dir.path().join("req.json");
    std::fs::File::create(&file).unwrap().write_all(br#"{"container_id":"c1","exec_id":"e1","len":16}"#).unwrap();

    let out = ctl(&["--addr", &addr, "call", "ReadStdout", &format!("@{}", file.display())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("NOT_FOUND (5)") && stderr(&out).contains(r#"container "c1" not found"#),
        "{}",
        stderr(&out)
    );

    let out = ctl(&["--addr", &addr, "call", "ReadStdout", r#"{"container":"c1"}"#]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown field `container`"), "{}", stderr(&out));

    let out = ctl(&["--addr", &addr, "call", "NoSuchMethod"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown method \"NoSuchMethod\""), "{}", stderr(&out));
}

/// RPCs served by the container runtime (tested in tests/runtime) and the
/// network module (tests/network.rs).
const IMPLEMENTED: [&str; 32] = [
    "CreateSandbox",
    "DestroySandbox",
    "CreateContainer",
    "StartContainer",
    "RemoveContainer",
    "ExecProcess",
    "SignalProcess",
    "WaitProcess",
    "UpdateContainer",
    "StatsContainer",
    "PauseContainer",
    "ResumeContainer",
    "WriteStdin",
    "ReadStdout",
    "ReadStderr",
    "CloseStdin",
    "TtyWinResize",
    "GetOOMEvent",
    "GetGuestDetails",
    "GetMetrics",
    "SetPolicy",
    "CopyFile",
    "SetGuestDateTime",
    "ReseedRandomDev",
    "GetVolumeStats",
    "UpdateInterface",
    "UpdateRoutes",
    "ListInterfaces",
    "ListRoutes",
    "AddARPNeighbors",
    "GetIPTables",
    "SetIPTables",
];

#[test]
fn every_unimplemented_rpc_answers_naming_itself_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let target = Target { addr: agent.addr().parse().unwrap(), hybrid_vsock_port: None };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let client = target.connect(Duration::from_secs(5)).await.unwrap();
        let agent_methods: Vec<&str> = METHODS
            .iter()
            .copied()
            .filter(|m| !matches!(*m, "Check" | "Version") && !IMPLEMENTED.contains(m))
            .collect();
        assert_eq!(agent_methods.len(), 42 - IMPLEMENTED.len());
        // All in flight at once on one connection, several rounds.
        let mut tasks = Vec::new();
        for round in 0..5 {
            for m in &agent_methods {
                let client = client.clone();
                let m = m.to_string();
                tasks.push(tokio::spawn(async move {
                    let r = call_on(&client, &m, "{}", Duration::from_secs(10)).await;
                    (round, m, r)
                }));
            }
        }
        for t in tasks {
            let (round, m, r) = t.await.unwrap();
            match r {
                Err(CtlError::Status { code, message, .. }) => {
                    assert_eq!(code, 12, "{m} (round {round}): {message}");
                    assert_eq!(message, format!("/grpc.AgentService/{m} is not implemented by this agent"));
                }
                other => panic!("{m}: expected UNIMPLEMENTED, got {other:?}"),
            }
        }
    });
}

#[test]
fn unknown_service_or_method_on_the_wire_gets_a_status_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = ttrpc::r#async::Client::connect(&agent.addr()).await.unwrap();
        for (service, method) in [("grpc.AgentService", "NoSuchRpc"), ("grpc.NoSuchService", "Check")] {
            let req = ttrpc::Request {
                service: service.into(),
                method: method.into(),
                timeout_nano: Duration::from_secs(5).as_nanos() as i64,
                ..Default::default()
            };
            match client.request(req).await {
                Err(ttrpc::Error::RpcStatus(s)) => assert_ne!(s.code(), ttrpc::Code::OK, "{service}/{method}"),
                other => panic!("{service}/{method}: expected a status, got {other:?}"),
            }
        }
    });
}

#[test]
fn hostile_bytes_on_one_connection_do_not_disturb_others() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    // A frame header claiming a 4 GiB body, then garbage, then a truncated frame.
    for junk in [
        &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0][..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0, 0, 0, 10, 0, 0, 0, 1, 1, 0, 0x0a, 0x03][..],
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
        let _ = s.write_all(junk);
        drop(s);
    }
    let out = ctl(&["--addr", &agent.addr(), "check"]);
    assert!(out.status.success(), "agent stopped answering after hostile input: {}", stderr(&out));
    assert!(agent.child.id() > 0);
}

#[test]
fn sigterm_and_sigint_shut_down_cleanly_and_remove_the_socket() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = Agent::start(dir.path(), &[]);
        // An open idle client connection must not hold up shutdown.
        let _idle = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
        let started = Instant::now();
        agent.signal(sig);
        let status = agent.wait_exit(Duration::from_secs(15));
        assert!(status.success(), "signal {sig}: exit {status}: {}", agent.log_text());
        assert!(!agent.socket.exists(), "socket file left behind");
        assert!(agent.log_text().contains("shutting down"));
        eprintln!("signal {sig}: exited in {:?}", started.elapsed());
    }
}

#[test]
fn json_logs_are_one_object_per_line_with_structured_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), &["--log-format", "json", "--log-level", "debug"]);
    let out = ctl(&["--addr", &agent.addr(), "call", "MemHotplugByProbe", "{}"]);
    assert_eq!(out.status.code(), Some(1));
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(15));
    let log = agent.log_text();
    let lines: Vec<Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let ready = lines.iter().find(|v| v["message"] == "agent ready").expect("ready line");
    assert_eq!(ready["addr"], agent.addr());
    assert_eq!(ready["level"], "INFO");
    let audited =
        lines.iter().find(|v| v["target"] == "policy_audit" && v["method"] == "MemHotplugByProbe").expect("decision");
    assert_eq!(audited["decision"], "allow");
    assert_eq!(audited["rule"], "MemHotplugByProbeRequest");
    let rejected = lines
        .iter()
        .find(|v| v["method"] == "MemHotplugByProbe" && v["service"].is_string())
        .expect("rejection logged");
    assert_eq!(rejected["service"], "grpc.AgentService");
}

#[test]
fn listen_address_from_env_and_clear_errors_for_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let agent = Agent::start_with(dir.path(), |cmd| {
        cmd.env("KATA_AGENT_SERVER_ADDR", format!("unix://{}", sock.display()));
    });
    assert!(ctl(&["--addr", &agent.addr(), "check"]).status.success());
    drop(agent);

    let out = std::process::Command::new(common::AGENT).args(["--server-addr", "tcp://127.0.0.1:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("--server-addr") && err.contains("expected vsock://CID:PORT"), "{err}");
}

#[test]
fn a_second_agent_does_not_steal_a_live_socket() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let out = std::process::Command::new(common::AGENT)
        .args(["--server-addr", &agent.addr(), "--policy-file", common::ALLOW_ALL])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already listening"), "{}", stderr(&out));
    assert!(ctl(&["--addr", &agent.addr(), "check"]).status.success(), "first agent must keep serving");
}

#[test]
fn unreachable_agent_exits_3_with_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix://{}", dir.path().join("absent.sock").display());
    let out = ctl(&["--addr", &addr, "check"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains(&addr), "{}", stderr(&out));
}

#[test]
fn an_agent_without_a_loadable_policy_refuses_to_serve() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.rego");
    std::fs::write(&broken, "package agent_policy\nExecProcessRequest if {\n").unwrap();
    for (policy, needle) in [(dir.path().join("absent.rego"), "absent.rego"), (broken.clone(), "broken.rego")] {
        let sock = dir.path().join("agent.sock");
        let out = std::process::Command::new(common::AGENT)
            .args(["--server-addr", &format!("unix://{}", sock.display())])
            .arg("--policy-file")
            .arg(&policy)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains("refusing to serve") && err.contains(needle), "{err}");
        assert!(!sock.exists(), "an agent without a policy must not listen");
    }
}
