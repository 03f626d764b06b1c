//! The registry of subscribers and the event log behind one mutex, and the
//! hub's three verbs: `publish`, `subscribe`, `close`. Fans out with a
//! non-blocking send per subscriber; never writes to a socket, never sees
//! HTTP types, never blocks while holding the lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};

use crate::event::{EventId, Frame, IdClock, SharedFrame, TopicFilter};
use crate::history::{EventLog, Replay};
use crate::metrics::{Gauges, Metrics};
use crate::sse;

/// How often a throttled publish looks again at the queues it filled, how
/// long it waits for them to shrink at all, and how long at most (see
/// `let_streams_catch_up`).
const CATCH_UP_STEP: Duration = Duration::from_millis(1);
// Stream threads at nice 19 can wait this long for a CPU on a busy machine:
// with 100 ms, starved streams were taken for stuck and evicted in one
// make bench run of four (100 subscribers, 2.9 M deliveries lost). A stuck
// one costs a single publish this much, then none waits for it.
const CATCH_UP_STALL: Duration = Duration::from_millis(250);
const CATCH_UP_MAX: Duration = Duration::from_secs(1);

/// Limits the hub enforces.
#[derive(Clone, Copy, Debug)]
pub struct HubLimits {
    pub max_subscribers: usize,
    pub client_queue: usize,
}

pub struct Hub {
    inner: Mutex<Inner>,
    /// Signalled whenever a subscription ends, for shutdown to wait on.
    stream_ended: Condvar,
    limits: HubLimits,
    pub metrics: Metrics,
}

struct Inner {
    subscribers: Vec<Subscriber>,
    log: Box<dyn EventLog>,
    clock: IdClock,
    next_key: u64,
    /// Subscriptions alive (registered, or evicted and still ending).
    streams: usize,
    closed: bool,
}

struct Subscriber {
    key: u64,
    topics: TopicFilter,
    tx: Sender<SharedFrame>,
    ended: Arc<AtomicBool>,
    /// Its queue stopped shrinking while a publish waited for it: taken for
    /// stuck, publishes no longer wait for it until it catches up.
    stalled: bool,
}

/// What `publish` reports.
#[derive(Debug)]
pub struct Published {
    pub id: EventId,
    pub receivers: usize,
}

/// Why a subscription was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SubscribeError {
    /// `--max-subscribers` streams are open.
    Full,
    /// The hub is shutting down.
    Closed,
}

/// Why a publish was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The hub is shutting down.
    Closed,
}

/// A registered subscriber: its queue and what it is owed from the log.
/// Dropping it removes the subscriber from the registry.
pub struct Subscription<'a> {
    hub: &'a Hub,
    key: u64,
    pub rx: Receiver<SharedFrame>,
    pub replay: Replay,
    ended: Arc<AtomicBool>,
}

