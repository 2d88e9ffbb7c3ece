//! Client connections: the accept loop, hyper's HTTP/1.1 and HTTP/2 (prior knowledge) server
//! connection, the per-write, header and idle timeouts, and the drain at shutdown.
//!
//! Framing is hyper's: it refuses what RFC 9112 calls faulty framing (a transfer coding other
//! than a final `chunked`, a length that is not digits, a chunk line it cannot read, a request
//! with both `Transfer-Encoding` and `Content-Length` is read by its chunks and the connection
//! closed) with a 400 and a close, and heads with too many or too large fields with a 431.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{AppState, Body, handle};

/// The read buffer of a connection, which bounds a request head (hyper's default is ~400 KiB).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `state` on `listener` until `shutdown` resolves, then drains in-flight requests (open
/// streams included) for at most the drain timeout.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    // Every connection holds a receiver: it closes once idle after this turns true, and the drain
    // below ends when the last receiver is gone.
    let (stopping_tx, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Running out of file descriptors must not end the server.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Streams are written in many small frames; Nagle's algorithm against the client's
        // delayed ACK would hold each back by tens of milliseconds.
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, state.clone(), peer, stopping.clone()));
    }
    tracing::info!("shutting down: draining in-flight requests");
    stopping_tx.send_replace(true);
    drop(stopping);
    if tokio::time::timeout(state.drain_timeout, stopping_tx.closed()).await.is_err() {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
}

/// How busy one connection is: requests whose answer has not been sent whole yet, and since when
/// it has had none.
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity { in_flight: AtomicUsize::new(0), idle_since: Mutex::new(Instant::now()) }
    }

    /// When the connection has been idle for `timeout`, if it is idle now; else a time to look
    /// again.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Instant::now() + timeout;
        }
        *self.idle_since.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) + timeout
    }

    fn is_idle_for(&self, timeout: Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.idle_since.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).elapsed() >= timeout
    }
}

/// One request on a connection's [`Activity`]: counted from its head until its answer's body is
/// dropped (sent whole, or the client gone).
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: &Arc<Activity>) -> Busy {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one client connection with hyper (HTTP/1.1, or HTTP/2 when it opens with the HTTP/2
/// preface) until the client closes, it has idled for `server.idle_timeout_ms`, a write makes no
/// progress for `server.write_timeout_ms`, or the server stops (then once its requests are
/// answered).
async fn serve_connection<S>(stream: S, state: Arc<AppState>, peer: SocketAddr, mut stopping: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    // A client that stops reading its answer holds a request slot until a write has made no
    // progress for this long: per write, so a long SSE answer that the client reads lives on.
    let mut io = tokio_io_timeout::TimeoutStream::new(stream);
    io.set_write_timeout(Some(state.write_timeout));
    let io = TokioIo::new(Box::pin(io));
    let activity = Arc::new(Activity::new());
    let service = {
        let (state, activity) = (state.clone(), activity.clone());
        service_fn(move |request: Request<Incoming>| {
            let (state, busy) = (state.clone(), Busy::start(&activity));
            async move {
                let response = handle(state, request, peer).await;
                Ok::<_, Infallible>(held_until_sent(response, busy))
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Counted from when the connection starts waiting for a head, so a kept-alive
        // connection that sends nothing is closed after it too.
        .header_read_timeout(state.header_read_timeout)
        // The largest head read: a longer one is answered 431, in one read or many.
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        let look_again = activity.idle_deadline(state.idle_timeout);
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, %peer, "client connection ended with an error");
                }
                return;
            }
            _ = stopping.wait_for(|stopping| *stopping), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(look_again), if !closing => {
                if activity.is_idle_for(state.idle_timeout) {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// `response` with `busy` held until its body has been sent whole or dropped.
fn held_until_sent(response: Response<Body>, busy: Busy) -> Response<Body> {
    response.map(|body| HeldBody { body, _busy: busy }.boxed_unsync())
}

/// A response body that keeps its request counted on the connection while it lives; its size
/// is the inner body's, so an answer of known length keeps its `Content-Length`.
struct HeldBody {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for HeldBody {
    type Data = bytes::Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A server whose `/v1/models` answer is far larger than `buffer`, the bytes a connection
    /// holds before a client that never reads stalls the server's writes.
    async fn stalled_answer(write_timeout_ms: u64) -> bool {
        let models: Vec<String> = (0..4000).map(|i| format!("\"model-{i}-{}\"", "m".repeat(64))).collect();
        let toml = format!(
            "[server]\nwrite_timeout_ms = {write_timeout_ms}\n[upstream]\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             models = [{}]\n[policy]\nn = 1\nscorer = \"consensus\"\n",
            models.join(",")
        );
        let config = crate::config::Config::from_toml(&toml, std::path::Path::new("test.toml")).unwrap();
        let state = Arc::new(AppState::from_config(&config).unwrap());
        let (mut client, server) = tokio::io::duplex(16 * 1024);
        let (_stopping_tx, stopping) = watch::channel(false);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let served = tokio::spawn(serve_connection(server, state, peer, stopping));
        client.write_all(b"GET /v1/models HTTP/1.1\r\nhost: bestofn\r\n\r\n").await.unwrap();
        // The client never reads: the connection ends only if the stalled write is given up.
        let ended = tokio::time::timeout(Duration::from_secs(3), served).await.is_ok();
        drop(client);
        ended
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
        assert!(stalled_answer(200).await, "the stalled connection was kept");
        assert!(!stalled_answer(60_000).await, "with a long timeout the connection waits for the client");
    }
}
