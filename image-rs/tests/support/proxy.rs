//! A TCP relay on 127.0.0.1 in front of a plain-HTTP registry that can cut a response body after
//! N bytes, for requests whose path contains a substring, the first K times (resume tests).
//!
//! It relays bytes untouched (Range and every other header included) except that it forces one
//! request per connection by replacing the request's `Connection` header with `Connection: close`;
//! the response body starts after the first `\r\n\r\n` of the response.

use super::http::find_head_end;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What to do when the cut point is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutAction {
    /// Close both sides (client sees EOF before Content-Length).
    Close,
    /// Abort with a TCP RST (SO_LINGER 0).
    Reset,
    /// Keep the connection open sending nothing for this long (read-timeout tests), then close.
    Stall(Duration),
}

#[derive(Clone, Debug)]
struct Rule {
    path_contains: String,
    after_body_bytes: u64,
    remaining: usize,
    action: CutAction,
}

/// A request seen by the proxy.
#[derive(Clone, Debug)]
pub struct ProxiedRequest {
    /// e.g. "GET /v2/app/blobs/sha256:… HTTP/1.1"
    pub request_line: String,
    /// Header names lowercased, as sent by the client.
    pub headers: Vec<(String, String)>,
    /// True if this request's response was cut.
    pub cut: bool,
}

impl ProxiedRequest {
    pub fn method(&self) -> &str {
        self.request_line.split(' ').next().unwrap_or("")
    }
    pub fn path(&self) -> &str {
        self.request_line.split(' ').nth(1).unwrap_or("")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
    /// The `Range` header, e.g. "bytes=1000-".
    pub fn range(&self) -> Option<&str> {
        self.header("range")
    }
}

#[derive(Default)]
struct State {
    rules: Mutex<Vec<Rule>>,
    requests: Mutex<Vec<ProxiedRequest>>,
    cuts: AtomicUsize,
    conns: Mutex<HashMap<u64, Vec<TcpStream>>>,
    next_id: AtomicU64,
    workers: Mutex<Vec<JoinHandle<()>>>,
    stop: AtomicBool,
}

pub struct CutProxy {
    addr: SocketAddr,
    upstream: String,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl CutProxy {
    /// Starts relaying 127.0.0.1:<free port> → `upstream` ("127.0.0.1:PORT", plain HTTP).
    pub fn start(upstream: &str) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let (st, up) = (state.clone(), upstream.to_string());
        let accept = std::thread::Builder::new()
            .name("cut-proxy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (st2, up2) = (st.clone(), up.clone());
                    let h = std::thread::spawn(move || relay(&st2, conn, &up2));
                    let mut w = st.workers.lock().unwrap();
                    w.retain(|h| !h.is_finished());
                    w.push(h);
                }
            })
            .expect("spawn proxy");
        CutProxy { addr, upstream: upstream.to_string(), state, accept: Some(accept) }
    }

    /// "127.0.0.1:PORT" — use in place of the registry host.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Cut (close) the response body after `body_bytes` bytes for the next `times` requests whose
    /// path contains `path_contains`.
    pub fn cut_after(&self, path_contains: &str, body_bytes: u64, times: usize) {
        self.cut_with(path_contains, body_bytes, times, CutAction::Close);
    }

    pub fn cut_with(&self, path_contains: &str, body_bytes: u64, times: usize, action: CutAction) {
        self.state.rules.lock().unwrap().push(Rule {
            path_contains: path_contains.into(),
            after_body_bytes: body_bytes,
            remaining: times,
            action,
        });
    }

    pub fn clear_rules(&self) {
        self.state.rules.lock().unwrap().clear();
    }

    /// Number of responses cut so far.
    pub fn cuts(&self) -> usize {
        self.state.cuts.load(Ordering::SeqCst)
    }

    /// Every request relayed so far, in arrival order.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn requests_for(&self, path_contains: &str) -> Vec<ProxiedRequest> {
        self.requests().into_iter().filter(|r| r.path().contains(path_contains)).collect()
    }

    /// `Range` header values of requests whose path contains `path_contains`.
    pub fn range_requests(&self, path_contains: &str) -> Vec<String> {
        self.requests_for(path_contains).iter().filter_map(|r| r.range().map(str::to_string)).collect()
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)); // wake accept()
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        for s in self.state.conns.lock().unwrap().values().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let workers = std::mem::take(&mut *self.state.workers.lock().unwrap());
        for w in workers {
            let _ = w.join();
        }
    }
}

