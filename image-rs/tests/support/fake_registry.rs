//! A scripted, in-process plain-HTTP/1.1 server for hostile-registry tests: it binds any
//! loopback address (127.0.0.1 and 127.0.0.2 are different hosts to a client), records every
//! request it sees (request line and headers) and answers through a handler the test writes,
//! so a test can play a registry, a token server or a CDN that misbehaves on purpose.
//! [`FakeImage`] serves a one-layer image (manifest, config, layer with `Range`) for such
//! handlers. One request per connection (`Connection: close`); one thread per connection, so a
//! trickling answer does not block the others. Never used outside tests.

use super::sha256_digest;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request as received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Start offset of a `Range: bytes=N-` header.
    pub fn range_from(&self) -> Option<u64> {
        self.header("range")?.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
    }
}

pub type Handler = dyn Fn(&Seen, &mut TcpStream) -> io::Result<()> + Send + Sync;

pub struct FakeServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FakeServer {
    /// Serves on `ip` (e.g. "127.0.0.2"), port chosen by the OS.
    pub fn start(ip: &str, handler: Arc<Handler>) -> FakeServer {
        let listener = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let (seen, handler) = (seen2.clone(), handler.clone());
                std::thread::spawn(move || {
                    if let Some(req) = read_request(&mut conn) {
                        seen.lock().unwrap().push(req.clone());
                        let _ = handler(&req, &mut conn);
                    }
                });
            }
        });
        FakeServer { addr, seen, stop, accept: Some(accept) }
    }

    /// "IP:PORT"
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn read_request(conn: &mut TcpStream) -> Option<Seen> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while super::http::find_head_end(&head).is_none() {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let target = first.next()?.to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Seen { method, target, headers })
}

/// Writes a whole response (`Connection: close`).
pub fn respond(conn: &mut TcpStream, status: u16, headers: &[(&str, &str)], body: &[u8]) -> io::Result<()> {
    conn.write_all(&response_head(status, headers, body.len() as u64))?;
    conn.write_all(body)?;
    conn.flush()
}

/// Status line and headers, with `Content-Length: len`.
pub fn response_head(status: u16, headers: &[(&str, &str)], len: u64) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// A one-layer image as a registry serves it.
#[derive(Clone, Debug)]
pub struct FakeImage {
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layer: Vec<u8>,
    pub layer_digest: String,
}

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

impl FakeImage {
    /// `layer` is the blob as served; `diff_id` what the config claims for it.
    pub fn new(layer: Vec<u8>, layer_media_type: &str, diff_id: &str) -> FakeImage {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/x"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]}
        }))
        .unwrap();
        let config_digest = sha256_digest(&config);
        let layer_digest = sha256_digest(&layer);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": layer_media_type, "digest": layer_digest, "size": layer.len()}]
        }))
        .unwrap();
        FakeImage { manifest, config, config_digest, layer, layer_digest }
    }

    /// Whether `req` asks for the layer blob.
    pub fn is_layer(&self, req: &Seen) -> bool {
        req.path().ends_with(&format!("/blobs/{}", self.layer_digest))
    }

    /// Answers `/v2/`, `manifests/*`, the config and the layer (`Range: bytes=N-` → 206); 404
    /// otherwise.
    pub fn serve(&self, req: &Seen, conn: &mut TcpStream) -> io::Result<()> {
        let path = req.path();
        if path == "/v2/" {
            return respond(conn, 200, &[], b"{}");
        }
        if path.contains("/manifests/") {
            return respond(conn, 200, &[("Content-Type", MT_MANIFEST)], &self.manifest);
        }
        if path.ends_with(&format!("/blobs/{}", self.config_digest)) {
            return respond(conn, 200, &[], &self.config);
        }
        if self.is_layer(req) {
            let from = req.range_from().unwrap_or(0).min(self.layer.len() as u64) as usize;
            if from > 0 {
                let range = format!("bytes {from}-{}/{}", self.layer.len() - 1, self.layer.len());
                return respond(conn, 206, &[("Content-Range", &range)], &self.layer[from..]);
            }
            return respond(conn, 200, &[], &self.layer);
        }
        respond(conn, 404, &[], b"{\"errors\":[{\"code\":\"NAME_UNKNOWN\"}]}")
    }

    /// Answers the layer (from its `Range` offset) one byte every `every`, until the client
    /// goes away.
    pub fn trickle_layer(&self, req: &Seen, conn: &mut TcpStream, every: Duration) -> io::Result<()> {
        let from = req.range_from().unwrap_or(0).min(self.layer.len() as u64) as usize;
        let rest = &self.layer[from..];
        let status = if from > 0 { 206 } else { 200 };
        let range = format!("bytes {from}-{}/{}", self.layer.len() - 1, self.layer.len());
        let extra: Vec<(&str, &str)> = if from > 0 { vec![("Content-Range", &range)] } else { vec![] };
        conn.write_all(&response_head(status, &extra, rest.len() as u64))?;
        for b in rest {
            conn.write_all(&[*b])?;
            conn.flush()?;
            std::thread::sleep(every);
        }
        Ok(())
    }
}
