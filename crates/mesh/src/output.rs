//! The supervisor's progress output: lines for a terminal or a pipe that may be closed (the
//! reader, `tee` say, died with the Ctrl-C that stops the mesh) or full (nobody reads it).
//!
//! `println!`/`eprintln!` panic on a closed stream, and a plain write blocks on a full pipe —
//! either would stop a teardown half-way. Here a [`Output::line`] never blocks and never
//! fails: lines go through a bounded queue to one writer thread; when the queue is full they
//! are dropped (and counted), and after the first failed write the stream is given up.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 1024;

/// A line sink that never blocks and never panics. Cloning shares the writer.
#[derive(Clone, Debug)]
pub struct Output {
    tx: Option<SyncSender<String>>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Lines handed to the writer.
    queued: AtomicU64,
    /// Lines the writer is finished with (written or given up).
    done: AtomicU64,
    /// Lines dropped because the queue was full or the stream gone.
    dropped: AtomicU64,
}

impl Output {
    /// Writes lines to `w` from a thread of its own.
    pub fn new(mut w: impl Write + Send + 'static) -> Output {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let counts = Arc::new(Counts::default());
        let c = Arc::clone(&counts);
        let spawned = std::thread::Builder::new().name("output".into()).spawn(move || {
            let mut broken = false;
            for line in rx {
                // After a failed write (EPIPE, EBADF, …) the stream is gone: finish the queue
                // without touching it.
                if !broken {
                    broken = w.write_all(line.as_bytes()).and_then(|()| w.flush()).is_err();
                }
                if broken {
                    c.dropped.fetch_add(1, Ordering::Relaxed);
                }
                c.done.fetch_add(1, Ordering::SeqCst);
            }
        });
        match spawned {
            Ok(_) => Output { tx: Some(tx), counts },
            Err(_) => Output::discard(),
        }
    }

    /// The process's standard error (a duplicate of fd 2, so no lock of `std::io::stderr`
    /// is ever held while a write blocks).
    pub fn stderr() -> Output {
        use std::os::fd::AsFd;
        match std::io::stderr().as_fd().try_clone_to_owned() {
            Ok(fd) => Output::new(std::fs::File::from(fd)),
            Err(_) => Output::discard(),
        }
    }

    /// A sink that drops everything.
    pub fn discard() -> Output {
        Output { tx: None, counts: Arc::default() }
    }

    /// Queues `text` as one line; drops it when the queue is full or the stream is gone.
    pub fn line(&self, text: &str) {
        let Some(tx) = &self.tx else { return };
        let mut l = String::with_capacity(text.len() + 1);
        l.push_str(text);
        l.push('\n');
        self.counts.queued.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(l) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                self.counts.done.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Lines that were not written (queue full, or the stream closed).
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    /// Waits up to `limit` for the queued lines to be written (before the process exits).
    /// Returns whether they all were dealt with.
    pub fn flush(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.counts.done.load(Ordering::SeqCst) >= self.counts.queued.load(Ordering::SeqCst) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
        std::io::pipe().expect("pipe")
    }

    #[test]
    fn lines_reach_a_reader() {
        let (mut r, w) = pipe();
        let out = Output::new(w);
        out.line("pod default/a ready");
        out.line("mesh stopped");
        assert!(out.flush(Duration::from_secs(10)));
        drop(out);
        let mut text = String::new();
        // The writer thread holds the write end until its queue closes; read what is there.
        let mut buf = [0u8; 64];
        while !text.ends_with("mesh stopped\n") {
            let n = r.read(&mut buf).expect("read");
            text.push_str(std::str::from_utf8(&buf[..n]).expect("utf-8"));
        }
        assert_eq!(text, "pod default/a ready\nmesh stopped\n");
    }

    #[test]
    fn a_closed_reader_is_ignored_not_a_panic() {
        // Rust ignores SIGPIPE, so the write fails with EPIPE (where eprintln! would panic).
        let (r, w) = pipe();
        drop(r);
        let out = Output::new(w);
        for i in 0..100 {
            out.line(&format!("line {i}"));
        }
        assert!(out.flush(Duration::from_secs(10)), "every line dealt with");
        assert_eq!(out.dropped(), 100);
        out.line("and after that, still nothing happens");
    }

    #[test]
    fn a_full_pipe_never_blocks_the_caller() {
        // Nobody reads: the writer blocks on its first write once the pipe (64 KiB) is full,
        // the queue fills, and further lines are dropped at once.
        let (_r, w) = pipe();
        let out = Output::new(w);
        let line = "x".repeat(1000);
        for _ in 0..(QUEUE * 4) {
            out.line(&line);
        }
        assert!(out.dropped() > 0, "lines beyond the pipe and the queue are dropped");
        assert!(!out.flush(Duration::from_millis(50)), "the blocked writer cannot finish");
    }

    #[test]
    fn a_discarding_output_takes_lines_and_flushes_at_once() {
        let out = Output::discard();
        out.line("nobody hears this");
        assert!(out.flush(Duration::ZERO));
    }
}
