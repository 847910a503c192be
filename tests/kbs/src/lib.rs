//! A KBS test peer: Trustee's RCAR protocol (version 0.4.0) over HTTP or
//! HTTPS on a real socket. It verifies only the sample TEE, including the
//! report_data binding hash, holds resources, can deny by policy, issues
//! HS256 tokens with an expiry and answers errors the way Trustee does (HTTP
//! 401 with `{"type": ".../errors/<Variant>", "detail"}`; 404 only for unknown
//! paths).
//!
//! It is a test peer, not a KBS: it must never be deployed. Fault switches
//! ([`Faults`]) let tests make it misbehave the way a hostile or broken
//! network peer would.

mod http;
mod protocol;
mod token;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use protocol::ERROR_TYPE_PREFIX;

/// Which resources the policy releases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Policy {
    /// Release every resource to an attested sample TEE.
    #[default]
    AllowAll,
    /// Release nothing (Trustee's default resource policy for sample evidence).
    DenyAll,
    /// Release everything but these `repo/type/tag` paths.
    Deny(HashSet<String>),
}

/// Ways to misbehave, for hostile-input tests of the client.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Flip a byte of the ciphertext of every resource JWE.
    pub tamper_jwe: bool,
    /// Answer resources with this many bytes of junk instead of a JWE.
    pub oversized_resource: Option<usize>,
    /// Answer resources with a non-JSON body.
    pub garbage_resource: bool,
    /// Set this string as the session cookie value on auth.
    pub bad_cookie: Option<String>,
    /// Answer auth with a challenge missing its nonce.
    pub malformed_challenge: bool,
    /// Return HTTP 503 for this many requests before answering normally.
    pub unavailable_for: usize,
    /// Accept any report_data (to show the client computes the binding itself).
    pub skip_binding_check: bool,
}

#[derive(Debug, Clone)]
pub struct KbsConfig {
    /// `repo/type/tag` → bytes.
    pub resources: HashMap<String, Vec<u8>>,
    pub policy: Policy,
    /// Lifetime of issued tokens (their `exp`).
    pub token_ttl: Duration,
    /// PEM certificate chain and key: serve HTTPS when set.
    pub tls: Option<(String, String)>,
    pub faults: Faults,
}

impl Default for KbsConfig {
    fn default() -> Self {
        Self {
            resources: HashMap::new(),
            policy: Policy::AllowAll,
            token_ttl: Duration::from_secs(300),
            tls: None,
            faults: Faults::default(),
        }
    }
}

/// Counters the tests assert on.
#[derive(Debug, Default)]
pub struct Stats {
    pub auth: AtomicU64,
    pub attest: AtomicU64,
    pub attest_ok: AtomicU64,
    pub resource_ok: AtomicU64,
    pub requests: AtomicU64,
    /// The init-data body of the last successful attestation.
    pub last_init_data: Mutex<Option<String>>,
    /// The report_data hash the last attestation was checked against.
    pub last_binding: Mutex<Option<Vec<u8>>>,
}

impl Stats {
    pub fn attestations(&self) -> u64 {
        self.attest_ok.load(Ordering::SeqCst)
    }
}

/// Shared state of a running server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Mutex<KbsConfig>,
    pub sessions: Mutex<HashMap<String, protocol::Session>>,
    pub stats: Arc<Stats>,
    pub token_key: [u8; 32],
    pub unavailable_left: AtomicUsize,
    pub stopped: AtomicBool,
}

/// A running test KBS; stops when dropped.
pub struct TestKbs {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestKbs {
    /// Listens on `127.0.0.1:0` and serves until dropped.
    pub async fn start(config: KbsConfig) -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), config).await
    }

    pub async fn start_on(addr: SocketAddr, config: KbsConfig) -> anyhow::Result<Self> {
        let mut token_key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut token_key)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
        let shared = Arc::new(Shared {
            unavailable_left: AtomicUsize::new(config.faults.unavailable_for),
            config: Mutex::new(config),
            sessions: Mutex::new(HashMap::new()),
            stats: Arc::new(Stats::default()),
            token_key,
            stopped: AtomicBool::new(false),
        });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(http::serve(listener, shared.clone(), stopped));
        Ok(Self { addr, shared, stop: Some(stop), task: Some(task) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` or `https://...`.
    pub fn url(&self) -> String {
        let scheme = if self.config(|c| c.tls.is_some()) { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// Changes the configuration of the running server.
    pub fn update(&self, f: impl FnOnce(&mut KbsConfig)) {
        let mut config = self.shared.config.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut config);
        self.shared.unavailable_left.store(config.faults.unavailable_for, Ordering::SeqCst);
    }

    fn config<T>(&self, f: impl FnOnce(&KbsConfig) -> T) -> T {
        f(&self.shared.config.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Forgets every session, so the next resource request gets a 401.
    pub fn revoke_sessions(&self) {
        self.shared.sessions.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Stops serving and waits for the listener to close.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestKbs {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
