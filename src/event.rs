//! Events as values: `EventId` (`<ms>-<seq>`), the id clock, topic and
//! event-name validation and the topic filter. Pure values: no I/O, no locks;
//! the encoded frame is `sse.rs`'s.

use std::fmt;
use std::str::FromStr;

/// Longest topic or event name, in bytes (SPEC "POST /events").
pub const MAX_NAME_BYTES: usize = 256;
/// Longest id we accept from a client, in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// Event names with this prefix are the hub's own (`ssehub:gap`).
pub const RESERVED_PREFIX: &str = "ssehub:";

/// An event id: publish time in Unix milliseconds and a counter within that
/// millisecond, ordered as a pair (the form of Redis stream ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a client-supplied id was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct BadId(pub &'static str);

impl fmt::Display for BadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl FromStr for EventId {
    type Err = BadId;

    /// Exactly two runs of ASCII digits joined by one `-`, each fitting a u64:
    /// no sign, no spaces, no leading `+`, at most 64 bytes in all.
    fn from_str(s: &str) -> Result<EventId, BadId> {
        if s.len() > MAX_ID_BYTES {
            return Err(BadId("event id longer than 64 bytes"));
        }
        let (ms, seq) = s
            .split_once('-')
            .ok_or(BadId("event id must be <ms>-<seq>"))?;
        Ok(EventId {
            ms: parse_u64(ms)?,
            seq: parse_u64(seq)?,
        })
    }
}

fn parse_u64(s: &str) -> Result<u64, BadId> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadId("event id parts must be decimal digits"));
    }
    s.parse().map_err(|_| BadId("event id part overflows u64"))
}

/// Hands out strictly increasing ids. If the wall clock steps backwards the
/// clock keeps the last millisecond and counts up within it, so an id is
/// never reused and never decreases.
#[derive(Debug, Default)]
pub struct IdClock {
    last: Option<EventId>,
}

impl IdClock {
    /// A clock whose ids are all above `last` (the newest id a log holds).
    pub fn after(last: EventId) -> IdClock {
        IdClock { last: Some(last) }
    }

    /// The next id for an event published at `now_ms`.
    pub fn next(&mut self, now_ms: u64) -> EventId {
        let id = match self.last {
            Some(last) if now_ms <= last.ms => EventId {
                ms: last.ms,
                seq: last.seq + 1,
            },
            _ => EventId { ms: now_ms, seq: 0 },
        };
        self.last = Some(id);
        id
    }
}

/// Checks a topic or event name: 1–256 bytes, no control character.
pub fn check_name(what: &'static str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(format!("{what} is longer than {MAX_NAME_BYTES} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} holds a control character"));
    }
    Ok(())
}

/// Checks an event name: a valid name that does not use the reserved prefix.
pub fn check_event_name(s: &str) -> Result<(), String> {
    check_name("event", s)?;
    if s.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "event names starting with {RESERVED_PREFIX:?} are reserved"
        ));
    }
    Ok(())
}

/// Which topics a subscriber wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicFilter {
    All,
    Only(Vec<String>),
}

impl TopicFilter {
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicFilter::All => true,
            TopicFilter::Only(topics) => topics.iter().any(|t| t == topic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, seq: u64) -> EventId {
        EventId { ms, seq }
    }

    #[test]
    fn ids_parse_and_print() {
        assert_eq!("1764000000000-0".parse(), Ok(id(1_764_000_000_000, 0)));
        assert_eq!(
            "18446744073709551615-18446744073709551615".parse(),
            Ok(id(u64::MAX, u64::MAX))
        );
        assert_eq!(id(12, 3).to_string(), "12-3");
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "-",
            "1",
            "1-",
            "-1",
            "1-2-3",
            "+1-2",
            "1-+2",
            "-1-2",
            " 1-2",
            "1-2 ",
            "1 -2",
            "1-2\0",
            "a-1",
            "0x1-2",
            "18446744073709551616-0",
            "1-18446744073709551616",
            "１-2",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?} was accepted");
        }
        let long = format!("{}-1", "0".repeat(63));
        assert_eq!(
            long.parse::<EventId>(),
            Err(BadId("event id longer than 64 bytes"))
        );
    }

    #[test]
    fn ids_order_as_pairs() {
        assert!(id(1, 9) < id(2, 0));
        assert!(id(2, 0) < id(2, 1));
        assert!(id(10, 0) > id(9, 100));
    }

    #[test]
    fn clock_counts_within_a_millisecond() {
        let mut clock = IdClock::default();
        assert_eq!(clock.next(100), id(100, 0));
        assert_eq!(clock.next(100), id(100, 1));
        assert_eq!(clock.next(101), id(101, 0));
    }

    #[test]
    fn clock_never_goes_backwards() {
        let mut clock = IdClock::default();
        assert_eq!(clock.next(1000), id(1000, 0));
        assert_eq!(clock.next(10), id(1000, 1));
        assert_eq!(clock.next(999), id(1000, 2));
        assert_eq!(clock.next(1001), id(1001, 0));
    }

    #[test]
    fn a_seeded_clock_continues_above_its_seed() {
        let mut clock = IdClock::after(id(1000, 7));
        assert_eq!(clock.next(10), id(1000, 8));
        assert_eq!(clock.next(1001), id(1001, 0));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("topic", "orders").is_ok());
        assert!(check_name("topic", "").is_err());
        assert!(check_name("topic", &"x".repeat(257)).is_err());
        assert!(check_name("topic", &"x".repeat(256)).is_ok());
        assert!(check_name("topic", "a\nb").is_err());
        assert!(check_name("topic", "a\rb").is_err());
        assert!(check_name("topic", "a\u{7f}b").is_err());
        assert!(check_name("topic", "a\u{85}b").is_err());
        assert!(check_name("topic", "caf\u{e9} \u{1F600}").is_ok());
        assert!(check_event_name("created").is_ok());
        assert!(check_event_name("ssehub:gap").is_err());
        assert!(check_event_name("ssehub:").is_err());
    }

    #[test]
    fn topic_filter_matches() {
        assert!(TopicFilter::All.matches("x"));
        let only = TopicFilter::Only(vec!["a".into(), "b".into()]);
        assert!(only.matches("b"));
        assert!(!only.matches("c"));
    }
}
