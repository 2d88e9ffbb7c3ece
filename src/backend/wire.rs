//! bestofn's own HTTP/1.1 client for plain-HTTP backends.
//!
//! Why not hyper's pooled client, which this replaced for them: it runs every connection as a
//! task of its own and hands each request to that task and each answer back through channels.
//! On the light-load path of BENCHMARKS.md (issue #17, sixth sitting) those two hand-offs were
//! about 40 µs of a pass-through's 190 µs, and nginx's worker has neither: it writes the request
//! and reads the answer itself. Here the task that makes the call does the same. It takes a
//! kept-alive connection of its serving thread, writes the request in one system call, reads
//! and parses the answer's head (with httparse, the parser hyper itself uses) and returns the
//! answer with a body that reads from the connection as it is polled and puts the connection
//! back in the pool once the answer has been read to its end.
//!
//! Scope: what backend calls need. Requests carry their whole body with its length. Answers are
//! framed by Content-Length, by the chunked transfer coding or by the connection's close;
//! 1xx heads are skipped; a server's `Connection: close` or an HTTP/1.0 answer ends the
//! connection's reuse. Of an answer's headers only those bestofn reads are kept (framing,
//! Connection, Retry-After). A kept-alive connection the server closed while it sat idle is found
//! when it is taken (its socket reads end-of-file), as hyper's pool finds it, and a request whose
//! write failed on a reused connection goes out again on a new one; on a new one, an answer the
//! server sent before it stopped reading (a 413 for a body over its limit) is returned. A call
//! that finds no idle connection takes whichever comes first of its own new connection and one
//! another call puts back. An answer abandoned half-way closes its connection. Calls whose answer
//! never comes are bounded by the backend's timeouts, which wrap the whole call.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::uri::Authority;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::http_framing::LengthError;
use crate::watched::{Watch, Watched};

/// Idle keep-alive connections live this long, as reqwest's default.
pub(super) const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle keep-alive connections kept per endpoint: enough for the burst of one parallel
/// best-of-N wave from many requests at once.
pub(super) const POOL_IDLE_PER_HOST: usize = 512;
/// The largest answer head read; a longer one is a broken or hostile server.
const MAX_HEAD: usize = 64 * 1024;
/// The most header lines an answer's head may have.
const MAX_HEADERS: usize = 100;
/// What one read asks the socket for when the answer's length does not say more.
const READ_CHUNK: usize = 8 * 1024;
/// The most one read asks for, however long the answer says it is.
const READ_MAX: usize = 1024 * 1024;

/// Why a call on the wire failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The server closed the connection early.
    #[error("the connection closed {0}")]
    Closed(&'static str),
    /// The answer broke HTTP/1.1.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The URL names no host to connect to.
    #[error("the URL has no host")]
    NoHost,
}

/// What one connection saw on the wire, for the call it is serving now.
#[derive(Debug)]
pub struct WireClock {
    epoch: Instant,
    /// Nanoseconds after `epoch` at which the current request's first byte was written.
    sent_ns: AtomicU64,
    /// Nanoseconds after `epoch` at which the latest bytes of the answer were read.
    received_ns: AtomicU64,
}

impl WireClock {
    fn new() -> WireClock {
        WireClock { epoch: Instant::now(), sent_ns: AtomicU64::new(0), received_ns: AtomicU64::new(0) }
    }

    fn stamp(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The current request's first bytes were written just now.
    fn request_started(&self) {
        self.sent_ns.store(self.stamp(), Ordering::Relaxed);
    }

    /// From the first byte of the request written to the last byte of the answer read so far,
    /// or None when the connection has not both written and read since.
    pub fn span(&self) -> Option<(Instant, Instant)> {
        let sent = self.sent_ns.load(Ordering::Relaxed);
        let received = self.received_ns.load(Ordering::Relaxed);
        (received >= sent && sent > 0)
            .then(|| (self.epoch + Duration::from_nanos(sent), self.epoch + Duration::from_nanos(received)))
    }
}

/// The watcher of a backend connection: its wire clock (and the stage timeline).
struct ClockWatch(Arc<WireClock>);

impl Watch for ClockWatch {
    fn read(&self) {
        self.0.received_ns.store(self.0.stamp(), Ordering::Relaxed);
    }

    fn writing(&self) {}

