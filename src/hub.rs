//! The registry of subscribers behind one mutex, the event log, and the
//! hub's three verbs: `publish`, `subscribe`, `close`. Fans out with a
//! non-blocking send per subscriber; never writes to a socket, never sees
//! HTTP types, never blocks while holding the lock (a shared log's I/O
//! happens outside it).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::event::{Event, EventId, SharedFrame, TopicFilter};
use crate::history::{EventLog, LogError, Replay};
use crate::metrics::{Gauges, Metrics};

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
    log: Box<dyn EventLog>,
    /// Signalled whenever a subscription ends, for shutdown to wait on.
    stream_ended: Condvar,
    limits: HubLimits,
    pub metrics: Metrics,
}

struct Inner {
    subscribers: Vec<Subscriber>,
    next_key: u64,
    /// Subscriptions alive (registered, or evicted and still ending).
    streams: usize,
    closed: bool,
}

struct Subscriber {
    key: u64,
    topics: TopicFilter,
    tx: Sender<SharedFrame>,
    /// A second handle on its queue, so a throttled publisher can watch the
    /// queue drain without taking the hub lock.
    watch: Receiver<SharedFrame>,
    shared: Arc<Shared>,
    /// Its queue stopped shrinking while a publish waited for it: taken for
    /// stuck, publishes no longer wait for it until it catches up.
    stalled: bool,
}

/// A receiver of an event that was well behind when it was queued.
struct Laggard {
    key: u64,
    queue: Receiver<SharedFrame>,
    shared: Arc<Shared>,
}

/// The receivers of one event that are behind, for `let_streams_catch_up`.
#[derive(Default)]
struct Laggards {
    deepest: usize,
    list: Vec<Laggard>,
}

impl Laggards {
    /// Notes `s`, which has `depth` events queued with the new one, if it is
    /// over a quarter of `queue` behind, not taken for stuck and not blocked
    /// on its client.
    fn note(&mut self, s: &Subscriber, depth: usize, queue: usize) {
        if !s.stalled && depth > queue / 4 && !s.shared.blocked.load(Ordering::Relaxed) {
            self.deepest = self.deepest.max(depth);
            self.list.push(Laggard {
                key: s.key,
                queue: s.watch.clone(),
                shared: s.shared.clone(),
            });
        }
    }

    /// The ones to wait for: all of them once one is more than half of
    /// `queue` behind, else none.
    fn worth_waiting_for(mut self, queue: usize) -> Vec<Laggard> {
        if self.deepest <= queue / 2 {
            self.list.clear();
        }
        self.list
    }
}

impl Laggard {
    /// Events still queued, or 0 once the hub has let go of it or while
    /// its client is what holds it up (waiting for that would let one slow
    /// reader pace every publisher; eviction deals with it instead).
    fn backlog(&self) -> usize {
        if self.shared.state.load(Ordering::Relaxed) == LIVE
            && !self.shared.blocked.load(Ordering::Relaxed)
        {
            self.queue.len()
        } else {
            0
        }
    }
}

/// What a subscriber's stream thread and the hub both see.
#[derive(Debug, Default)]
struct Shared {
    /// `LIVE`, or why the hub let go.
    state: AtomicU8,
    /// The stream thread waits for room in its socket: its client is not
    /// taking data as fast as it comes.
    blocked: AtomicBool,
}

const LIVE: u8 = 0;
const RELEASED: u8 = 1;
const GONE: u8 = 2;

/// A stream thread that is not blocked on its client but merely waiting for a
/// CPU (they run at the lowest priority) may fall this many times
/// `--client-queue` behind before it is evicted anyway.
const STARVED_FACTOR: usize = 4;

impl Subscriber {
    /// Marks why the hub let go; dropping the subscriber then drops its
    /// sender, which wakes the stream thread.
    fn end(&self, why: u8) {
        self.shared.state.store(why, Ordering::Release);
    }