fn reset_on_close(s: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: valid fd and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn relay(st: &State, mut client: TcpStream, upstream: &str) {
    let id = st.next_id.fetch_add(1, Ordering::SeqCst);
    let reset = relay_inner(st, id, &mut client, upstream).unwrap_or(false);
    let socks = st.conns.lock().unwrap().remove(&id).unwrap_or_default();
    if !reset {
        // With SO_LINGER 0 set, the last close (when these drop) sends the RST instead.
        for s in socks.iter().chain([&client]) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Returns true when the connection must be closed with a RST.
fn relay_inner(st: &State, id: u64, client: &mut TcpStream, upstream: &str) -> std::io::Result<bool> {
    st.conns.lock().unwrap().insert(id, vec![client.try_clone()?]);
    if st.stop.load(Ordering::SeqCst) {
        return Ok(false);
    }
    // Request head.
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(e) = find_head_end(&buf) {
            break e;
        }
        let n = client.read(&mut chunk)?;
        if n == 0 || buf.len() > 1 << 20 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
        if !buf[0].is_ascii_uppercase() {
            return Ok(false); // not HTTP (e.g. a TLS ClientHello from a client probing https first)
        }
    };
    client.set_read_timeout(None)?;
    let head = String::from_utf8_lossy(&buf[..head_end - 4]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let raw_headers: Vec<&str> = lines.collect();
    let headers: Vec<(String, String)> = raw_headers
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut req = ProxiedRequest { request_line: request_line.clone(), headers, cut: false };
    let path = req.path().to_string();

    // Reserve a cut (given back if the response ends before the cut point).
    let rule = {
        let mut rules = st.rules.lock().unwrap();
        rules.iter_mut().find(|r| r.remaining > 0 && path.contains(&r.path_contains)).map(|r| {
            r.remaining -= 1;
            r.clone()
        })
    };
    let idx = {
        let mut reqs = st.requests.lock().unwrap();
        reqs.push(req.clone());
        reqs.len() - 1
    };

    let mut up = match TcpStream::connect(upstream) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("proxy: upstream {upstream}: {e}");
            let resp =
                format!("HTTP/1.1 502 Bad Gateway\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}", msg.len());
            return client.write_all(resp.as_bytes()).map(|_| false);
        }
    };
    st.conns.lock().unwrap().entry(id).or_default().push(up.try_clone()?);
    let mut out = format!("{request_line}\r\n");
    for l in &raw_headers {
        let name = l.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
        if !matches!(name.as_str(), "connection" | "keep-alive" | "proxy-connection") {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    up.write_all(&buf[head_end..])?;

    // Rest of the request body, client → upstream.
    let (mut c2, mut u2) = (client.try_clone()?, up.try_clone()?);
    let pump = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(Shutdown::Write);
    });

    // Response, upstream → client, cutting at head + N body bytes.
    let mut resp_head: Vec<u8> = Vec::new();
    let mut limit: Option<u64> = None; // total bytes to forward before cutting
    let mut forwarded: u64 = 0;
    let mut cut = false;
    loop {
        let n = match up.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut data = &chunk[..n];
        if limit.is_none() {
            resp_head.extend_from_slice(data);
            match find_head_end(&resp_head) {
                Some(e) => {
                    limit = Some(rule.as_ref().map_or(u64::MAX, |r| e as u64 + r.after_body_bytes));
                    data = &[];
                    let all = std::mem::take(&mut resp_head);
                    let allowed = (all.len() as u64).min(limit.unwrap() - forwarded) as usize;
                    client.write_all(&all[..allowed])?;
                    forwarded += allowed as u64;
                }
                None => continue,
            }
        }
        let lim = limit.unwrap();
        let allowed = (data.len() as u64).min(lim - forwarded) as usize;
        client.write_all(&data[..allowed])?;
        forwarded += allowed as u64;
        if rule.is_some() && forwarded >= lim {
            cut = true;
            break;
        }
    }
    if let (Some(r), Some(lim)) = (&rule, limit) {
        if forwarded >= lim {
            cut = true;
        }
        if cut {
            st.cuts.fetch_add(1, Ordering::SeqCst);
            req.cut = true;
            st.requests.lock().unwrap()[idx].cut = true;
            match r.action {
                CutAction::Close => {}
                CutAction::Reset => {}
                CutAction::Stall(d) => {
                    let until = Instant::now() + d;
                    while Instant::now() < until && !st.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
    }
    if !cut {
        if let Some(r) = &rule {
            // Response ended before the cut point: the reservation was not used.
            let mut rules = st.rules.lock().unwrap();
            if let Some(x) = rules.iter_mut().find(|x| x.path_contains == r.path_contains) {
                x.remaining += 1;
            }
        }
    }
    let reset = cut && rule.as_ref().is_some_and(|r| r.action == CutAction::Reset);
    let _ = up.shutdown(Shutdown::Both);
    if reset {
        reset_on_close(client);
        let _ = client.shutdown(Shutdown::Read); // wakes the pump without sending a FIN
    } else {
        let _ = client.shutdown(Shutdown::Both);
    }
    let _ = pump.join();
    Ok(reset)
}