    fn written(&self, _wrote: bool) {}
}

thread_local! {
    /// This thread wrote a request to a server on this machine since it last gave way.
    static WROTE_TO_LOCAL_UPSTREAM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Gives this thread's CPU away once (`sched_yield`) when the thread has written a request to a
/// server on this machine since it last did; called by a serving thread's runtime as it is about
/// to sleep waiting for events.
///
/// Why: the write wakes the server's process, and when the kernel queues it on this CPU without
/// preempting, this thread would otherwise sleep in `epoll_wait` first and be woken again by the
/// answer, a sleep and a wake-up a call that nginx's workers mostly skip (they are preempted
/// instead). Given way, the server runs at once and the answer is usually in when the runtime
/// polls. With nothing else runnable on the CPU the call returns at once; a busy runtime does not
/// sleep, so it does not give way either. Measured in BENCHMARKS.md (issue #17, fifteenth
/// sitting): sleeps a light-load pass-through 1.1 -> 0.65.
pub fn give_way_to_local_upstream() {
    if WROTE_TO_LOCAL_UPSTREAM.replace(false) {
        std::thread::yield_now();
    }
}

/// One connection to a backend: the stream (stamping its clock) and the bytes read but not yet
/// handed out.
struct Conn {
    stream: Watched<ClockWatch>,
    buffered: BytesMut,
    /// The server is on this machine (a loopback address): see [`give_way_to_local_upstream`].
    local: bool,
}

impl Conn {
    async fn open(authority: &Authority) -> Result<Conn, WireError> {
        // `[::1]` in a URL is the address `::1`.
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let stream = TcpStream::connect((host, authority.port_u16().unwrap_or(80))).await?;
        stream.set_nodelay(true)?;
        let local = stream.peer_addr().is_ok_and(|peer| peer.ip().is_loopback());
        Ok(Conn {
            stream: Watched { stream, watch: ClockWatch(Arc::new(WireClock::new())) },
            buffered: BytesMut::new(),
            local,
        })
    }

    fn clock(&self) -> &Arc<WireClock> {
        &self.stream.watch.0
    }

    /// Whether an idle connection can carry a request: its server has not closed it and sent
    /// nothing unasked. Costs a system call only when the socket was last seen readable.
    fn is_reusable(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Writes `head` and `body`, as one system call when the socket takes it all; the clock's
    /// request span starts when the first bytes are out.
    async fn write_request(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<()> {
        let clock = self.clock().clone();
        crate::watched::write_head_and_body(&mut self.stream, head, body, || clock.request_started()).await
    }

    /// Reads until the answer's final head is in and parses it; 1xx heads are skipped.
    async fn read_head(&mut self) -> Result<http::response::Parts, WireError> {
        loop {
            if !self.buffered.is_empty() {
                match parse_head(&self.buffered)? {
                    Some((parts, used)) if parts.status.is_informational() => {
                        if parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
                            return Err(WireError::Malformed(
                                "101 Switching Protocols to a request that asked for none".into(),
                            ));
                        }
                        self.buffered.advance(used);
                        continue;
                    }
                    Some((parts, used)) => {
                        self.buffered.advance(used);
                        return Ok(parts);
                    }
                    None if self.buffered.len() > MAX_HEAD => {
                        return Err(WireError::Malformed(format!("a head longer than {MAX_HEAD} bytes")));
                    }
                    None => {}
                }
            }
            self.buffered.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.buffered).await? == 0 {
                return Err(WireError::Closed(if self.buffered.is_empty() {
                    "before the answer's head"
                } else {
                    "in the middle of the answer's head"
                }));
            }
        }
    }

    /// Reads more of the answer into the buffer, at most `want` bytes; Ready(0) at end of file.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<std::io::Result<usize>> {
        let want = (want as usize).clamp(READ_CHUNK, READ_MAX);
        self.buffered.reserve(want);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buffered)
    }
}

/// The headers of an answer that bestofn reads: its framing, whether the connection stays open,
/// and when to retry. Only these are kept: copying, naming and hashing every other header
/// (Server, Date, Content-Type, ...) was about a third of the cost of reading a light answer.
const READ_ANSWER_HEADERS: [http::HeaderName; 4] = [
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::CONNECTION,
    http::header::RETRY_AFTER,
];

