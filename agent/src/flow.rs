//! Per-connection flow control for the ttrpc server: a host that sends
//! requests without reading the replies is back-pressured through the kernel
//! socket buffers instead of being buffered by the agent.
//!
//! The `ttrpc` crate's server reads request frames as fast as they arrive and
//! runs each in its own task, so a host that never reads its replies makes
//! the agent hold an unbounded number of tasks and replies. [`FlowSocket`]
//! sits between the accepted socket and ttrpc (no copy, no extra task, no
//! extra syscall): it follows the 10-byte frame headers in both directions,
//! and at a frame boundary it stops handing inbound bytes to ttrpc while the
//! connection is at its bound. The bytes then stay in the socket, the kernel
//! buffers fill, and the host's writes block. A parked connection still
//! checks every 500 ms whether the host hung up, so it never outlives it.
//! The agent binds its unix, abstract and vsock listeners itself (not through
//! ttrpc's `Listener::bind`) to keep each connection's fd for that check.
//!
//! Replies waiting to be written are bounded twice over: they belong to
//! in-flight requests (at most [`MAX_REQUESTS_IN_FLIGHT`]), and once a reply
//! write finds the socket full no further request is read, so a host that
//! stops reading leaves behind only the replies of requests it had already
//! sent. Each reply is at most ttrpc's 4 MiB frame (a larger one is replaced
//! by an error) and the agent's large replies, ReadStdout/ReadStderr, are at
//! most 1 MiB (`process::MAX_READ`).
//!
//! It must never stop reading in the middle of a frame, never buffer bytes of
//! its own, and never change a byte on the wire.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use ttrpc::r#async::transport::Listener;

/// Requests read from one connection whose reply has not been written to the
/// socket yet. A kata shim multiplexes a whole sandbox over one connection
/// and keeps long polls outstanding there: ReadStdout, ReadStderr and
/// WaitProcess for every container and exec process, plus one GetOOMEvent,
/// i.e. about 3 per process. 256 leaves room for ~80 processes' long polls
/// plus the normal calls beside them (a shim issues only a handful of those
/// at once), so a legitimate host never reaches it, and a long poll can never
/// starve the calls that would end it. One in-flight Check costs the agent a
/// task and two small buffers (about 1 KiB), so a flooding host holds about
/// 256 KiB of agent memory through it.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 256;

/// Request payload bytes held by in-flight requests. ttrpc accepts frames up
/// to 4 MiB (CopyFile chunks are the big ones); past this sum no new frame is
/// read until replies go out, so request payloads held per connection stay
/// under this plus one frame.
pub const MAX_REQUEST_BYTES_IN_FLIGHT: usize = 16 << 20;

/// Largest frame payload ttrpc accepts (its `MESSAGE_LENGTH_MAX`). A longer
/// frame's body is read and dropped in 4 KiB pieces by ttrpc (never
/// allocated whole) and answered with INVALID_ARGUMENT; it is counted as in
/// flight until that answer is written.
pub const MAX_FRAME_PAYLOAD: u32 = 4 << 20;

const HEADER_LEN: usize = 10;
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;
const TYPE_DATA: u8 = 3;

/// How often a connection parked at its bound checks whether the host hung up
/// (it reads nothing then, so it would not see the end of the stream).
const HANGUP_CHECK: Duration = Duration::from_millis(500);

/// A listening socket whose accepted connections can be flow-controlled.
pub trait Acceptor: Send + Sync + Unpin + 'static {
    type Conn: AsyncRead + AsyncWrite + PeerHangup + Send + Sync + Unpin + 'static;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Conn>>;
}

/// Tells whether the peer has closed (or shut down its sending side of) a
/// connection whose unread bytes may still sit in the socket.
pub trait PeerHangup {
    fn peer_hung_up(&self) -> bool;
}

impl Acceptor for tokio::net::UnixListener {
    type Conn = tokio::net::UnixStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Conn>> {
        tokio::net::UnixListener::poll_accept(self, cx).map_ok(|(conn, _)| conn)
    }
}

impl Acceptor for tokio_vsock::VsockListener {
    type Conn = tokio_vsock::VsockStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Conn>> {
        tokio_vsock::VsockListener::poll_accept(self, cx).map_ok(|(conn, _)| conn)
    }
}

impl PeerHangup for tokio::net::UnixStream {
    fn peer_hung_up(&self) -> bool {
        fd_hung_up(self.as_raw_fd())
    }
}