    /// Too far behind: `--client-queue` events queued while its client is
    /// not taking data, or far more than that in any case.
    fn behind(&self, queued: usize, queue: usize) -> bool {
        queued >= queue
            && (self.shared.blocked.load(Ordering::Relaxed)
                || queued >= queue.saturating_mul(STARVED_FACTOR))
    }
}

/// Why the hub let go of a subscriber.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Ending {
    /// Evicted for being too slow, or the hub is shutting down: the stream
    /// should end properly.
    Released,
    /// The client closed or reset the connection: nothing more to write.
    Gone,
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
    /// A replay was asked for and the shared log is out of reach; the
    /// subscriber was not registered.
    Unavailable(LogError),
}

/// Why a publish was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The hub is shutting down.
    Closed,
    /// The shared log is out of reach; nothing was published.
    Unavailable(LogError),
}

/// A registered subscriber: its queue and what it is owed from the log.
/// Dropping it removes the subscriber from the registry.
pub struct Subscription<'a> {
    hub: &'a Hub,
    key: u64,
    pub rx: Receiver<SharedFrame>,
    pub replay: Replay,
    shared: Arc<Shared>,
}

impl Subscription<'_> {
    /// Set once the hub has let go of this subscriber: its stream should end
    /// now, without writing what is still queued.
    pub fn ended(&self) -> Option<Ending> {
        match self.shared.state.load(Ordering::Acquire) {
            LIVE => None,
            RELEASED => Some(Ending::Released),
            _ => Some(Ending::Gone),
        }
    }

    /// Tells the hub whether the stream thread waits for room in its
    /// socket. One that does while events pile up is evicted, and
    /// publishers do not wait for it to catch up.
    pub fn set_blocked(&self, blocked: bool) {
        self.shared.blocked.store(blocked, Ordering::Relaxed);
    }

    /// Identifies this subscriber to `Hub::hang_up`.
    pub fn key(&self) -> u64 {
        self.key
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

impl Hub {
    pub fn new(log: Box<dyn EventLog>, limits: HubLimits) -> Hub {
        Hub {
            inner: Mutex::new(Inner {
                subscribers: Vec::new(),
                next_key: 0,
                streams: 0,
                closed: false,
            }),
            log,
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

    /// Appends the event to the log, which gives it its id, and queues it
    /// for every matching subscriber. A subscriber already `client_queue`
    /// events behind is evicted instead; one whose stream is gone is pruned.
    pub fn publish(
        &self,
        topic: &str,
        name: Option<&str>,
        data: &str,
    ) -> Result<Published, PublishError> {
        let event = Event::new(topic, name, data);
        if self.log.shared() {
            return self.publish_shared(&event);
        }
        let mut inner = self.lock();
        if inner.closed {
            return Err(PublishError::Closed);
        }
        let frame = self.log.append(&event).map_err(PublishError::Unavailable)?;
        let (receivers, laggards) = self.fan_out(&mut inner, &frame);
        drop(inner);
        Metrics::add(&self.metrics.published, 1);
        self.let_streams_catch_up(laggards);
        Ok(Published {
            id: frame.id,
            receivers,
        })
    }

    /// With a shared log the event is appended outside the lock and comes
    /// back through the follower (`fan_out_followed`), so this process
    /// delivers it in the same order as every other one. `receivers` counts
    /// the matching subscribers registered when the log accepted it. The
    /// publisher is held back as by `publish` while they are behind.
    fn publish_shared(&self, event: &Event) -> Result<Published, PublishError> {
        if self.lock().closed {
            return Err(PublishError::Closed);
        }
        let frame = self.log.append(event).map_err(PublishError::Unavailable)?;
        let queue = self.limits.client_queue;
        let mut receivers = 0;
        let mut laggards = Laggards::default();
        for s in self.lock().subscribers.iter() {
            if s.topics.matches(event.topic) {
                receivers += 1;
                laggards.note(s, s.tx.len() + 1, queue);
            }
        }
        Metrics::add(&self.metrics.published, 1);
        self.let_streams_catch_up(laggards.worth_waiting_for(queue));
        Ok(Published {
            id: frame.id,
            receivers,
        })
    }

    /// Queues frames read from a shared log, oldest first, for every
    /// matching subscriber, as `publish` does for a local one, and waits as
    /// it does while they are behind: the follower then reads on later, and
    /// the shared log holds what the queues would have. The lock is taken
    /// per frame so subscribers can register in between.
    pub fn fan_out_followed(&self, frames: &[SharedFrame]) {
        for frame in frames {
            let mut inner = self.lock();
            let (_, laggards) = self.fan_out(&mut inner, frame);
            drop(inner);
            self.let_streams_catch_up(laggards);
        }
    }

    /// Ends every open stream without closing the hub: their clients
    /// reconnect with their last id and replay, or learn of a gap. For when
    /// the follower may have missed events of a shared log.
    pub fn end_streams(&self) -> usize {
        let mut inner = self.lock();
        let ended = inner.subscribers.len();
        for s in inner.subscribers.drain(..) {
            s.end(RELEASED);
        }
        drop(inner);
        Metrics::add(&self.metrics.evicted, ended as u64);
        ended
    }

    /// Queues `frame` for every matching subscriber; returns how many got
    /// it and, when one not taken for stuck is more than half of
    /// `--client-queue` behind, every such receiver over a quarter behind.
    fn fan_out(&self, inner: &mut Inner, frame: &SharedFrame) -> (usize, Vec<Laggard>) {
        let mut receivers = 0;
        let mut laggards = Laggards::default();
        let mut evicted = 0;
        let queue = self.limits.client_queue;
        inner.subscribers.retain_mut(|s| {
            if !s.topics.matches(&frame.topic) {
                return true;
            }
            let queued = s.tx.len();
            if s.behind(queued, queue) {
                s.end(RELEASED);
                evicted += 1;
                return false;
            }
            let depth = queued + 1;
            if s.tx.send(frame.clone()).is_err() {
                return false;
            }
            receivers += 1;
            if s.stalled && depth <= queue / 4 {
                s.stalled = false;
            }
            laggards.note(s, depth, queue);
            true
        });
        if evicted > 0 {
            Metrics::add(&self.metrics.evicted, evicted);
            log::debug!("evicted {evicted} subscribers more than {queue} events behind");
        }
        (receivers, laggards.worth_waiting_for(queue))
    }

    /// Backpressure on publishers, and on the follower of a shared log
    /// (`fan_out_followed`). Stream threads run at the lowest
    /// priority (stream.rs), so publishers at full speed can queue events
    /// faster than the streams write them, until subscribers are evicted
    /// (measured: 100 of 100 within 0.1 s at the maximum publish rate). So
    /// when a receiver of an event is more than half of `--client-queue`
    /// behind, its publish is answered only once every receiver is back
    /// under a quarter, for at most `CATCH_UP_MAX`, and only while those
    /// behind keep catching up: after `CATCH_UP_STALL` without progress
    /// they are taken for stuck rather than starved, no publish waits for
    /// them again until they catch up, and eviction deals with them. A
    /// subscriber whose client is not reading never slows a publisher for
    /// longer than that. The queues are watched without the hub lock, so
    /// throttled publishers do not slow fan-out down.
    fn let_streams_catch_up(&self, laggards: Vec<Laggard>) {
        if laggards.is_empty() {
            return;
        }
        let low = self.limits.client_queue / 4;
        let start = Instant::now();
        let mut least = usize::MAX;
        let mut progress_at = start;
        loop {
            thread::sleep(CATCH_UP_STEP);
            let backlog: usize = laggards
                .iter()
                .map(Laggard::backlog)
                .filter(|n| *n > low)
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
                let stuck: Vec<u64> = laggards
                    .iter()
                    .filter(|l| l.backlog() > low)
                    .map(|l| l.key)
                    .collect();
                let mut inner = self.lock();
                for s in inner.subscribers.iter_mut() {
                    if stuck.contains(&s.key) {
                        s.stalled = true;
                    }
                }
                return;
            }
            if now - start >= CATCH_UP_MAX {
                return;
            }
        }
    }

    /// Registers a subscriber and takes what the log owes it after `last`.
    /// A local log's snapshot is taken in the same critical section, so
    /// every event is either in the replay or in the queue, never both and
    /// never neither; it is scanned after the lock is let go, so a replay of
    /// the whole history does not hold up publishers. A shared log is read
    /// after registering, outside the lock: an event can then be in both,
    /// and the stream skips queued frames not above the last replayed one
    /// (ids only grow).
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
        // None for a shared log, which is read below instead.
        let snapshot = last.and_then(|_| self.log.snapshot());
        let replay_later = last.map(|last| (last, topics.clone()));
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared::default());
        let key = inner.next_key;
        inner.next_key += 1;
        inner.streams += 1;
        inner.subscribers.push(Subscriber {
            key,
            topics,
            tx,
            watch: rx.clone(),
            shared: shared.clone(),
            stalled: false,
        });
        drop(inner);
        let mut sub = Subscription {
            hub: self,
            key,
            rx,
            replay: Replay::default(),
            shared,
        };
        if let Some((last, topics)) = replay_later {
            sub.replay = match snapshot {
                Some(snapshot) => snapshot.replay(last, &topics),
                // On failure `sub` is dropped, which unregisters it.
                None => self
                    .log
                    .replay(last, &topics)
                    .map_err(SubscribeError::Unavailable)?,
            };
        }
        Ok(sub)
    }

    /// Ends every stream (each writes its stream end and returns) and
    /// refuses new publishes and subscriptions.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        for s in inner.subscribers.drain(..) {
            s.end(RELEASED);
        }
    }

    /// The client of subscriber `key` went away: let go of it now rather
    /// than at its next heartbeat.
    pub fn hang_up(&self, key: u64) {
        let mut inner = self.lock();
        if let Some(i) = inner.subscribers.iter().position(|s| s.key == key) {
            inner.subscribers.swap_remove(i).end(GONE);
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
            history_events: self.log.len(),
            max_subscribers: self.limits.max_subscribers,
            log_up: self.log.shared().then(|| self.log.up()),
        }
    }

    /// Whether the event log can be reached now (always, for a local log).
    pub fn log_up(&self) -> bool {
        self.log.up()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::MemoryLog;

    fn hub(max_subscribers: usize, client_queue: usize) -> Hub {
        Hub::new(
            Box::new(MemoryLog::new(100, 1 << 20)),
            HubLimits {
                max_subscribers,
                client_queue,
            },
        )
    }

    #[test]
    fn publish_reaches_matching_subscribers_only() {
        let hub = hub(10, 10);
        let a = hub.subscribe(TopicFilter::topics(["a"]), None).unwrap();
        let all = hub.subscribe(TopicFilter::all(), None).unwrap();
        let p = hub.publish("b", None, "x").unwrap();
        assert_eq!(p.receivers, 1);
        assert!(a.rx.try_recv().is_err());
        assert_eq!(all.rx.try_recv().unwrap().id, p.id);
    }

    #[test]
    fn max_subscribers_is_enforced_and_freed_on_drop() {
        let hub = hub(1, 10);
        let first = hub.subscribe(TopicFilter::all(), None).unwrap();
        assert_eq!(
            hub.subscribe(TopicFilter::all(), None).err(),
            Some(SubscribeError::Full)
        );
        drop(first);
        assert!(hub.subscribe(TopicFilter::all(), None).is_ok());
    }

    #[test]
    fn a_subscriber_blocked_on_its_client_is_evicted() {
        let hub = hub(10, 2);
        let slow = hub.subscribe(TopicFilter::all(), None).unwrap();
        slow.set_blocked(true);
        for _ in 0..2 {
            assert_eq!(hub.publish("t", None, "x").unwrap().receivers, 1);
        }
        assert_eq!(slow.ended(), None);
        assert_eq!(hub.publish("t", None, "x").unwrap().receivers, 0);
        assert_eq!(slow.ended(), Some(Ending::Released));
        assert_eq!(hub.metrics.evicted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn subscribe_takes_the_replay_and_registers_together() {
        let hub = hub(10, 10);
        let first = hub.publish("t", None, "1").unwrap().id;
        hub.publish("t", None, "2").unwrap();
        let sub = hub.subscribe(TopicFilter::all(), Some(first)).unwrap();
        hub.publish("t", None, "3").unwrap();
        assert_eq!(sub.replay.frames.len(), 1);
        assert_eq!(sub.rx.len(), 1);
        assert!(sub.replay.frames[0].id < sub.rx.try_recv().unwrap().id);
    }

    #[test]
    fn a_publish_waits_for_a_subscriber_catching_up_but_not_for_a_stuck_one() {
        let hub = hub(10, 8);
        let sub = hub.subscribe(TopicFilter::all(), None).unwrap();
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
    fn a_publish_does_not_wait_for_a_subscriber_blocked_on_its_client() {
        let hub = hub(10, 8);
        let sub = hub.subscribe(TopicFilter::all(), None).unwrap();
        sub.set_blocked(true);
        // Five queued is more than half the queue, with no one reading: a
        // subscriber that is merely behind would hold this up for
        // CATCH_UP_STALL.
        let started = Instant::now();
        for _ in 0..5 {
            hub.publish("t", None, "x").unwrap();
        }
        assert!(started.elapsed() < CATCH_UP_STALL / 2);
        assert_eq!(sub.rx.len(), 5);
        assert_eq!(sub.ended(), None);
    }

    #[test]
    fn the_follower_waits_for_a_subscriber_catching_up() {
        let hub = hub(10, 8);
        let sub = hub.subscribe(TopicFilter::all(), None).unwrap();
        let frames: Vec<SharedFrame> = (0..5)
            .map(|_| hub.log.append(&Event::new("t", None, "x")).unwrap())
            .collect();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for _ in 0..3 {
                    std::thread::sleep(Duration::from_millis(20));
                    sub.rx.recv().unwrap();
                }
            });
            hub.fan_out_followed(&frames);
            assert!(sub.rx.len() <= 2, "went on before the reader caught up");
        });
        sub.set_blocked(true);
        let started = Instant::now();
        hub.fan_out_followed(&frames);
        assert!(
            started.elapsed() < CATCH_UP_STALL / 2,
            "waited for a blocked one"
        );
    }

    #[test]
    fn a_subscriber_waiting_for_cpu_gets_more_room() {
        let hub = hub(10, 2);
        let starved = hub.subscribe(TopicFilter::all(), None).unwrap();
        for _ in 0..2 * STARVED_FACTOR {
            assert_eq!(hub.publish("t", None, "x").unwrap().receivers, 1);
        }
        assert_eq!(starved.ended(), None);
        assert_eq!(hub.publish("t", None, "x").unwrap().receivers, 0);
        assert_eq!(starved.ended(), Some(Ending::Released));
    }

    #[test]
    fn hang_up_releases_the_subscriber_at_once() {
        let hub = hub(10, 10);
        let sub = hub.subscribe(TopicFilter::all(), None).unwrap();
        hub.hang_up(sub.key());
        assert_eq!(sub.ended(), Some(Ending::Gone));
        assert!(sub.rx.recv().is_err(), "sender not dropped");
        assert_eq!(hub.publish("t", None, "x").unwrap().receivers, 0);
    }

    #[test]
    fn one_encoding_is_shared_by_every_subscriber() {
        let hub = hub(10, 10);
        let a = hub.subscribe(TopicFilter::all(), None).unwrap();
        let b = hub.subscribe(TopicFilter::all(), None).unwrap();
        hub.publish("t", None, "x").unwrap();
        assert!(Arc::ptr_eq(&a.rx.recv().unwrap(), &b.rx.recv().unwrap()));
    }

    #[test]
    fn close_ends_every_stream_and_refuses_more() {
        let hub = hub(10, 10);
        let sub = hub.subscribe(TopicFilter::all(), None).unwrap();
        hub.close();
        assert_eq!(sub.ended(), Some(Ending::Released));
        assert_eq!(
            hub.subscribe(TopicFilter::all(), None).err(),
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
