//! FlowSocket against an in-memory pipe: the "server" side reads frames the
//! way ttrpc does (exactly a header, then exactly a body) and answers when
//! the test says so.

use std::time::Duration;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

impl PeerHangup for DuplexStream {
    fn peer_hung_up(&self) -> bool {
        false
    }
}

fn frame(kind: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER_LEN + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(&stream_id.to_be_bytes());
    f.extend_from_slice(&[kind, 0]);
    f.extend_from_slice(payload);
    f
}

/// Reads one frame as ttrpc does; None if nothing arrives within 200 ms.
async fn read_frame(s: &mut FlowSocket<DuplexStream>) -> Option<(u32, u8, Vec<u8>)> {
    let mut h = [0u8; HEADER_LEN];
    tokio::time::timeout(Duration::from_millis(200), s.read_exact(&mut h)).await.ok()?.unwrap();
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    Some((u32::from_be_bytes([h[4], h[5], h[6], h[7]]), h[8], body))
}

#[tokio::test]
async fn stops_reading_at_the_bound_and_resumes_when_a_reply_is_written() {
    let (mut host, agent) = duplex(1 << 20);
    let mut agent = FlowSocket::new(agent);
    let extra = 5;
    for i in 0..(MAX_REQUESTS_IN_FLIGHT + extra) as u32 {
        host.write_all(&frame(TYPE_REQUEST, 2 * i + 1, b"check")).await.unwrap();
    }
    for i in 0..MAX_REQUESTS_IN_FLIGHT as u32 {
        let (id, kind, body) = read_frame(&mut agent).await.expect("a request below the bound is read");
        assert_eq!((id, kind, body.as_slice()), (2 * i + 1, TYPE_REQUEST, &b"check"[..]));
    }
    assert!(read_frame(&mut agent).await.is_none(), "request {} was read past the bound", MAX_REQUESTS_IN_FLIGHT + 1);

    // Answering the oldest request frees exactly one slot.
    agent.write_all(&frame(TYPE_RESPONSE, 1, b"ok")).await.unwrap();
    assert!(read_frame(&mut agent).await.is_some());
    assert!(read_frame(&mut agent).await.is_none());
    // A response to a stream that has no request outstanding frees nothing.
    agent.write_all(&frame(TYPE_RESPONSE, 999_999, b"??")).await.unwrap();
    assert!(read_frame(&mut agent).await.is_none());
}

#[tokio::test]
async fn long_polls_below_the_bound_never_hold_up_other_calls() {
    let (mut host, agent) = duplex(1 << 20);
    let mut agent = FlowSocket::new(agent);
    // A shim's worth of long polls (and then some) that are never answered.
    let long_polls = MAX_REQUESTS_IN_FLIGHT as u32 - 1;
    for i in 0..long_polls {
        host.write_all(&frame(TYPE_REQUEST, 2 * i + 1, b"wait")).await.unwrap();
        read_frame(&mut agent).await.unwrap();
    }
    for i in long_polls..long_polls + 1000 {
        host.write_all(&frame(TYPE_REQUEST, 2 * i + 1, b"check")).await.unwrap();
        let (id, _, _) = read_frame(&mut agent).await.expect("a normal call beside the long polls is read");
        agent.write_all(&frame(TYPE_RESPONSE, id, b"ok")).await.unwrap();
        let mut reply = vec![0u8; HEADER_LEN + 2];
        host.read_exact(&mut reply).await.unwrap();
    }
}

#[tokio::test]
async fn bounds_request_bytes_in_flight() {
    let (mut host, agent) = duplex(64 << 20);
    let mut agent = FlowSocket::new(agent);
    let big = vec![7u8; MAX_FRAME_PAYLOAD as usize];
    let fits = MAX_REQUEST_BYTES_IN_FLIGHT / big.len();
    let writer = tokio::spawn(async move {
        for i in 0..fits as u32 + 2 {
            host.write_all(&frame(TYPE_REQUEST, 2 * i + 1, &big)).await.unwrap();
        }
        host
    });
    for _ in 0..fits {
        read_frame(&mut agent).await.expect("requests under the byte budget are read");
    }
    assert!(read_frame(&mut agent).await.is_none(), "read past {MAX_REQUEST_BYTES_IN_FLIGHT} bytes in flight");
    agent.write_all(&frame(TYPE_RESPONSE, 1, b"")).await.unwrap();
    assert!(read_frame(&mut agent).await.is_some());
    drop(agent);
    writer.abort();
}

