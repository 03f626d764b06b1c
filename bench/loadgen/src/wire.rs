//! Bytes on the wire: HTTP/1.1 response heads, the chunked body decoder and
//! the event-stream parser, all incremental (fed whatever a read returned).
//! The bench payload format lives here too.

use memchr::memchr;

/// A response head: status and whether the body is chunked.
pub struct ResponseHead {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<usize>,
    /// The server closes the connection after this response.
    pub close: bool,
    /// Bytes of the head, CRLFCRLF included.
    pub len: usize,
}

/// Parses a response head if `buf` holds all of it.
pub fn response_head(buf: &[u8]) -> Option<Result<ResponseHead, String>> {
    let end = memchr::memmem::find(buf, b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = match status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
    {
        Some(s) => s,
        None => return Some(Err(format!("bad status line {status_line:?}"))),
    };
    let mut chunked = false;
    let mut content_length = None;
    let mut close = false;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k.eq_ignore_ascii_case("content-length") {
                content_length = v.parse().ok();
            } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                close = true;
            }
        }
    }
    Some(Ok(ResponseHead {
        status,
        chunked,
        content_length,
        close,
        len: end,
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size(usize),
    Extension(usize),
    Data(usize),
    DataCr,
    DataLf,
    /// The zero-size chunk was read: the body is over.
    Done,
}

/// One event as parsed off the stream; slices borrow the parser.
pub struct Parsed<'a> {
    pub event_type: &'a [u8],
    pub data: &'a [u8],
}

/// Incremental decoder: chunked framing (when the response uses it), then
/// event-stream lines (WHATWG). Servers here end lines with LF only; a CR
/// before the LF is tolerated.
pub struct StreamParser {
    chunked: bool,
    chunk: Chunk,
    line: Vec<u8>,
    event_type: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    /// The last `id:` field seen, as a reconnecting client would send it.
    pub last_id: Vec<u8>,
}

impl StreamParser {
    pub fn new(chunked: bool) -> StreamParser {
        StreamParser {
            chunked,
            chunk: Chunk::Size(0),
            line: Vec::new(),
            event_type: Vec::new(),
            data: Vec::new(),
            has_data: false,
            last_id: Vec::new(),
        }
    }

    /// True once a chunked body has ended with its zero-size chunk.
    pub fn done(&self) -> bool {
        self.chunk == Chunk::Done
    }

    /// Feeds received bytes; calls `on_event` for every complete event.
    pub fn feed(&mut self, mut input: &[u8], on_event: &mut impl FnMut(Parsed)) {
        if !self.chunked {
            self.lines(input, on_event);
            return;
        }
        while !input.is_empty() {
            match self.chunk {
                Chunk::Size(n) => {
                    let b = input[0];
                    input = &input[1..];
                    self.chunk = match b {
                        b'0'..=b'9' => Chunk::Size(n * 16 + usize::from(b - b'0')),
                        b'a'..=b'f' => Chunk::Size(n * 16 + usize::from(b - b'a' + 10)),
                        b'A'..=b'F' => Chunk::Size(n * 16 + usize::from(b - b'A' + 10)),
                        b'\n' if n == 0 => Chunk::Done,
                        b'\n' => Chunk::Data(n),
                        _ => Chunk::Extension(n),
                    };
                }
                Chunk::Extension(n) => match memchr(b'\n', input) {
                    Some(i) => {
                        input = &input[i + 1..];
                        self.chunk = if n == 0 { Chunk::Done } else { Chunk::Data(n) };
                    }
                    None => input = &[],
                },
                Chunk::Data(n) => {
                    let take = n.min(input.len());
                    let (data, rest) = input.split_at(take);
                    input = rest;
                    self.lines(data, on_event);
                    self.chunk = if take == n {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(n - take)
                    };
                }
                Chunk::DataCr => {
                    input = &input[1..];
                    self.chunk = Chunk::DataLf;
                }
                Chunk::DataLf => {
                    input = &input[1..];
                    self.chunk = Chunk::Size(0);
                }
                Chunk::Done => return,
            }
        }
    }

    fn lines(&mut self, mut input: &[u8], on_event: &mut impl FnMut(Parsed)) {
        while let Some(i) = memchr(b'\n', input) {
            if self.line.is_empty() {
                self.line_done(&input[..i], on_event);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&input[..i]);
                self.line_done(&line, on_event);
                line.clear();
                self.line = line;
            }
            input = &input[i + 1..];
        }
        self.line.extend_from_slice(input);
    }

    fn line_done(&mut self, line: &[u8], on_event: &mut impl FnMut(Parsed)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_data {
                on_event(Parsed {
                    event_type: &self.event_type,
                    data: &self.data,
                });
            }
            self.event_type.clear();
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"id" => {
                self.last_id.clear();
                self.last_id.extend_from_slice(value);
            }
            b"event" => {
                self.event_type.clear();
                self.event_type.extend_from_slice(value);
            }
            _ => {}
        }
    }
}

