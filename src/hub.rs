//! The registry of subscribers behind one mutex, the event log, the topics
//! that were ended, and the hub's verbs: `publish`, `end_topic`,
//! `subscribe`, `close`. Fans out with a
//! non-blocking send per subscriber and never waits for one: a subscriber
//! whose queue is full is marked behind and reads the log itself
//! (`stream.rs`). Never writes to a socket, never sees HTTP types, never
//! blocks while holding the lock (a followed log's I/O happens outside it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use crate::event::{EventId, Selector, TopicFilter, CLOSED};
use crate::history::{now_ms, EventLog, LogError, Page, PAGE_BYTES};
use crate::hold::Hold;
use crate::metrics::{Gauges, Metrics};
use crate::sse::{Event, Frame, SharedFrame};

/// Limits the hub enforces.
#[derive(Clone, Copy, Debug)]
pub struct HubLimits {
    pub max_subscribers: usize,
    /// Frames queued for one subscriber before it is marked behind.
    pub client_queue: usize,
}

pub struct Hub {
    inner: Mutex<Inner>,
    log: Box<dyn EventLog>,
    /// Subscriptions whose thread has not ended yet (registered or not):
    /// what `--max-subscribers` bounds and shutdown waits for.
    streams: AtomicUsize,
    /// Subscribers in the registry: `ssehub_subscribers`.
    registered: AtomicUsize,
    /// Signalled whenever a subscription ends, for shutdown to wait on.
    stream_ended: Condvar,
    /// Where publishers wait for streams short of CPU (hold.rs).
    hold: Hold,
    /// Held across the check and the append of `end_topic` on a followed
    /// log, so that one process never ends a topic twice.
    ending: Mutex<()>,
    limits: HubLimits,
    pub metrics: Metrics,
}

struct Inner {
    subscribers: Vec<Subscriber>,
    next_key: u64,
    closed: bool,
    /// The newest id fanned out: a subscriber registered now gets every
    /// event after it through its queue, or from the log.
    edge: Option<EventId>,
    /// The follower found events after `edge` gone from the log and ended
    /// every stream (`end_streams`): until it fans out the next event, a
    /// client that comes back with `edge` as its id is owed the gap, so it
    /// replays rather than taking what follows through its queue.
    gap_after_edge: bool,
    /// Ended topics and the id of their `ssehub:closed`: a topic is closed
    /// while that id is retained (`closed_at`).
    closes: HashMap<Box<str>, EventId>,
    /// `closes` forgets the dropped ones when it reaches this length.
    prune_closes_at: usize,
}

struct Subscriber {
    key: u64,
    topics: Arc<TopicFilter>,
    tx: Sender<SharedFrame>,
    shared: Arc<Shared>,
    /// Its socket, shut down by the hub to end a stream whose thread waits
    /// on its client. Valid while the subscriber is registered: the stream
    /// closes it only after its `Subscription` has left the registry.
    fd: RawFd,
    peer: Arc<Peer>,
    since: SystemTime,
}

/// Who a subscriber is, for `GET /subscriptions`.
#[derive(Debug, Default)]
pub struct Peer {
    /// The signed token's `sub`.
    pub sub: Option<String>,
    pub address: Option<SocketAddr>,
}

/// One open stream as `GET /subscriptions` lists it.
#[derive(Debug)]
pub struct Listed {
    pub id: u64,
    pub topics: Vec<String>,
    pub peer: Arc<Peer>,
    pub since: SystemTime,
    /// The last id written to it, or the one its client gave.
    pub last_event_id: Option<EventId>,
    /// Events queued for it, plus those the hub could not queue and its
    /// stream has not read from the log yet.
    pub behind: u64,
}

/// What a subscriber's stream thread and the hub both see.
#[derive(Debug, Default)]
struct Shared {
    /// `LIVE`, or why the hub let go.
    state: AtomicU8,
    /// Its queue overflowed: frames were not queued, read the log.
    behind: AtomicBool,
    /// The thread waits for room in its socket.
    blocked: AtomicBool,
    /// It waited for room since it last was at the live edge: its client
    /// is slower than the events, and no publish waits for it.
    slow_client: AtomicBool,
    /// The millisecond of the last id written (`u64::MAX` before any):
    /// below the log's oldest, the subscriber can no longer catch up.
    position_ms: AtomicU64,
    /// The last id written, or the one the client gave: for listing only.
    written: Mutex<Option<EventId>>,
    /// Matching events fanned out while it was behind, and frames dropped
    /// from its queue to be read from the log, not read yet: an estimate.
    missed: AtomicU64,
    /// Counted in `ssehub_subscribers_evicted_total` already.
    evicted: AtomicBool,
}

impl Shared {
    /// Counts this subscriber as evicted, once whoever notices first.
    fn count_evicted(&self, metrics: &Metrics) {
        if !self.evicted.swap(true, Ordering::AcqRel) {
            Metrics::add(&metrics.evicted, 1);
        }
    }
}

impl Subscriber {
    /// Lets go of it for `why`. Ended by the hub (`RELEASED`: a DELETE, a
    /// log that lost entries), a thread waiting on its client for room is
    /// woken by shutting its socket down (under the hub lock, while the fd
    /// is the stream's: see `fd`); a client that is gone is left to the
    /// stream to find out, and to tell why.
    fn release(&self, why: u8) {
        self.shared.state.store(why, Ordering::Release);
        if why == RELEASED && self.shared.blocked.load(Ordering::Acquire) {
            // SAFETY: shutdown on a socket the stream keeps open while it
            // is registered.
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        }
    }
}