impl PeerHangup for tokio_vsock::VsockStream {
    fn peer_hung_up(&self) -> bool {
        fd_hung_up(self.as_raw_fd())
    }
}

/// POLLRDHUP is reported even while unread data is queued, unlike a read of 0.
fn fd_hung_up(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd, zero timeout; poll only reads the fd's state.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Wraps every connection `listener` accepts in a [`FlowSocket`].
pub fn bound_connections<A: Acceptor>(listener: A) -> Listener {
    Listener::new(Incoming(listener))
}

struct Incoming<A>(A);

impl<A: Acceptor> Stream for Incoming<A> {
    type Item = io::Result<FlowSocket<A::Conn>>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_accept(cx).map(|conn| Some(conn.map(FlowSocket::new)))
    }
}

/// A ttrpc frame header being assembled from a byte stream, then the number
/// of payload bytes still to pass.
#[derive(Debug, Default)]
struct FrameCursor {
    header: [u8; HEADER_LEN],
    header_filled: usize,
    body_left: usize,
}

/// A frame header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    length: u32,
    stream_id: u32,
    kind: u8,
}

impl FrameCursor {
    /// True between frames: the next byte is the first of a header.
    fn at_boundary(&self) -> bool {
        self.header_filled == 0 && self.body_left == 0
    }

    /// Bytes left in the current header or body.
    fn section_left(&self) -> usize {
        if self.header_filled < HEADER_LEN && self.body_left == 0 {
            HEADER_LEN - self.header_filled
        } else {
            self.body_left
        }
    }

    /// Consumes `bytes` (which may span frames) and calls `on_header` when a
    /// header is complete and `on_end` when a frame's last byte has passed.
    fn advance(&mut self, mut bytes: &[u8], mut on_header: impl FnMut(Header), mut on_end: impl FnMut(Header)) {
        while !bytes.is_empty() {
            if self.body_left == 0 && self.header_filled < HEADER_LEN {
                let (head, rest) = bytes.split_at(bytes.len().min(HEADER_LEN - self.header_filled));
                for (slot, byte) in self.header.iter_mut().skip(self.header_filled).zip(head) {
                    *slot = *byte;
                }
                self.header_filled += head.len();
                bytes = rest;
                if self.header_filled < HEADER_LEN {
                    return;
                }
                let h = self.decoded();
                on_header(h);
                self.body_left = h.length as usize;
            } else {
                let n = bytes.len().min(self.body_left);
                self.body_left -= n;
                bytes = bytes.get(n..).unwrap_or_default();
            }
            if self.body_left == 0 {
                on_end(self.decoded());
                self.header_filled = 0;
            }
        }
    }

    fn decoded(&self) -> Header {
        let h = &self.header;
        Header {
            length: u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
            stream_id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            kind: h[8],
        }
    }
}

/// What ttrpc will answer for an inbound frame: a request or a data frame
/// always gets a response frame on its stream (data frames an error, the
/// agent has no streaming RPCs), as does an oversized frame of any type;
/// ttrpc ignores other types.
fn expects_reply(h: Header) -> bool {
    matches!(h.kind, TYPE_REQUEST | TYPE_DATA) || h.length > MAX_FRAME_PAYLOAD
}

/// The connection's outstanding requests, in arrival order.
#[derive(Debug, Default)]
struct InFlight {
    /// (stream id, payload bytes held) per request not answered yet.
    requests: VecDeque<(u32, u32)>,
    bytes: usize,
}

impl InFlight {
    fn admit(&mut self, h: Header) {
        // An oversized body is dropped by ttrpc as it is read: it holds nothing.
        let held = if h.length > MAX_FRAME_PAYLOAD { 0 } else { h.length };
        self.requests.push_back((h.stream_id, held));
        self.bytes += held as usize;
    }

    /// Retires the oldest request on `stream_id`; a response to nothing we
    /// counted changes nothing.
    fn answered(&mut self, stream_id: u32) -> bool {
        match self.requests.iter().position(|&(id, _)| id == stream_id) {
            Some(i) => {
                if let Some((_, held)) = self.requests.remove(i) {
                    self.bytes -= held as usize;
                }
                true
            }
            None => false,
        }
    }

    fn full(&self) -> bool {
        self.requests.len() >= MAX_REQUESTS_IN_FLIGHT || self.bytes >= MAX_REQUEST_BYTES_IN_FLIGHT
    }
}

