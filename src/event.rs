//! Events as values: `EventId` (`<ms>-<seq>`), the id clock, topic and
//! event-name validation, topic selectors and the filter made of them. Pure
//! values: no I/O, no locks; the encoded frame is `sse.rs`'s.

use std::fmt;
use std::str::FromStr;

/// Longest topic or event name, in bytes (SPEC "POST /events").
pub const MAX_NAME_BYTES: usize = 256;
/// Longest id we accept from a client, in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// Event names with this prefix are the hub's own (`ssehub:gap`).
pub const RESERVED_PREFIX: &str = "ssehub:";
/// The event that ends a topic (SPEC "Ending a topic"): the only reserved
/// name the hub writes into its log, so the only one read back from it.
pub const CLOSED: &str = "ssehub:closed";

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

/// Checks an event name read back from a log: what a publisher may send, or
/// the hub's own `ssehub:closed`.
pub fn check_logged_event_name(s: &str) -> Result<(), String> {
    match s {
        CLOSED => Ok(()),
        _ => check_event_name(s),
    }
}

/// A set of topics as a subscriber asks for it or a token grants it
/// (SPEC "Signed tokens"): a topic, `*` (every topic), or a prefix ending in
/// `/*`, which matches the topics below it (`users/42/*` matches
/// `users/42/inbox` and `users/42/a/b`, not `users/42`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Selector {
    All,
    Topic(String),
    /// The prefix with its trailing `/`, without the `*`.
    Prefix(String),
}

