//! Where a request's time goes on its thread, stage by stage: the measuring tool of
//! BENCHMARKS.md (issue #17, sixth sitting).
//!
//! Built with the cargo feature `stage-timing`, every serving thread stamps each [`Stage`] of the
//! request it is serving, from the moment the request's first bytes were read from the client's
//! socket, and every [`report_every`] requests logs the median time at which each stage was
//! reached. Without the feature [`mark`] is empty and compiles to nothing, and no stream is
//! wrapped.
//!
//! One timeline per thread: the medians mean what they say when a thread serves one request at
//! a time (light load, where the question of where the time goes is asked); with requests
//! overlapping on a thread, stamps of different requests mix. The timeline ends when the first
//! bytes of the answer have been written to the client.

/// A point on a request's path, in the order a pass-through reaches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The request's first bytes were read from the client's socket (the timeline's zero).
    BytesIn,
    /// The connection read the head and the body and called bestofn's handler.
    Handler,
    /// The body was read.
    BodyRead,
    /// The client's JSON was parsed.
    Parsed,
    /// The domain, N and scorer were planned.
    Planned,
    /// An attempt at an upstream call starts (endpoint picked, admission slot held, request
    /// built).
    Attempt,
    /// The upstream request's write system call starts.
    UpstreamWrite,
    /// It returned.
    UpstreamWritten,
    /// The upstream answer's first bytes were read.
    UpstreamBytesIn,
    /// The upstream answer was read to its end by the call.
    UpstreamAnswer,
    /// A pass-through's answer was checked and its usage read.
    Forwarded,
    /// bestofn's response is built and handed to the connection.
    Answered,
    /// The response's body ended and its metrics are being recorded.
    Recording,
    /// The metrics are recorded.
    Recorded,
    /// The response's write system call starts.
    ResponseWrite,
    /// It returned (the timeline ends).
    ResponseWritten,
}

/// Every stage, in order.
pub const STAGES: [Stage; 16] = [
    Stage::BytesIn,
    Stage::Handler,
    Stage::BodyRead,
    Stage::Parsed,
    Stage::Planned,
    Stage::Attempt,
    Stage::UpstreamWrite,
    Stage::UpstreamWritten,
    Stage::UpstreamBytesIn,
    Stage::UpstreamAnswer,
    Stage::Forwarded,
    Stage::Answered,
    Stage::Recording,
    Stage::Recorded,
    Stage::ResponseWrite,
    Stage::ResponseWritten,
];

impl Stage {
    /// The stage's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Stage::BytesIn => "bytes_in",
            Stage::Handler => "handler",
            Stage::BodyRead => "body_read",
            Stage::Parsed => "parsed",
            Stage::Planned => "planned",
            Stage::Attempt => "attempt",
            Stage::UpstreamWrite => "upstream_write",
            Stage::UpstreamWritten => "upstream_written",
            Stage::UpstreamBytesIn => "upstream_bytes_in",
            Stage::UpstreamAnswer => "upstream_answer",
            Stage::Forwarded => "forwarded",
            Stage::Answered => "answered",
            Stage::Recording => "recording",
            Stage::Recorded => "recorded",
            Stage::ResponseWrite => "response_write",
            Stage::ResponseWritten => "response_written",
        }
    }
}

/// Requests per serving thread between two reports: `BESTOFN_STAGE_TIMING_EVERY`, else 1,000.
pub fn report_every() -> usize {
    static EVERY: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *EVERY.get_or_init(|| {
        std::env::var("BESTOFN_STAGE_TIMING_EVERY")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(1000)
    })
}

/// Stamps `stage` of the request this thread is serving, the first time it is reached.
#[inline(always)]
pub fn mark(stage: Stage) {
    #[cfg(feature = "stage-timing")]
    timeline::mark(stage);
    #[cfg(not(feature = "stage-timing"))]
    let _ = stage;
}

/// The median time of each stage reached, in µs after [`Stage::BytesIn`], over `timelines` (one
/// row per request, None where a stage was not reached), as the report's text.
pub fn medians_text(timelines: &[[Option<u64>; STAGES.len()]]) -> String {
    let mut text = String::new();
    for (index, stage) in STAGES.iter().enumerate() {
        let mut reached: Vec<u64> = timelines.iter().filter_map(|row| row[index]).collect();
        if reached.is_empty() {
            continue;
        }
        reached.sort_unstable();
        let median = reached[reached.len() / 2];
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&format!("{}={:.1}", stage.name(), median as f64 / 1000.0));
    }
    text
}

/// The same report over the slowest `share` of `timelines` (those whose last stamp is at or above
/// that quantile of all last stamps): where a tail request's time went, next to the medians of all.
pub fn slowest_medians_text(timelines: &[[Option<u64>; STAGES.len()]], share: f64) -> String {
    let last = |row: &[Option<u64>; STAGES.len()]| row.iter().rev().find_map(|stamp| *stamp).unwrap_or(0);
    let mut ends: Vec<u64> = timelines.iter().map(last).collect();
    if ends.is_empty() {
        return String::new();
    }
    ends.sort_unstable();
    let from = ((ends.len() as f64 * (1.0 - share)) as usize).min(ends.len() - 1);
    let threshold = ends[from];
    let slowest: Vec<_> = timelines.iter().filter(|row| last(row) >= threshold).copied().collect();
    medians_text(&slowest)
}

#[cfg(feature = "stage-timing")]
pub use timeline::{TimedStream, Timeline, timed};

#[cfg(feature = "stage-timing")]
mod timeline {
    use std::cell::RefCell;
    use std::time::Instant;

