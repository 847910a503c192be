//! Fixtures for driving the real `confidential-data-hub` binary: the test KBS
//! and the attestation-agent's ttrpc service in-process (sample attester, a
//! real event log), the daemon as a child process on a unix socket with a
//! cdh.toml written here, and the generated ttrpc clients of the api package.
//! Registries and images come from image-rs's fixtures (`support`).
#![allow(dead_code)]

pub mod gpg;
pub mod images;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use attestation_agent::agent::{Agent, StartOptions};
use attestation_agent::attester::device::LinuxKernel;
use attestation_agent::config::Config;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use protos::cdh::{GetResourceRequest, ImagePullRequest, UnsealSecretInput};
use protos::cdh_ttrpc::{GetResourceServiceClient, ImagePullServiceClient, SealedSecretServiceClient};
use test_kbs::{KbsConfig, TestKbs};

pub const CDH: &str = env!("CARGO_BIN_EXE_confidential-data-hub");

/// The attestation-agent narrows the process umask while it binds; tests of
/// this binary take turns so that never races another test's files.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Root, docker-registry and skopeo; otherwise prints SKIP (panics with CI=true).
pub fn prerequisites(tools: &[&str]) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(!ci(), "CI=true: these tests need root (overlay mounts)");
        println!("SKIP: not root (the CDH mounts overlay rootfs)");
        return false;
    }
    crate::support::require_tools(tools)
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The test KBS and an attestation-agent serving on `<dir>/aa.sock`, with its
/// event log at `<dir>/eventlog`.
pub struct Guest {
    pub runtime: tokio::runtime::Runtime,
    kbs: Option<TestKbs>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub aa_addr: String,
    pub eventlog: PathBuf,
}

impl Guest {
    pub fn start(dir: &Path, resources: HashMap<String, Vec<u8>>) -> Guest {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let kbs = runtime.block_on(TestKbs::start(KbsConfig { resources, ..KbsConfig::default() })).unwrap();
        let mut guest = Guest {
            runtime,
            kbs: Some(kbs),
            stop: None,
            served: None,
            aa_addr: format!("unix://{}", dir.join("aa.sock").display()),
            eventlog: dir.join("eventlog"),
        };
        guest.start_agent();
        guest
    }

    fn start_agent(&mut self) {
        let toml = format!(
            "[token_configs.kbs]\nurl = \"{}\"\ninsecure_http = true\n\n[attester]\ntype = \"sample\"\n\n[server]\nsocket = \"{}\"\n\n\
             [measurement]\neventlog = \"{}\"\n",
            self.kbs().url(),
            self.aa_addr,
            self.eventlog.display()
        );
        let config = Config::from_toml(&toml, Path::new("aa.toml")).expect("aa.toml");
        let agent = Agent::start(&config, StartOptions { kernel: Arc::new(LinuxKernel), eventlog: true })
            .expect("attestation-agent starts with the sample attester");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let addr = self.aa_addr.clone();
        let served = self.runtime.spawn(async move {
            attestation_agent::server::serve_until(Arc::new(agent), &addr, async {
                let _ = stopped.await;
            })
            .await
        });
        let socket = PathBuf::from(self.aa_addr.strip_prefix("unix://").unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(!served.is_finished(), "attestation-agent stopped before serving");
            assert!(Instant::now() < deadline, "attestation-agent did not listen on {}", self.aa_addr);
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop = Some(stop);
        self.served = Some(served);
    }

    /// Stops the attestation-agent (the KBS keeps running).
    pub fn stop_agent(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            let _ = self.runtime.block_on(served);
        }
    }

    pub fn kbs(&self) -> &TestKbs {
        self.kbs.as_ref().expect("the test KBS is running")
    }

    /// Stops the test KBS (the attestation-agent keeps running).
    pub fn stop_kbs(&mut self) {
        if let Some(kbs) = self.kbs.take() {
            self.runtime.block_on(kbs.stop());
        }
    }

    pub fn events(&self) -> String {
        std::fs::read_to_string(&self.eventlog).unwrap_or_default()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop_agent();
        if let Some(kbs) = self.kbs.take() {
            self.runtime.block_on(kbs.stop());
        }
    }
}

/// A running `confidential-data-hub -c <dir>/cdh.toml`, its stderr in `<dir>/cdh.log`.
pub struct Cdh {
    child: Child,
    pub addr: String,
    pub log: PathBuf,
    pub work: PathBuf,
}