impl Selector {
    /// Checks `s` as a topic name (`check_name`) and reads its form.
    pub fn parse(s: &str) -> Result<Selector, String> {
        check_name("topic", s)?;
        Ok(match s.strip_suffix('*') {
            Some("") => Selector::All,
            Some(prefix) if prefix.ends_with('/') => Selector::Prefix(prefix.to_string()),
            _ => Selector::Topic(s.to_string()),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("*"),
            Selector::Topic(topic) => f.write_str(topic),
            Selector::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// Which topics a subscriber receives, or a token may publish or read: the
/// union of some selectors. `matches` runs for every subscriber at every
/// fan-out, under the hub lock, so the selectors are kept in the form that
/// answers it fastest: a flag for `*`, then in one allocation the exact
/// topics, sorted, and the prefixes, none inside another. The value is 24
/// bytes, smaller than the list of topics it replaced: 10,000 of them are
/// walked per event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicFilter {
    all: bool,
    /// How many of `names` are exact topics; the rest are prefixes, each
    /// ending in `/`.
    topics: u32,
    names: Box<[Box<str>]>,
}

impl TopicFilter {
    /// Every topic.
    pub fn all() -> TopicFilter {
        TopicFilter {
            all: true,
            ..TopicFilter::default()
        }
    }

    /// The union of `selectors`; none gives the empty set.
    pub fn new(selectors: impl IntoIterator<Item = Selector>) -> TopicFilter {
        let (mut all, mut topics, mut prefixes) = (false, Vec::new(), Vec::new());
        for s in selectors {
            match s {
                Selector::All => all = true,
                Selector::Topic(t) => topics.push(t.into_boxed_str()),
                Selector::Prefix(p) => prefixes.push(p.into_boxed_str()),
            }
        }
        TopicFilter::normalized(all, topics, prefixes)
    }

    /// Exactly these topics.
    #[cfg(test)]
    pub fn topics<S: Into<String>>(topics: impl IntoIterator<Item = S>) -> TopicFilter {
        TopicFilter::new(topics.into_iter().map(|t| Selector::Topic(t.into())))
    }

    /// Every topic either matches.
    pub fn union(&self, other: &TopicFilter) -> TopicFilter {
        let topics = self.exact().iter().chain(other.exact()).cloned().collect();
        let prefixes = self
            .prefixes()
            .iter()
            .chain(other.prefixes())
            .cloned()
            .collect();
        TopicFilter::normalized(self.all || other.all, topics, prefixes)
    }

    /// Drops what another selector already covers, so that a filter is as
    /// short as its meaning, and sorts the topics.
    fn normalized(
        all: bool,
        mut topics: Vec<Box<str>>,
        mut prefixes: Vec<Box<str>>,
    ) -> TopicFilter {
        if all {
            return TopicFilter::all();
        }
        prefixes.sort_by_key(|p| p.len());
        let mut kept: Vec<Box<str>> = Vec::with_capacity(prefixes.len());
        for p in prefixes {
            if !kept.iter().any(|k| p.starts_with(&**k)) {
                kept.push(p);
            }
        }
        topics.retain(|t| !under(&kept, t));
        topics.sort_unstable();
        topics.dedup();
        let n = u32::try_from(topics.len()).expect("fewer than 2^32 topics");
        topics.extend(kept);
        TopicFilter {
            all: false,
            topics: n,
            names: topics.into_boxed_slice(),
        }
    }

    fn exact(&self) -> &[Box<str>] {
        &self.names[..self.topics as usize]
    }

    fn prefixes(&self) -> &[Box<str>] {
        &self.names[self.topics as usize..]
    }

    pub fn matches(&self, topic: &str) -> bool {
        if self.all {
            return true;
        }
        // `==` compares lengths first and rejects most topics at once, so a
        // short list is scanned; a binary search pays off on longer ones
        // (test fan_out_matching_cost).
        let exact = self.exact();
        let found = if exact.len() <= SCAN_TOPICS {
            exact.iter().any(|t| **t == *topic)
        } else {
            exact.binary_search_by(|t| (**t).cmp(topic)).is_ok()
        };
        found || under(self.prefixes(), topic)
    }

    /// Whether every topic `selector` matches is in this set: `users/42/*`
    /// is covered by `users/*` or `*`, not by `users/42/inbox`.
    pub fn covers(&self, selector: &Selector) -> bool {
        match selector {
            _ if self.all => true,
            Selector::All => false,
            Selector::Topic(topic) => self.matches(topic),
            Selector::Prefix(p) => self.prefixes().iter().any(|k| p.starts_with(&**k)),
        }
    }

    /// True when no topic matches.
    pub fn is_empty(&self) -> bool {
        !self.all && self.names.is_empty()
    }

    /// The exact topics, when the set is made of nothing else: only such a
    /// set can have all its topics ended (SPEC "Ending a topic").
    pub fn only_topics(&self) -> Option<&[Box<str>]> {
        (!self.all && self.prefixes().is_empty() && !self.names.is_empty()).then(|| self.exact())
    }

    /// Whether some topic is matched both by this set and by `selector`.
    pub fn overlaps(&self, selector: &Selector) -> bool {
        match selector {
            _ if self.all => true,
            Selector::All => !self.is_empty(),
            Selector::Topic(topic) => self.matches(topic),
            Selector::Prefix(p) => {
                self.exact()
                    .iter()
                    .any(|t| t.len() > p.len() && t.starts_with(p.as_str()))
                    || self
                        .prefixes()
                        .iter()
                        .any(|k| k.starts_with(p.as_str()) || p.starts_with(&**k))
            }
        }
    }

    /// The selectors, as a subscriber would write them.
    pub fn selectors(&self) -> Vec<String> {
        if self.all {
            return vec!["*".into()];
        }
        let topics = self.exact().iter().map(|t| t.to_string());
        topics
            .chain(self.prefixes().iter().map(|p| format!("{p}*")))
            .collect()
    }
}

/// Exact topics a filter scans rather than searches.
const SCAN_TOPICS: usize = 8;

/// A topic below one of `prefixes`: longer than the prefix, so that
/// `users/42/*` does not match `users/42/` itself.
fn under(prefixes: &[Box<str>], topic: &str) -> bool {
    prefixes
        .iter()
        .any(|p| topic.len() > p.len() && topic.starts_with(&**p))
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

    fn filter(selectors: &[&str]) -> TopicFilter {
        TopicFilter::new(selectors.iter().map(|s| Selector::parse(s).unwrap()))
    }

    #[test]
    fn selectors_parse() {
        let p = |s| Selector::parse(s).unwrap();
        assert_eq!(p("*"), Selector::All);
        assert_eq!(p("users/*"), Selector::Prefix("users/".into()));
        assert_eq!(p("/*"), Selector::Prefix("/".into()));
        assert_eq!(p("users"), Selector::Topic("users".into()));
        // Only a whole last segment is a wildcard.
        assert_eq!(p("users*"), Selector::Topic("users*".into()));
        assert_eq!(p("a/*/b"), Selector::Topic("a/*/b".into()));
        assert_eq!(p("a/**"), Selector::Topic("a/**".into()));
        assert!(Selector::parse("").is_err());
        assert!(Selector::parse("a\n/*").is_err());
        assert!(Selector::parse("a\n").is_err());
        for s in ["*", "users/*", "users", "a/*/b"] {
            assert_eq!(p(s).to_string(), s);
        }
    }

    #[test]
    fn topic_filter_is_small() {
        assert_eq!(std::mem::size_of::<TopicFilter>(), 24);
    }

    #[test]
    fn topic_filter_matches() {
        assert!(TopicFilter::all().matches("x"));
        let only = TopicFilter::topics(["a", "b"]);
        assert!(only.matches("b"));
        assert!(!only.matches("c"));
        assert!(!TopicFilter::default().matches("a"));
        let f = filter(&["users/42/*", "news", "a"]);
        for topic in ["users/42/inbox", "users/42/a/b", "news", "a"] {
            assert!(f.matches(topic), "{topic}");
        }
        for topic in [
            "users/42",
            "users/42/",
            "users/4",
            "users/421/x",
            "new",
            "newsy",
            "",
        ] {
            assert!(!f.matches(topic), "{topic}");
        }
    }

    #[test]
    fn filters_are_normalized() {
        assert_eq!(
            filter(&["a/b/*", "a/*", "a/c", "a", "a"]),
            filter(&["a", "a/*"])
        );
        assert_eq!(filter(&["x", "*", "y/*"]), TopicFilter::all());
        assert_eq!(
            filter(&["b", "a/*"]).union(&filter(&["a/x", "c"])),
            filter(&["a/*", "b", "c"])
        );
        assert!(TopicFilter::default().is_empty() && !filter(&["a"]).is_empty());
    }

    #[test]
    fn coverage_of_selectors() {
        let p = |s| Selector::parse(s).unwrap();
        let grant = filter(&["users/*", "news"]);
        for asked in ["users/42/*", "users/*", "users/42/inbox", "news"] {
            assert!(grant.covers(&p(asked)), "{asked}");
        }
        for asked in ["*", "usersx/*", "users", "news/*", "other"] {
            assert!(!grant.covers(&p(asked)), "{asked}");
        }
        let narrow = filter(&["users/42/inbox"]);
        assert!(!narrow.covers(&p("users/42/*")));
        assert!(narrow.covers(&p("users/42/inbox")));
        assert!(TopicFilter::all().covers(&p("*")));
        assert!(!TopicFilter::default().covers(&p("a")));
    }

    /// Fan-out cost: `cargo test --release fan_out_matching -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn fan_out_matching_cost() {
        use std::time::Instant;
        // The filter this replaced: a list of exact topics, searched in turn.
        enum Before {
            Only(Vec<String>),
        }
        let before: Vec<Before> = (0..10_000)
            .map(|i| Before::Only(vec![format!("users/{i}/inbox"), "news".into()]))
            .collect();
        let after: Vec<TopicFilter> = (0..10_000)
            .map(|i| {
                filter(&[
                    &format!("users/{i}/*"),
                    "news",
                    &format!("teams/{}/*", i % 50),
                ])
            })
            .collect();
        let exact: Vec<TopicFilter> = (0..10_000)
            .map(|i| TopicFilter::topics([format!("users/{i}/inbox"), "news".into()]))
            .collect();
        let topics = ["users/5000/inbox", "news", "teams/7/chat", "nobody/here"];
        let rounds = 100;
        // The best of five runs each, interleaved: the machine is shared.
        let time = |f: &dyn Fn(&str) -> usize| {
            (0..5)
                .map(|_| {
                    let start = Instant::now();
                    let mut hits = 0;
                    for _ in 0..rounds {
                        for t in topics {
                            hits += f(std::hint::black_box(t));
                        }
                    }
                    std::hint::black_box(hits);
                    start.elapsed().as_nanos() as f64 / (rounds * topics.len() * 10_000) as f64
                })
                .fold(f64::MAX, f64::min)
        };
        let many: Vec<TopicFilter> = (0..10_000)
            .map(|i| TopicFilter::topics((0..20).map(|j| format!("users/{i}/{j}"))))
            .collect();
        for (name, f) in [
            (
                "before: Vec<String> of 2 topics",
                &(|t: &str| {
                    before
                        .iter()
                        .filter(|Before::Only(v)| v.iter().any(|x| x == t))
                        .count()
                }) as &dyn Fn(&str) -> usize,
            ),
            ("2 exact topics", &|t| {
                exact.iter().filter(|f| f.matches(t)).count()
            }),
            ("1 topic + 2 prefixes", &|t| {
                after.iter().filter(|f| f.matches(t)).count()
            }),
            ("20 exact topics", &|t| {
                many.iter().filter(|f| f.matches(t)).count()
            }),
        ] {
            println!("{name}: {:.1} ns per subscriber per event", time(f));
        }
    }

    #[test]
    fn filters_tell_their_exact_topics_and_what_they_overlap() {
        let f = |s: &[&str]| TopicFilter::new(s.iter().map(|s| Selector::parse(s).unwrap()));
        let sel = |s: &str| Selector::parse(s).unwrap();
        assert_eq!(f(&["b", "a"]).only_topics().unwrap().len(), 2);
        assert!(f(&["a", "u/*"]).only_topics().is_none());
        assert!(f(&["*"]).only_topics().is_none());
        assert!(f(&[]).only_topics().is_none());
        assert!(f(&["u/1"]).overlaps(&sel("u/*")));
        assert!(!f(&["u"]).overlaps(&sel("u/*")));
        assert!(f(&["u/a/*"]).overlaps(&sel("u/*")));
        assert!(f(&["u/*"]).overlaps(&sel("u/a/*")));
        assert!(f(&["u/*"]).overlaps(&sel("u/a")));
        assert!(!f(&["v/*"]).overlaps(&sel("u/*")));
        assert!(f(&["*"]).overlaps(&sel("x")));
        assert_eq!(f(&["b", "u/*", "a"]).selectors(), ["a", "b", "u/*"]);
        assert_eq!(f(&["*", "a"]).selectors(), ["*"]);
        assert!(check_logged_event_name(CLOSED).is_ok());
        assert!(check_logged_event_name("ssehub:gap").is_err());
        assert!(check_event_name(CLOSED).is_err());
    }
}
