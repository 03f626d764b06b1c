//! The event-stream wire format (WHATWG HTML, "Server-sent events"): a
//! published event encoded once into the `Frame` every subscriber shares, the
//! `retry:` line, the `:` heartbeat and the hub's own `ssehub:` events
//! (`gap`, `expired`; `closed` is an event of the log). Pure
//! values and functions returning bytes; the HTTP chunked framing is
//! `stream.rs`'s.

use std::sync::Arc;

use crate::event::EventId;

/// A published event before the log gives it an id: what the publisher
/// sent, checked, and its frame without the `id:` line (`body`), encoded
/// once outside any lock.
#[derive(Debug)]
pub struct Event<'a> {
    pub topic: &'a str,
    /// The event type (`event:` field), if any.
    pub name: Option<&'a str>,
    pub data: &'a str,
    pub body: Vec<u8>,
}

impl<'a> Event<'a> {
    pub fn new(topic: &'a str, name: Option<&'a str>, data: &'a str) -> Event<'a> {
        Event {
            topic,
            name,
            data,
            body: body(name, data),
        }
    }
}

/// One published event, encoded to its wire bytes once; every subscriber and
/// the log share the same allocation.
#[derive(Debug)]
pub struct Frame {
    pub id: EventId,
    pub topic: Box<str>,
    /// The complete event-stream block, `id:` line through the blank line.
    pub bytes: Box<[u8]>,
    /// It is the `ssehub:closed` event that ends its topic: streams and the
    /// hub see it without parsing bytes.
    pub closes: bool,
}

impl Frame {
    /// `event` under its id: the `id:` line in front of its encoded body.
    pub fn new(id: EventId, event: &Event) -> Frame {
        Frame {
            id,
            topic: event.topic.into(),
            bytes: frame(id, &event.body),
            closes: event.name == Some(crate::event::CLOSED),
        }
    }
}

pub type SharedFrame = Arc<Frame>;

/// A comment line and the blank line that ends the block.
pub const HEARTBEAT: &[u8] = b":\n\n";

/// Splits event data at every line end. WHATWG: `\r\n`, a lone `\r` and a
/// lone `\n` each end a line, so each becomes its own `data:` line.
pub fn lines(data: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

/// Everything of a frame but its `id:` line: `event:` (if any), one `data:`
/// line per data line, the blank line. Built outside the hub lock.
pub fn body(event: Option<&str>, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16 + event.map_or(0, str::len));
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    for line in lines(data) {
        // "data: " with the space: a parser strips one leading space, so a
        // line that itself starts with a space survives.
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// A complete frame: the `id:` line followed by `body`.
pub fn frame(id: EventId, body: &[u8]) -> Box<[u8]> {
    let head = format!("id: {id}\n");
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    out.into_boxed_slice()
}

/// The reconnection delay line that opens every stream.
pub fn retry(ms: u64) -> Vec<u8> {
    format!("retry: {ms}\n\n").into_bytes()
}

/// The event that tells a reconnecting client it missed events. It has no
/// `id:` line, so the browser keeps its last event id. `last_event_id` is
/// null for a stream that had no id yet (it subscribed before the first
/// event, and events owed to it were dropped before it read them).
pub fn gap(last_event_id: Option<EventId>, oldest_available: Option<EventId>) -> Vec<u8> {
    let json = serde_json::json!({
        "last_event_id": last_event_id.map(|id| id.to_string()),
        "oldest_available": oldest_available.map(|id| id.to_string()),
    });
    format!("event: ssehub:gap\ndata: {json}\n\n").into_bytes()
}

/// The event that ends a stream whose token expired at `exp` (Unix
/// seconds). No `id:` line: the client keeps its last event id.
pub fn expired(exp: u64) -> Vec<u8> {
    format!("event: ssehub:expired\ndata: {{\"exp\":{exp}}}\n\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn every_line_end_starts_a_data_line() {
        let want = "data: a\ndata: b\ndata: c\ndata: d\n\n";
        assert_eq!(text(&body(None, "a\r\nb\rc\nd")), want);
    }

    #[test]
    fn trailing_and_doubled_line_ends_keep_empty_lines() {
        assert_eq!(text(&body(None, "a\n")), "data: a\ndata: \n\n");
        assert_eq!(text(&body(None, "\r\r\n")), "data: \ndata: \ndata: \n\n");
        assert_eq!(text(&body(None, "a\n\nb")), "data: a\ndata: \ndata: b\n\n");
    }

    #[test]
    fn empty_data_is_one_empty_data_line() {
        assert_eq!(text(&body(None, "")), "data: \n\n");
    }

    #[test]
    fn leading_space_and_colons_are_kept() {
        assert_eq!(text(&body(None, " x: y")), "data:  x: y\n\n");
    }

    #[test]
    fn event_name_comes_first() {
        assert_eq!(
            text(&body(Some("created"), "line one\nline two")),
            "event: created\ndata: line one\ndata: line two\n\n"
        );
    }

    #[test]
    fn frame_prefixes_the_id() {
        let id = EventId { ms: 17, seq: 2 };
        assert_eq!(text(&frame(id, &body(None, "x"))), "id: 17-2\ndata: x\n\n");
    }

    #[test]
    fn retry_and_heartbeat() {
        assert_eq!(text(&retry(3000)), "retry: 3000\n\n");
        assert_eq!(HEARTBEAT, b":\n\n");
    }

    #[test]
    fn expired_event_has_no_id() {
        assert_eq!(
            text(&expired(1764000000)),
            "event: ssehub:expired\ndata: {\"exp\":1764000000}\n\n"
        );
    }

    #[test]
    fn gap_event_has_no_id() {
        let last = Some(EventId { ms: 5, seq: 0 });
        assert_eq!(
            text(&gap(last, Some(EventId { ms: 9, seq: 1 }))),
            "event: ssehub:gap\ndata: {\"last_event_id\":\"5-0\",\"oldest_available\":\"9-1\"}\n\n"
        );
        assert_eq!(
            text(&gap(last, None)),
            "event: ssehub:gap\ndata: {\"last_event_id\":\"5-0\",\"oldest_available\":null}\n\n"
        );
        assert_eq!(
            text(&gap(None, Some(EventId { ms: 9, seq: 1 }))),
            "event: ssehub:gap\ndata: {\"last_event_id\":null,\"oldest_available\":\"9-1\"}\n\n"
        );
    }
}
