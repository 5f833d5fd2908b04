//! The log sink: lines are appended to a shared buffer that one background thread writes out in
//! batches.
//!
//! A channel-based writer (tracing-appender's `non_blocking`) wakes its thread for every line and
//! writes every line with its own syscall; at tens of thousands of access-log lines a second, the
//! wake-ups and the preemption they cause cost more CPU than the requests being logged. Here a
//! line costs one uncontended lock and a copy; the thread wakes every [`FLUSH_EVERY`] (or early,
//! once [`EARLY_FLUSH`] bytes are waiting) and writes everything with one `write`.
//!
//! Lossless: above [`MAX_PENDING`] bytes the logging thread writes the batch itself instead of
//! growing the buffer or dropping lines. Dropping the [`FlushGuard`] writes what is left.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Longest a line waits in the buffer.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Pending bytes that wake the writer thread before its timer.
pub(crate) const EARLY_FLUSH: usize = 256 * 1024;
/// Pending bytes above which the logging thread writes the batch itself (back-pressure).
pub(crate) const MAX_PENDING: usize = 8 * 1024 * 1024;

type Sink = Box<dyn Write + Send>;

struct State {
    pending: Vec<u8>,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Serialises writes to the sink so batches never interleave.
    sink: Mutex<Out>,
}

/// The sink, and the buffer the next batch is gathered in once the current one is written.
struct Out {
    sink: Sink,
    spare: Vec<u8>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only bytes behind; logging must go on.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes everything pending, then `extra`. The sink is locked before the buffer is taken,
    /// so batches reach the sink in the order their lines were logged, whoever writes them.
    fn flush_with(&self, extra: &[u8]) {
        let mut out = self.sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let out = &mut *out;
        // The written batch's buffer comes back as the next one, so the buffer keeps its size
        // (a fresh one regrew from nothing every batch: about 300 instructions per access line).
        let mut batch = std::mem::replace(&mut self.lock().pending, std::mem::take(&mut out.spare));
        if batch.is_empty() && extra.is_empty() {
            out.spare = batch;
            return;
        }
        // Nowhere left to report a failing log sink; the lines are lost, the service goes on.
        let _ = out.sink.write_all(&batch);
        let _ = out.sink.write_all(extra);
        let _ = out.sink.flush();
        // A burst's buffer (up to MAX_PENDING) is not kept for good.
        if batch.capacity() <= 2 * EARLY_FLUSH {
            batch.clear();
            out.spare = batch;
        }
    }
}

/// A `MakeWriter` for the fmt layer.
#[derive(Clone)]
pub(crate) struct BatchWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread and writes what is pending when dropped.
pub(crate) struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread (`thread_name`) over `sink`.
pub(crate) fn batch_writer(
    sink: impl Write + Send + 'static,
    thread_name: &str,
) -> io::Result<(BatchWriter, FlushGuard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            pending: Vec::new(),
            stopping: false,
        }),
        wake: Condvar::new(),
        sink: Mutex::new(Out {
            sink: Box::new(sink),
            spare: Vec::new(),
        }),
    });
    let worker = shared.clone();
    let thread = std::thread::Builder::new()
        .name(thread_name.to_owned())
        .spawn(move || run(&worker))?;
    Ok((
        BatchWriter {
            shared: shared.clone(),
        },
        FlushGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn run(shared: &Shared) {
    loop {
        let stopping = {
            let mut state = shared.lock();
            if !state.stopping && state.pending.len() < EARLY_FLUSH {
                state = shared
                    .wake
                    .wait_timeout(state, FLUSH_EVERY)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
            }
            state.stopping
        };
        // After the stop flag, lines are written through by their own thread (see `write`),
        // so this last flush leaves nothing behind.
        shared.flush_with(&[]);
        if stopping {
            return;
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One line being written.
pub(crate) struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        if state.stopping {
            // The writer thread is gone or going: write through, after anything still pending.
            drop(state);
            self.shared.flush_with(buf);
            return Ok(buf.len());
        }
        state.pending.extend_from_slice(buf);
        let pending = state.pending.len();
        if pending >= MAX_PENDING {
            // The sink cannot keep up: this thread pays for the write rather than lose lines.
            drop(state);
            self.shared.flush_with(&[]);
        } else if pending >= EARLY_FLUSH && pending - buf.len() < EARLY_FLUSH {
            drop(state);
            self.shared.wake.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Lines are flushed by the writer thread; a per-line flush is what this sink avoids.
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { shared: &self.shared }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(writer: &BatchWriter, text: &str) {
        writer.make_writer().write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn lines_are_written_in_order_by_the_thread_and_the_rest_on_drop() {
        let sink = Captured::default();
        let (writer, guard) = batch_writer(sink.clone(), "test-log-writer").unwrap();
        line(&writer, "one\n");
        line(&writer, "two\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the thread never wrote");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"one\ntwo\n");
        line(&writer, "three\n");
        drop(guard);
        assert_eq!(&*sink.0.lock().unwrap(), b"one\ntwo\nthree\n");
        // After the stop, lines are written through rather than lost.
        line(&writer, "four\n");
        assert_eq!(&*sink.0.lock().unwrap(), b"one\ntwo\nthree\nfour\n");
    }

    #[test]
    fn a_flood_from_many_threads_loses_no_line() {
        let sink = Captured::default();
        let (writer, guard) = batch_writer(sink.clone(), "test-log-writer").unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        line(&writer, &format!("{t}:{i}\n"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 80_000);
        for t in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{t}:")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(
                mine,
                (0..20_000).collect::<Vec<_>>(),
                "thread {t}'s lines in order"
            );
        }
    }
}
