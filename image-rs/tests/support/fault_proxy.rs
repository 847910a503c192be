//! A fault-injecting HTTP/1.1 relay on 127.0.0.1 in front of a real plain-HTTP peer (the
//! Distribution registry, the test KBS). Each request, with probability `rate`, gets one fault
//! of the plan's kinds at a random offset of its response body: connection reset, stall,
//! truncation, 5xx, 429 with Retry-After, a Content-Length shorter or longer than the body,
//! a slow-loris trickle, or a 307 to itself or to another host (127.0.0.2, a clean relay).
//!
//! Randomness is seeded: every decision is drawn from `seed`, the request line and how many
//! times that request line was seen before, so a failure replays with `FAULT_SEED=<seed>` even
//! though concurrent requests arrive in any order. The seed is printed when the proxy starts.
//!
//! Only the standard library and `libc`: other crates' tests include `support` by path.
//! Every request gets `Connection: close` upstream and downstream (one request per connection).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// TCP RST after a random number of body bytes.
    Reset,
    /// Nothing more after a random offset for `stall` (see [`FaultPlan::stall`]), then close.
    Stall,
    /// Close (FIN) after a random number of body bytes.
    Truncate,
    /// 500, 502 or 503 instead of the upstream's answer.
    ServerError,
    /// 429 Too Many Requests with `Retry-After: 1`.
    TooManyRequests,
    /// A Content-Length smaller than the body; the body is cut to it.
    ShortLength,
    /// A Content-Length larger than the body, then close.
    LongLength,
    /// From a random offset on, one byte per `trickle` interval (slow loris) until the
    /// client gives up or the body ends.
    Trickle,
    /// 307 to the same path on this proxy.
    RedirectSelf,
    /// 307 to the same path on another host (127.0.0.2), which relays cleanly.
    RedirectOther,
}

impl Fault {
    pub const ALL: [Fault; 10] = [
        Fault::Reset,
        Fault::Stall,
        Fault::Truncate,
        Fault::ServerError,
        Fault::TooManyRequests,
        Fault::ShortLength,
        Fault::LongLength,
        Fault::Trickle,
        Fault::RedirectSelf,
        Fault::RedirectOther,
    ];

    /// Faults answered by the proxy itself, without asking upstream.
    fn is_status(self) -> bool {
        matches!(self, Fault::ServerError | Fault::TooManyRequests | Fault::RedirectSelf | Fault::RedirectOther)
    }
}

/// What the proxy injects.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    pub seed: u64,
    pub kinds: Vec<Fault>,
    /// Probability that a request gets a fault (0.0..=1.0).
    pub rate: f64,
    /// Only requests whose path contains one of these (empty: all).
    pub paths: Vec<String>,
    /// Most faults injected in all (then the proxy relays cleanly).
    pub max_faults: usize,
    pub stall: Duration,
    pub trickle: Duration,
    /// Every response body is relayed in chunks of `slow.0` bytes every `slow.1` (a slow link
    /// that still meets a low minimum rate); None: full speed.
    pub slow: Option<(usize, Duration)>,
}

impl FaultPlan {
    /// `kinds` at `rate`, seeded from `FAULT_SEED` if set, else from the clock.
    pub fn new(kinds: &[Fault], rate: f64) -> FaultPlan {
        FaultPlan {
            seed: seed_from_env(),
            kinds: kinds.to_vec(),
            rate,
            paths: Vec::new(),
            max_faults: usize::MAX,
            stall: Duration::from_secs(3),
            trickle: Duration::from_millis(200),
            slow: None,
        }
    }