/// `Inner::closes` is pruned of dropped ends first at this length.
const PRUNE_CLOSES: usize = 1024;

const LIVE: u8 = 0;
const RELEASED: u8 = 1;
const GONE: u8 = 2;

/// Why the hub let go of a subscriber.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Ending {
    /// The hub is shutting down, or the log lost events the stream needs:
    /// the stream should end properly, and its client reconnect.
    Released,
    /// The client went away, or the hub gave up on it: nothing more to
    /// write.
    Gone,
}

/// What one fan-out did.
#[derive(Default)]
struct FannedOut {
    receivers: usize,
    evicted: u64,
    /// Subscribers short of CPU, and the millisecond each must reach.
    starved: Vec<(Arc<Shared>, u64)>,
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
    /// Every topic asked for was ended, and the client has seen the end
    /// (or gave no last event id): 204.
    Ended,
}

/// Why a publish was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The hub is shutting down.
    Closed,
    /// The log cannot be written; nothing was published.
    Unavailable(LogError),
    /// The topic was ended and its `ssehub:closed` is still retained.
    TopicClosed,
}

/// Which of a stream's topics have ended, as far as it has written: the
/// stream ends once every one has. Only a stream of exact topics has one;
/// a selector always has topics to come.
#[derive(Debug)]
pub struct Ends {
    /// Its topics, each with whether its end is behind the stream.
    topics: Vec<(Box<str>, bool)>,
}

impl Ends {
    /// Records that `frame` was written; true when every topic has ended.
    pub fn wrote(&mut self, frame: &Frame) -> bool {
        if !frame.closes {
            return false;
        }
        if let Some(t) = self.topics.iter_mut().find(|(t, _)| *t == frame.topic) {
            t.1 = true;
        }
        self.topics.iter().all(|(_, ended)| *ended)
    }
}

/// A registered subscriber: its queue, its topics and where it reads the log
/// from. Dropping it removes the subscriber from the registry.
pub struct Subscription<'a> {
    hub: &'a Hub,
    key: u64,
    pub rx: Receiver<SharedFrame>,
    pub topics: Arc<TopicFilter>,
    /// The id after which this subscriber is owed every event: the given
    /// last event id, or the newest id fanned out when it registered.
    pub start: Option<EventId>,
    /// Whether the stream must read the log after `start` before its queue:
    /// a replay. Not with a followed log when the given id is at or past
    /// what the follower had fanned out: everything after that comes
    /// through the queue (the follower lags this client, which got its
    /// events from another process), and what is not above `start` is
    /// skipped there. Unless the follower has just ended every stream for
    /// a gap after what it fanned out (`gap_after_edge`): then the replay
    /// tells of the gap.
    pub replay: bool,
    /// For a stream of exact topics: which have ended before `start`.
    pub ends: Option<Ends>,
    shared: Arc<Shared>,
}

impl Subscription<'_> {
    /// Set once the hub has let go of this subscriber.
    pub fn ended(&self) -> Option<Ending> {
        match self.shared.state.load(Ordering::Acquire) {
            LIVE => None,
            RELEASED => Some(Ending::Released),
            _ => Some(Ending::Gone),
        }
    }

    /// True once since the hub last found its queue full: the frames it
    /// could not queue are in the log.
    pub fn take_behind(&self) -> bool {
        self.shared.behind.swap(false, Ordering::AcqRel)
    }

    /// Tells the hub whether the thread waits for room in its socket.
    pub fn set_blocked(&self, blocked: bool) {
        self.shared.blocked.store(blocked, Ordering::Release);
        if blocked && !self.shared.slow_client.swap(true, Ordering::SeqCst) {
            // No publish waits for it any more.
            self.hub.hold.progress();
        }
    }

    /// The stream wrote a page of the log: publishers held back for it may
    /// look again (`hold.rs`).
    pub fn progress(&self) {
        self.hub.hold.progress();
    }

    /// The stream is back at the live edge.
    pub fn at_edge(&self) {
        self.shared.slow_client.store(false, Ordering::Release);
        self.hub.hold.progress();
    }

    /// Records where the stream reads on from: `at`, and `wrote`, the last
    /// id written to the client if it wrote one (a page of the log may scan
    /// past events of other topics and write nothing).
    pub fn set_position(&self, at: EventId, wrote: Option<EventId>) {
        // SeqCst with `Hold`'s waiting count: a publisher that counts itself
        // waiting then sees this position, or this stream sees it waiting.
        self.shared.position_ms.store(at.ms, Ordering::SeqCst);
        if let Some(id) = wrote {
            *self
                .shared
                .written
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(id);
        }
    }

    /// Where the stream reads on from before it has written anything.
    pub fn set_start(&self, id: EventId) {
        self.shared.position_ms.store(id.ms, Ordering::Relaxed);
    }

    /// The stream dropped `queued` frames to read them from the log.
    pub fn to_read(&self, queued: usize) {
        self.shared
            .missed
            .fetch_add(queued as u64, Ordering::Relaxed);
    }

    /// The stream read `frames` from the log.
    pub fn read_back(&self, frames: usize) {
        let _ = self
            .shared
            .missed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(frames as u64))
            });
    }

    /// One page of the log after `after` for this subscriber's topics, of
    /// about `max_bytes`.
    pub fn read(&self, after: Option<EventId>, max_bytes: usize) -> Result<Page, LogError> {
        self.hub.log.read(after, &self.topics, max_bytes)
    }

    /// Whether the event log is reachable (Redis up, the files writable).
    pub fn log_up(&self) -> bool {
        self.hub.log_up()
    }

    /// The stream gives up on its client (it fell off the history, or took
    /// no data for two heartbeats): out of the registry and counted as
    /// evicted now, before its thread has closed the socket. Counted even
    /// when the hang-up watch was first to take it out: the kernel ends a
    /// connection whose window stayed shut (`TCP_USER_TIMEOUT`) as the
    /// stream's own wait would have.
    pub fn evict(&self) {
        self.hub.unregister(self.key, GONE);
        self.shared.count_evicted(&self.hub.metrics);
        self.hub.hold.progress();
    }

    /// The stream ends properly now: out of the registry (and the gauge)
    /// before it writes its end to a client that may be slow to take it.
    pub fn leave(&self) {
        self.hub.unregister(self.key, RELEASED);
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
        self.hub.unregister(self.key, GONE);
        let inner = self.hub.lock();
        self.hub.streams.fetch_sub(1, Ordering::AcqRel);
        drop(inner);
        self.hub.stream_ended.notify_all();
        self.hub.hold.progress();
    }
}

