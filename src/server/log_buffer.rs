//! Log lines written by a serving thread are kept in a buffer of that thread and written to
//! stderr when the thread's runtime goes idle (or the buffer fills), as nginx's
//! `access_log ... buffer=` does. The request's log line then costs no system call on the way to
//! its answer: at light load the buffer is written just after the response (the runtime parks
//! once the answer is on the wire), and under load one `write` carries many lines. Any other
//! thread (start-up, signals, the `eval` commands) writes its lines straight through.
//!
//! Written here rather than taken from `tracing-appender`: its non-blocking writer hands each
//! line to a writer thread, a cross-thread wake per request, which is the cost this avoids.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};

/// A serving thread writes its buffer once it holds this much, even if its runtime never idles.
const FLUSH_AT_BYTES: usize = 32 * 1024;

thread_local! {
    static BUFFERED: Cell<bool> = const { Cell::new(false) };
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The writer for `tracing_subscriber`'s `with_writer`: stderr, buffered on serving threads.
pub fn log_writer() -> LogWriter {
    LogWriter
}

/// Writes log output to stderr, through the thread's buffer on a serving thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if !BUFFERED.get() {
            return io::stderr().write(bytes);
        }
        let full = BUFFER.with_borrow_mut(|buffer| {
            buffer.extend_from_slice(bytes);
            buffer.len() >= FLUSH_AT_BYTES
        });
        if full {
            flush_thread_log();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// From now on this thread's log lines wait in its buffer until [`flush_thread_log`].
pub(crate) fn buffer_thread_log() {
    BUFFERED.set(true);
}

/// Writes this thread's buffered log lines to stderr. A failed write drops them: logging must
/// never fail a request.
pub(crate) fn flush_thread_log() {
    BUFFER.with_borrow_mut(|buffer| {
        if !buffer.is_empty() {
            let _ = io::stderr().write_all(buffer);
            buffer.clear();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serving_thread_keeps_its_lines_until_flushed_and_writes_a_full_buffer_at_once() {
        std::thread::spawn(|| {
            buffer_thread_log();
            LogWriter.write_all(b"one line\n").unwrap();
            assert_eq!(BUFFER.with_borrow(|b| b.clone()), b"one line\n");
            flush_thread_log();
            assert!(BUFFER.with_borrow(Vec::is_empty));
            LogWriter.write_all(&vec![b'x'; FLUSH_AT_BYTES]).unwrap();
            assert!(BUFFER.with_borrow(Vec::is_empty), "a full buffer is written at once");
        })
        .join()
        .unwrap();
        // Any other thread writes straight through.
        std::thread::spawn(|| {
            LogWriter.write_all(b"a line from a thread that does not serve\n").unwrap();
            assert!(BUFFER.with_borrow(Vec::is_empty));
        })
        .join()
        .unwrap();
    }
}