/// What every bench event carries: the phase it belongs to, the publisher
/// connection and its sequence number (one connection publishes in order,
/// so per publisher the order is known), and the send time in nanoseconds
/// since the load generator started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    pub phase: u32,
    pub publisher: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

/// Event data of about `PAYLOAD_BYTES`, unless a scenario asks for more.
pub const PAYLOAD_BYTES: usize = 100;

impl Payload {
    /// Event data of about `bytes`: the fields, then padding.
    pub fn encode_to(&self, bytes: usize) -> Vec<u8> {
        let mut s = format!(
            "{}:{}:{}:{}:",
            self.phase, self.publisher, self.seq, self.sent_ns
        )
        .into_bytes();
        s.resize(bytes.max(s.len()), b'x');
        s
    }

    pub fn decode(data: &[u8]) -> Option<Payload> {
        let mut parts = data.split(|&b| b == b':');
        let mut next = || -> Option<u64> {
            let p = parts.next()?;
            if p.is_empty() || p.len() > 20 {
                return None;
            }
            p.iter().try_fold(0u64, |n, &b| {
                b.is_ascii_digit()
                    .then(|| n.wrapping_mul(10) + u64::from(b - b'0'))
            })
        };
        Some(Payload {
            phase: u32::try_from(next()?).ok()?,
            publisher: u32::try_from(next()?).ok()?,
            seq: next()?,
            sent_ns: next()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(p: &mut StreamParser, input: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        // Byte by byte: every split point must work.
        for b in input.chunks(1) {
            p.feed(b, &mut |e| {
                out.push((
                    String::from_utf8_lossy(e.event_type).into(),
                    String::from_utf8_lossy(e.data).into(),
                ))
            });
        }
        out
    }

    #[test]
    fn chunked_events_split_anywhere() {
        let body = b"13\r\nretry: 3000\n\nid: 1\n\r\n1D;ext=1\r\nevent: x\ndata: a\ndata: b\n\n:\n\n\r\n0\r\n\r\n";
        let mut p = StreamParser::new(true);
        let got = collect(&mut p, body);
        assert_eq!(got, [("x".to_string(), "a\nb".to_string())]);
        assert_eq!(p.last_id, b"1");
        assert!(p.done());
    }

    #[test]
    fn raw_stream() {
        let mut p = StreamParser::new(false);
        let got = collect(&mut p, b": hi\n\nid: 5:0\ndata: hello\n\n");
        assert_eq!(got, [(String::new(), "hello".to_string())]);
        assert_eq!(p.last_id, b"5:0");
    }

    #[test]
    fn payload_round_trip() {
        let p = Payload {
            phase: 3,
            publisher: 7,
            seq: 12345,
            sent_ns: 987654321,
        };
        let bytes = p.encode_to(PAYLOAD_BYTES);
        assert_eq!(bytes.len(), PAYLOAD_BYTES);
        assert_eq!(Payload::decode(&bytes), Some(p));
        assert_eq!(Payload::decode(&p.encode_to(60 * 1024)), Some(p));
        assert_eq!(Payload::decode(b"hello"), None);
    }

    #[test]
    fn heads() {
        let h = response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.chunked, h.len), (200, true, 47));
        assert!(response_head(b"HTTP/1.1 200 OK\r\n").is_none());
    }
}