impl Hub {
    pub fn new(log: Box<dyn EventLog>, limits: HubLimits) -> Hub {
        Hub {
            inner: Mutex::new(Inner {
                subscribers: Vec::new(),
                next_key: 0,
                closed: false,
                edge: None,
                gap_after_edge: false,
                closes: HashMap::new(),
                prune_closes_at: PRUNE_CLOSES,
            }),
            log,
            streams: AtomicUsize::new(0),
            registered: AtomicUsize::new(0),
            stream_ended: Condvar::new(),
            hold: Hold::default(),
            ending: Mutex::new(()),
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
    /// for every matching subscriber. With a followed log the event is
    /// appended outside the lock and reaches subscribers through the
    /// follower (`fan_out_followed`), so this process delivers it in the
    /// log's order; `receivers` then counts the matching subscribers
    /// registered when the log accepted it. A topic that was ended is
    /// refused; on a followed log a publish racing the end of its topic
    /// (here or on another process) may still land after it.
    pub fn publish(
        &self,
        topic: &str,
        name: Option<&str>,
        data: &str,
    ) -> Result<Published, PublishError> {
        self.append(&Event::new(topic, name, data))
    }

    /// Ends `topic` (SPEC "Ending a topic"): appends its `ssehub:closed`
    /// event with `data`, as `publish` does. From then until the log drops
    /// that event, publishing to the topic and ending it again are refused,
    /// and subscribing to it alone is answered 204. Streams end themselves
    /// once they have written it.
    pub fn end_topic(&self, topic: &str, data: &str) -> Result<Published, PublishError> {
        let event = Event::new(topic, Some(CLOSED), data);
        if !self.log.followed() {
            return self.append(&event);
        }
        let _one = self.ending.lock().unwrap_or_else(|e| e.into_inner());
        let published = self.append(&event)?;
        // Refused here at once, before the follower has handed it on.
        let mut inner = self.lock();
        self.learn_close(&mut inner, topic, published.id);
        Ok(published)
    }

    fn append(&self, event: &Event) -> Result<Published, PublishError> {
        let topic = event.topic;
        let (id, receivers) = if self.log.followed() {
            let mut inner = self.lock();
            if inner.closed {
                return Err(PublishError::Closed);
            }
            if self.closed_at(&mut inner, topic).is_some() {
                return Err(PublishError::TopicClosed);
            }
            drop(inner);
            let frame = self.log.append(event).map_err(PublishError::Unavailable)?;
            let inner = self.lock();
            let receivers = inner
                .subscribers
                .iter()
                .filter(|s| s.topics.matches(topic))
                .count();
            (frame.id, receivers)
        } else {
            let mut inner = self.lock();
            if inner.closed {
                return Err(PublishError::Closed);
            }
            if self.closed_at(&mut inner, topic).is_some() {
                return Err(PublishError::TopicClosed);
            }
            let frame = self.log.append(event).map_err(PublishError::Unavailable)?;
            let fanned = self.fan_out(&mut inner, &frame);
            drop(inner);
            (frame.id, self.after_fan_out(fanned))
        };
        Metrics::add(&self.metrics.published, 1);
        Ok(Published { id, receivers })
    }

    /// The id of the `ssehub:closed` that ended `topic`, while the log
    /// retains it; a dropped one is forgotten, and the topic is open again.
    fn closed_at(&self, inner: &mut Inner, topic: &str) -> Option<EventId> {
        let id = *inner.closes.get(topic)?;
        if !self.dropped(id) {
            return Some(id);
        }
        inner.closes.remove(topic);
        None
    }

    /// Whether the log no longer retains `id`. A followed log's oldest id
    /// may be older news than `id` (the Redis follower reads it before the
    /// entries it fans out), so only an oldest id above `id` tells there;
    /// an empty memory log retains nothing.
    fn dropped(&self, id: EventId) -> bool {
        match self.log.oldest() {
            Some(oldest) => oldest > id,
            None => !self.log.followed(),
        }
    }

    fn learn_close(&self, inner: &mut Inner, topic: &str, id: EventId) {
        let known = inner.closes.entry(topic.into()).or_insert(id);
        *known = (*known).max(id);
        if inner.closes.len() >= inner.prune_closes_at {
            let mut closes = std::mem::take(&mut inner.closes);
            closes.retain(|_, id| !self.dropped(*id));
            inner.closes = closes;
            inner.prune_closes_at = (2 * inner.closes.len()).max(PRUNE_CLOSES);
        }
    }

    /// Reads the log from its oldest event to learn which topics are
    /// ended, before the hub serves: the ends a restarted process finds in
    /// its files, or one process finds in the shared Redis stream. Returns
    /// how many it found.
    pub fn recall_ends(&self) -> usize {
        let all = TopicFilter::all();
        let mut after = None;
        let mut found = Vec::new();
        loop {
            let page = match self.log.read(after, &all, PAGE_BYTES) {
                Ok(page) => page,
                Err(e) => {
                    log::warn!("cannot read the event log for ended topics: {e}");
                    break;
                }
            };
            found.extend(
                page.frames
                    .iter()
                    .filter(|f| f.closes)
                    .map(|f| (f.topic.clone(), f.id)),
            );
            if page.end || page.scanned.is_none() || page.scanned == after {
                break;
            }
            after = page.scanned;
        }
        let mut inner = self.lock();
        for (topic, id) in &found {
            self.learn_close(&mut inner, topic, *id);
        }
        found.len()
    }

    /// Where the follower of a followed log starts: every later event is
    /// fanned out by it.
    pub fn follow_from(&self, at: EventId) {
        self.lock().edge.get_or_insert(at);
    }

    /// Queues frames read from a followed log, oldest first, for every
    /// matching subscriber, as `publish` does for a local one. The lock is
    /// taken per frame so subscribers can register in between.
    pub fn fan_out_followed(&self, frames: &[SharedFrame]) {
        for frame in frames {
            let mut inner = self.lock();
            let mut fanned = self.fan_out(&mut inner, frame);
            drop(inner);
            // The follower is never held: it feeds every subscriber of this
            // process, and a wait per frame would add up over a batch.
            fanned.starved.clear();
            self.after_fan_out(fanned);
        }
    }

    /// Ends every open stream without closing the hub: their clients
    /// reconnect with their last id and replay, or learn of a gap. For when
    /// the follower may have missed events of a followed log.
    pub fn end_streams(&self) -> usize {
        let mut inner = self.lock();
        inner.gap_after_edge = true;
        let ended = inner.subscribers.len();
        for s in inner.subscribers.drain(..) {
            s.release(RELEASED);
        }
        self.registered.fetch_sub(ended, Ordering::AcqRel);
        ended
    }

    /// Queues `frame` for every matching subscriber. Never waits: a full
    /// queue marks its subscriber behind, and a subscriber marked behind gets
    /// nothing queued until its stream has read the log. One that is also
    /// stuck in a write to its client while its position fell below the
    /// oldest retained event can never catch up: its socket is shut down so
    /// its thread returns at once. One behind whose client is not what holds
    /// it up is short of CPU: the caller waits for it (`after_fan_out`).
    fn fan_out(&self, inner: &mut Inner, frame: &SharedFrame) -> FannedOut {
        inner.edge = Some(frame.id);
        inner.gap_after_edge = false;
        if frame.closes {
            self.learn_close(inner, &frame.topic, frame.id);
        }
        let queue = self.limits.client_queue;
        let mut out = FannedOut::default();
        let mut oldest = None;
        inner.subscribers.retain(|s| {
            if !s.topics.matches(&frame.topic) {
                return true;
            }
            // Once one frame was not queued, none after it is until the
            // stream has taken the mark: its queue stays a run of
            // consecutive frames, and the log holds the rest in order.
            if s.shared.behind.load(Ordering::Acquire) || s.tx.len() >= queue {
                s.shared.behind.store(true, Ordering::Release);
                s.shared.missed.fetch_add(1, Ordering::Relaxed);
                let oldest = *oldest.get_or_insert_with(|| self.log.oldest());
                let position = s.shared.position_ms.load(Ordering::Relaxed);
                if s.shared.blocked.load(Ordering::Acquire) {
                    if oldest.is_some_and(|o| position < o.ms) {
                        s.shared.state.store(GONE, Ordering::Release);
                        s.shared.evicted.store(true, Ordering::Release);
                        // SAFETY: shutdown on a socket the stream keeps open
                        // while it is registered (see `Subscriber::fd`).
                        unsafe { libc::shutdown(s.fd, libc::SHUT_RDWR) };
                        out.evicted += 1;
                        return false;
                    }
                } else if !s.shared.slow_client.load(Ordering::Acquire) {
                    // Short of CPU, not of a client: wait until it has
                    // written this frame from the log.
                    out.starved.push((s.shared.clone(), frame.id.ms));
                }
                out.receivers += 1;
                return true;
            }
            // Unbounded: fails only when its stream is gone, to be pruned.
            if s.tx.send(frame.clone()).is_err() {
                return false;
            }
            out.receivers += 1;
            true
        });
        if out.evicted > 0 {
            self.registered
                .fetch_sub(out.evicted as usize, Ordering::AcqRel);
        }
        out
    }

    /// Outside the lock: counts the evicted, and holds the caller back while
    /// a subscriber short of CPU has not yet written the frame it missed
    /// (for at most `hold::MAX_HOLD`). Returns the receivers.
    fn after_fan_out(&self, out: FannedOut) -> usize {
        if out.evicted > 0 {
            Metrics::add(&self.metrics.evicted, out.evicted);
            log::debug!(
                "evicted {} subscribers that fell off the history",
                out.evicted
            );
        }
        if !out.starved.is_empty() {
            self.hold.wait_while(|| {
                out.starved.iter().any(|(s, until)| {
                    s.state.load(Ordering::Acquire) == LIVE
                        && !s.slow_client.load(Ordering::Acquire)
                        && s.position_ms.load(Ordering::SeqCst) < *until
                })
            });
        }
        out.receivers
    }

    /// Registers a subscriber for `topics`, owed every event after `last`
    /// (a replay, read from the log by its stream), or after the newest
    /// event fanned out. Registration and that position are taken in one
    /// critical section, and ids only grow, so every later event reaches it
    /// either through its queue or from the log. `fd` is its socket.
    /// Topics that all ended before `last` (or, without one, at all) are
    /// refused with `Ended`.
    pub fn subscribe(
        &self,
        topics: TopicFilter,
        last: Option<EventId>,
        fd: RawFd,
        peer: Peer,
    ) -> Result<Subscription<'_>, SubscribeError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(SubscribeError::Closed);
        }
        let start = last.or(inner.edge);
        let ends = match topics.only_topics() {
            Some(names) if !inner.closes.is_empty() => {
                let topics: Vec<(Box<str>, bool)> = names
                    .iter()
                    .map(|t| {
                        let ended = self.closed_at(&mut inner, t);
                        (t.clone(), ended.is_some_and(|id| Some(id) <= start))
                    })
                    .collect();
                if topics.iter().all(|(_, ended)| *ended) {
                    return Err(SubscribeError::Ended);
                }
                Some(Ends { topics })
            }
            Some(names) => Some(Ends {
                topics: names.iter().map(|t| (t.clone(), false)).collect(),
            }),
            None => None,
        };
        if self.streams.load(Ordering::Acquire) >= self.limits.max_subscribers {
            return Err(SubscribeError::Full);
        }
        // An unbounded channel allocates as frames arrive, where a bounded
        // one would hold --client-queue slots per idle stream; the bound is
        // `fan_out`'s length check.
        let (tx, rx) = crossbeam_channel::unbounded();
        let topics = Arc::new(topics);
        let shared = Arc::new(Shared {
            position_ms: AtomicU64::new(u64::MAX),
            written: Mutex::new(last),
            ..Shared::default()
        });
        let key = inner.next_key;
        inner.next_key += 1;
        self.streams.fetch_add(1, Ordering::AcqRel);
        self.registered.fetch_add(1, Ordering::AcqRel);
        inner.subscribers.push(Subscriber {
            key,
            topics: topics.clone(),
            tx,
            shared: shared.clone(),
            fd,
            peer: Arc::new(peer),
            since: SystemTime::now(),
        });
        // An id from the future (or another deployment) is no such client:
        // it replays, and learns of the gap.
        let caught_up = self.log.followed()
            && !inner.gap_after_edge
            && last.is_some_and(|last| {
                inner.edge.is_some_and(|edge| last >= edge) && last.ms <= now_ms()
            });
        drop(inner);
        Ok(Subscription {
            hub: self,
            key,
            rx,
            topics,
            start,
            replay: last.is_some() && !caught_up,
            ends,
            shared,
        })
    }

