//! The `attestation-agent` binary launched the way kata's agent launches
//! guest-components' AA (`--attestation_sock unix://… --initdata-toml FILE
//! -c aa.toml`, no subcommand), driven over ttrpc: guest-components' RPCs
//! (BindInitData, GetAdditionalTees, GetAdditionalEvidence,
//! ExtendRuntimeMeasurement's Result), the KBS transport rules (plain HTTP
//! only with `insecure_http`, warned; HTTPS with a pinned openssl `CA:TRUE`
//! certificate).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protos::attestation_agent::{
    BindInitDataRequest, ExtendRuntimeMeasurementRequest, GetAdditionalEvidenceRequest, GetAdditionalTeesRequest,
    GetResourceRequest, GetTeeTypeRequest, RuntimeMeasurementResult,
};
use protos::attestation_agent_ttrpc::AttestationAgentServiceClient;
use sha2::{Digest, Sha384};
use test_kbs::{KbsConfig, TestKbs};

const BIN: &str = env!("CARGO_BIN_EXE_attestation-agent");

const INITDATA: &str =
    "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"policy.rego\" = \"package agent_policy\"\n";

struct Daemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// aa.toml as an initdata would carry it (no [server]: the socket comes from
/// --attestation_sock).
fn write_aa_toml(dir: &Path, kbs: &str) -> PathBuf {
    let text = format!(
        "{kbs}\n[attester]\ntype = \"sample\"\n\n[kbs_client]\nmax_attempts = 2\nbackoff_ms = 10\ntimeout_secs = 10\n\n\
         [measurement]\neventlog = \"{}\"\n",
        dir.join("eventlog").display()
    );
    let path = dir.join("aa.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `attestation-agent --attestation_sock unix://DIR/aa.sock [--initdata-toml F] -c aa.toml`, in kata's order.
fn kata_command(dir: &Path, aa_toml: &Path, initdata: Option<&Path>) -> (Command, PathBuf, PathBuf) {
    let socket = dir.join("aa.sock");
    let log = dir.join("aa.log");
    let mut cmd = Command::new(BIN);
    cmd.arg("--attestation_sock").arg(format!("unix://{}", socket.display()));
    if let Some(initdata) = initdata {
        cmd.arg("--initdata-toml").arg(initdata);
    }
    cmd.arg("-c").arg(aa_toml);
    cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    (cmd, socket, log)
}

fn launch(dir: &Path, aa_toml: &Path, initdata: Option<&Path>) -> Daemon {
    let (mut cmd, socket, log) = kata_command(dir, aa_toml, initdata);
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("attestation-agent exited ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "no socket at {}", socket.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon { child, socket, log }
}

/// Runs the binary to completion (it must refuse to start).
async fn refused_start(dir: &Path, aa_toml: &Path) -> String {
    let (mut cmd, socket, log) = kata_command(dir, aa_toml, None);
    let status = tokio::task::spawn_blocking(move || cmd.status().unwrap()).await.unwrap();
    assert!(!status.success(), "must refuse to start");
    assert!(!socket.exists());
    std::fs::read_to_string(log).unwrap()
}

async fn client(d: &Daemon) -> AttestationAgentServiceClient {
    let c = ttrpc::r#async::Client::connect(&format!("unix://{}", d.socket.display())).await.unwrap();
    AttestationAgentServiceClient::new(c)
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(20).as_nanos() as i64)
}

fn code(err: ttrpc::Error) -> (ttrpc::Code, String) {
    match err {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_owned()),
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

#[tokio::test]
async fn kata_launch_binds_initdata_and_answers_guest_components_rpcs() {
    let kbs = TestKbs::start(KbsConfig { resources: support::resources(1), ..KbsConfig::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let initdata = dir.path().join("initdata.toml");
    std::fs::write(&initdata, INITDATA).unwrap();
    let aa_toml =
        write_aa_toml(dir.path(), &format!("[token_configs.kbs]\nurl = \"{}\"\ninsecure_http = true\n", kbs.url()));
    let daemon = launch(dir.path(), &aa_toml, Some(&initdata));
    let aa = client(&daemon).await;
    assert_eq!(aa.get_tee_type(ctx(), &GetTeeTypeRequest::default()).await.unwrap().tee, "sample");

    // No additional attestable device: an empty list and empty evidence, OK
    // (kbs_protocol puts that empty string in "additional-evidence").
    let tees = aa.get_additional_tees(ctx(), &GetAdditionalTeesRequest::default()).await.unwrap();
    assert!(tees.additional_tees.is_empty(), "{:?}", tees.additional_tees);
    let ev = aa
        .get_additional_evidence(
            ctx(),
            &GetAdditionalEvidenceRequest { RuntimeData: vec![7; 48], ..Default::default() },
        )
        .await
        .unwrap();
    assert!(ev.Evidence.is_empty());

    // The digest of --initdata-toml (its `algorithm`: sha384) was bound at
    // start: binding it again is accepted, another digest is refused.
    let digest = Sha384::digest(INITDATA.as_bytes()).to_vec();
    aa.bind_init_data(ctx(), &BindInitDataRequest { Digest: digest.clone(), ..Default::default() }).await.unwrap();
    let other = BindInitDataRequest { Digest: Sha384::digest(b"other").to_vec(), ..Default::default() };
    let (c, msg) = code(aa.bind_init_data(ctx(), &other).await.unwrap_err());
    assert_eq!(c, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains(&hex::encode(&digest)), "names the bound digest: {msg}");
    let (c, msg) = code(aa.bind_init_data(ctx(), &BindInitDataRequest::default()).await.unwrap_err());
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT, "{msg}");

    // The sample TEE has (in-memory) registers: Result = OK, not an error.
    let ext = ExtendRuntimeMeasurementRequest {
        Domain: "github.com/confidential-containers".into(),
        Operation: "PullImage".into(),
        Content: "{\"image\":\"busybox\"}".into(),
        ..Default::default()
    };
    let resp = aa.extend_runtime_measurement(ctx(), &ext).await.unwrap();
    assert_eq!(resp.Result.enum_value(), Ok(RuntimeMeasurementResult::OK));

    // The KBS received the initdata document itself with the attestation.
    let req = GetResourceRequest { ResourcePath: "kbs:///default/key/0".into(), ..Default::default() };
    assert_eq!(aa.get_resource(ctx(), &req).await.unwrap().Resource, b"secret-0");
    assert_eq!(kbs.stats().last_init_data.lock().unwrap().as_deref(), Some(INITDATA));

    let log = daemon.log();
    assert!(log.contains("insecure_http = true") && log.contains("WARN"), "warned at start: {log}");
}

#[tokio::test]
async fn plain_http_kbs_is_refused_without_insecure_http() {
    let dir = tempfile::tempdir().unwrap();
    let aa_toml = write_aa_toml(dir.path(), "[token_configs.kbs]\nurl = \"http://127.0.0.1:9\"\n");
    let log = refused_start(dir.path(), &aa_toml).await;
    assert!(log.contains("plain HTTP: refused") && log.contains("insecure_http = true"), "{log}");
}

#[tokio::test]
async fn https_kbs_with_a_pinned_openssl_ca_true_certificate() {
    if !support::require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = support::openssl_default_x509(dir.path(), "kbs", "127.0.0.1", "IP:127.0.0.1");
    let kbs = TestKbs::start(KbsConfig {
        resources: support::resources(1),
        tls: Some((cert.clone(), key)),
        ..KbsConfig::default()
    })
    .await
    .unwrap();
    let aa_toml = write_aa_toml(
        dir.path(),
        &format!("[token_configs.kbs]\nurl = \"{}\"\ncert = \"\"\"\n{cert}\"\"\"\n", kbs.url()),
    );
    let daemon = launch(dir.path(), &aa_toml, None);
    let aa = client(&daemon).await;
    let req = GetResourceRequest { ResourcePath: "kbs:///default/key/0".into(), ..Default::default() };
    assert_eq!(aa.get_resource(ctx(), &req).await.unwrap().Resource, b"secret-0");
    assert!(!daemon.log().contains("insecure_http"), "no warning for https");
}

#[tokio::test]
async fn initdata_digest_argument_is_bound_at_start() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let aa_toml = write_aa_toml(dir.path(), "");
    let digest = sha2::Sha256::digest(b"initdata").to_vec();
    let (mut cmd, socket, log) = kata_command(dir.path(), &aa_toml, None);
    cmd.arg("--initdata-digest").arg(base64::engine::general_purpose::STANDARD.encode(&digest));
    let child = cmd.spawn().unwrap();
    let daemon = Daemon { child, socket, log };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.socket.exists() {
        assert!(Instant::now() < deadline, "no socket: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let aa = client(&daemon).await;
    aa.bind_init_data(ctx(), &BindInitDataRequest { Digest: digest, ..Default::default() }).await.unwrap();
    let other = BindInitDataRequest { Digest: vec![1; 32], ..Default::default() };
    assert_eq!(code(aa.bind_init_data(ctx(), &other).await.unwrap_err()).0, ttrpc::Code::FAILED_PRECONDITION);
}
