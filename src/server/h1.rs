//! bestofn's own HTTP/1.1 server connection: reads a request head and its whole body, runs the
//! handler while watching for the client going away, and writes the answer.
//!
//! Why not hyper's server connection, which served here before: hyper's server and client cost a
//! bare proxy ~55 µs of CPU a request over a hyper-free loop on the same runtime, which used less
//! than nginx (BENCHMARKS.md, issue #17, ninth sitting); the client was replaced before
//! (`backend::wire`). This connection took 1-20 µs of CPU off a light-load pass-through and raised
//! saturation throughput from 56-72% to 95-99% of nginx-as-proxy's in the same runs. Every request
//! body bestofn takes is read whole before it is parsed, as nginx buffers a body before it
//! proxies it, so the server reads it with the head (most bodies come in the head's read) and
//! hands the handler bytes, with no body channel between two tasks. HTTP/2 connections (prior
//! knowledge, no TLS) are recognised by their preface and still served by hyper.

use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, DATE, EXPECT, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use super::{AppState, Body, RequestBody, error_response, handle};
use crate::error::Error;
use crate::http_framing::{self, LengthError};
use crate::watched::write_head_and_body;

/// The longest request head read; a longer one is answered 431.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields a request head may carry (hyper's default).
const MAX_HEADERS: usize = 100;
/// How much room each read of the socket gets at least.
const READ_CHUNK: usize = 8 * 1024;
/// Bodies up to this size go out in the same write as their head, copied; larger ones in a
/// vectored write.
const COPY_BODY_UP_TO: usize = 16 * 1024;
/// The first bytes of every HTTP/2 connection (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a connection served by [`serve_connection`] ended.
pub(super) enum Ended<S> {
    /// It is closed (or its client is gone).
    Closed,
    /// It opened with the HTTP/2 preface: the stream, with the bytes read so far put back, for
    /// an HTTP/2 server.
    Http2(Rewind<S>),
}

/// What the connection does once a request has been answered.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Next {
    KeepAlive,
    Close,
}

/// Serves HTTP/1.1 requests on `io` from `peer` until the client closes, a request asks to
/// close, its head does not arrive within the header-read timeout (counted from when the
/// connection starts waiting for it, as hyper did), or `stopping` turns true while it idles.
pub(super) async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    state: Arc<AppState>,
    peer: SocketAddr,
    mut stopping: watch::Receiver<bool>,
) -> Ended<S> {
    let mut buffered = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(512);
    let head_timer = tokio::time::sleep(state.header_read_timeout);
    tokio::pin!(head_timer);
    let mut first = true;
    loop {
        head_timer.as_mut().reset(tokio::time::Instant::now() + state.header_read_timeout);
        // Read until a whole head is in.
        let parsed = loop {
            if first
                && !buffered.is_empty()
                && H2_PREFACE.starts_with(&buffered[..buffered.len().min(H2_PREFACE.len())])
            {
                if buffered.len() >= H2_PREFACE.len() {
                    return Ended::Http2(Rewind { prefix: buffered.freeze(), io });
                }
            } else if !buffered.is_empty() {
                match parse_head(&buffered) {
                    Ok(Some(parsed)) => break parsed,
                    Ok(None) if buffered.len() > MAX_HEAD => {
                        let e = Error::HeadTooLarge(format!("the request head is longer than {MAX_HEAD} bytes"));
                        answer_and_close(&mut io, &mut buffered, &mut out, &e).await;
                        return Ended::Closed;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        answer_and_close(&mut io, &mut buffered, &mut out, &e).await;
                        return Ended::Closed;
                    }
                }
            }
            if buffered.is_empty() && is_stopping(&stopping) {
                return Ended::Closed;
            }
            buffered.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                read = io.read_buf(&mut buffered) => match read {
                    Ok(0) | Err(_) => return Ended::Closed,
                    Ok(_) => {}
                },
                // A client that sends no head, or a partial one, in time is cut off unanswered.
                () = &mut head_timer => return Ended::Closed,
                _ = stopping.changed(), if buffered.is_empty() => return Ended::Closed,
            }
        };
        first = false;
        let (parts, used) = parsed;
        buffered.advance(used);
        // HTTP/1.1 keeps the connection unless asked not to; HTTP/1.0 only when asked to
        // (`Connection: keep-alive`, as `ab -k` sends; RFC 9112 9.3, as nginx does).
        let asks = |token| http_framing::connection_lists(&parts.headers, token);
        let mut next = match parts.version {
            Version::HTTP_11 if !asks("close") => Next::KeepAlive,
            Version::HTTP_10 if asks("keep-alive") && !asks("close") => Next::KeepAlive,
            _ => Next::Close,
        };
        let body = match read_body(&mut io, &mut buffered, &parts, &state).await {
            BodyRead::Read(bytes) => Ok(bytes),
            BodyRead::Refused(e) => Err(e),
            BodyRead::ClientGone => return Ended::Closed,
        };
        // What is left of a refused body was not read: the connection cannot carry another request.
        let unread = body.is_err();
        // A request framed two ways may be read differently by another hop (RFC 9112 6.1).
        let framed_twice = parts.headers.contains_key(TRANSFER_ENCODING) && parts.headers.contains_key(CONTENT_LENGTH);
        if unread || framed_twice {
            next = Next::Close;
        }
        let head_only = parts.method == Method::HEAD;
        let version = parts.version;
        let handler = handle(state.clone(), Request::from_parts(parts, RequestBody::Read(body)), peer);
        tokio::pin!(handler);
        // While the handler works, a client that closes its connection cancels it (and its
        // upstream calls); bytes it sends meanwhile (a pipelined request) are kept.
        let response = loop {
            buffered.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                response = &mut handler => break response,
                read = io.read_buf(&mut buffered), if buffered.len() < MAX_HEAD => match read {
                    Ok(0) | Err(_) => return Ended::Closed,
                    Ok(_) => {}
                },
            }
        };
        if is_stopping(&stopping) {
            next = Next::Close;
        }
        match write_response(&mut io, &mut buffered, &mut out, response, version, head_only, next).await {
            Ok(Next::KeepAlive) => {}
            Ok(Next::Close) => {
                close(&mut io, unread).await;
                return Ended::Closed;
            }
            Err(_) => return Ended::Closed,
        }
    }
}