/// One accepted connection with its inbound requests bounded by its
/// outbound replies. ttrpc splits it into a read half and a write half that
/// share this value, so both directions see the same counts.
pub struct FlowSocket<S> {
    inner: S,
    inbound: FrameCursor,
    outbound: FrameCursor,
    in_flight: InFlight,
    /// The last write found the socket full: the host is not reading.
    write_stalled: bool,
    /// The read half, parked at a frame boundary while the bound holds.
    parked_reader: Option<Waker>,
    /// Runs while the read half is parked, to notice a host that hung up.
    hangup_check: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FlowSocket<S> {
    pub fn new(inner: S) -> Self {
        FlowSocket {
            inner,
            inbound: FrameCursor::default(),
            outbound: FrameCursor::default(),
            in_flight: InFlight::default(),
            write_stalled: false,
            parked_reader: None,
            hangup_check: None,
        }
    }

    /// Whether the next inbound frame must wait: too much is outstanding, or
    /// replies are already backing up in the socket.
    fn must_wait(&self) -> bool {
        self.in_flight.full() || self.write_stalled
    }

    fn unpark_reader(&mut self) {
        if !self.must_wait() {
            if let Some(w) = self.parked_reader.take() {
                w.wake();
            }
        }
    }
}

impl<S> Drop for FlowSocket<S> {
    fn drop(&mut self) {
        // A connection that had many requests outstanding leaves freed heap
        // pages behind; hand them back now rather than at the next
        // RemoveContainer.
        crate::memory::release_free_heap_soon();
    }
}

impl<S: AsyncRead + PeerHangup + Unpin> AsyncRead for FlowSocket<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.inbound.at_boundary() && this.must_wait() {
            // Parked, the read half would never see the host close the
            // connection (its unread requests still fill the socket), and a
            // connection whose requests are all long polls would live on
            // after the host left. Report the end of the stream instead.
            if this.inner.peer_hung_up() {
                return Poll::Ready(Ok(()));
            }
            this.parked_reader = Some(cx.waker().clone());
            let check = this.hangup_check.get_or_insert_with(|| Box::pin(tokio::time::sleep(HANGUP_CHECK)));
            while check.as_mut().poll(cx).is_ready() {
                if this.inner.peer_hung_up() {
                    return Poll::Ready(Ok(()));
                }
                check.as_mut().reset(tokio::time::Instant::now() + HANGUP_CHECK);
            }
            return Poll::Pending;
        }
        this.hangup_check = None;
        // Never read past the current header or body, so the bound is checked
        // at every frame boundary. ttrpc reads exactly a header, then exactly
        // a body, so the first branch is the one taken.
        let want = this.inbound.section_left();
        if buf.remaining() <= want {
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let read = buf.filled().get(before..).unwrap_or_default();
            track_inbound(&mut this.inbound, &mut this.in_flight, read);
        } else {
            let mut part = ReadBuf::new(buf.initialize_unfilled_to(want));
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
            let n = part.filled().len();
            track_inbound(&mut this.inbound, &mut this.in_flight, part.filled());
            buf.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

fn track_inbound(cursor: &mut FrameCursor, in_flight: &mut InFlight, bytes: &[u8]) {
    cursor.advance(
        bytes,
        |h| {
            if expects_reply(h) {
                in_flight.admit(h);
            }
        },
        |_| {},
    );
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FlowSocket<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => {
                this.write_stalled = true;
                return Poll::Pending;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(n)) => n,
        };
        this.write_stalled = false;
        // A transport that claims more than it was given is broken: fail the
        // connection rather than track frames that were never sent.
        let Some(written) = buf.get(..n) else {
            return Poll::Ready(Err(io::Error::other(format!(
                "agent transport reported {n} bytes written of a {}-byte buffer",
                buf.len()
            ))));
        };
        let in_flight = &mut this.in_flight;
        this.outbound.advance(
            written,
            |_| {},
            |h| {
                if h.kind == TYPE_RESPONSE {
                    in_flight.answered(h.stream_id);
                }
            },
        );
        this.unpark_reader();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;

/// The frame events (`(is_end, length, stream_id, kind)`) the cursor reports
/// for `chunks` fed one after another (fuzzing and its regression test).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn frame_events(chunks: &[&[u8]]) -> (Vec<(bool, u32, u32, u8)>, bool) {
    let events = std::cell::RefCell::new(Vec::new());
    let mut cursor = FrameCursor::default();
    for chunk in chunks {
        cursor.advance(
            chunk,
            |h| events.borrow_mut().push((false, h.length, h.stream_id, h.kind)),
            |h| events.borrow_mut().push((true, h.length, h.stream_id, h.kind)),
        );
    }
    (events.into_inner(), cursor.at_boundary())
}
