//! A TCP stream that tells a watcher when bytes arrive and when it writes: with the
//! `stage-timing` feature client connections stamp their request's timeline (`stage_timing`).

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What a [`Watched`] stream reports.
pub trait Watch {
    /// Bytes were read.
    fn read(&self);
    /// A write starts.
    fn writing(&self);
    /// A write returned; `wrote` when it wrote bytes.
    fn written(&self, wrote: bool);
}

/// `stream`, reporting its reads and writes to `watch`.
pub struct Watched<W> {
    /// The stream itself.
    pub stream: TcpStream,
    /// Who is told.
    pub watch: W,
}

impl<W: Watch + Unpin> AsyncRead for Watched<W> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.read();
        }
        polled
    }
}

impl<W: Watch + Unpin> Watched<W> {
    /// Runs the write `write` between the watcher's two calls.
    fn watch_write(
        &mut self,
        write: impl FnOnce(Pin<&mut TcpStream>) -> Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        self.watch.writing();
        let polled = write(Pin::new(&mut self.stream));
        self.watch.written(matches!(polled, Poll::Ready(Ok(n)) if n > 0));
        polled
    }
}

impl<W: Watch + Unpin> AsyncWrite for Watched<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.watch_write(|stream| stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.watch_write(|stream| stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Writes `head` then `body` to `stream`, as one system call when the socket takes it all;
/// `first_bytes_out` runs once, after the first write that took bytes.
pub async fn write_head_and_body<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut head: &[u8],
    mut body: &[u8],
    first_bytes_out: impl FnOnce(),
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut first_bytes_out = Some(first_bytes_out);
    while !head.is_empty() || !body.is_empty() {
        let wrote = if head.is_empty() {
            stream.write(body).await?
        } else if body.is_empty() {
            stream.write(head).await?
        } else {
            stream.write_vectored(&[std::io::IoSlice::new(head), std::io::IoSlice::new(body)]).await?
        };
        if wrote == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if let Some(first_bytes_out) = first_bytes_out.take() {
            first_bytes_out();
        }
        let from_head = wrote.min(head.len());
        head = &head[from_head..];
        body = &body[wrote - from_head..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl Watch for Log {
        fn read(&self) {
            self.0.lock().unwrap().push("read".into());
        }
        fn writing(&self) {
            self.0.lock().unwrap().push("writing".into());
        }
        fn written(&self, wrote: bool) {
            self.0.lock().unwrap().push(format!("written {wrote}"));
        }
    }

    #[tokio::test]
    async fn the_watcher_hears_of_reads_with_bytes_and_of_each_write() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut got = [0u8; 5];
            socket.read_exact(&mut got).await.unwrap();
            socket.write_all(b"pong").await.unwrap();
            got
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut watched = Watched { stream, watch: Log::default() };
        watched.write_all(b"ping!").await.unwrap();
        assert_eq!(*watched.watch.0.lock().unwrap(), ["writing", "written true"]);
        let mut answer = [0u8; 4];
        watched.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"pong");
        assert_eq!(&peer.await.unwrap(), b"ping!");
        let log = watched.watch.0.lock().unwrap().clone();
        assert_eq!(log[2], "read");
        assert!(log[2..].iter().all(|e| e == "read"), "{log:?}");
    }
}
