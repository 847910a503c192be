//! A host that floods the real agent with requests and never reads the
//! replies is back-pressured: the agent stops reading that socket, its memory
//! stays near idle, other connections are still served, and what the flood
//! cost is handed back when the connection closes.
//!
//! Raw frames over a raw UnixStream, so the test controls exactly when the
//! host reads. Needs no privileges.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::Agent;
use protobuf::Message;
use protos::health::{health_check_response::ServingStatus, CheckRequest, HealthCheckResponse};

const HEADER_LEN: usize = 10;
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;

/// How much the agent may grow while one connection floods it. The flow
/// bound lets one connection hold at most 256 in-flight Checks (about 1 KiB
/// each) plus the replies already in the socket; the rest is the tokio
/// runtime's own slack. Without the bound it grew by ~300 MiB per second.
const FLOOD_RSS_SLACK_KIB: u64 = 32 << 10;
/// How close to idle the agent must come back after the flood closes.
const SETTLED_RSS_SLACK_KIB: u64 = 4 << 10;
/// Request bytes a flooding writer may get accepted in total: its own socket
/// send buffer (208 KiB by default, counted in kernel buffer overhead, so
/// fewer payload bytes), plus what the agent consumed: the 256 requests in
/// flight and those whose replies fit in the agent's send buffer before it
/// filled (a few hundred ~40-byte Checks). Unbounded, the agent consumed about
/// 4 MiB of Checks per second.
const ACCEPTED_BYTES_MAX: usize = 1 << 20;

fn check_frame(stream_id: u32) -> Vec<u8> {
    request_frame(stream_id, "grpc.Health", "Check", CheckRequest::new().write_to_bytes().unwrap())
}

fn request_frame(stream_id: u32, service: &str, method: &str, payload: Vec<u8>) -> Vec<u8> {
    let req = ttrpc::Request { service: service.into(), method: method.into(), payload, ..Default::default() };
    let body = req.write_to_bytes().unwrap();
    let mut f = Vec::with_capacity(HEADER_LEN + body.len());
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(&stream_id.to_be_bytes());
    f.extend_from_slice(&[TYPE_REQUEST, 0]);
    f.extend_from_slice(&body);
    f
}

/// Reads one frame: (stream id, type, payload).
fn read_frame(s: &mut UnixStream) -> std::io::Result<(u32, u8, Vec<u8>)> {
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h)?;
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    assert!(len < 1 << 20, "reply frame of {len} bytes");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((u32::from_be_bytes([h[4], h[5], h[6], h[7]]), h[8], body))
}

/// Asserts `frame` is a successful Check reply and returns its stream id.
fn assert_serving_reply((id, kind, body): (u32, u8, Vec<u8>)) -> u32 {
    assert_eq!(kind, TYPE_RESPONSE, "stream {id}: frame type");
    let resp = ttrpc::Response::parse_from_bytes(&body).expect("a ttrpc Response");
    assert!(resp.status.as_ref().is_none_or(|s| s.code.value() == 0), "stream {id}: status {:?}", resp.status);
    let check = HealthCheckResponse::parse_from_bytes(&resp.payload).expect("a HealthCheckResponse");
    assert_eq!(check.status.enum_value(), Ok(ServingStatus::SERVING), "stream {id}");
    id
}

