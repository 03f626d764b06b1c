//! The event log contract and its in-memory implementation: a ring of
//! recent frames bounded by count and by bytes, answering "events after X for
//! these topics, or a gap", and the id clock in front of it. No I/O; the hub
//! calls the in-memory log only under its own lock, and scans replays in
//! snapshots after letting go of it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::event::{Event, EventId, Frame, IdClock, SharedFrame, TopicFilter};

/// What a reconnecting subscriber is owed.
#[derive(Debug, Default)]
pub struct Replay {
    /// `Some(oldest_available)` when events after the given id may have been
    /// lost (evicted, or the id is unknown here): the stream opens with an
    /// `ssehub:gap` event.
    pub gap: Option<Option<EventId>>,
    /// Retained frames after the given id that match the topics, oldest first.
    pub frames: Vec<SharedFrame>,
}

/// Events per page of `EventLog::read`, and the bytes of frames after which a page stops early
/// (a page always holds at least one frame if there is one).
pub const PAGE_EVENTS: usize = 256;
pub const PAGE_BYTES: usize = 256 * 1024;
/// Entries a page may look at (matching or not) before it returns, so a read for a rare topic is
/// bounded too.
pub const PAGE_SCAN: usize = 4096;

/// One bounded read of the log.
#[derive(Debug, Default)]
pub struct Page {
    /// `Some(oldest_available)` when `after` is neither retained nor the last evicted id nor the
    /// newest id (events after it may have been lost): the reader starts at the oldest retained
    /// event and a replay opens with `ssehub:gap`. Same rules as today's `Replay::gap`.
    pub gap: Option<Option<EventId>>,
    /// Retained frames after `after` (or after the gap, from the oldest) that match `topics`,
    /// oldest first; at most PAGE_EVENTS / ~PAGE_BYTES.
    pub frames: Vec<SharedFrame>,
    /// The id of the last entry this read looked at, matching or not (None if none): the next
    /// read goes on after it.
    pub scanned: Option<EventId>,
    /// True when nothing (that may be read yet) follows `scanned` (or `after`): the reader is at
    /// the live edge.
    pub end: bool,
}

/// Why the log could not be written or read: only a shared log fails, when
/// its store is out of reach. The text is fit for a client and a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogError(pub String);

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where published events get their id and are kept for replay. The hub
/// holds one as a trait object: `MemoryLog` for a hub alone, the Redis
/// stream for several hubs acting as one.
pub trait EventLog: Send + Sync {
    /// Keeps `event` and returns its frame under the id the log gave it; ids
    /// only grow. Returns once the event is stored.
    fn append(&self, event: &Event) -> Result<SharedFrame, LogError>;
    /// The frames after `last` that match `topics`, and whether a gap
    /// precedes them.
    fn replay(&self, last: EventId, topics: &TopicFilter) -> Result<Replay, LogError>;
    /// What a local log retains now, cheap to take: the hub takes it in the
    /// same critical section as a registration and reads it after letting
    /// go of its lock. A shared log has none (`replay` does I/O).
    fn snapshot(&self) -> Option<Snapshot> {
        None
    }
    /// How many events are retained now.
    fn len(&self) -> usize;
    /// True when other processes append to the same log. The hub then calls
    /// it outside its lock (it does I/O), and events reach this process's
    /// subscribers through a follower, in the log's order, never from
    /// `append`.
    fn shared(&self) -> bool;
    /// Whether the log can be reached now; a local log always can.
    fn up(&self) -> bool;
}

/// The log of a hub alone: the id clock and the replay ring. Its lock is
/// only ever taken inside the hub's, so it is never contended.
#[derive(Debug)]
pub struct MemoryLog {
    state: Mutex<(IdClock, History)>,
}

