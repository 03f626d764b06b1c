//! Log lines reach stderr through a bounded queue and a thread of their
//! own, so that no thread of the hub ever waits for stderr: when whoever
//! reads it (a terminal, journald, a container runtime) stops reading, the
//! pipe fills, and a thread that wrote to it directly would stop with it,
//! in the middle of answering a client. Lines that find the queue full are
//! dropped and counted, and the count is written out once lines go through
//! again.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

/// Lines waiting for stderr, at most (about 150 KiB of typical lines).
const QUEUE: usize = 1024;

enum Item {
    Line(Vec<u8>),
    /// Answered once every line queued before it is written.
    Flush(Sender<()>),
}

/// The queue, for `flush`.
static QUEUED: OnceLock<Sender<Item>> = OnceLock::new();
/// Lines dropped since the last that was written.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// What env_logger writes each formatted record to (one `write` a record).
struct Queue(Sender<Item>);

impl Write for Queue {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.try_send(Item::Line(buf.to_vec())).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Installs the logger: `RUST_LOG` filters, `info` by default, colours on
/// a terminal only.
pub fn init() {
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    let started = thread::Builder::new()
        .name("log".into())
        .stack_size(64 * 1024)
        .spawn(move || write_out(rx));
    let style = if io::stderr().is_terminal() {
        env_logger::WriteStyle::Always
    } else {
        env_logger::WriteStyle::Never
    };
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.write_style(style);
    if started.is_ok() {
        let _ = QUEUED.set(tx.clone());
        builder.target(env_logger::Target::Pipe(Box::new(Queue(tx))));
    }
    builder.init();
}

fn write_out(rx: Receiver<Item>) {
    for item in rx {
        match item {
            Item::Line(line) => {
                let mut err = io::stderr().lock();
                let dropped = DROPPED.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    let _ = writeln!(
                        err,
                        "ssehub: {dropped} log lines dropped: stderr was not read"
                    );
                }
                let _ = err.write_all(&line);
            }
            Item::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Waits, `timeout` at most, until what was logged so far is written: for
/// the last lines before the process exits.
pub fn flush(timeout: Duration) {
    let Some(queue) = QUEUED.get() else { return };
    let (done, written) = crossbeam_channel::bounded(1);
    if queue.send_timeout(Item::Flush(done), timeout).is_ok() {
        let _ = written.recv_timeout(timeout);
    }
}