impl Cdh {
    /// `image_keys` go into `[image]`; the registry at `registry_host` is
    /// allowed over plain HTTP through `[image.registry_config]`.
    pub fn start(dir: &Path, aa_addr: &str, registry_host: &str, image_keys: &str) -> Cdh {
        std::fs::create_dir_all(dir).unwrap();
        let addr = format!("unix://{}", dir.join("cdh.sock").display());
        let work = dir.join("work");
        let toml = format!(
            "socket = \"{addr}\"\n\n[aa]\naa_socket = \"{aa_addr}\"\n\n[kbc]\nname = \"cc_kbc\"\nurl = \"http://kbs.invalid\"\n\n\
             [[credentials]]\nresource_uri = \"kbs:///default/credential/unused\"\npath = \"/run/unused\"\n\n\
             [image]\nwork_dir = \"{}\"\n{}{image_keys}\n\n\
             [[image.registry_config.registry]]\nprefix = \"{registry_host}\"\nlocation = \"{registry_host}\"\ninsecure = true\n",
            work.display(),
            if image_keys.contains("pull_deadline_secs") { "" } else { "pull_deadline_secs = 120\n" },
        );
        let config = dir.join("cdh.toml");
        std::fs::write(&config, toml).unwrap();
        let log = dir.join("cdh.log");
        let child = Command::new(CDH)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start confidential-data-hub");
        let mut cdh = Cdh { child, addr, log, work };
        let socket = dir.join("cdh.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Some(status) = cdh.child.try_wait().unwrap() {
                panic!("confidential-data-hub exited ({status}): {}", cdh.log_text());
            }
            assert!(Instant::now() < deadline, "confidential-data-hub did not listen: {}", cdh.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        cdh
    }

    /// The daemon's process id (crash tests SIGKILL it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn client(&self) -> ttrpc::r#async::Client {
        ttrpc::r#async::Client::connect(&self.addr).await.expect("connect to the CDH socket")
    }

    /// PullImage over the socket: the digest, or the status (code, message).
    pub async fn pull(&self, image: &str, bundle: &Path) -> Result<String, (ttrpc::Code, String)> {
        let client = ImagePullServiceClient::new(self.client().await);
        let req = ImagePullRequest {
            image_url: image.to_owned(),
            bundle_path: bundle.display().to_string(),
            ..Default::default()
        };
        client
            .pull_image(ttrpc::context::with_timeout(Duration::from_secs(180).as_nanos() as i64), &req)
            .await
            .map(|r| r.manifest_digest)
            .map_err(status)
    }

    pub async fn get_resource(&self, path: &str) -> Result<Vec<u8>, (ttrpc::Code, String)> {
        let client = GetResourceServiceClient::new(self.client().await);
        let req = GetResourceRequest { ResourcePath: path.to_owned(), ..Default::default() };
        client
            .get_resource(ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64), &req)
            .await
            .map(|r| r.Resource)
            .map_err(status)
    }

    pub async fn unseal(&self, sealed: Vec<u8>) -> Result<Vec<u8>, (ttrpc::Code, String)> {
        let client = SealedSecretServiceClient::new(self.client().await);
        let req = UnsealSecretInput { secret: sealed, ..Default::default() };
        client
            .unseal_secret(ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64), &req)
            .await
            .map(|r| r.plaintext)
            .map_err(status)
    }

    pub async fn call_raw(&self, path: (&str, &str), body: Vec<u8>) -> Result<Vec<u8>, (ttrpc::Code, String)> {
        let client = self.client().await;
        let req = ttrpc::Request {
            service: path.0.to_owned(),
            method: path.1.to_owned(),
            timeout_nano: Duration::from_secs(10).as_nanos() as i64,
            payload: body,
            ..Default::default()
        };
        let resp = client.request(req).await.map_err(status)?;
        if let Some(s) = resp.status.as_ref().filter(|s| s.code() != ttrpc::Code::OK) {
            return Err((s.code(), s.message().to_owned()));
        }
        Ok(resp.payload)
    }
}

fn status(e: ttrpc::Error) -> (ttrpc::Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_owned()),
        other => (ttrpc::Code::UNKNOWN, other.to_string()),
    }
}

impl Drop for Cdh {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Unmounts a bundle's overlay rootfs (if any) so its directory can be removed.
pub fn release_bundle(bundle: &Path) {
    let rootfs = std::ffi::CString::new(bundle.join("rootfs").display().to_string()).unwrap();
    // SAFETY: umount2 on a path we own; failure (not a mount point) is fine.
    unsafe { libc::umount2(rootfs.as_ptr(), libc::MNT_DETACH) };
}

/// Everything below `dir` (relative paths), for "nothing was left" checks.
pub fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(entries(&e.path()));
            }
        }
    }
    out
}

/// The public half of `key` as a P-256 JWK (what the KBS serves as the kid).
pub fn public_jwk(key: &SigningKey) -> Vec<u8> {
    let point = key.verifying_key().to_sec1_point(false);
    let b = point.as_bytes();
    serde_json::to_vec(&serde_json::json!({
        "kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&b[1..33]), "y": URL_SAFE_NO_PAD.encode(&b[33..65]),
    }))
    .unwrap()
}

/// A guest-components sealed secret: `sealed.` + an ES256 JWS by `key` with header kid `kid`.
pub fn seal(key: &SigningKey, kid: &str, payload: &serde_json::Value) -> Vec<u8> {
    let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&serde_json::json!({"alg": "ES256", "kid": kid})).unwrap());
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(payload).unwrap());
    let sig: Signature = key.sign(format!("{header}.{body}").as_bytes());
    format!("sealed.{header}.{body}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes())).into_bytes()
}