    /// The open streams whose topics overlap `selector` (all without one),
    /// at most `max`, oldest first, and whether there were more. The lock
    /// is held only to copy references.
    pub fn subscriptions(&self, selector: Option<&Selector>, max: usize) -> (Vec<Listed>, bool) {
        type Copied = (
            u64,
            Arc<TopicFilter>,
            Arc<Peer>,
            SystemTime,
            Arc<Shared>,
            usize,
        );
        let inner = self.lock();
        let mut copied: Vec<Copied> = inner
            .subscribers
            .iter()
            .filter(|s| selector.is_none_or(|sel| s.topics.overlaps(sel)))
            .take(max + 1)
            .map(|s| {
                let (topics, peer, shared) = (s.topics.clone(), s.peer.clone(), s.shared.clone());
                (s.key, topics, peer, s.since, shared, s.tx.len())
            })
            .collect();
        drop(inner);
        let truncated = copied.len() > max;
        copied.truncate(max);
        let mut listed: Vec<Listed> = copied
            .into_iter()
            .map(|(id, topics, peer, since, shared, queued)| {
                let missed = shared.missed.load(Ordering::Relaxed);
                Listed {
                    id,
                    topics: topics.selectors(),
                    peer,
                    since,
                    last_event_id: *shared.written.lock().unwrap_or_else(|e| e.into_inner()),
                    behind: queued as u64 + missed,
                }
            })
            .collect();
        listed.sort_by_key(|l| l.id);
        (listed, truncated)
    }

