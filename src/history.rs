//! The event log contract and its in-memory implementation: a ring of
//! recent frames bounded by count and by bytes, answering "events after X for
//! these topics, or a gap", and the id clock in front of it. No I/O; the hub
//! calls the in-memory log only under its own lock.

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
        Ok(self.state().1.replay(last, topics))
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

/// The in-memory replay ring.
#[derive(Debug)]
pub struct History {
    frames: VecDeque<SharedFrame>,
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
            frames: VecDeque::new(),
            bytes: 0,
            max_events,
            max_bytes,
            newest: None,
            evicted_upto: None,
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(old) = self.frames.pop_front() {
            self.bytes -= old.bytes.len();
            self.evicted_upto = Some(old.id);
        }
    }

    /// Keeps `frame`; its id is above every id appended before.
    pub fn append(&mut self, frame: SharedFrame) {
        self.newest = Some(frame.id);
        if self.max_events == 0 || frame.bytes.len() > self.max_bytes {
            self.evicted_upto = Some(frame.id);
            self.frames.clear();
            self.bytes = 0;
            return;
        }
        while self.frames.len() >= self.max_events
            || self.bytes + frame.bytes.len() > self.max_bytes
        {
            self.evict_oldest();
        }
        self.bytes += frame.bytes.len();
        self.frames.push_back(frame);
    }

    /// The frames after `last` that match `topics`, and whether a gap
    /// precedes them.
    pub fn replay(&self, last: EventId, topics: &TopicFilter) -> Replay {
        let matching = |from: usize| -> Vec<SharedFrame> {
            self.frames
                .range(from..)
                .filter(|f| topics.matches(&f.topic))
                .cloned()
                .collect()
        };
        if Some(last) == self.newest {
            return Replay::default();
        }
        match self.frames.binary_search_by(|f| f.id.cmp(&last)) {
            Ok(i) => Replay {
                gap: None,
                frames: matching(i + 1),
            },
            Err(_) if Some(last) == self.evicted_upto => Replay {
                gap: None,
                frames: matching(0),
            },
            Err(i) => Replay {
                gap: Some(self.frames.front().map(|f| f.id)),
                frames: matching(i),
            },
        }
    }

    /// How many events are retained now.
    pub fn len(&self) -> usize {
        self.frames.len()
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

    #[test]
    fn an_event_larger_than_the_byte_bound_empties_the_ring() {
        let mut h = filled(100, 25, 2);
        h.append(frame(3, "odd", 30));
        assert_eq!(h.len(), 0);
        assert_eq!(h.replay(id(2), &TopicFilter::All).gap, Some(None));
        assert_eq!(h.replay(id(3), &TopicFilter::All).gap, None);
    }
}