    use super::{STAGES, Stage, medians_text, report_every, slowest_medians_text};
    use crate::watched::{Watch, Watched};

    /// This thread's request in progress (its start and stamps, ns) and the finished ones.
    #[derive(Default)]
    struct Timelines {
        current: Option<(Instant, [Option<u64>; STAGES.len()])>,
        finished: Vec<[Option<u64>; STAGES.len()]>,
    }

    thread_local! {
        static TIMELINES: RefCell<Timelines> = RefCell::new(Timelines::default());
    }

    pub(super) fn mark(stage: Stage) {
        TIMELINES.with(|t| {
            let mut t = t.borrow_mut();
            if let Some((started, stamps)) = &mut t.current {
                let slot = &mut stamps[stage as usize];
                if slot.is_none() {
                    *slot = Some(started.elapsed().as_nanos() as u64);
                }
            }
        });
    }

    /// Starts a timeline unless one is running.
    fn bytes_in() {
        TIMELINES.with(|t| {
            let mut t = t.borrow_mut();
            if t.current.is_none() {
                let mut stamps = [None; STAGES.len()];
                stamps[Stage::BytesIn as usize] = Some(0);
                t.current = Some((Instant::now(), stamps));
            }
        });
    }

    /// Ends the running timeline; every `report_every()` of them, logs the medians.
    fn finish() {
        let report = TIMELINES.with(|t| {
            let mut t = t.borrow_mut();
            let (_, stamps) = t.current.take()?;
            t.finished.push(stamps);
            (t.finished.len() >= report_every()).then(|| {
                let text = medians_text(&t.finished);
                let slowest = slowest_medians_text(&t.finished, 0.01);
                let count = t.finished.len();
                t.finished.clear();
                (count, text, slowest)
            })
        });
        if let Some((requests, medians, slowest)) = report {
            tracing::info!(requests, "stage timing (median µs after the request's first bytes): {medians}");
            tracing::info!(requests, "stage timing of the slowest 1% (median µs): {slowest}");
        }
    }

    /// A client connection that starts a timeline when a request's bytes arrive and ends it
    /// when the answer's first bytes are written.
    pub type TimedStream = Watched<Timeline>;

    /// The watcher of a client connection: this thread's timeline.
    pub struct Timeline;

    /// `stream`, stamping this thread's timeline.
    pub fn timed(stream: tokio::net::TcpStream) -> TimedStream {
        Watched { stream, watch: Timeline }
    }

    impl Watch for Timeline {
        fn read(&self) {
            bytes_in();
        }

        fn writing(&self) {
            mark(Stage::ResponseWrite);
        }

        fn written(&self, wrote: bool) {
            if wrote {
                mark(Stage::ResponseWritten);
                finish();
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_timeline_stamps_each_stage_once_and_only_while_a_request_runs() {
            // Marks before any bytes arrived belong to no request.
            mark(Stage::Parsed);
            assert!(TIMELINES.with(|t| t.borrow().current.is_none()));
            bytes_in();
            std::thread::sleep(std::time::Duration::from_millis(2));
            mark(Stage::Parsed);
            let first = TIMELINES.with(|t| t.borrow().current.unwrap().1[Stage::Parsed as usize]);
            std::thread::sleep(std::time::Duration::from_millis(2));
            mark(Stage::Parsed);
            // More bytes of the same request do not restart its timeline.
            bytes_in();
            let stamps = TIMELINES.with(|t| t.borrow().current.unwrap().1);
            assert_eq!(stamps[Stage::Parsed as usize], first, "the first stamp of a stage stands");
            assert!(first.unwrap() >= 2_000_000);
            finish();
            let t = TIMELINES.with(|t| t.borrow().finished.len());
            assert_eq!(t, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_lists_the_median_of_each_stage_reached_in_order() {
        let mut rows = Vec::new();
        for (parsed, answered) in [(10_000, 90_000), (30_000, 70_000), (20_000, 80_000)] {
            let mut row = [None; STAGES.len()];
            row[Stage::BytesIn as usize] = Some(0);
            row[Stage::Parsed as usize] = Some(parsed);
            row[Stage::Answered as usize] = Some(answered);
            rows.push(row);
        }
        assert_eq!(medians_text(&rows), "bytes_in=0.0 parsed=20.0 answered=80.0");
        assert_eq!(medians_text(&[]), "");
    }

    #[test]
    fn the_tail_report_takes_only_the_slowest_timelines() {
        // A hundred requests answered at 1..=100 µs, the slowest of them parsed late.
        let rows: Vec<_> = (1..=100u64)
            .map(|end| {
                let mut row = [None; STAGES.len()];
                row[Stage::BytesIn as usize] = Some(0);
                row[Stage::Parsed as usize] = Some(if end > 98 { 50_000 } else { 1_000 });
                row[Stage::Answered as usize] = Some(end * 1_000);
                row
            })
            .collect();
        assert_eq!(slowest_medians_text(&rows, 0.02), "bytes_in=0.0 parsed=50.0 answered=100.0");
        assert_eq!(medians_text(&rows), "bytes_in=0.0 parsed=1.0 answered=51.0");
        assert_eq!(slowest_medians_text(&[], 0.01), "");
    }

    #[test]
    fn every_stage_has_its_own_name_in_order() {
        for (index, stage) in STAGES.iter().enumerate() {
            assert_eq!(*stage as usize, index);
        }
        let names: std::collections::HashSet<_> = STAGES.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), STAGES.len());
    }
}