    /// Ends the stream of subscriber `id` properly (its client may
    /// reconnect); false when there is none.
    pub fn end_subscription(&self, id: u64) -> bool {
        self.unregister(id, RELEASED)
    }

    /// Takes subscriber `key` out of the registry, marked `why`; false when
    /// it was not there any more.
    fn unregister(&self, key: u64, why: u8) -> bool {
        let mut inner = self.lock();
        let Some(i) = inner.subscribers.iter().position(|s| s.key == key) else {
            return false;
        };
        let s = inner.subscribers.swap_remove(i);
        s.release(why);
        self.registered.fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// Ends every stream (each writes its stream end and returns) and
    /// refuses new publishes and subscriptions.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        let ended = inner.subscribers.len();
        // Not `release`: every stream writes its end (a stream stuck on its
        // client is left to the exit's grace period).
        for s in inner.subscribers.drain(..) {
            s.shared.state.store(RELEASED, Ordering::Release);
        }
        self.registered.fetch_sub(ended, Ordering::AcqRel);
    }

    /// The client of subscriber `key` went away: let go of it now rather
    /// than at its next heartbeat.
    pub fn hang_up(&self, key: u64) {
        self.unregister(key, GONE);
    }

    /// Waits until every subscription has ended or `timeout` has passed;
    /// returns how many are still open.
    pub fn wait_streams_ended(&self, timeout: Duration) -> usize {
        let inner = self.lock();
        let waited = self
            .stream_ended
            .wait_timeout_while(inner, timeout, |_| self.streams.load(Ordering::Acquire) > 0)
            .unwrap_or_else(|e| e.into_inner());
        drop(waited);
        self.streams.load(Ordering::Acquire)
    }