/// Whether the server is shutting down.
fn is_stopping(stopping: &watch::Receiver<bool>) -> bool {
    *stopping.borrow()
}

/// A request head as `http` parts and the bytes it took; None while it is incomplete.
fn parse_head(bytes: &[u8]) -> Result<Option<(http::request::Parts, usize)>, Error> {
    let bad = |message: String| Error::InvalidRequest { message, param: None };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let used = match head.parse(bytes) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::HeadTooLarge(format!("the request has more than {MAX_HEADERS} header fields")));
        }
        Err(e) => return Err(bad(format!("malformed request head: {e}"))),
    };
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = Method::from_bytes(head.method.unwrap_or_default().as_bytes())
        .map_err(|_| bad("malformed request method".into()))?;
    parts.uri = head.path.unwrap_or_default().parse().map_err(|_| bad("malformed request target".into()))?;
    parts.version = if head.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    parts.headers.reserve(head.headers.len());
    for header in head.headers.iter() {
        let name = http::HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| bad(format!("malformed header name {:?}", header.name)))?;
        let value = HeaderValue::from_bytes(header.value)
            .map_err(|_| bad(format!("malformed value of header {:?}", header.name)))?;
        parts.headers.append(name, value);
    }
    Ok(Some((parts, used)))
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(u64),
    Chunked,
}

/// The framing of a request with these headers (RFC 9112 section 6.3): Transfer-Encoding wins
/// over Content-Length, and must end in chunked.
fn framing(headers: &HeaderMap) -> Result<Framing, Error> {
    let bad = |message: &str| Error::InvalidRequest { message: message.into(), param: None };
    match http_framing::ends_in_chunked(headers) {
        Some(true) => return Ok(Framing::Chunked),
        Some(false) => return Err(bad("a Transfer-Encoding that does not end in chunked")),
        None => {}
    }
    match http_framing::content_length(headers) {
        Ok(length) => Ok(Framing::Length(length.unwrap_or(0))),
        Err(LengthError::Malformed(_)) => Err(bad("a malformed Content-Length")),
        Err(LengthError::Disagree) => Err(bad("Content-Length values that disagree")),
    }
}

/// What reading a request's body came to.
enum BodyRead {
    /// The whole body.
    Read(Bytes),
    /// Not read (too large, too slow, malformed): the handler answers with this error.
    Refused(Error),
    /// The client closed its connection half-way.
    ClientGone,
}