    /// No faults, every body relayed at `bytes` per `every`.
    pub fn slow(bytes: usize, every: Duration) -> FaultPlan {
        FaultPlan { slow: Some((bytes, every)), ..FaultPlan::new(&[], 0.0) }
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn paths(mut self, paths: &[&str]) -> Self {
        self.paths = paths.iter().map(|p| p.to_string()).collect();
        self
    }

    pub fn max_faults(mut self, n: usize) -> Self {
        self.max_faults = n;
        self
    }

    /// The interval between two trickled bytes (default 200 ms).
    pub fn trickle(mut self, every: Duration) -> Self {
        self.trickle = every;
        self
    }
}

/// `FAULT_SEED` (decimal) or a clock-derived seed.
pub fn seed_from_env() -> u64 {
    if let Some(s) = std::env::var("FAULT_SEED").ok().and_then(|s| s.trim().parse().ok()) {
        return s;
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    splitmix(t.as_nanos() as u64 ^ u64::from(std::process::id()))
}

/// splitmix64: small, good enough, no dependency.
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded stream of random numbers.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = splitmix(self.0);
        self.0
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01b3))
}

/// One relayed request and what was done to it.
#[derive(Clone, Debug)]
pub struct Injected {
    pub request_line: String,
    pub fault: Option<Fault>,
    /// Body offset of a body fault.
    pub offset: u64,
}

struct State {
    plan: FaultPlan,
    upstream: String,
    self_host: Mutex<String>,
    other_host: Mutex<String>,
    seen: Mutex<HashMap<String, u64>>,
    log: Mutex<Vec<Injected>>,
    stop: AtomicBool,
    /// Open sockets by connection, shut down when the proxy stops.
    conns: Mutex<HashMap<u64, Vec<TcpStream>>>,
    next_conn: std::sync::atomic::AtomicU64,
}

struct Listener {
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

/// The proxy; stops and joins its threads when dropped.
pub struct FaultProxy {
    main: Listener,
    other: Listener,
    state: Arc<State>,
}

impl FaultProxy {
    /// Relays to `upstream` ("127.0.0.1:PORT").
    pub fn start(upstream: &str, plan: FaultPlan) -> FaultProxy {
        eprintln!(
            "fault proxy: seed {} (replay with FAULT_SEED={}), kinds {:?}, rate {}",
            plan.seed, plan.seed, plan.kinds, plan.rate
        );
        let state = Arc::new(State {
            plan,
            upstream: upstream.to_owned(),
            self_host: Mutex::default(),
            other_host: Mutex::default(),
            seen: Mutex::default(),
            log: Mutex::default(),
            stop: AtomicBool::new(false),
            conns: Mutex::default(),
            next_conn: Default::default(),
        });
        let main = listen("127.0.0.1", &state, true);
        let other = listen("127.0.0.2", &state, false);
        *state.self_host.lock().unwrap() = main.addr.to_string();
        *state.other_host.lock().unwrap() = other.addr.to_string();
        FaultProxy { main, other, state }
    }

    /// "127.0.0.1:PORT", in place of the upstream's host.
    pub fn host(&self) -> String {
        self.main.addr.to_string()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.main.addr)
    }

    /// The clean relay redirects point at ("127.0.0.2:PORT").
    pub fn other_host(&self) -> String {
        self.other.addr.to_string()
    }

    pub fn seed(&self) -> u64 {
        self.state.plan.seed
    }

    /// Every request relayed so far, with the fault it got.
    pub fn log(&self) -> Vec<Injected> {
        self.state.log.lock().unwrap().clone()
    }

    /// The faults injected so far.
    pub fn injected(&self) -> Vec<Fault> {
        self.log().iter().filter_map(|i| i.fault).collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for s in self.state.conns.lock().unwrap().values().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
        for l in [&mut self.main, &mut self.other] {
            let _ = TcpStream::connect_timeout(&l.addr, Duration::from_secs(1)); // wakes accept()
            if let Some(a) = l.accept.take() {
                let _ = a.join();
            }
        }
    }
}

