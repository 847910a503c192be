//! The `attestation-agent` binary as a daemon on a unix socket, driven over
//! ttrpc the way image-rs and the confidential-data-hub call it, against the
//! test KBS on loopback; and the one-shot CLI commands.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use protos::attestation_agent::{
    ExtendRuntimeMeasurementRequest, GetEvidenceRequest, GetResourceRequest, GetTeeTypeRequest, GetTokenRequest,
};
use protos::attestation_agent_ttrpc::AttestationAgentServiceClient;
use test_kbs::{KbsConfig, TestKbs};

const BIN: &str = env!("CARGO_BIN_EXE_attestation-agent");

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, url: &str) -> PathBuf {
    let socket = dir.join("aa.sock");
    let text = support::aa_toml(
        url,
        &format!(
            "\n[server]\nsocket = \"unix://{}\"\n\n[measurement]\neventlog = \"{}\"\n",
            socket.display(),
            dir.join("eventlog").display()
        ),
    );
    let path = dir.join("aa.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(dir: &Path, url: &str) -> Daemon {
    let config = write_config(dir, url);
    let child = Command::new(BIN).args(["serve", "--config"]).arg(&config).stderr(Stdio::null()).spawn().unwrap();
    let socket = dir.join("aa.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "daemon did not create {}", socket.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon { child, socket }
}

/// Runs a CLI command off the async threads (the test KBS runs on them).
async fn run(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

async fn client(d: &Daemon) -> AttestationAgentServiceClient {
    let c = ttrpc::r#async::Client::connect(&format!("unix://{}", d.socket.display())).await.unwrap();
    AttestationAgentServiceClient::new(c)
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(20).as_nanos() as i64)
}

#[tokio::test]
async fn daemon_serves_resources_tokens_evidence_and_measurements() {
    let kbs = TestKbs::start(KbsConfig { resources: support::resources(3), ..KbsConfig::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), &kbs.url());
    let mode =
        std::fs::metadata(&daemon.socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions())).unwrap();
    assert_eq!(mode & 0o777, 0o600, "socket is owner-only");
    let aa = client(&daemon).await;

    let tee = aa.get_tee_type(ctx(), &GetTeeTypeRequest::default()).await.unwrap();
    assert_eq!(tee.tee, "sample");

    for i in 0..3 {
        let req = GetResourceRequest { ResourcePath: format!("kbs:///default/key/{i}"), ..Default::default() };
        let resp = aa.get_resource(ctx(), &req).await.unwrap();
        assert_eq!(resp.Resource, format!("secret-{i}").into_bytes());
    }
    let token = aa.get_token(ctx(), &GetTokenRequest { TokenType: "kbs".into(), ..Default::default() }).await.unwrap();
    assert_eq!(String::from_utf8(token.Token).unwrap().split('.').count(), 3);
    assert_eq!(kbs.stats().attestations(), 1, "resources and token share one attestation");

    let runtime = b"0123456789abcdef0123456789abcdef".to_vec();
    let ev = aa
        .get_evidence(ctx(), &GetEvidenceRequest { RuntimeData: runtime.clone(), ..Default::default() })
        .await
        .unwrap();
    let ev: serde_json::Value = serde_json::from_slice(&ev.Evidence).unwrap();
    assert_eq!(ev["report_data"], base64::engine::general_purpose::STANDARD.encode(&runtime));

    let ext = ExtendRuntimeMeasurementRequest {
        Domain: "github.com/confidential-containers".into(),
        Operation: "PullImage".into(),
        Content: "docker.io/library/busybox:latest".into(),
        ..Default::default()
    };
    aa.extend_runtime_measurement(ctx(), &ext).await.unwrap();
    let log = std::fs::read_to_string(dir.path().join("eventlog")).unwrap();
    assert!(log.contains("PullImage") && log.contains("\"register\":2"), "{log}");

    // Hostile requests: clear, typed errors; the daemon keeps serving.
    let bad = GetResourceRequest { ResourcePath: "kbs:///../../etc/shadow".into(), ..Default::default() };
    match aa.get_resource(ctx(), &bad).await.unwrap_err() {
        ttrpc::Error::RpcStatus(s) => {
            assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT);
            assert!(s.message().contains("invalid resource URI"), "{}", s.message());
        }
        other => panic!("{other:?}"),
    }
    let missing = GetResourceRequest { ResourcePath: "kbs:///default/key/nope".into(), ..Default::default() };
    match aa.get_resource(ctx(), &missing).await.unwrap_err() {
        ttrpc::Error::RpcStatus(s) => assert_eq!(s.code(), ttrpc::Code::PERMISSION_DENIED, "{}", s.message()),
        other => panic!("{other:?}"),
    }
    let too_long = GetEvidenceRequest { RuntimeData: vec![0; 65], ..Default::default() };
    assert!(aa.get_evidence(ctx(), &too_long).await.is_err());
    let bad_event =
        ExtendRuntimeMeasurementRequest { Domain: "a b".into(), Operation: "x".into(), ..Default::default() };
    assert!(aa.extend_runtime_measurement(ctx(), &bad_event).await.is_err());
    let bad_token = GetTokenRequest { TokenType: "coco_as".into(), ..Default::default() };
    assert!(aa.get_token(ctx(), &bad_token).await.is_err());
    assert_eq!(aa.get_tee_type(ctx(), &GetTeeTypeRequest::default()).await.unwrap().tee, "sample");
}

