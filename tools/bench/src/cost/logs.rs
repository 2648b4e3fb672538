//! The log lines the functions would write, counted instead of printed: the same subscriber as
//! `shared::telemetry::init` inside Lambda (JSON lines, no time, no span list, `info`), writing
//! into a counter that keeps only the lines of the thread running the engine (the simulator's
//! own threads are not a function's).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::ThreadId;

/// Log events and bytes (message bytes, newline included).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogCount {
    pub events: u64,
    pub bytes: u64,
}

impl LogCount {
    pub fn add(&mut self, o: LogCount) {
        self.events += o.events;
        self.bytes += o.bytes;
    }

    /// One line of `len` bytes (its newline added).
    pub fn line(len: usize) -> LogCount {
        LogCount {
            events: 1,
            bytes: len as u64 + 1,
        }
    }

    pub fn since(self, before: LogCount) -> LogCount {
        LogCount {
            events: self.events - before.events,
            bytes: self.bytes - before.bytes,
        }
    }
}

#[derive(Debug)]
struct Counter {
    thread: ThreadId,
    events: AtomicU64,
    bytes: AtomicU64,
}

/// The tracing lines counted so far.
#[derive(Debug, Clone)]
pub struct Logs(Arc<Counter>);

impl Logs {
    /// Installs the subscriber (once per process), counting the lines of this thread.
    pub fn install() -> Result<Logs, String> {
        let logs = Logs(Arc::new(Counter {
            thread: std::thread::current().id(),
            events: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }));
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_target(false)
            .json()
            .without_time()
            .with_current_span(false)
            .with_writer(move || writer.clone())
            .try_init()
            .map_err(|e| format!("log subscriber: {e}"))?;
        Ok(logs)
    }

    pub fn count(&self) -> LogCount {
        LogCount {
            events: self.0.events.load(Relaxed),
            bytes: self.0.bytes.load(Relaxed),
        }
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::thread::current().id() == self.0.thread {
            self.0.bytes.fetch_add(buf.len() as u64, Relaxed);
            let lines = buf.iter().filter(|&&b| b == b'\n').count() as u64;
            self.0.events.fetch_add(lines, Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