impl MemoryLog {
    /// See `History::new` for the bounds.
    pub fn new(max_events: usize, max_bytes: usize) -> MemoryLog {
        MemoryLog {
            state: Mutex::new((IdClock::default(), History::new(max_events, max_bytes))),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (IdClock, History)> {
        // Every mutation finishes before anything can panic, so a poisoned
        // lock still guards a consistent ring.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EventLog for MemoryLog {
    fn append(&self, event: &Event) -> Result<SharedFrame, LogError> {
        let now = now_ms();
        let mut state = self.state();
        let id = state.0.next(now);
        let frame = Arc::new(Frame::new(id, event));
        state.1.append(frame.clone());
        Ok(frame)
    }

    fn replay(&self, last: EventId, topics: &TopicFilter) -> Result<Replay, LogError> {
        let snapshot = self.state().1.snapshot();
        Ok(snapshot.replay(last, topics))
    }

    fn snapshot(&self) -> Option<Snapshot> {
        Some(self.state().1.snapshot())
    }

    fn len(&self) -> usize {
        self.state().1.len()
    }

    fn shared(&self) -> bool {
        false
    }

    fn up(&self) -> bool {
        true
    }
}

/// Frames per sealed chunk of the ring: a snapshot copies one pointer per
/// chunk and the frames of the unsealed one.
const CHUNK: usize = 64;
/// Evicted frames the oldest chunk may keep alive, in bytes, before what is
/// left of it is sealed again without them (also after half a chunk): so
/// memory stays within `--history-bytes` plus this.
const RESEAL_BYTES: usize = 64 * 1024;

/// The in-memory replay ring. Frames are kept in sealed, shared chunks and
/// one open chunk, so that a reader can take a snapshot in a few
/// microseconds under the hub's lock and scan it after letting go: a
/// replay of the whole history never holds up publishers.
#[derive(Debug)]
pub struct History {
    /// Sealed chunks, oldest first, all of `CHUNK` frames but the first,
    /// which may be shorter and may hold evicted frames in front (`skip`,
    /// of `skipped_bytes`).
    sealed: VecDeque<Arc<[SharedFrame]>>,
    skip: usize,
    skipped_bytes: usize,
    /// The newest frames, fewer than `CHUNK`.
    open: Vec<SharedFrame>,
    len: usize,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
    /// The newest id ever appended, retained or not.
    newest: Option<EventId>,
    /// The newest id that was evicted: a client that saw it missed nothing
    /// that is not still retained.
    evicted_upto: Option<EventId>,
}

impl History {
    /// A ring keeping at most `max_events` events and `max_bytes` bytes of
    /// encoded frames; either bound at 0 disables replay.
    pub fn new(max_events: usize, max_bytes: usize) -> History {
        History {
            sealed: VecDeque::new(),
            skip: 0,
            skipped_bytes: 0,
            open: Vec::new(),
            len: 0,
            bytes: 0,
            max_events,
            max_bytes,
            newest: None,
            evicted_upto: None,
        }
    }

    fn evict_oldest(&mut self) {
        let old = match self.sealed.front_mut() {
            Some(chunk) => {
                let old = chunk[self.skip].clone();
                self.skip += 1;
                self.skipped_bytes += old.bytes.len();
                if self.skip == chunk.len() {
                    self.sealed.pop_front();
                    (self.skip, self.skipped_bytes) = (0, 0);
                } else if self.skipped_bytes >= RESEAL_BYTES || self.skip >= CHUNK / 2 {
                    *chunk = chunk[self.skip..].into();
                    (self.skip, self.skipped_bytes) = (0, 0);
                }
                old
            }
            None if self.open.is_empty() => return,
            None => self.open.remove(0),
        };
        self.len -= 1;
        self.bytes -= old.bytes.len();
        self.evicted_upto = Some(old.id);
    }

    /// Keeps `frame`; its id is above every id appended before.
    pub fn append(&mut self, frame: SharedFrame) {
        self.newest = Some(frame.id);
        if self.max_events == 0 || frame.bytes.len() > self.max_bytes {
            self.evicted_upto = Some(frame.id);
            self.sealed.clear();
            (self.skip, self.skipped_bytes) = (0, 0);
            self.open.clear();
            self.len = 0;
            self.bytes = 0;
            return;
        }
        while self.len >= self.max_events || self.bytes + frame.bytes.len() > self.max_bytes {
            self.evict_oldest();
        }
        self.bytes += frame.bytes.len();
        self.len += 1;
        self.open.push(frame);
        if self.open.len() == CHUNK {
            let sealed = std::mem::replace(&mut self.open, Vec::with_capacity(CHUNK));
            self.sealed.push_back(sealed.into());
        }
    }

    /// What is retained now, to be read later: O(len / CHUNK + CHUNK).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            sealed: self.sealed.iter().cloned().collect(),
            skip: self.skip,
            open: self.open.clone(),
            newest: self.newest,
            evicted_upto: self.evicted_upto,
        }
    }

    #[cfg(test)]
    fn replay(&self, last: EventId, topics: &TopicFilter) -> Replay {
        self.snapshot().replay(last, topics)
    }

    /// How many events are retained now.
    pub fn len(&self) -> usize {
        self.len
    }
}

/// The retained frames at one instant (`History::snapshot`).
#[derive(Debug)]
pub struct Snapshot {
    sealed: Vec<Arc<[SharedFrame]>>,
    skip: usize,
    open: Vec<SharedFrame>,
    newest: Option<EventId>,
    evicted_upto: Option<EventId>,
}

impl Snapshot {
    /// Retained frames in the first sealed chunk.
    fn first(&self) -> usize {
        self.sealed.first().map_or(0, |c| c.len() - self.skip)
    }