fn listen(ip: &str, state: &Arc<State>, faulty: bool) -> Listener {
    let listener = TcpListener::bind(format!("{ip}:0")).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
    let addr = listener.local_addr().unwrap();
    let st = state.clone();
    let accept = std::thread::Builder::new()
        .name("fault-proxy".into())
        .spawn(move || {
            let mut workers: Vec<JoinHandle<()>> = Vec::new();
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let id = st.next_conn.fetch_add(1, Ordering::SeqCst);
                if let Ok(c) = conn.try_clone() {
                    st.conns.lock().unwrap().entry(id).or_default().push(c);
                }
                let st2 = st.clone();
                workers.retain(|h| !h.is_finished());
                workers.push(std::thread::spawn(move || {
                    let _ = relay(&st2, id, conn, faulty);
                    // Closing the last descriptor is what sends a Reset's RST.
                    st2.conns.lock().unwrap().remove(&id);
                }));
            }
            for w in workers {
                let _ = w.join();
            }
        })
        .expect("spawn fault proxy");
    Listener { addr, accept: Some(accept) }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Reads until the end of an HTTP head; returns (head, bytes after it).
fn read_head(s: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(e) = head_end(&buf) {
            let head = String::from_utf8_lossy(&buf[..e - 4]).into_owned();
            return Ok(Some((head, buf[e..].to_vec())));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 || buf.len() > 1 << 20 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The head without hop-by-hop headers (and without `drop`), with `Connection: close`.
fn rewrite(head: &str, drop: &str, extra: &str) -> String {
    let mut lines = head.split("\r\n");
    let mut out = format!("{}\r\n", lines.next().unwrap_or_default());
    for l in lines {
        let name = l.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
        if !matches!(name.as_str(), "connection" | "keep-alive" | "proxy-connection") && name != drop {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str(extra);
    out.push_str("Connection: close\r\n\r\n");
    out
}

fn respond(client: &mut TcpStream, status: &str, headers: &str, body: &str) -> std::io::Result<()> {
    let resp = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(resp.as_bytes())?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

fn reset(s: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid fd and a correctly sized linger struct.
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

fn sleep_unless_stopped(st: &State, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !st.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10).min(until.saturating_duration_since(Instant::now())));
    }
}

/// The fault for this request (and a random number for its offset), if any.
fn decide(st: &State, request_line: &str, faulty: bool) -> (Option<Fault>, u64) {
    let plan = &st.plan;
    let nth = {
        let mut seen = st.seen.lock().unwrap();
        let n = seen.entry(request_line.to_owned()).or_insert(0);
        *n += 1;
        *n
    };
    let mut rng = Rng::new(plan.seed ^ fnv(request_line) ^ splitmix(nth));
    let path = request_line.split(' ').nth(1).unwrap_or("");
    let eligible = faulty
        && !plan.kinds.is_empty()
        && (plan.paths.is_empty() || plan.paths.iter().any(|p| path.contains(p.as_str())));
    let pick = rng.chance(plan.rate);
    let kind = plan.kinds.get(rng.below(plan.kinds.len() as u64) as usize).copied();
    let offset_seed = rng.next();
    if !eligible || !pick {
        return (None, offset_seed);
    }
    let injected = st.log.lock().unwrap().iter().filter(|i| i.fault.is_some()).count();
    if injected >= plan.max_faults {
        return (None, offset_seed);
    }
    (kind, offset_seed)
}

fn relay(st: &State, id: u64, mut client: TcpStream, faulty: bool) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let Some((head, rest)) = read_head(&mut client)? else { return Ok(()) };
    client.set_read_timeout(None)?;
    let request_line = head.split("\r\n").next().unwrap_or_default().to_owned();
    let (fault, r) = decide(st, &request_line, faulty);
    let log_idx = {
        let mut log = st.log.lock().unwrap();
        log.push(Injected { request_line: request_line.clone(), fault, offset: 0 });
        log.len() - 1
    };
    let path = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
    if let Some(f) = fault.filter(|f| f.is_status()) {
        return match f {
            Fault::ServerError => {
                let status =
                    ["500 Internal Server Error", "502 Bad Gateway", "503 Service Unavailable"][(r % 3) as usize];
                respond(&mut client, status, "", "fault proxy: injected server error")
            }
            Fault::TooManyRequests => {
                respond(&mut client, "429 Too Many Requests", "Retry-After: 1\r\n", "fault proxy: slow down")
            }
            Fault::RedirectSelf => {
                let loc = format!("Location: http://{}{path}\r\n", st.self_host.lock().unwrap());
                respond(&mut client, "307 Temporary Redirect", &loc, "")
            }
            _ => {
                let loc = format!("Location: http://{}{path}\r\n", st.other_host.lock().unwrap());
                respond(&mut client, "307 Temporary Redirect", &loc, "")
            }
        };
    }

    let mut up = match TcpStream::connect(&st.upstream) {
        Ok(s) => s,
        Err(e) => return respond(&mut client, "502 Bad Gateway", "", &format!("fault proxy: upstream: {e}")),
    };
    if let Ok(c) = up.try_clone() {
        st.conns.lock().unwrap().entry(id).or_default().push(c);
    }
    up.write_all(rewrite(&head, "", "").as_bytes())?;
    // The request body (if any): Content-Length bytes, some of which came with the head.
    let req_len: usize = header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    up.write_all(&rest)?;
    let mut left = req_len.saturating_sub(rest.len());
    let mut chunk = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = client.read(&mut chunk[..left.min(64 * 1024)])?;
        if n == 0 {
            break;
        }
        up.write_all(&chunk[..n])?;
        left -= n;
    }

    let Some((resp_head, mut body_start)) = read_head(&mut up)? else {
        return Ok(());
    };
    let body_len: Option<u64> = header(&resp_head, "content-length").and_then(|v| v.parse().ok());
    // Body faults need a body to act on.
    let fault = fault.filter(|_| body_len.is_some_and(|l| l > 0));
    let len = body_len.unwrap_or(0);
    let offset = if len > 0 { r % len } else { 0 };
    {
        let mut log = st.log.lock().unwrap();
        log[log_idx].fault = fault;
        log[log_idx].offset = offset;
    }
    // Bytes of body to forward before acting, and the head to send.
    let (cut_at, out_head) = match fault {
        Some(Fault::ShortLength) => {
            let short = offset.min(len - 1);
            (short, rewrite(&resp_head, "content-length", &format!("Content-Length: {short}\r\n")))
        }
        Some(Fault::LongLength) => {
            (len, rewrite(&resp_head, "content-length", &format!("Content-Length: {}\r\n", len + 1 + offset)))
        }
        // A trickle keeps at least 3 bytes to trickle, so its length in time is
        // at least 3 intervals whatever the offset drawn.
        Some(Fault::Trickle) => (offset.min(len.saturating_sub(3)), rewrite(&resp_head, "", "")),
        Some(_) => (offset, rewrite(&resp_head, "", "")),
        None => (u64::MAX, rewrite(&resp_head, "", "")),
    };
    client.write_all(out_head.as_bytes())?;

    let mut sent: u64 = 0;
    let mut trickling = false;
    loop {
        if st.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let data: Vec<u8> = if !body_start.is_empty() {
            std::mem::take(&mut body_start)
        } else {
            let n = match up.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            chunk[..n].to_vec()
        };
        let mut data = &data[..];
        while !data.is_empty() {
            if sent >= cut_at && !trickling {
                match fault {
                    Some(Fault::Trickle) => trickling = true,
                    Some(Fault::Reset) => {
                        reset(&client);
                        return Ok(());
                    }
                    Some(Fault::Stall) => {
                        sleep_unless_stopped(st, st.plan.stall);
                        let _ = client.shutdown(Shutdown::Both);
                        return Ok(());
                    }
                    _ => {
                        let _ = client.shutdown(Shutdown::Both);
                        return Ok(());
                    }
                }
            }
            let step = if trickling {
                1
            } else if let Some((bytes, _)) = st.plan.slow {
                bytes.min(data.len())
            } else {
                data.len()
            };
            let step = (step as u64).min(cut_at.saturating_sub(sent).max(if trickling { 1 } else { 0 })) as usize;
            let step = step.max(1).min(data.len());
            client.write_all(&data[..step])?;
            sent += step as u64;
            data = &data[step..];
            if trickling {
                sleep_unless_stopped(st, st.plan.trickle);
            } else if let Some((_, every)) = st.plan.slow {
                sleep_unless_stopped(st, every);
            }
        }
    }
    // Upstream ended. A LongLength client now waits for bytes that never come: close.
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}