#[tokio::test]
async fn a_full_socket_stops_reading_until_replies_drain() {
    // 64 bytes of pipe: the agent's reply cannot be written whole.
    let (mut host, agent) = duplex(64);
    let (mut agent_read, mut agent_write) = tokio::io::split(FlowSocket::new(agent));
    host.write_all(&frame(TYPE_REQUEST, 1, b"a")).await.unwrap();
    let mut h = [0u8; HEADER_LEN + 1];
    agent_read.read_exact(&mut h).await.unwrap();

    let reply = frame(TYPE_RESPONSE, 1, &[0u8; 1000]);
    let writer = tokio::spawn(async move {
        agent_write.write_all(&reply).await.unwrap();
        agent_write
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!writer.is_finished(), "the host is not reading: the reply must be stuck in the pipe");

    host.write_all(&frame(TYPE_REQUEST, 3, b"b")).await.unwrap();
    let mut next = [0u8; HEADER_LEN + 1];
    let read = tokio::time::timeout(Duration::from_millis(200), agent_read.read_exact(&mut next)).await;
    assert!(read.is_err(), "a request was read while replies were backing up");

    // The host drains its replies: the writer finishes and reading resumes.
    let mut got = vec![0u8; HEADER_LEN + 1000];
    host.read_exact(&mut got).await.unwrap();
    writer.await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), agent_read.read_exact(&mut next)).await.unwrap().unwrap();
    assert_eq!(&next[HEADER_LEN..], b"b");
}

#[tokio::test]
async fn a_connection_parked_at_its_bound_ends_when_the_host_hangs_up() {
    let (mut host, agent) = tokio::net::UnixStream::pair().unwrap();
    let mut agent = FlowSocket::new(agent);
    for i in 0..=MAX_REQUESTS_IN_FLIGHT as u32 {
        host.write_all(&frame(TYPE_REQUEST, 2 * i + 1, b"wait")).await.unwrap();
    }
    let mut h = [0u8; HEADER_LEN + 4];
    for _ in 0..MAX_REQUESTS_IN_FLIGHT {
        agent.read_exact(&mut h).await.unwrap();
    }
    let mut next = [0u8; HEADER_LEN];
    let parked = agent.read(&mut next);
    tokio::pin!(parked);
    assert!(tokio::time::timeout(Duration::from_millis(200), &mut parked).await.is_err(), "read past the bound");

    // The last request is still unread in the socket when the host leaves.
    drop(host);
    let n =
        tokio::time::timeout(HANGUP_CHECK * 3, parked).await.expect("a parked connection notices the hang-up").unwrap();
    assert_eq!(n, 0, "the end of the stream, not the unread request");
}

#[test]
fn cursor_follows_frames_split_and_joined_arbitrarily() {
    let mut wire = frame(TYPE_REQUEST, 1, b"hello");
    wire.extend(frame(TYPE_DATA, 3, b""));
    wire.extend(frame(9, 5, b"unknown type"));
    wire.extend(frame(TYPE_REQUEST, 7, &[1u8; 300]));
    for chunk in [1, 3, 7, 10, 11, 64, wire.len()] {
        let mut cursor = FrameCursor::default();
        let (mut heads, mut ends) = (Vec::new(), Vec::new());
        for piece in wire.chunks(chunk) {
            cursor.advance(piece, |h| heads.push(h.stream_id), |h| ends.push(h.stream_id));
        }
        assert_eq!(heads, [1, 3, 5, 7], "chunk {chunk}");
        assert_eq!(ends, [1, 3, 5, 7], "chunk {chunk}");
        assert!(cursor.at_boundary());
    }
}

#[test]
fn counts_what_ttrpc_answers_and_nothing_else() {
    let h = |kind, length| Header { length, stream_id: 1, kind };
    assert!(expects_reply(h(TYPE_REQUEST, 10)));
    assert!(expects_reply(h(TYPE_DATA, 10)));
    assert!(!expects_reply(h(TYPE_RESPONSE, 10)));
    assert!(!expects_reply(h(0x7f, 10)));
    // ttrpc answers an oversized frame of any type with INVALID_ARGUMENT,
    // and drops its body as it reads it: counted, holding no bytes.
    assert!(expects_reply(h(0x7f, u32::MAX)));
    let mut in_flight = InFlight::default();
    in_flight.admit(h(TYPE_REQUEST, u32::MAX));
    assert_eq!((in_flight.requests.len(), in_flight.bytes), (1, 0));
    assert!(in_flight.answered(1));
    assert!(!in_flight.answered(1));
}

/// A transport that claims to have written more than it was given.
struct Overclaims;

impl AsyncWrite for Overclaims {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len() + 1))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_transport_overclaiming_a_write_fails_the_connection() {
    let mut agent = FlowSocket::new(Overclaims);
    let err = agent.write(&frame(TYPE_RESPONSE, 1, b"ok")).await.unwrap_err();
    assert!(err.to_string().contains("13 bytes written of a 12-byte buffer"), "{err}");
}
