//! Log lines written by a serving thread are kept in a buffer of that thread and written to
//! stderr when the thread's runtime goes idle (or the buffer fills), as nginx's
//! `access_log ... buffer=` does. The request's log line then costs no system call on the way to
//! its answer: at light load the buffer is written just after the response (the runtime parks
//! once the answer is on the wire), and under load one `write` carries many lines. Any other
//! thread (start-up, signals, the `eval` commands) writes its lines straight through.
//!
//! A request's own log line is not even formatted on the way to its answer: [`defer_log_line`]
//! keeps it, as a closure, until the same moment. Formatting it (fields, timestamp) took about
//! 8 µs of a light-load pass-through's path on cold caches (stage timing, BENCHMARKS.md).
//!
//! Written here rather than taken from `tracing-appender`: its non-blocking writer hands each
//! line to a writer thread, a cross-thread wake per request, which is the cost this avoids.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};

/// A serving thread writes its buffer once it holds this much, even if its runtime never idles.
const FLUSH_AT_BYTES: usize = 32 * 1024;

/// A serving thread emits its deferred log lines once this many wait, even if its runtime never
/// idles: under load they still come out in order and hold bounded memory.
const EMIT_AT_LINES: usize = 64;

/// A log line to emit later: a closure that calls `tracing`.
type DeferredLine = Box<dyn FnOnce()>;

thread_local! {
    static BUFFERED: Cell<bool> = const { Cell::new(false) };
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static DEFERRED: RefCell<Vec<DeferredLine>> = const { RefCell::new(Vec::new()) };
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

/// Emits the log line `line` logs: on a serving thread once its runtime idles (with its other
/// buffered lines, see [`flush_thread_log`]), elsewhere at once. What the line says must be
/// captured by value when this is called, not read when it runs.
pub(crate) fn defer_log_line(line: impl FnOnce() + 'static) {
    if !BUFFERED.get() {
        return line();
    }
    let full = DEFERRED.with_borrow_mut(|deferred| {
        deferred.push(Box::new(line));
        deferred.len() >= EMIT_AT_LINES
    });
    if full {
        emit_deferred_lines();
    }
}

/// Emits this thread's deferred log lines into its buffer, in the order they were deferred.
fn emit_deferred_lines() {
    // Taken out first: a line that logs must not find the queue borrowed. The queue's storage
    // goes back afterwards, so deferring allocates nothing but the line's closure.
    let mut lines = DEFERRED.with_borrow_mut(std::mem::take);
    for line in lines.drain(..) {
        line();
    }
    DEFERRED.with_borrow_mut(|deferred| {
        if deferred.is_empty() {
            *deferred = lines;
        }
    });
}

/// Emits this thread's deferred log lines and writes its buffered lines to stderr. A failed
/// write drops them: logging must never fail a request.
pub(crate) fn flush_thread_log() {
    emit_deferred_lines();
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

    #[test]
    fn a_deferred_line_waits_for_the_flush_on_a_serving_thread_and_runs_at_once_elsewhere() {
        use std::rc::Rc;
        std::thread::spawn(|| {
            buffer_thread_log();
            let order = Rc::new(RefCell::new(Vec::new()));
            for i in 0..3 {
                let order = order.clone();
                defer_log_line(move || order.borrow_mut().push(i));
            }
            assert!(order.borrow().is_empty(), "nothing is emitted before the flush");
            flush_thread_log();
            assert_eq!(*order.borrow(), [0, 1, 2], "emitted at the flush, in order");
            flush_thread_log();
            assert_eq!(order.borrow().len(), 3, "each line is emitted once");
            // A runtime that never idles still emits them, EMIT_AT_LINES at a time.
            for i in 0..EMIT_AT_LINES {
                let order = order.clone();
                defer_log_line(move || order.borrow_mut().push(i));
            }
            assert_eq!(order.borrow().len(), 3 + EMIT_AT_LINES);
        })
        .join()
        .unwrap();
        std::thread::spawn(|| {
            let emitted = std::rc::Rc::new(Cell::new(false));
            let flag = emitted.clone();
            defer_log_line(move || flag.set(true));
            assert!(emitted.get(), "a thread that does not serve emits at once");
        })
        .join()
        .unwrap();
    }
}