    /// The gauges for `/metrics`.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            subscribers: self.registered.load(Ordering::Acquire),
            history_events: self.log.len(),
            max_subscribers: self.limits.max_subscribers,
            log_up: self
                .log
                .followed()
                .then(|| (self.log.store(), self.log.up())),
        }
    }

    /// Whether the event log can be written now (always, for a memory log).
    pub fn log_up(&self) -> bool {
        self.log.up()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{MemoryLog, PAGE_BYTES};
    use std::time::Instant;

    fn hub(max_subscribers: usize, client_queue: usize) -> Hub {
        Hub::new(
            Box::new(MemoryLog::new(100, 1 << 20)),
            HubLimits {
                max_subscribers,
                client_queue,
            },
        )
    }

    fn all() -> TopicFilter {
        TopicFilter::all()
    }

    #[test]
    fn publish_reaches_matching_subscribers_only() {
        let hub = hub(10, 10);
        let a = hub
            .subscribe(TopicFilter::topics(["a"]), None, -1, Peer::default())
            .unwrap();
        let all = hub.subscribe(all(), None, -1, Peer::default()).unwrap();
        let p = hub.publish("b", None, "x").unwrap();
        assert_eq!(p.receivers, 1);
        assert!(a.rx.try_recv().is_err());
        assert_eq!(all.rx.try_recv().unwrap().id, p.id);
    }

    #[test]
    fn max_subscribers_is_enforced_and_freed_on_drop() {
        let hub = hub(1, 10);
        let first = hub.subscribe(all(), None, -1, Peer::default()).unwrap();
        assert_eq!(
            hub.subscribe(all(), None, -1, Peer::default()).err(),
            Some(SubscribeError::Full)
        );
        drop(first);
        assert!(hub.subscribe(all(), None, -1, Peer::default()).is_ok());
    }

    #[test]
    fn a_full_queue_marks_behind_and_never_evicts_or_waits() {
        let hub = hub(10, 2);
        let slow = hub.subscribe(all(), None, -1, Peer::default()).unwrap();
        let started = Instant::now();
        for _ in 0..50 {
            assert_eq!(hub.publish("t", None, "x").unwrap().receivers, 1);
        }
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(slow.rx.len(), 2);
        assert_eq!(slow.ended(), None);
        assert!(slow.take_behind());
        assert!(!slow.take_behind(), "behind is taken once");
        // What was not queued is in the log after the last queued frame.
        let second = slow.rx.try_iter().last().unwrap();
        let page = slow.read(Some(second.id), PAGE_BYTES).unwrap();
        assert_eq!((page.gap, page.frames.len(), page.end), (None, 48, true));
        assert_eq!(hub.metrics.evicted.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_publish_waits_a_bounded_time_for_a_stream_short_of_cpu_only() {
        use crate::hold::MAX_HOLD;
        let hub = hub(10, 2);
        let first = hub.publish("t", None, "x").unwrap().id;
        let sub = hub.subscribe(all(), None, -1, Peer::default()).unwrap();
        sub.set_position(first, Some(first));
        // Once its queue is full and it has not written what it missed, a
        // publish is held back, for MAX_HOLD at most.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut held = Duration::ZERO;
        while held < MAX_HOLD && Instant::now() < deadline {
            let started = Instant::now();
            hub.publish("t", None, "x").unwrap();
            held = started.elapsed();
        }
        assert!(held >= MAX_HOLD && held < 4 * MAX_HOLD, "held {held:?}");
        // Woken as soon as the stream has caught up.
        std::thread::scope(|s| {
            s.spawn(|| {
                while hub.hold.waiting.load(Ordering::Acquire) == 0 {
                    std::thread::yield_now();
                }
                let end = EventId {
                    ms: u64::MAX - 1,
                    seq: 0,
                };
                sub.set_position(end, Some(end));
                sub.progress();
            });
            let started = Instant::now();
            hub.publish("t", None, "x").unwrap();
            assert!(started.elapsed() < MAX_HOLD, "not woken");
        });
        // A stream whose client made it wait is never waited for.
        sub.set_position(first, Some(first));
        sub.set_blocked(true);
        sub.set_blocked(false);
        let started = Instant::now();
        for _ in 0..5 {
            hub.publish("t", None, "x").unwrap();
        }
        assert!(started.elapsed() < MAX_HOLD, "waited for a slow client");
        assert_eq!(sub.ended(), None);
    }

    #[test]
    fn nothing_is_queued_after_a_frame_that_was_not() {
        let hub = hub(10, 2);
        let sub = hub.subscribe(all(), None, -1, Peer::default()).unwrap();
        let ids: Vec<EventId> = (0..3)
            .map(|_| hub.publish("t", None, "x").unwrap().id)
            .collect();
        // The third found the queue full; the stream takes one, making
        // room: the fourth must not be queued ahead of the third.
        assert_eq!(sub.rx.try_recv().unwrap().id, ids[0]);
        let fourth = hub.publish("t", None, "x").unwrap().id;
        let queued: Vec<EventId> = sub.rx.try_iter().map(|f| f.id).collect();
        assert_eq!(queued, [ids[1]]);
        assert!(sub.take_behind());
        let page = sub.read(Some(ids[1]), PAGE_BYTES).unwrap();
        let read: Vec<EventId> = page.frames.iter().map(|f| f.id).collect();
        assert_eq!(read, [ids[2], fourth]);
        // Marked behind no more: queued again.
        let fifth = hub.publish("t", None, "x").unwrap().id;
        assert_eq!(sub.rx.try_recv().unwrap().id, fifth);
    }

    #[test]
    fn a_subscriber_stuck_in_a_write_below_the_oldest_is_shut_down() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let hub = Hub::new(
            Box::new(MemoryLog::new(5, 1 << 20)),
            HubLimits {
                max_subscribers: 10,
                client_queue: 2,
            },
        );
        let first = hub.publish("t", None, "x").unwrap().id;
        let stuck = hub
            .subscribe(
                all(),
                None,
                std::os::fd::AsRawFd::as_raw_fd(&server),
                Peer::default(),
            )
            .unwrap();
        stuck.set_position(first, Some(first));
        stuck.set_blocked(true);
        for _ in 0..5 {
            hub.publish("t", None, "x").unwrap();
        }
        assert_eq!(
            stuck.ended(),
            None,
            "evicted while its position is retained"
        );
        // Once `first`'s millisecond is gone from the log it cannot catch up.
        let deadline = Instant::now() + Duration::from_secs(5);
        while hub.log.oldest().unwrap().ms <= first.ms && Instant::now() < deadline {
            hub.publish("t", None, "x").unwrap();
        }
        hub.publish("t", None, "x").unwrap();
        assert_eq!(stuck.ended(), Some(Ending::Gone));
        assert_eq!(hub.metrics.evicted.load(Ordering::Relaxed), 1);
        assert_eq!(hub.gauges().subscribers, 0);
        let mut byte = [0u8];
        assert_eq!(std::io::Read::read(&mut &client, &mut byte).unwrap(), 0);
        drop(stuck);
        assert_eq!(hub.wait_streams_ended(Duration::ZERO), 0);
    }

    #[test]
    fn subscribe_records_where_the_subscriber_starts() {
        let hub = hub(10, 10);
        let sub = hub.subscribe(all(), None, -1, Peer::default()).unwrap();
        assert_eq!(sub.start, None);
        let first = hub.publish("t", None, "1").unwrap().id;
        let second = hub.publish("t", None, "2").unwrap().id;
        let live = hub.subscribe(all(), None, -1, Peer::default()).unwrap();
        assert_eq!(live.start, Some(second));
        let replay = hub
            .subscribe(all(), Some(first), -1, Peer::default())
            .unwrap();
        assert_eq!(replay.start, Some(first));
        let third = hub.publish("t", None, "3").unwrap().id;
        assert_eq!(live.rx.try_recv().unwrap().id, third);
        let page = replay.read(replay.start, PAGE_BYTES).unwrap();
        let ids: Vec<EventId> = page.frames.iter().map(|f| f.id).collect();
        assert_eq!(ids, [second, third]);
    }

    /// With a followed log, a client whose id is the newest fanned out
    /// takes what follows through its queue. Not once the follower found
    /// events after it gone and ended every stream: a client that comes back
    /// with that id before the next event is fanned out must replay and
    /// learn of the gap, not get the events after it as if none were missed.
    #[test]
    fn after_a_gap_a_client_at_the_edge_replays() {
        let dir = crate::disk::tests::TempDir::new("hub-gap");
        let (log, _follower) =
            crate::disk::open(&dir.0, 100, 1 << 20, crate::config::Fsync::Never).unwrap();
        let hub = Hub::new(
            Box::new(log),
            HubLimits {
                max_subscribers: 10,
                client_queue: 10,
            },
        );
        let at = EventId { ms: 1_000, seq: 0 };
        hub.follow_from(at);
        let caught_up = hub.subscribe(all(), Some(at), -1, Peer::default()).unwrap();
        assert!(!caught_up.replay);
        assert_eq!(hub.end_streams(), 1);
        let back = hub.subscribe(all(), Some(at), -1, Peer::default()).unwrap();
        assert!(back.replay, "a client at the edge of a gap took the queue");
        // Once the follower hands on what came after the gap, a client
        // holding that is caught up again, and one holding `at` is not.
        let next = EventId { ms: 3_000, seq: 0 };
        let frame = Arc::new(Frame::new(next, &Event::new("t", None, "x")));
        hub.fan_out_followed(&[frame]);
        let newest = hub
            .subscribe(all(), Some(next), -1, Peer::default())
            .unwrap();
        assert!(!newest.replay);
        let old = hub.subscribe(all(), Some(at), -1, Peer::default()).unwrap();
        assert!(old.replay);
        drop((caught_up, back, newest, old));
    }

    #[test]
    fn hang_up_releases_the_subscriber_at_once() {
        let hub = hub(10, 10);
        let sub = hub.subscribe(all(), None, -1, Peer::default()).unwrap();
        hub.hang_up(sub.key());
        assert_eq!(sub.ended(), Some(Ending::Gone));
        assert!(sub.rx.recv().is_err(), "sender not dropped");
        assert_eq!(hub.publish("t", None, "x").unwrap().receivers, 0);
        assert_eq!(hub.gauges().subscribers, 0);
    }

    #[test]
    fn an_evicted_subscriber_leaves_the_gauge_at_once() {
        let hub = hub(10, 10);
        let sub = hub.subscribe(all(), None, -1, Peer::default()).unwrap();
        assert_eq!(hub.gauges().subscribers, 1);
        sub.evict();
        assert_eq!(hub.gauges().subscribers, 0);
        assert_eq!(hub.metrics.evicted.load(Ordering::Relaxed), 1);
        assert_eq!(
            hub.wait_streams_ended(Duration::ZERO),
            1,
            "thread still ending"
        );
        drop(sub);
        assert_eq!(hub.wait_streams_ended(Duration::ZERO), 0);
    }

    #[test]
    fn one_encoding_is_shared_by_every_subscriber() {
        let hub = hub(10, 10);
        let a = hub.subscribe(all(), None, -1, Peer::default()).unwrap();
        let b = hub.subscribe(all(), None, -1, Peer::default()).unwrap();
        hub.publish("t", None, "x").unwrap();
        assert!(Arc::ptr_eq(&a.rx.recv().unwrap(), &b.rx.recv().unwrap()));
    }

    #[test]
    fn an_ended_topic_refuses_publishes_and_subscribers_that_saw_its_end() {
        let hub = hub(10, 10);
        let one = || TopicFilter::topics(["job"]);
        let early = hub.publish("job", None, "1").unwrap().id;
        let mut live = hub.subscribe(one(), None, -1, Peer::default()).unwrap();
        let end = hub.end_topic("job", "bye").unwrap().id;
        let frame = live.rx.try_recv().unwrap();
        assert!(frame.closes);
        assert!(live.ends.as_mut().unwrap().wrote(&frame), "its only topic");
        assert_eq!(
            hub.publish("job", None, "x").err(),
            Some(PublishError::TopicClosed)
        );
        assert_eq!(
            hub.end_topic("job", "").err(),
            Some(PublishError::TopicClosed)
        );
        let refused = |last| hub.subscribe(one(), last, -1, Peer::default()).err();
        assert_eq!(refused(None), Some(SubscribeError::Ended));
        assert_eq!(refused(Some(end)), Some(SubscribeError::Ended));
        assert_eq!(refused(Some(early)), None, "it missed the end");
        let mut both = hub
            .subscribe(TopicFilter::topics(["job", "x"]), None, -1, Peer::default())
            .unwrap();
        assert!(!both.ends.as_mut().unwrap().wrote(&frame), "x is open");
        assert!(hub
            .subscribe(all(), None, -1, Peer::default())
            .unwrap()
            .ends
            .is_none());
    }

    #[test]
    fn an_end_the_log_dropped_opens_the_topic_again() {
        let hub = Hub::new(
            Box::new(MemoryLog::new(2, 1 << 20)),
            HubLimits {
                max_subscribers: 10,
                client_queue: 10,
            },
        );
        hub.end_topic("job", "").unwrap();
        hub.publish("a", None, "1").unwrap();
        assert!(hub.publish("job", None, "x").is_err());
        hub.publish("a", None, "2").unwrap();
        assert!(hub.publish("job", None, "x").is_ok());
    }

    #[test]
    fn ends_are_recalled_from_the_log() {
        let log = MemoryLog::new(100, 1 << 20);
        let event = Event::new("job", Some(CLOSED), "");
        log.append(&Event::new("a", None, "x")).unwrap();
        log.append(&event).unwrap();
        let hub = Hub::new(
            Box::new(log),
            HubLimits {
                max_subscribers: 10,
                client_queue: 10,
            },
        );
        assert_eq!(hub.recall_ends(), 1);
        assert_eq!(
            hub.publish("job", None, "x").err(),
            Some(PublishError::TopicClosed)
        );
    }

    #[test]
    fn subscriptions_are_listed_with_how_far_behind() {
        let hub = hub(10, 1);
        let peer = Peer {
            sub: Some("u".into()),
            address: "127.0.0.1:9".parse().ok(),
        };
        let a = hub
            .subscribe(TopicFilter::topics(["a"]), None, -1, peer)
            .unwrap();
        let _b = hub
            .subscribe(TopicFilter::topics(["b"]), None, -1, Peer::default())
            .unwrap();
        for _ in 0..3 {
            hub.publish("a", None, "x").unwrap();
        }
        let (listed, truncated) = hub.subscriptions(None, 10);
        assert!(!truncated);
        assert_eq!(listed.len(), 2);
        assert_eq!((listed[0].id, listed[0].behind), (a.key(), 3));
        assert_eq!(listed[0].peer.sub.as_deref(), Some("u"));
        assert_eq!((listed[1].behind, listed[1].last_event_id), (0, None));
        let (one, truncated) = hub.subscriptions(Some(&Selector::Topic("b".into())), 10);
        assert_eq!((one.len(), truncated), (1, false));
        assert!(hub.subscriptions(None, 1).1);
        assert!(hub.end_subscription(a.key()));
        assert_eq!(a.ended(), Some(Ending::Released));
        assert!(!hub.end_subscription(a.key()));
    }

    #[test]
    fn close_ends_every_stream_and_refuses_more() {
        let hub = hub(10, 10);
        let sub = hub.subscribe(all(), None, -1, Peer::default()).unwrap();
        hub.close();
        assert_eq!(sub.ended(), Some(Ending::Released));
        assert_eq!(
            hub.subscribe(all(), None, -1, Peer::default()).err(),
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