/// Reads the body of the request `parts` heads, whole, within the body-read timeout and the
/// body-size limit; answers `Expect: 100-continue` first when the body has not come yet.
async fn read_body<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buffered: &mut BytesMut,
    parts: &http::request::Parts,
    state: &AppState,
) -> BodyRead {
    let limit = state.max_body_bytes;
    let framing = match framing(&parts.headers) {
        Ok(framing) => framing,
        Err(e) => return BodyRead::Refused(e),
    };
    match framing {
        Framing::Length(0) => return BodyRead::Read(Bytes::new()),
        Framing::Length(n) if n > limit as u64 => return BodyRead::Refused(Error::PayloadTooLarge(limit)),
        // The common case: the body came with the head; no timer is armed for it.
        Framing::Length(n) if buffered.len() as u64 >= n => {
            return BodyRead::Read(buffered.split_to(n as usize).freeze());
        }
        _ => {}
    }
    let expects_continue = parts.version == Version::HTTP_11
        && parts.headers.get(EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue && buffered.is_empty() && io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
        return BodyRead::ClientGone;
    }
    let read = async {
        match framing {
            Framing::Length(n) => {
                let n = n as usize;
                while buffered.len() < n {
                    buffered.reserve((n - buffered.len()).min(1024 * 1024));
                    if io.read_buf(buffered).await? == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Ok(Ok(buffered.split_to(n).freeze()))
            }
            Framing::Chunked => read_chunked(io, buffered, limit).await,
        }
    };
    match tokio::time::timeout(state.body_read_timeout, read).await {
        Err(_) => BodyRead::Refused(Error::RequestTimeout(format!(
            "the request body did not arrive within {} ms",
            state.body_read_timeout.as_millis()
        ))),
        Ok(Ok(Ok(bytes))) => BodyRead::Read(bytes),
        Ok(Ok(Err(e))) => BodyRead::Refused(e),
        Ok(Err(_)) => BodyRead::ClientGone,
    }
}

/// Reads a chunked body, up to `limit` bytes of data; trailer fields are read past.
async fn read_chunked<S: AsyncRead + Unpin>(
    io: &mut S,
    buffered: &mut BytesMut,
    limit: usize,
) -> std::io::Result<Result<Bytes, Error>> {
    let mut out = BytesMut::new();
    let malformed =
        |what: &str| Ok(Err(Error::InvalidRequest { message: format!("malformed chunked body: {what}"), param: None }));
    loop {
        // Room for at least the chunk-size line.
        let (used, size) = loop {
            match httparse::parse_chunk_size(buffered) {
                Ok(httparse::Status::Complete(found)) => break found,
                Ok(httparse::Status::Partial) if buffered.len() > MAX_HEAD => {
                    return malformed("a chunk-size line too long");
                }
                Ok(httparse::Status::Partial) => fill(io, buffered).await?,
                Err(_) => return malformed("a bad chunk size"),
            }
        };
        buffered.advance(used);
        if size == 0 {
            break;
        }
        if (out.len() as u64).saturating_add(size) > limit as u64 {
            return Ok(Err(Error::PayloadTooLarge(limit)));
        }
        let mut left = size as usize;
        while left > 0 {
            if buffered.is_empty() {
                fill(io, buffered).await?;
            }
            let n = left.min(buffered.len());
            out.extend_from_slice(&buffered[..n]);
            buffered.advance(n);
            left -= n;
        }
        while buffered.len() < 2 {
            fill(io, buffered).await?;
        }
        if !buffered.starts_with(b"\r\n") {
            return malformed("a chunk not ended by CRLF");
        }
        buffered.advance(2);
    }
    loop {
        match buffered.windows(2).position(|w| w == b"\r\n") {
            Some(0) => {
                buffered.advance(2);
                return Ok(Ok(out.freeze()));
            }
            Some(line) => buffered.advance(line + 2),
            None if buffered.len() > MAX_HEAD => return malformed("a trailer section too long"),
            None => fill(io, buffered).await?,
        }
    }
}

/// Reads more of the connection into `buffered`; end of file is an error (a body cut short).
async fn fill<S: AsyncRead + Unpin>(io: &mut S, buffered: &mut BytesMut) -> std::io::Result<()> {
    buffered.reserve(READ_CHUNK);
    match io.read_buf(buffered).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}

/// Answers `e` and closes: for a request that cannot be read.
async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buffered: &mut BytesMut,
    out: &mut Vec<u8>,
    e: &Error,
) {
    if write_response(io, buffered, out, error_response(e), Version::HTTP_11, false, Next::Close).await.is_ok() {
        close(io, true).await;
    }
}