    fn len(&self) -> usize {
        self.first() + self.sealed.len().saturating_sub(1) * CHUNK + self.open.len()
    }

    /// The `i`th retained frame, oldest first.
    fn get(&self, i: usize) -> &SharedFrame {
        let first = self.first();
        if i < first {
            return &self.sealed[0][self.skip + i];
        }
        let i = i - first;
        match self.sealed.get(1 + i / CHUNK) {
            Some(chunk) => &chunk[i % CHUNK],
            None => &self.open[i - self.sealed.len().saturating_sub(1) * CHUNK],
        }
    }

    /// The frames after `last` that match `topics`, and whether a gap
    /// precedes them.
    pub fn replay(&self, last: EventId, topics: &TopicFilter) -> Replay {
        if Some(last) == self.newest {
            return Replay::default();
        }
        let len = self.len();
        // Ids grow: the first frame above `last`, by bisection.
        let (mut lo, mut hi) = (0, len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.get(mid).id <= last {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let known = lo > 0 && self.get(lo - 1).id == last;
        let gap = if known || Some(last) == self.evicted_upto {
            None
        } else {
            Some((len > 0).then(|| self.get(0).id))
        };
        Replay {
            gap,
            frames: (lo..len)
                .map(|i| self.get(i))
                .filter(|f| topics.matches(&f.topic))
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> EventId {
        EventId { ms, seq: 0 }
    }

    fn frame(ms: u64, topic: &str, size: usize) -> SharedFrame {
        Arc::new(Frame {
            id: id(ms),
            topic: topic.into(),
            bytes: vec![b'x'; size].into_boxed_slice(),
        })
    }

    /// Bytes of every frame the ring keeps alive, evicted ones included.
    fn held_bytes(h: &History) -> usize {
        let sealed = h.sealed.iter().flat_map(|c| c.iter());
        sealed.chain(&h.open).map(|f| f.bytes.len()).sum()
    }

    fn ids(r: &Replay) -> Vec<u64> {
        r.frames.iter().map(|f| f.id.ms).collect()
    }

    fn filled(max_events: usize, max_bytes: usize, n: u64) -> History {
        let mut h = History::new(max_events, max_bytes);
        for ms in 1..=n {
            h.append(frame(ms, if ms % 2 == 0 { "even" } else { "odd" }, 10));
        }
        h
    }

    #[test]
    fn replays_after_a_retained_id() {
        let h = filled(100, 1 << 20, 5);
        let r = h.replay(id(2), &TopicFilter::All);
        assert_eq!(r.gap, None);
        assert_eq!(ids(&r), [3, 4, 5]);
    }

    #[test]
    fn replay_filters_topics() {
        let h = filled(100, 1 << 20, 6);
        let r = h.replay(id(1), &TopicFilter::Only(vec!["even".into()]));
        assert_eq!(ids(&r), [2, 4, 6]);
    }

    #[test]
    fn newest_id_replays_nothing() {
        let h = filled(100, 1 << 20, 3);
        let r = h.replay(id(3), &TopicFilter::All);
        assert_eq!((r.gap, ids(&r)), (None, vec![]));
    }

    #[test]
    fn bounded_by_count() {
        let h = filled(3, 1 << 20, 10);
        assert_eq!(h.len(), 3);
        let r = h.replay(id(2), &TopicFilter::All);
        assert_eq!(r.gap, Some(Some(id(8))));
        assert_eq!(ids(&r), [8, 9, 10]);
    }

    #[test]
    fn bounded_by_bytes() {
        let h = filled(100, 35, 10);
        assert_eq!(h.len(), 3);
        assert_eq!(h.bytes, 30);
        let r = h.replay(id(1), &TopicFilter::All);
        assert_eq!(r.gap, Some(Some(id(8))));
    }

    #[test]
    fn the_last_evicted_id_is_no_gap() {
        let h = filled(3, 1 << 20, 10);
        let r = h.replay(id(7), &TopicFilter::All);
        assert_eq!(r.gap, None);
        assert_eq!(ids(&r), [8, 9, 10]);
    }

    #[test]
    fn unknown_ids_are_gaps() {
        let h = filled(100, 1 << 20, 5);
        // from the future, or from another hub
        let r = h.replay(id(99), &TopicFilter::All);
        assert_eq!((r.gap, ids(&r)), (Some(Some(id(1))), vec![]));
        // between retained ids but never issued here
        let r = h.replay(EventId { ms: 2, seq: 5 }, &TopicFilter::All);
        assert_eq!((r.gap, ids(&r)), (Some(Some(id(1))), vec![3, 4, 5]));
    }

    #[test]
    fn empty_history_is_a_gap_with_nothing_available() {
        let h = History::new(100, 1 << 20);
        let r = h.replay(id(1), &TopicFilter::All);
        assert_eq!(r.gap, Some(None));
    }

    #[test]
    fn zero_disables_replay() {
        let h = filled(0, 1 << 20, 5);
        assert_eq!(h.len(), 0);
        assert_eq!(h.replay(id(2), &TopicFilter::All).gap, Some(None));
        assert_eq!(h.replay(id(5), &TopicFilter::All).gap, None);
        let h = filled(100, 0, 5);
        assert_eq!(h.len(), 0);
    }

    /// The ring against a plain list of what it should retain, across many
    /// chunks, evictions by count and by bytes, and every kind of id.
    #[test]
    fn agrees_with_a_plain_list() {
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for (max_events, max_bytes) in [
            (1, 1 << 20),
            (64, 1 << 20),
            (200, 1 << 20),
            (1000, 3000),
            (150, 700),
        ] {
            let mut h = History::new(max_events, max_bytes);
            let mut model: VecDeque<SharedFrame> = VecDeque::new();
            let mut evicted = 0;
            for ms in 1..=2000u64 {
                let topic = if next(3) == 0 { "even" } else { "odd" };
                let f = frame(ms * 2, topic, 1 + next(20) as usize);
                model.push_back(f.clone());
                while model.len() > max_events
                    || model.iter().map(|f| f.bytes.len()).sum::<usize>() > max_bytes
                {
                    evicted = model.pop_front().unwrap().id.ms;
                }
                h.append(f);
                assert_eq!(h.len(), model.len());
                let held = held_bytes(&h);
                assert_eq!(held, h.bytes + h.skipped_bytes);
                assert!(h.skip < CHUNK / 2 && h.skipped_bytes < RESEAL_BYTES);
                if next(10) != 0 {
                    continue;
                }
                let snapshot = h.snapshot();
                let oldest = model.front().unwrap().id.ms;
                // the newest, retained ids, the last evicted one, ids never
                // issued (odd), from before the ring and from the future
                for last in [
                    ms * 2,
                    oldest,
                    oldest + 2 * next(max_events as u64),
                    oldest - 2,
                    oldest + 1,
                    1,
                    ms * 2 + 1,
                    0,
                ] {
                    let topics = TopicFilter::Only(vec!["even".into()]);
                    let r = snapshot.replay(id(last), &topics);
                    let want: Vec<u64> = model
                        .iter()
                        .filter(|f| f.id.ms > last && &*f.topic == "even")
                        .map(|f| f.id.ms)
                        .collect();
                    assert_eq!(
                        ids(&r),
                        want,
                        "after {last}, ring {max_events}/{max_bytes} at {ms}"
                    );
                    let no_gap = last == ms * 2
                        || (last > 0 && last == evicted)
                        || model.iter().any(|f| f.id.ms == last);
                    assert_eq!(r.gap.is_none(), no_gap, "after {last} at {ms}");
                    if let Some(gap) = r.gap {
                        assert_eq!(gap, Some(id(oldest)));
                    }
                }
            }
        }
    }

    #[test]
    fn evicted_events_do_not_stay_in_memory() {
        // 128 events of 8 KiB fit: two chunks, evicted from the front.
        let mut h = History::new(10_000, 1 << 20);
        for ms in 1..=2000 {
            h.append(frame(ms, "odd", 8 * 1024));
            let held = held_bytes(&h);
            assert!(held < (1 << 20) + RESEAL_BYTES, "{held} bytes held at {ms}");
        }
        assert_eq!(h.len(), 128);
        assert_eq!(
            ids(&h.replay(id(1996), &TopicFilter::All)),
            [1997, 1998, 1999, 2000]
        );
    }

    #[test]
    fn a_snapshot_is_not_changed_by_later_appends() {
        let mut h = filled(100, 1 << 20, 150);
        let before = h.snapshot();
        for ms in 151..=400 {
            h.append(frame(ms, "odd", 10));
        }
        let r = before.replay(id(140), &TopicFilter::All);
        assert_eq!(ids(&r), (141..=150).collect::<Vec<_>>());
        assert_eq!(
            ids(&h.replay(id(390), &TopicFilter::All)),
            (391..=400).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_event_larger_than_the_byte_bound_empties_the_ring() {
        let mut h = filled(100, 25, 2);
        h.append(frame(3, "odd", 30));
        assert_eq!(h.len(), 0);
        assert_eq!(h.replay(id(2), &TopicFilter::All).gap, Some(None));
        assert_eq!(h.replay(id(3), &TopicFilter::All).gap, None);
    }
}