/// The answer's head as `http` parts (with the headers of [`READ_ANSWER_HEADERS`] only) and the
/// bytes it took; None while it is incomplete.
fn parse_head(bytes: &[u8]) -> Result<Option<(http::response::Parts, usize)>, WireError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Response::new(&mut headers);
    let used = match head.parse(bytes) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(WireError::Malformed(e.to_string())),
    };
    let mut response = http::Response::builder()
        .status(head.code.unwrap_or_default())
        .version(if head.version == Some(0) { http::Version::HTTP_10 } else { http::Version::HTTP_11 });
    if let Some(map) = response.headers_mut() {
        for header in head.headers.iter() {
            let Some(name) = READ_ANSWER_HEADERS.iter().find(|read| read.as_str().eq_ignore_ascii_case(header.name))
            else {
                continue;
            };
            let value = http::HeaderValue::from_bytes(header.value)
                .map_err(|_| WireError::Malformed(format!("the value of header {:?}", header.name)))?;
            map.append(name.clone(), value);
        }
    }
    let (parts, ()) = response.body(()).map_err(|e| WireError::Malformed(e.to_string()))?.into_parts();
    Ok(Some((parts, used)))
}

/// How the answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// At the chunked coding's last chunk; where in the coding the reader is.
    Chunked(Chunk),
    /// When the server closes the connection.
    UntilClose,
}

/// A position in the chunked transfer coding.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes left.
    Data(u64),
    /// Before the CRLF that ends a chunk's data.
    DataEnd,
    /// In the trailer section after the last chunk.
    Trailers,
}

/// How the body of an answer with this head is framed (RFC 9112 section 6.3).
fn framing(parts: &http::response::Parts) -> Result<Framing, WireError> {
    if parts.status == http::StatusCode::NO_CONTENT || parts.status == http::StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length(0));
    }
    if let Some(chunked) = crate::http_framing::ends_in_chunked(&parts.headers) {
        return Ok(if chunked { Framing::Chunked(Chunk::Size) } else { Framing::UntilClose });
    }
    match crate::http_framing::content_length(&parts.headers) {
        Ok(length) => Ok(length.map_or(Framing::UntilClose, Framing::Length)),
        Err(LengthError::Malformed(value)) => Err(WireError::Malformed(format!("Content-Length {value}"))),
        Err(LengthError::Disagree) => Err(WireError::Malformed("Content-Length values that disagree".into())),
    }
}

/// Whether the connection can carry another request after this answer.
fn keeps_alive(parts: &http::response::Parts, framing: Framing) -> bool {
    parts.version == http::Version::HTTP_11
        && !crate::http_framing::connection_lists(&parts.headers, "close")
        && framing != Framing::UntilClose
}