#[tokio::test]
async fn cli_get_resource_writes_the_bytes_to_stdout() {
    let kbs = TestKbs::start(KbsConfig { resources: support::resources(1), ..KbsConfig::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &kbs.url());
    let mut cmd = Command::new(BIN);
    cmd.args(["get-resource", "--config"]).arg(&config).arg("kbs:///default/key/0");
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"secret-0");

    let mut cmd = Command::new(BIN);
    cmd.args(["get-evidence", "--config"]).arg(&config).args(["--runtime-data-b64", "aGVsbG8="]);
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ev: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ev, serde_json::json!({"svn": "1", "report_data": "aGVsbG8="}));
}

#[tokio::test]
async fn cli_fails_clearly_when_the_kbs_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "http://127.0.0.1:9");
    let mut cmd = Command::new(BIN);
    cmd.args(["get-resource", "--config"]).arg(&config).arg("kbs:///default/key/0");
    let out = run(cmd).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unreachable after 3 attempt(s)"), "{err}");
}

#[test]
fn auto_attester_never_falls_back_to_sample() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aa.toml");
    std::fs::write(&path, "[token_configs.kbs]\nurl = \"https://127.0.0.1:9\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["get-evidence", "--config"])
        .arg(&path)
        .args(["--runtime-data-b64", "AA=="])
        .output()
        .unwrap();
    assert!(!out.status.success(), "no TEE here: auto must not produce sample evidence");
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no TEE detected"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn image_rs_key_source_fetches_through_the_daemon() {
    use image_rs::keysource::{AaKeySource, KeySource, KeySourceError, ResourceUri};

    let kbs = TestKbs::start(KbsConfig { resources: support::resources(2), ..KbsConfig::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), &kbs.url());
    let source = AaKeySource::new(format!("unix://{}", daemon.socket.display()), Duration::from_secs(20));
    for i in 0..2 {
        let uri: ResourceUri = format!("kbs:///default/key/{i}").parse().unwrap();
        assert_eq!(source.get_resource(&uri).await.unwrap().as_slice(), format!("secret-{i}").as_bytes());
    }
    let missing: ResourceUri = "kbs:///default/key/absent".parse().unwrap();
    let err = source.get_resource(&missing).await.unwrap_err();
    assert!(matches!(err, KeySourceError::NotFound { .. }), "{err}");
    kbs.update(|c| c.policy = test_kbs::Policy::DenyAll);
    let denied: ResourceUri = "kbs:///default/key/0".parse().unwrap();
    assert!(matches!(source.get_resource(&denied).await.unwrap_err(), KeySourceError::Denied { .. }));
    assert_eq!(kbs.stats().attestations(), 1);

    drop(daemon);
    let err = source.get_resource(&denied).await.unwrap_err();
    assert!(matches!(err, KeySourceError::Unavailable { .. }), "{err}");
}
