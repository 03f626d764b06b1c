//! The event log contract and its in-memory implementation: a ring of
//! recent frames bounded by count and by bytes, read a page at a time after
//! an id ("At its own pace"), and the id clock in front of it. No I/O; the
//! hub appends under its own lock, streams read pages under the ring's.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::event::{EventId, IdClock, TopicFilter};
use crate::sse::{Event, Frame, SharedFrame};

/// A page holds at most this many frames, and stops early once it holds the
/// bytes its reader asked for, at most `PAGE_BYTES` (a page holds at least
/// one frame if one matches): what one stream keeps while it writes a
/// replay or catches up. A stream asks for what its socket can take now, so
/// one whose client is not reading holds one frame at most.
pub const PAGE_EVENTS: usize = 256;
pub const PAGE_BYTES: usize = 256 * 1024;
/// Entries one page looks at, matching or not, before it returns: a reader
/// of a rare topic holds the ring's lock for a bounded time too.
pub const PAGE_SCAN: usize = 4096;

/// One bounded read of the log (`EventLog::read`).
#[derive(Debug, Default)]
pub struct Page {
    /// `Some(oldest_available)` when the id read after is neither retained,
    /// nor the newest, nor the last one evicted: events after it may have
    /// been lost (evicted, or the id is unknown here). A replay then opens
    /// with `ssehub:gap`; a stream catching up has fallen off the history.
    pub gap: Option<Option<EventId>>,
    /// Retained frames after the id that match the topics, oldest first.
    pub frames: Vec<SharedFrame>,
    /// Where the next read goes on from: the last entry this one looked at,
    /// matching or not, else the newest entry before where it started; None
    /// when there is none (read from the oldest retained).
    pub scanned: Option<EventId>,
    /// Nothing that can be read yet follows `scanned`: the reader is at the
    /// live edge.
    pub end: bool,
}

/// Why the log could not be written or read: a store out of reach, a disk
/// that refuses writes. The text is fit for a client and a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogError(pub String);

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where published events get their id and are kept for replay and
/// catch-up. The hub holds one as a trait object: `MemoryLog` for a hub
/// alone, the Redis stream for several hubs acting as one.
pub trait EventLog: Send + Sync {
    /// Keeps `event` and returns its frame under the id the log gave it; ids
    /// only grow. Returns once the event is stored.
    fn append(&self, event: &Event) -> Result<SharedFrame, LogError>;
    /// One page of what follows `after` (from the oldest retained when None)
    /// for `topics`, of about `max_bytes` of frames (see `PAGE_BYTES`).
    fn read(
        &self,
        after: Option<EventId>,
        topics: &TopicFilter,
        max_bytes: usize,
    ) -> Result<Page, LogError>;
    /// The oldest retained id: a subscriber whose position is below it can
    /// no longer catch up.
    fn oldest(&self) -> Option<EventId>;
    /// How many events are retained now.
    fn len(&self) -> usize;
    /// True when events reach this process's subscribers through a follower
    /// of the log (`Hub::fan_out_followed`, in the log's order), never from
    /// `append`; the hub then appends outside its lock (it does I/O).
    fn followed(&self) -> bool;
    /// Whether the log can be written now; a memory log always can.
    fn up(&self) -> bool;
    /// Where the log is kept, for `/metrics` (`ssehub_<store>_up`): `memory`,
    /// `redis` or `disk`.
    fn store(&self) -> &'static str;
}

/// The log of a hub alone: the id clock and the replay ring. The hub appends
/// under its own lock; streams read pages under this one, briefly.
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

pub fn now_ms() -> u64 {
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

    fn read(
        &self,
        after: Option<EventId>,
        topics: &TopicFilter,
        max_bytes: usize,
    ) -> Result<Page, LogError> {
        Ok(self.state().1.read(after, topics, max_bytes))
    }

    fn oldest(&self) -> Option<EventId> {
        self.state().1.ring.front().map(|f| f.id)
    }

    fn len(&self) -> usize {
        self.state().1.ring.len()
    }

    fn followed(&self) -> bool {
        false
    }

    fn up(&self) -> bool {
        true
    }

    fn store(&self) -> &'static str {
        "memory"
    }
}