impl Subscription<'_> {
    /// True once the hub has let go of this subscriber (evicted for being
    /// too slow, or shutting down): its stream should end now, without
    /// writing what is still queued.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.hub.metrics
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        if let Some(i) = inner.subscribers.iter().position(|s| s.key == self.key) {
            inner.subscribers.swap_remove(i);
        }
        inner.streams -= 1;
        drop(inner);
        self.hub.stream_ended.notify_all();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Hub {
    pub fn new(log: Box<dyn EventLog>, limits: HubLimits) -> Hub {
        Hub {
            inner: Mutex::new(Inner {
                subscribers: Vec::new(),
                log,
                clock: IdClock::default(),
                next_key: 0,
                streams: 0,
                closed: false,
            }),
            stream_ended: Condvar::new(),
            limits,
            metrics: Metrics::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock is a bug, but the registry stays
        // consistent (every mutation is a single Vec operation), so keep
        // serving rather than poisoning every later request.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Assigns the next id, appends the event to the log and queues it for
    /// every matching subscriber. A subscriber already `client_queue` events
    /// behind is evicted instead; one whose stream is gone is pruned.
    pub fn publish(
        &self,
        topic: &str,
        event: Option<&str>,
        data: &str,
    ) -> Result<Published, PublishError> {
        let body = sse::body(event, data);
        let now = now_ms();
        let mut inner = self.lock();
        if inner.closed {
            return Err(PublishError::Closed);
        }
        let id = inner.clock.next(now);
        let frame = Arc::new(Frame {
            id,
            topic: topic.into(),
            bytes: sse::frame(id, &body),
        });
        inner.log.append(frame.clone());
        let (receivers, deepest) = self.fan_out(&mut inner, &frame);
        drop(inner);
        Metrics::add(&self.metrics.published, 1);
        if deepest > self.limits.client_queue / 2 {
            self.let_streams_catch_up(topic);
        }
        Ok(Published { id, receivers })
    }

    /// Queues `frame` for every matching subscriber; returns how many got
    /// it and the longest queue among those not taken for stuck.
    fn fan_out(&self, inner: &mut Inner, frame: &SharedFrame) -> (usize, usize) {
        let mut receivers = 0;
        let mut deepest = 0;
        let mut evicted = 0;
        let queue = self.limits.client_queue;
        inner.subscribers.retain_mut(|s| {
            if !s.topics.matches(&frame.topic) {
                return true;
            }
            let depth = s.tx.len();
            if depth >= queue {
                s.ended.store(true, Ordering::Release);
                evicted += 1;
                return false;
            }
            if s.tx.send(frame.clone()).is_err() {
                return false;
            }
            receivers += 1;
            if s.stalled && depth < queue / 4 {
                s.stalled = false;
            }
            if !s.stalled {
                deepest = deepest.max(depth + 1);
            }
            true
        });
        if evicted > 0 {
            Metrics::add(&self.metrics.evicted, evicted);
            log::debug!("evicted {evicted} subscribers more than {queue} events behind");
        }
        (receivers, deepest)
    }

    /// Backpressure on publishers. Stream threads run at the lowest
    /// priority (stream.rs), so publishers at full speed can queue events
    /// faster than the streams write them, until subscribers are evicted
    /// (measured: 100 of 100 within 0.1 s at the maximum publish rate). So
    /// when a receiver of an event is more than half of `--client-queue`
    /// behind, its publish is answered only once every receiver is back
    /// under a quarter, for at most `CATCH_UP_MAX`, and only while those
    /// behind keep catching up: after `CATCH_UP_STALL` without progress
    /// they are taken for stuck rather than starved, no publish waits for
    /// them again until they catch up, and eviction deals with them.
    fn let_streams_catch_up(&self, topic: &str) {
        let low = self.limits.client_queue / 4;
        let start = Instant::now();
        let mut least = usize::MAX;
        let mut progress_at = start;
        loop {
            thread::sleep(CATCH_UP_STEP);
            let mut inner = self.lock();
            let behind = |s: &Subscriber| !s.stalled && s.topics.matches(topic) && s.tx.len() > low;
            let backlog: usize = inner
                .subscribers
                .iter()
                .filter(|s| behind(s))
                .map(|s| s.tx.len())
                .sum();
            if backlog == 0 {
                return;
            }
            let now = Instant::now();
            if backlog < least {
                least = backlog;
                progress_at = now;
            }
            if now - progress_at >= CATCH_UP_STALL {
                for s in inner.subscribers.iter_mut().filter(|s| behind(s)) {
                    s.stalled = true;
                }
                return;
            }
            if now - start >= CATCH_UP_MAX {
                return;
            }
        }
    }

    /// Registers a subscriber and, in the same critical section, takes what
    /// the log owes it after `last`; so every event is either in the replay
    /// or in the queue, never both and never neither.
    pub fn subscribe(
        &self,
        topics: TopicFilter,
        last: Option<EventId>,
    ) -> Result<Subscription<'_>, SubscribeError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(SubscribeError::Closed);
        }
        if inner.streams >= self.limits.max_subscribers {
            return Err(SubscribeError::Full);
        }
        let replay = last
            .map(|last| inner.log.replay(last, &topics))
            .unwrap_or_default();
        let (tx, rx) = crossbeam_channel::unbounded();
        let ended = Arc::new(AtomicBool::new(false));
        let key = inner.next_key;
        inner.next_key += 1;
        inner.streams += 1;
        inner.subscribers.push(Subscriber {
            key,
            topics,
            tx,
            ended: ended.clone(),
            stalled: false,
        });
        Ok(Subscription {
            hub: self,
            key,
            rx,
            replay,
            ended,
        })
    }

    /// Ends every stream (each writes its stream end and returns) and
    /// refuses new publishes and subscriptions.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        for s in inner.subscribers.drain(..) {
            s.ended.store(true, Ordering::Release);
        }
    }

    /// Waits until every subscription has ended or `timeout` has passed;
    /// returns how many are still open.
    pub fn wait_streams_ended(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        while inner.streams > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            inner = self
                .stream_ended
                .wait_timeout(inner, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        inner.streams
    }

    /// The gauges for `/metrics`, read together.
    pub fn gauges(&self) -> Gauges {
        let inner = self.lock();
        Gauges {
            subscribers: inner.streams,
            history_events: inner.log.len(),
            max_subscribers: self.limits.max_subscribers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::History;

    fn hub(max_subscribers: usize, client_queue: usize) -> Hub {
        Hub::new(
            Box::new(History::new(100, 1 << 20)),
            HubLimits {
                max_subscribers,
                client_queue,
            },
        )
    }

    #[test]
    fn publish_reaches_matching_subscribers_only() {
        let hub = hub(10, 10);
        let a = hub
            .subscribe(TopicFilter::Only(vec!["a".into()]), None)
            .unwrap();
        let all = hub.subscribe(TopicFilter::All, None).unwrap();
        let p = hub.publish("b", None, "x").unwrap();
        assert_eq!(p.receivers, 1);
        assert!(a.rx.try_recv().is_err());
        assert_eq!(all.rx.try_recv().unwrap().id, p.id);
    }

    #[test]
    fn max_subscribers_is_enforced_and_freed_on_drop() {
        let hub = hub(1, 10);
        let first = hub.subscribe(TopicFilter::All, None).unwrap();
        assert_eq!(
            hub.subscribe(TopicFilter::All, None).err(),
            Some(SubscribeError::Full)
        );
        drop(first);
        assert!(hub.subscribe(TopicFilter::All, None).is_ok());
    }

    #[test]
    fn a_subscriber_too_far_behind_is_evicted() {
        let hub = hub(10, 2);
        let slow = hub.subscribe(TopicFilter::All, None).unwrap();
        for _ in 0..2 {
            assert_eq!(hub.publish("t", None, "x").unwrap().receivers, 1);
        }
        assert!(!slow.ended());
        assert_eq!(hub.publish("t", None, "x").unwrap().receivers, 0);
        assert!(slow.ended());
        assert_eq!(hub.metrics.evicted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_publish_waits_for_a_subscriber_catching_up_but_not_for_a_stuck_one() {
        let hub = hub(10, 8);
        let sub = hub.subscribe(TopicFilter::All, None).unwrap();
        for _ in 0..4 {
            hub.publish("t", None, "x").unwrap();
        }
        // Five queued is more than half the queue: this publish is answered
        // once the reader has caught up to a quarter.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for _ in 0..3 {
                    std::thread::sleep(Duration::from_millis(20));
                    sub.rx.recv().unwrap();
                }
            });
            hub.publish("t", None, "x").unwrap();
            assert!(sub.rx.len() <= 2, "answered before the reader caught up");
        });
        // A reader that stops is waited for once, then taken for stuck.
        for _ in 0..3 {
            hub.publish("t", None, "x").unwrap();
        }
        let started = Instant::now();
        hub.publish("t", None, "x").unwrap();
        assert!(started.elapsed() < CATCH_UP_STALL / 2);
        drop(sub);
    }

    #[test]
    fn subscribe_takes_the_replay_and_registers_together() {
        let hub = hub(10, 10);
        let first = hub.publish("t", None, "1").unwrap().id;
        hub.publish("t", None, "2").unwrap();
        let sub = hub.subscribe(TopicFilter::All, Some(first)).unwrap();
        hub.publish("t", None, "3").unwrap();
        assert_eq!(sub.replay.frames.len(), 1);
        assert_eq!(sub.rx.len(), 1);
        assert!(sub.replay.frames[0].id < sub.rx.try_recv().unwrap().id);
    }

    #[test]
    fn close_ends_every_stream_and_refuses_more() {
        let hub = hub(10, 10);
        let sub = hub.subscribe(TopicFilter::All, None).unwrap();
        hub.close();
        assert!(sub.ended());
        assert_eq!(
            hub.subscribe(TopicFilter::All, None).err(),
            Some(SubscribeError::Closed)
        );
        assert_eq!(
            hub.publish("t", None, "x").err(),
            Some(PublishError::Closed)
        );
        assert_eq!(hub.wait_streams_ended(Duration::from_millis(1)), 1);
        drop(sub);
        assert_eq!(hub.wait_streams_ended(Duration::from_millis(1)), 0);
    }
}