/// How long a connection closed with request bytes unread goes on reading them (see [`close`]).
const LINGER: Duration = Duration::from_secs(2);

/// Ends the connection after its last answer. When the client may still be sending (a body
/// refused unread, a head that could not be parsed), what it sends is read and dropped for up to
/// [`LINGER`] after the close is signalled: closing a socket with unread bytes makes the kernel
/// reset the connection, and the client could lose the answer (nginx's `lingering_close`).
async fn close<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, unread: bool) {
    if io.shutdown().await.is_err() || !unread {
        return;
    }
    let mut sink = vec![0u8; READ_CHUNK];
    let _ = tokio::time::timeout(LINGER, async { while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {} }).await;
}

/// Writes `response` for a request of `version`; returns whether the connection carries on.
/// A body of known size goes out with its head in one write, after the body has ended (so its
/// request's metrics are recorded before the client can see the answer); any other body is
/// sent chunked as its frames come, while a client that closes its connection ends the answer.
async fn write_response<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buffered: &mut BytesMut,
    out: &mut Vec<u8>,
    response: Response<Body>,
    version: Version,
    head_only: bool,
    mut next: Next,
) -> std::io::Result<Next> {
    let (parts, mut body) = response.into_parts();
    let bodiless = head_only
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let exact = body.size_hint().exact();
    // An HTTP/1.0 client takes no chunked coding: a body of unknown size ends at the close.
    if exact.is_none() && !bodiless && version != Version::HTTP_11 {
        next = Next::Close;
    }
    out.clear();
    write_status_line(out, parts.status);
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let chunked = match exact {
        _ if parts.status.is_informational() || parts.status == StatusCode::NO_CONTENT => false,
        Some(length) => {
            if !parts.headers.contains_key(CONTENT_LENGTH) {
                let _ = write!(out, "content-length: {length}\r\n");
            }
            false
        }
        None if version == Version::HTTP_11 && !bodiless => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            true
        }
        None => false,
    };
    if next == Next::Close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        // An HTTP/1.0 client closes after the answer unless told the connection stays.
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !parts.headers.contains_key(DATE) {
        out.extend_from_slice(b"date: ");
        with_http_date(|date| out.extend_from_slice(date));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");

    if exact.is_some() {
        // Collecting ends the body, and with it records the request (its observer goes with
        // it), before the write.
        let data = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        let data: &[u8] = if bodiless { &[] } else { &data };
        if data.len() <= COPY_BODY_UP_TO {
            out.extend_from_slice(data);
            io.write_all(out).await?;
        } else {
            write_head_and_body(io, out, data, || ()).await?;
        }
        return Ok(next);
    }

    io.write_all(out).await?;
    if bodiless {
        return Ok(next);
    }
    loop {
        buffered.reserve(READ_CHUNK);
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            read = io.read_buf(buffered), if buffered.len() < MAX_HEAD => match read {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => continue,
                Err(e) => return Err(e),
            },
        };
        let Some(Ok(frame)) = frame else { break };
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        if chunked {
            out.clear();
            let _ = write!(out, "{:x}\r\n", data.len());
            if data.len() <= COPY_BODY_UP_TO {
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
                io.write_all(out).await?;
            } else {
                write_head_and_body(io, out, &data, || ()).await?;
                io.write_all(b"\r\n").await?;
            }
        } else {
            io.write_all(&data).await?;
        }
    }
    drop(body);
    if chunked {
        io.write_all(b"0\r\n\r\n").await?;
    }
    Ok(next)
}

/// `HTTP/1.1 <code> <reason>\r\n` into `out`.
fn write_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `Date` header's value for the current second, formatted once a second per thread.
    static HTTP_DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// Runs `f` with the current time as an HTTP date (RFC 9110 section 5.6.7).
fn with_http_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    HTTP_DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        f(cached.1.as_bytes());
    });
}

/// A stream whose first reads return `prefix`: bytes already read from it, put back.
pub(super) struct Rewind<S> {
    prefix: Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
