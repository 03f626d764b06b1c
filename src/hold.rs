//! The one wait a publish may have: while the hub's own stream threads are
//! short of CPU. Stream threads run at the lowest priority (stream.rs), so
//! at the maximum publish rate on a busy machine they can fall behind until
//! they drop off the history and are ended, though their clients read
//! promptly. A publish that finds such a subscriber's queue full waits until
//! it has written that event from the log (it signals each page), for at
//! most `MAX_HOLD`. A
//! subscriber whose own client is what holds it up is never waited for, nor
//! is the follower of a Redis stream or a file log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The longest a publish is held back. Only publishes to a memory log are:
/// a follower (Redis, files) feeds every subscriber of its process, and is
/// never held.
pub const MAX_HOLD: Duration = Duration::from_millis(250);

#[derive(Default)]
pub struct Hold {
    lock: Mutex<()>,
    caught_up: Condvar,
    /// Publishers waiting: streams signal only when someone listens.
    pub(crate) waiting: AtomicUsize,
}

impl Hold {
    /// Waits while `behind()` holds, for at most `MAX_HOLD`; woken by
    /// `progress`. Returns how long it waited.
    pub fn wait_while(&self, behind: impl Fn() -> bool) -> Duration {
        let started = Instant::now();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let waited = self
            .caught_up
            .wait_timeout_while(guard, MAX_HOLD, |_| behind())
            .unwrap_or_else(|e| e.into_inner());
        drop(waited);
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        started.elapsed()
    }

    /// A stream wrote a page of its catch-up, or ended: wake the waiting
    /// publishers to look again. Costs an atomic load when none waits.
    pub fn progress(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()));
            self.caught_up.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn waits_until_signalled_and_at_most_the_bound() {
        let hold = Hold::default();
        let behind = AtomicBool::new(true);
        std::thread::scope(|s| {
            s.spawn(|| {
                while hold.waiting.load(Ordering::Acquire) == 0 {
                    std::thread::yield_now();
                }
                behind.store(false, Ordering::Release);
                hold.progress();
            });
            let waited = hold.wait_while(|| behind.load(Ordering::Acquire));
            assert!(waited < MAX_HOLD, "not woken: {waited:?}");
        });
        let waited = hold.wait_while(|| true);
        assert!(waited >= MAX_HOLD && waited < MAX_HOLD * 4, "{waited:?}");
        assert!(hold.wait_while(|| false) < MAX_HOLD / 10);
    }
}