/// The request line and headers of `parts` to `authority`, for a body of `body_len` bytes.
fn request_head(parts: &http::request::Parts, authority: &Authority, body_len: usize) -> Vec<u8> {
    use std::io::Write;
    let mut head = Vec::with_capacity(192 + parts.headers.len() * 48);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    // Without any `user:password@`, which is not part of the Host header.
    head.extend_from_slice(authority.as_str().rsplit('@').next().unwrap_or_default().as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if body_len > 0 || parts.method == http::Method::POST {
        let _ = write!(head, "content-length: {body_len}\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// The kept-alive connections of one authority: those idle (oldest first) and the calls
/// waiting for one while they connect.
struct HostConns {
    authority: Authority,
    conns: Vec<(Conn, Instant)>,
    waiters: std::collections::VecDeque<oneshot::Sender<Conn>>,
}

/// Waiting calls kept before those that stopped waiting are swept out of the queue.
const MAX_WAITERS: usize = 4096;

/// Where a call gets its connection: an idle one, or whichever comes first of a new one and one
/// that another call puts back.
enum Checkout {
    Idle(Conn),
    Wait(oneshot::Receiver<Conn>),
}

/// The kept-alive connections of one serving thread. A connection is registered with the
/// reactor of the runtime that opened it, so each serving thread keeps its own (see
/// `HttpClient`).
#[derive(Default)]
pub struct WirePool {
    hosts: Mutex<Vec<HostConns>>,
}

impl WirePool {
    /// Sends `request` to its URI's authority on a kept-alive connection when one is idle, else on
    /// a new one or one put back meanwhile, and returns the answer once its head is in.
    pub async fn send(self: &Arc<Self>, request: http::Request<Bytes>) -> Result<http::Response<WireBody>, WireError> {
        let (parts, body) = request.into_parts();
        let authority = parts.uri.authority().ok_or(WireError::NoHost)?.clone();
        let head = request_head(&parts, &authority, body.len());
        let mut checkout = Some(self.checkout(&authority));
        let (parts, conn, written) = loop {
            let (mut conn, reused) = match checkout.take() {
                Some(Checkout::Idle(conn)) => (conn, true),
                // As hyper's pool does: under a burst, a connection that comes free serves the
                // call rather than the call waiting on its own connect (which, with the
                // server's accept queue full, waits for SYN retransmits: seconds).
                Some(Checkout::Wait(mut handed)) => tokio::select! {
                    biased;
                    Ok(conn) = &mut handed => (conn, true),
                    opened = Conn::open(&authority) => (opened?, false),
                },
                None => (Conn::open(&authority).await?, false),
            };
            match conn.write_request(&head, &body).await {
                Ok(()) => {
                    if conn.local {
                        WROTE_TO_LOCAL_UPSTREAM.set(true);
                    }
                    break (conn.read_head().await?, conn, true);
                }
                // The server closed it as it was taken: the request never went out.
                Err(_) if reused => continue,
                // A server may answer before it has read the whole request (a 413 for a body
                // over its limit) and close: that answer, when it came whole, is the one to
                // return, as hyper's client does, not a failed write.
                Err(e) => match conn.read_head().await {
                    Ok(parts) => break (parts, conn, false),
                    Err(_) => return Err(e.into()),
                },
            }
        };
        let framing = framing(&parts)?;
        // A connection whose request did not go out whole carries nothing more.
        let keep_alive = written && keeps_alive(&parts, framing);
        let mut response = http::Response::from_parts(
            parts,
            WireBody { conn: None, framing, keep_alive, pool: self.clone(), authority },
        );
        response.extensions_mut().insert(conn.clock().clone());
        let body = response.body_mut();
        body.conn = Some(conn);
        if body.framing == Framing::Length(0) {
            body.finish();
        }
        Ok(response)
    }

    /// The most recently used idle connection to `authority` that can carry a request, or a
    /// place in the queue of calls waiting for one.
    fn checkout(&self, authority: &Authority) -> Checkout {
        let Ok(mut hosts) = self.hosts.lock() else { return Checkout::Wait(oneshot::channel().1) };
        let entry = Self::entry(&mut hosts, authority);
        while let Some((conn, since)) = entry.conns.pop() {
            if since.elapsed() < POOL_IDLE && conn.is_reusable() {
                return Checkout::Idle(conn);
            }
        }
        // Made only here: a call served by an idle connection (the steady state) allocates no
        // channel.
        let (handed, waiting) = oneshot::channel();
        let waiters = &mut entry.waiters;
        while waiters.front().is_some_and(oneshot::Sender::is_closed) {
            waiters.pop_front();
        }
        if waiters.len() >= MAX_WAITERS {
            waiters.retain(|w| !w.is_closed());
        }
        waiters.push_back(handed);
        Checkout::Wait(waiting)
    }

    /// The entry of `authority`, made when missing.
    fn entry<'a>(hosts: &'a mut Vec<HostConns>, authority: &Authority) -> &'a mut HostConns {
        let index = match hosts.iter().position(|h| h.authority == *authority) {
            Some(index) => index,
            None => {
                hosts.push(HostConns {
                    authority: authority.clone(),
                    conns: Vec::new(),
                    waiters: std::collections::VecDeque::new(),
                });
                hosts.len() - 1
            }
        };
        &mut hosts[index]
    }

    /// Hands `conn` to the longest-waiting call to `authority`, else keeps it for the next one;
    /// closes connections idle too long.
    fn put(&self, authority: &Authority, mut conn: Conn) {
        let Ok(mut hosts) = self.hosts.lock() else { return };
        let now = Instant::now();
        for entry in hosts.iter_mut() {
            let expired = entry.conns.iter().take_while(|(_, since)| now - *since >= POOL_IDLE).count();
            entry.conns.drain(..expired);
        }
        let entry = Self::entry(&mut hosts, authority);
        while let Some(waiter) = entry.waiters.pop_front() {
            match waiter.send(conn) {
                Ok(()) => return,
                // That call stopped waiting (its own connection came first): the next one.
                Err(back) => conn = back,
            }
        }
        if entry.conns.len() < POOL_IDLE_PER_HOST {
            entry.conns.push((conn, now));
        }
    }
}

/// An answer's body, read from its connection as it is polled; the connection goes back to its
/// pool when the body has been read to its end, and is closed when the body is dropped before.
pub struct WireBody {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<WirePool>,
    authority: Authority,
}

impl WireBody {
    /// The answer has been read to its end: its connection goes back to the pool when it can
    /// carry another request.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buffered.is_empty()
        {
            self.pool.put(&self.authority, conn);
        }
    }
}

/// Up to `left` bytes of what is buffered, handed out without a copy.
fn take_data(buffered: &mut BytesMut, left: &mut u64) -> Bytes {
    let n = (*left).min(buffered.len() as u64) as usize;
    *left -= n as u64;
    buffered.split_to(n).freeze()
}

impl Body for WireBody {
    type Data = Bytes;
    type Error = WireError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            // What the buffer holds decides the step; `Some(want)` asks for more bytes first.
            let need = match &mut this.framing {
                Framing::Length(left) if conn.buffered.is_empty() => Some(*left),
                Framing::Length(left) => {
                    let data = take_data(&mut conn.buffered, left);
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::UntilClose if conn.buffered.is_empty() => Some(0),
                Framing::UntilClose => return Poll::Ready(Some(Ok(Frame::data(conn.buffered.split().freeze())))),
                Framing::Chunked(chunk) => match chunk {
                    Chunk::Size => match httparse::parse_chunk_size(&conn.buffered) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            conn.buffered.advance(used);
                            *chunk = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                            None
                        }
                        Ok(httparse::Status::Partial) if conn.buffered.len() > MAX_HEAD => {
                            return Poll::Ready(Some(Err(WireError::Malformed("a chunk-size line too long".into()))));
                        }
                        Ok(httparse::Status::Partial) => Some(0),
                        Err(_) => return Poll::Ready(Some(Err(WireError::Malformed("a bad chunk size".into())))),
                    },
                    Chunk::Data(left) if conn.buffered.is_empty() => Some(*left),
                    Chunk::Data(left) => {
                        let data = take_data(&mut conn.buffered, left);
                        if *left == 0 {
                            *chunk = Chunk::DataEnd;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Chunk::DataEnd if conn.buffered.len() < 2 => Some(0),
                    Chunk::DataEnd if conn.buffered.starts_with(b"\r\n") => {
                        conn.buffered.advance(2);
                        *chunk = Chunk::Size;
                        None
                    }
                    Chunk::DataEnd => {
                        return Poll::Ready(Some(Err(WireError::Malformed("a chunk not ended by CRLF".into()))));
                    }
                    // Trailer fields are read past, not kept: no backend call uses them.
                    Chunk::Trailers => match conn.buffered.windows(2).position(|w| w == b"\r\n") {
                        Some(0) => {
                            conn.buffered.advance(2);
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Some(line) => {
                            conn.buffered.advance(line + 2);
                            None
                        }
                        None if conn.buffered.len() > MAX_HEAD => {
                            return Poll::Ready(Some(Err(WireError::Malformed("a trailer section too long".into()))));
                        }
                        None => Some(0),
                    },
                },
            };
            let Some(want) = need else { continue };
            let read = ready!(conn.poll_fill(cx, want));
            match read {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(WireError::Closed("before the answer's end"))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (self.framing, &self.conn) {
            (_, None) => SizeHint::with_exact(0),
            (Framing::Length(left), Some(_)) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::net::SocketAddr;
    use tokio::io::AsyncWriteExt;
    use tokio::sync::{mpsc, oneshot};

    /// What the scripted server writes for one request: pieces, each written once the gate
    /// before it (if any) opens.
    type Answer = Vec<(Option<oneshot::Receiver<()>>, &'static [u8])>;

    fn answer(bytes: &'static [u8]) -> Answer {
        vec![(None, bytes)]
    }

    #[test]
    fn an_answer_head_keeps_the_headers_bestofn_reads_and_only_those() {
        let head = b"HTTP/1.1 429 Too Many Requests\r\nServer: nginx\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\n\
            content-type: application/json\r\nContent-Length: 2\r\nConnection: close\r\nRetry-After: 3\r\n\
            Transfer-Encoding: chunked\r\nX-Vendor: \xff\r\n\r\n{}";
        let (parts, used) = parse_head(head).unwrap().unwrap();
        assert_eq!(used, head.len() - 2);
        assert_eq!(parts.status, http::StatusCode::TOO_MANY_REQUESTS);
        let kept: Vec<(&str, &[u8])> = parts.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        assert_eq!(
            kept,
            [
                ("content-length", &b"2"[..]),
                ("connection", b"close"),
                ("retry-after", b"3"),
                ("transfer-encoding", b"chunked")
            ]
        );
    }

    /// A loopback server taking connections in turn: on the k-th it reads one request (head and
    /// Content-Length body) per answer of `scripts[k]`, writes that answer, and closes the
    /// connection after the last. Each request's raw bytes, tagged with its connection's index,
    /// go to the returned receiver; so does `(k, None)` when connection k's client closes it.
    async fn scripted(scripts: Vec<Vec<Answer>>) -> (SocketAddr, mpsc::UnboundedReceiver<(usize, Option<Vec<u8>>)>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for (k, script) in scripts.into_iter().enumerate() {
                let (mut socket, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buffered = Vec::new();
                    for answer in script {
                        let Some(request) = read_request(&mut socket, &mut buffered).await else { return };
                        seen.send((k, Some(request))).unwrap();
                        for (gate, bytes) in answer {
                            if let Some(gate) = gate {
                                gate.await.unwrap();
                            }
                            socket.write_all(bytes).await.unwrap();
                        }
                    }
                    if script_waits_for_close(&mut socket).await {
                        let _ = seen.send((k, None));
                    }
                });
            }
        });
        (addr, requests)
    }

    /// Reads the client's side to its end (after the script, the server closes only after a
    /// short wait, so a client that closes first is seen).
    async fn script_waits_for_close(socket: &mut TcpStream) -> bool {
        let mut rest = [0u8; 64];
        matches!(tokio::time::timeout(Duration::from_millis(100), socket.read(&mut rest)).await, Ok(Ok(0)))
    }

    async fn read_request(socket: &mut TcpStream, buffered: &mut Vec<u8>) -> Option<Vec<u8>> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = request.parse(buffered) {
                let length = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| std::str::from_utf8(h.value).unwrap().parse::<usize>().unwrap());
                if buffered.len() >= head + length {
                    return Some(buffered.drain(..head + length).collect());
                }
            }
            let mut more = [0u8; 4096];
            match socket.read(&mut more).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buffered.extend_from_slice(&more[..n]),
            }
        }
    }

    fn post(addr: SocketAddr) -> http::Request<Bytes> {
        http::Request::post(format!("http://{addr}/v1/chat/completions"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Bytes::from_static(b"{\"a\": 1}"))
            .unwrap()
    }

    async fn call(pool: &Arc<WirePool>, addr: SocketAddr) -> Result<(Arc<WireClock>, Bytes), WireError> {
        let reply = pool.send(post(addr)).await?;
        let clock = reply.extensions().get::<Arc<WireClock>>().unwrap().clone();
        let body = reply.into_body().collect().await?.to_bytes();
        Ok((clock, body))
    }

    const HELLO: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

    #[tokio::test]
    async fn a_request_written_to_a_server_on_this_machine_owes_one_give_way() {
        let (addr, _requests) = scripted(vec![vec![answer(HELLO), answer(HELLO)]]).await;
        let pool = Arc::new(WirePool::default());
        give_way_to_local_upstream();
        assert!(!WROTE_TO_LOCAL_UPSTREAM.get());
        call(&pool, addr).await.unwrap();
        assert!(WROTE_TO_LOCAL_UPSTREAM.get(), "a loopback server is on this machine");
        give_way_to_local_upstream();
        assert!(!WROTE_TO_LOCAL_UPSTREAM.get(), "given way once, nothing is owed");
        // The connection taken again from the pool is still known to be local.
        call(&pool, addr).await.unwrap();
        assert!(WROTE_TO_LOCAL_UPSTREAM.get());
    }

    #[tokio::test]
    async fn length_and_chunked_answers_are_read_on_one_kept_alive_connection() {
        let (addr, mut requests) = scripted(vec![vec![
            answer(HELLO),
            answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"),
            answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"),
            answer(HELLO),
        ]])
        .await;
        let pool = Arc::new(WirePool::default());
        let (first, body) = call(&pool, addr).await.unwrap();
        assert_eq!(body, "hello");
        let (second, body) = call(&pool, addr).await.unwrap();
        assert_eq!(body, "hello world", "chunks decoded, extension and trailer read past");
        let reply = pool.send(post(addr)).await.unwrap();
        assert_eq!(reply.status(), 204, "the 100 Continue before it is skipped");
        assert!(reply.body().is_end_stream());
        let (fourth, body) = call(&pool, addr).await.unwrap();
        assert_eq!(body, "hello", "the 204's connection went back to the pool with nothing left to read");
        assert!(Arc::ptr_eq(&first, &second) && Arc::ptr_eq(&second, &fourth), "one connection carried every call");
        let (k, request) = requests.recv().await.unwrap();
        assert_eq!(k, 0);
        assert_eq!(
            String::from_utf8(request.unwrap()).unwrap(),
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 8\r\n\r\n{{\"a\": 1}}"
            )
        );
    }

    #[tokio::test]
    async fn a_chunked_answer_is_handed_out_as_it_arrives() {
        let (open_rest, rest_gate) = oneshot::channel();
        let (addr, _requests) = scripted(vec![vec![vec![
            (None, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata: \r\n"),
            (Some(rest_gate), b"2\r\n1\n\r\n0\r\n\r\n"),
        ]]])
        .await;
        let pool = Arc::new(WirePool::default());
        let mut body = pool.send(post(addr)).await.unwrap().into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "data: ", "the first chunk is handed out before the server sends the rest");
        open_rest.send(()).unwrap();
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "1\n");
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_not_reused() {
        let (addr, mut requests) = scripted(vec![vec![answer(HELLO)], vec![answer(HELLO)]]).await;
        let pool = Arc::new(WirePool::default());
        let (first, _) = call(&pool, addr).await.unwrap();
        assert_eq!(requests.recv().await.unwrap().0, 0);
        // The server closes its side after the script's wait; the client's reactor hears of it.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (second, body) = call(&pool, addr).await.unwrap();
        assert_eq!(body, "hello");
        assert!(!Arc::ptr_eq(&first, &second), "the closed connection was left, a new one opened");
    }

    #[tokio::test]
    async fn connection_close_and_close_delimited_answers_are_not_kept() {
        let (addr, _requests) = scripted(vec![
            vec![answer(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")],
            vec![answer(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\ncontent-length: 2\r\n\r\nok")],
            vec![answer(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")],
            vec![answer(HELLO)],
        ])
        .await;
        let pool = Arc::new(WirePool::default());
        let mut clocks = Vec::new();
        for expected in ["until the end", "ok", "ok", "hello"] {
            let (clock, body) = call(&pool, addr).await.unwrap();
            assert_eq!(body, expected);
            assert!(clocks.iter().all(|c| !Arc::ptr_eq(c, &clock)), "each answer before came on its own connection");
            clocks.push(clock);
        }
    }

    #[tokio::test]
    async fn answers_cut_short_or_malformed_are_errors() {
        let (addr, _requests) = scripted(vec![
            vec![answer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhel")],
            vec![answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")],
            vec![answer(b"HTTP/1.1 2x0 OK\r\n\r\n")],
            vec![answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok")],
            // The request read, no answer, the connection closed.
            vec![vec![]],
        ])
        .await;
        let pool = Arc::new(WirePool::default());
        let cut = call(&pool, addr).await.unwrap_err();
        assert!(matches!(cut, WireError::Closed("before the answer's end")), "{cut}");
        let chunk = call(&pool, addr).await.unwrap_err();
        assert!(chunk.to_string().contains("chunk size"), "{chunk}");
        let head = call(&pool, addr).await.unwrap_err();
        assert!(matches!(head, WireError::Malformed(_)), "{head}");
        let lengths = call(&pool, addr).await.unwrap_err();
        assert!(lengths.to_string().contains("disagree"), "{lengths}");
        let none = call(&pool, addr).await.unwrap_err();
        assert!(matches!(none, WireError::Closed("before the answer's head")), "{none}");
    }

    #[tokio::test]
    async fn an_answer_dropped_half_way_closes_its_connection() {
        let (addr, mut requests) = scripted(vec![
            vec![answer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello"), answer(HELLO)],
            vec![answer(HELLO)],
        ])
        .await;
        let pool = Arc::new(WirePool::default());
        let reply = pool.send(post(addr)).await.unwrap();
        let first = reply.extensions().get::<Arc<WireClock>>().unwrap().clone();
        let mut body = reply.into_body();
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "hello");
        drop(body);
        let (second, body) = call(&pool, addr).await.unwrap();
        assert_eq!(body, "hello");
        assert!(!Arc::ptr_eq(&first, &second), "a half-read connection is not reused");
        let seen: Vec<_> = std::iter::from_fn(|| requests.try_recv().ok()).map(|(k, r)| (k, r.is_some())).collect();
        assert!(seen.contains(&(0, true)) && seen.contains(&(1, true)), "{seen:?}");
    }

    #[tokio::test]
    async fn bodies_larger_than_one_write_or_read_go_through_whole() {
        let big_answer: &'static [u8] = {
            let text = "y".repeat(3 << 20);
            Box::leak(
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}", text.len())
                    .into_bytes()
                    .into_boxed_slice(),
            )
        };
        let (addr, mut requests) = scripted(vec![vec![answer(big_answer)]]).await;
        let pool = Arc::new(WirePool::default());
        let prompt = Bytes::from(format!("{{\"p\": \"{}\"}}", "x".repeat(5 << 20)));
        let request = http::Request::post(format!("http://{addr}/v1/completions")).body(prompt.clone()).unwrap();
        let body = pool.send(request).await.unwrap().into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 3 << 20);
        assert!(body.iter().all(|b| *b == b'y'));
        let (_, request) = requests.recv().await.unwrap();
        assert!(request.unwrap().ends_with(&prompt), "the whole request body arrived after its head");
    }

    #[tokio::test]
    async fn an_answer_sent_before_the_request_was_read_whole_is_returned() {
        // A server that refuses a body too large from its head alone, as servers with a body
        // limit do, and closes without reading the rest (so the client's write fails).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut more = [0u8; 1024];
                match socket.read(&mut more).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&more[..n]),
                }
            }
            let refusal = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big!";
            socket.write_all(refusal).await.unwrap();
        });
        let pool = Arc::new(WirePool::default());
        let prompt = Bytes::from(vec![b'x'; 64 << 20]);
        let request = http::Request::post(format!("http://{addr}/v1/completions")).body(prompt).unwrap();
        let reply = pool.send(request).await.expect("the server's early answer, not a failed write");
        assert_eq!(reply.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(reply.into_body().collect().await.unwrap().to_bytes(), "too big!");
        let idle: usize = pool.hosts.lock().unwrap().iter().map(|h| h.conns.len()).sum();
        assert_eq!(idle, 0, "a connection whose request did not go out whole is not kept");
    }

    #[tokio::test]
    async fn a_call_waiting_on_its_connect_takes_a_connection_that_comes_free() {
        // A server that takes one connection and then no more, with an accept queue of one: the
        // connects after it that do not fit are left to SYN retransmits.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let (release, gate) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buffered = Vec::new();
            read_request(&mut socket, &mut buffered).await.unwrap();
            gate.await.unwrap();
            socket.write_all(HELLO).await.unwrap();
            read_request(&mut socket, &mut buffered).await.unwrap();
            socket.write_all(HELLO).await.unwrap();
            (listener, socket)
        });
        let pool = Arc::new(WirePool::default());
        let first = tokio::spawn({
            let pool = pool.clone();
            async move { call(&pool, addr).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut fillers = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(50), TcpStream::connect(addr)).await {
                fillers.push(stream);
            }
        }
        let second = tokio::spawn({
            let pool = pool.clone();
            async move { call(&pool, addr).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.send(()).unwrap();
        let (first, _) = first.await.unwrap();
        let (second, body) = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the waiting call was handed the first call's connection, not left to its own connect")
            .unwrap();
        assert_eq!(body, "hello");
        assert!(Arc::ptr_eq(&first, &second));
        drop((server, fillers));
    }

    #[test]
    fn a_get_carries_no_length_and_the_host_leaves_out_credentials() {
        let (parts, ()) = http::Request::get("http://user:pw@[::1]:8000/v1/models?x=1")
            .header(http::header::AUTHORIZATION, "Bearer k")
            .body(())
            .unwrap()
            .into_parts();
        let authority = parts.uri.authority().unwrap().clone();
        assert_eq!(
            String::from_utf8(request_head(&parts, &authority, 0)).unwrap(),
            "GET /v1/models?x=1 HTTP/1.1\r\nhost: [::1]:8000\r\nauthorization: Bearer k\r\n\r\n"
        );
    }
}