/// One Check round trip on a blocking connection.
fn check(s: &mut UnixStream, stream_id: u32) {
    s.write_all(&check_frame(stream_id)).unwrap();
    let id = assert_serving_reply(read_frame(s).unwrap());
    assert_eq!(id, stream_id);
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// The agent after it has served a few calls and gone quiet: every lazily
/// built piece (runtime workers, service tables) exists.
fn idle_baseline(agent: &Agent) -> (u64, usize) {
    let pid = agent.child.id();
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    for i in 0..100 {
        check(&mut s, 2 * i + 1);
    }
    drop(s);
    std::thread::sleep(Duration::from_millis(500));
    (rss_kib(pid), fd_count(pid))
}

/// What a flood left behind.
struct Flood {
    stream: UnixStream,
    frames_sent: u32,
    accepted_bytes: usize,
    accepted_after_first_second: usize,
    max_rss_kib: u64,
}

/// Writes Check frames as fast as the socket takes them for `duration`,
/// never reading, sampling the agent's RSS every 50 ms.
fn flood(agent: &Agent, duration: Duration) -> Flood {
    let pid = agent.child.id();
    let mut stream = UnixStream::connect(&agent.socket).unwrap();
    stream.set_nonblocking(true).unwrap();
    let frame_len = check_frame(1).len();
    let (mut pending, mut next_id) = (Vec::new(), 1u32);
    let (mut accepted, mut accepted_after_first_second) = (0usize, None);
    let mut max_rss = 0;
    let start = Instant::now();
    let mut next_sample = start;
    while start.elapsed() < duration {
        if pending.is_empty() {
            for _ in 0..256 {
                pending.extend(check_frame(next_id));
                next_id += 2;
            }
        }
        match stream.write(&pending) {
            Ok(n) => {
                accepted += n;
                pending.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("flood write failed: {e}"),
        }
        if Instant::now() >= next_sample {
            max_rss = max_rss.max(rss_kib(pid));
            next_sample += Duration::from_millis(50);
        }
        if accepted_after_first_second.is_none() && start.elapsed() >= Duration::from_secs(1) {
            accepted_after_first_second = Some(accepted);
        }
    }
    // Frames the agent may answer: every one written whole.
    let frames_sent = (accepted / frame_len) as u32;
    Flood {
        stream,
        frames_sent,
        accepted_bytes: accepted,
        accepted_after_first_second: accepted_after_first_second.unwrap_or(accepted),
        max_rss_kib: max_rss,
    }
}

fn wait_settled(pid: u32, rss_max_kib: u64, fds: usize) -> (u64, usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = (rss_kib(pid), fd_count(pid));
        if (now.0 <= rss_max_kib && now.1 == fds) || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_host_that_never_reads_replies_is_back_pressured_and_memory_returns() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let pid = agent.child.id();
    let (idle_rss, idle_fds) = idle_baseline(&agent);

    let mut f = flood(&agent, Duration::from_secs(3));
    eprintln!(
        "idle {idle_rss} KiB, flood max {} KiB; accepted {} bytes ({} after 1 s), {} frames",
        f.max_rss_kib, f.accepted_bytes, f.accepted_after_first_second, f.frames_sent
    );
    assert!(
        f.max_rss_kib <= idle_rss + FLOOD_RSS_SLACK_KIB,
        "agent grew from {idle_rss} KiB to {} KiB during the flood",
        f.max_rss_kib
    );
    assert!(
        f.accepted_bytes <= ACCEPTED_BYTES_MAX,
        "the agent consumed {} bytes of requests whose replies nobody read",
        f.accepted_bytes
    );
    assert!(
        f.accepted_bytes - f.accepted_after_first_second <= 64 << 10,
        "the flooding writer kept getting bytes accepted after the first second: {} then {}",
        f.accepted_after_first_second,
        f.accepted_bytes
    );

    // The host starts reading: every reply is a well-formed SERVING answer to
    // a request it sent, none twice.
    f.stream.set_nonblocking(false).unwrap();
    f.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut seen = std::collections::HashSet::new();
    let to_read = f.frames_sent.min(5000);
    for _ in 0..to_read {
        let id = assert_serving_reply(read_frame(&mut f.stream).expect("a reply once the host reads"));
        assert!(id % 2 == 1 && id < 2 * f.frames_sent + 1, "reply to stream {id}, never sent");
        assert!(seen.insert(id), "two replies to stream {id}");
    }
    drop(f.stream);

    let (rss, fds) = wait_settled(pid, idle_rss + SETTLED_RSS_SLACK_KIB, idle_fds);
    eprintln!("after close: {rss} KiB, {fds} fds (idle {idle_rss} KiB, {idle_fds} fds)");
    assert!(rss <= idle_rss + SETTLED_RSS_SLACK_KIB, "RSS {rss} KiB did not return near idle {idle_rss} KiB");
    assert_eq!(fds, idle_fds, "file descriptors left behind by the closed connection");
}

#[test]
fn a_second_connection_is_served_promptly_while_one_floods() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    idle_baseline(&agent);

    let socket = agent.socket.clone();
    let polite = std::thread::spawn(move || {
        let mut s = UnixStream::connect(socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::thread::sleep(Duration::from_millis(500)); // the flood is under way
        let mut worst = Duration::ZERO;
        for i in 0..200 {
            let t = Instant::now();
            check(&mut s, 2 * i + 1);
            worst = worst.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(5));
        }
        worst
    });
    let f = flood(&agent, Duration::from_secs(3));
    let worst = polite.join().unwrap();
    eprintln!("worst Check round trip beside the flood: {worst:?}; flood accepted {} bytes", f.accepted_bytes);
    assert!(worst < Duration::from_millis(250), "a Check beside the flood took {worst:?}");
    assert!(f.accepted_bytes <= ACCEPTED_BYTES_MAX, "the flood got {} bytes accepted", f.accepted_bytes);
}

#[test]
fn an_oversized_frame_is_answered_without_allocating_it() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let pid = agent.child.id();
    let (idle_rss, _) = idle_baseline(&agent);

    // A header announcing 4 GiB, then a trickle: nothing of that size is
    // allocated, and the agent keeps serving.
    let mut huge = UnixStream::connect(&agent.socket).unwrap();
    let mut h = u32::MAX.to_be_bytes().to_vec();
    h.extend_from_slice(&1u32.to_be_bytes());
    h.extend_from_slice(&[TYPE_REQUEST, 0]);
    huge.write_all(&h).unwrap();
    huge.write_all(&vec![0u8; 1 << 20]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(rss_kib(pid) <= idle_rss + FLOOD_RSS_SLACK_KIB, "a 4 GiB length header grew the agent");
    let mut other = UnixStream::connect(&agent.socket).unwrap();
    check(&mut other, 1);
    drop(huge);

    // Just past ttrpc's 4 MiB limit, sent whole: answered INVALID_ARGUMENT on
    // its stream, and the connection goes on.
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let len = (4u32 << 20) + 1;
    let mut frame = len.to_be_bytes().to_vec();
    frame.extend_from_slice(&7u32.to_be_bytes());
    frame.extend_from_slice(&[TYPE_REQUEST, 0]);
    frame.resize(HEADER_LEN + len as usize, 0);
    s.write_all(&frame).unwrap();
    let (id, kind, body) = read_frame(&mut s).unwrap();
    assert_eq!((id, kind), (7, TYPE_RESPONSE));
    let status = ttrpc::Response::parse_from_bytes(&body).unwrap().status.into_option().expect("an error status");
    assert_eq!(status.code.value(), ttrpc::Code::INVALID_ARGUMENT as i32, "{status:?}");
    check(&mut s, 9);
}

#[test]
fn long_polls_leave_room_for_other_calls_up_to_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let pid = agent.child.id();
    let (_, idle_fds) = idle_baseline(&agent);

    // GetOOMEvent waits for an OOM kill, which never comes here: each stays in
    // flight. 200 is more than a shim keeps for 60 processes (about 3 each).
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let oom_wait = |id| request_frame(id, "grpc.AgentService", "GetOOMEvent", Vec::new());
    let mut next_id = 1u32;
    for _ in 0..200 {
        s.write_all(&oom_wait(next_id)).unwrap();
        next_id += 2;
    }
    for _ in 0..100 {
        let t = Instant::now();
        check(&mut s, next_id);
        assert!(t.elapsed() < Duration::from_secs(1), "a Check behind 200 long polls took {:?}", t.elapsed());
        next_id += 2;
    }

    // At 256 in flight the agent reads nothing more from this connection:
    // the bound is real, and it is where the test above says it is.
    for _ in 200..256 {
        s.write_all(&oom_wait(next_id)).unwrap();
        next_id += 2;
    }
    s.write_all(&check_frame(next_id)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let err = read_frame(&mut s).expect_err("a request past 256 in flight was answered");
    assert_eq!(err.kind(), ErrorKind::WouldBlock, "{err}");

    // Closing the connection ends its long polls and frees their resources.
    drop(s);
    let other = &mut UnixStream::connect(&agent.socket).unwrap();
    check(other, 1);
    let settled = wait_settled(pid, u64::MAX, idle_fds + 1);
    assert_eq!(settled.1, idle_fds + 1, "descriptors left by the closed connection");
}

/// Sequential Check round trips on one connection (the relay-less flow bound
/// must add nothing measurable). Run with `--ignored --nocapture` on a quiet
/// machine; prints the mean.
#[test]
#[ignore]
fn sequential_check_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    for i in 0..1000 {
        check(&mut s, 2 * i + 1);
    }
    let calls = 10_000u32;
    let t = Instant::now();
    for i in 0..calls {
        check(&mut s, 2 * (i + 1000) + 1);
    }
    let total = t.elapsed();
    eprintln!("{calls} sequential Checks: {total:?}, {:?} per call", total / calls);
}