/// The in-memory replay ring, oldest first; an evicted frame is freed as
/// soon as no stream holds it in a page.
#[derive(Debug)]
pub struct History {
    ring: VecDeque<SharedFrame>,
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
            ring: VecDeque::new(),
            bytes: 0,
            max_events,
            max_bytes,
            newest: None,
            evicted_upto: None,
        }
    }

    /// Keeps `frame`; its id is above every id appended before.
    pub fn append(&mut self, frame: SharedFrame) {
        self.newest = Some(frame.id);
        if self.max_events == 0 || frame.bytes.len() > self.max_bytes {
            self.evicted_upto = Some(frame.id);
            self.ring.clear();
            self.bytes = 0;
            return;
        }
        while self.ring.len() >= self.max_events || self.bytes + frame.bytes.len() > self.max_bytes
        {
            let Some(old) = self.ring.pop_front() else {
                break;
            };
            self.bytes -= old.bytes.len();
            self.evicted_upto = Some(old.id);
        }
        self.bytes += frame.bytes.len();
        self.ring.push_back(frame);
    }

    /// One page after `after` (see `Page`): O(log len + PAGE_SCAN).
    pub fn read(&self, after: Option<EventId>, topics: &TopicFilter, max_bytes: usize) -> Page {
        let (start, gap) = match after {
            // From the first event ever: a gap if any was dropped.
            None => (
                0,
                self.evicted_upto.map(|_| self.ring.front().map(|f| f.id)),
            ),
            Some(after) if Some(after) == self.newest => {
                return Page {
                    scanned: Some(after),
                    end: true,
                    ..Page::default()
                };
            }
            Some(after) => {
                // Ids grow: the first frame above `after`, by bisection.
                let start = self.ring.partition_point(|f| f.id <= after);
                let known = start > 0 && self.ring[start - 1].id == after;
                let gap = (!known && Some(after) != self.evicted_upto)
                    .then(|| self.ring.front().map(|f| f.id));
                (start, gap)
            }
        };
        let mut page = Page {
            gap,
            scanned: start.checked_sub(1).map(|i| self.ring[i].id),
            ..Page::default()
        };
        let mut bytes = 0;
        let mut at = start;
        while at < self.ring.len()
            && at - start < PAGE_SCAN
            && page.frames.len() < PAGE_EVENTS
            && bytes < max_bytes.min(PAGE_BYTES)
        {
            let f = &self.ring[at];
            if topics.matches(&f.topic) {
                bytes += f.bytes.len();
                page.frames.push(f.clone());
            }
            page.scanned = Some(f.id);
            at += 1;
        }
        page.end = at == self.ring.len();
        page
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
            closes: false,
        })
    }

    fn only(topic: &str) -> TopicFilter {
        TopicFilter::topics([topic])
    }

    /// Everything after `after`, read a page at a time as a stream reads it:
    /// the first page's gap and the ms of every frame.
    fn replay(
        h: &History,
        after: EventId,
        topics: &TopicFilter,
    ) -> (Option<Option<EventId>>, Vec<u64>) {
        let first = h.read(Some(after), topics, PAGE_BYTES);
        let gap = first.gap;
        let mut ids: Vec<u64> = first.frames.iter().map(|f| f.id.ms).collect();
        let (mut end, mut at) = (first.end, first.scanned);
        while !end {
            let page = h.read(at, topics, PAGE_BYTES);
            assert_eq!(page.gap, None, "a gap after {at:?} while paging");
            assert!(page.frames.len() <= PAGE_EVENTS);
            ids.extend(page.frames.iter().map(|f| f.id.ms));
            assert!(page.scanned > at, "no progress after {at:?}");
            (end, at) = (page.end, page.scanned);
        }
        (gap, ids)
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
        assert_eq!(
            replay(&h, id(2), &TopicFilter::all()),
            (None, vec![3, 4, 5])
        );
    }

    #[test]
    fn replay_filters_topics() {
        let h = filled(100, 1 << 20, 6);
        assert_eq!(replay(&h, id(1), &only("even")).1, [2, 4, 6]);
    }

    #[test]
    fn newest_id_replays_nothing_and_is_the_edge() {
        let h = filled(100, 1 << 20, 3);
        let page = h.read(Some(id(3)), &TopicFilter::all(), PAGE_BYTES);
        assert_eq!((page.gap, page.frames.len()), (None, 0));
        assert_eq!((page.scanned, page.end), (Some(id(3)), true));
    }

    #[test]
    fn bounded_by_count() {
        let h = filled(3, 1 << 20, 10);
        assert_eq!(h.ring.len(), 3);
        assert_eq!(
            replay(&h, id(2), &TopicFilter::all()),
            (Some(Some(id(8))), vec![8, 9, 10])
        );
    }

    #[test]
    fn bounded_by_bytes() {
        let h = filled(100, 35, 10);
        assert_eq!((h.ring.len(), h.bytes), (3, 30));
        assert_eq!(replay(&h, id(1), &TopicFilter::all()).0, Some(Some(id(8))));
    }

    #[test]
    fn the_last_evicted_id_is_no_gap() {
        let h = filled(3, 1 << 20, 10);
        assert_eq!(
            replay(&h, id(7), &TopicFilter::all()),
            (None, vec![8, 9, 10])
        );
    }

    #[test]
    fn unknown_ids_are_gaps() {
        let h = filled(100, 1 << 20, 5);
        // from the future, or from another hub: read on from the newest
        let page = h.read(Some(id(99)), &TopicFilter::all(), PAGE_BYTES);
        assert_eq!((page.gap, page.frames.len()), (Some(Some(id(1))), 0));
        assert_eq!((page.scanned, page.end), (Some(id(5)), true));
        // between retained ids but never issued here
        assert_eq!(
            replay(&h, EventId { ms: 2, seq: 5 }, &TopicFilter::all()),
            (Some(Some(id(1))), vec![3, 4, 5])
        );
    }

    #[test]
    fn empty_history_is_a_gap_with_nothing_available() {
        let h = History::new(100, 1 << 20);
        let page = h.read(Some(id(1)), &TopicFilter::all(), PAGE_BYTES);
        assert_eq!((page.gap, page.scanned, page.end), (Some(None), None, true));
    }

    #[test]
    fn zero_disables_replay() {
        let h = filled(0, 1 << 20, 5);
        assert_eq!(h.ring.len(), 0);
        assert_eq!(replay(&h, id(2), &TopicFilter::all()).0, Some(None));
        assert_eq!(replay(&h, id(5), &TopicFilter::all()).0, None);
        let h = filled(100, 0, 5);
        assert_eq!(h.ring.len(), 0);
    }

    #[test]
    fn pages_are_bounded_by_events_bytes_and_scan() {
        let mut h = History::new(100_000, 1 << 30);
        for ms in 1..=10_000 {
            h.append(frame(ms, if ms == 9_000 { "rare" } else { "odd" }, 100));
        }
        let page = h.read(None, &TopicFilter::all(), PAGE_BYTES);
        assert_eq!(page.frames.len(), PAGE_EVENTS);
        assert_eq!(
            (page.scanned, page.end),
            (Some(id(PAGE_EVENTS as u64)), false)
        );
        // A rare topic: each page looks at PAGE_SCAN entries at most.
        let page = h.read(None, &only("rare"), PAGE_BYTES);
        assert_eq!(page.frames.len(), 0);
        assert_eq!(page.scanned, Some(id(PAGE_SCAN as u64)));
        assert_eq!(replay(&h, id(1), &only("rare")).1, [9_000]);
        // Large frames: a page stops once it holds PAGE_BYTES.
        let mut h = History::new(1000, 1 << 30);
        for ms in 1..=100 {
            h.append(frame(ms, "odd", 60_000));
        }
        let page = h.read(None, &TopicFilter::all(), PAGE_BYTES);
        assert_eq!(page.frames.len(), PAGE_BYTES.div_ceil(60_000));
        // Asked for less, and at least one frame.
        assert_eq!(h.read(None, &TopicFilter::all(), 130_000).frames.len(), 3);
        assert_eq!(h.read(None, &TopicFilter::all(), 1).frames.len(), 1);
    }

    /// The ring against a plain list of what it should retain, across
    /// evictions by count and by bytes, pages, and every kind of id.
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
            (600, 1 << 20),
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
                assert_eq!(h.ring.len(), model.len());
                if next(10) != 0 {
                    continue;
                }
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
                    let (gap, got) = replay(&h, id(last), &only("even"));
                    let want: Vec<u64> = model
                        .iter()
                        .filter(|f| f.id.ms > last && &*f.topic == "even")
                        .map(|f| f.id.ms)
                        .collect();
                    assert_eq!(
                        got, want,
                        "after {last}, ring {max_events}/{max_bytes} at {ms}"
                    );
                    let no_gap = last == ms * 2
                        || (last > 0 && last == evicted)
                        || model.iter().any(|f| f.id.ms == last);
                    assert_eq!(gap.is_none(), no_gap, "after {last} at {ms}");
                    if let Some(gap) = gap {
                        assert_eq!(gap, Some(id(oldest)));
                    }
                }
            }
        }
    }

    #[test]
    fn an_event_larger_than_the_byte_bound_empties_the_ring() {
        let mut h = filled(100, 25, 2);
        h.append(frame(3, "odd", 30));
        assert_eq!(h.ring.len(), 0);
        assert_eq!(replay(&h, id(2), &TopicFilter::all()).0, Some(None));
        assert_eq!(replay(&h, id(3), &TopicFilter::all()).0, None);
    }
}
