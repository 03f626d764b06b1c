//! Reading HTTP/1.x requests off a connection we own: the head within a
//! deadline and a size cap, strict message framing (RFC 9112 §6), and bodies
//! bounded before a byte of them is read. Knows nothing of routes.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use tiny_http::{Header, Method};

/// A request head larger than this is refused with 431 (SPEC "Hostile input").
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// More header fields than this is refused with 431.
pub const MAX_FIELDS: usize = 100;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 4096;
/// Longest chunk-size line (size, extensions) we read.
const MAX_CHUNK_LINE: usize = 4096;

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    /// The request target as sent (origin form, `/path?query`).
    pub target: String,
    pub http10: bool,
    pub headers: Vec<Header>,
}

impl Head {
    /// Every value of the field `name`, in order.
    pub fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.field.equiv(name))
            .map(|h| h.value.as_str())
    }

    /// The value of a field that must appear at most once.
    pub fn single(&self, name: &'static str) -> Result<Option<&str>, RequestError> {
        let mut values = self.values(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(RequestError::Bad(match name {
                "Host" => "more than one Host field",
                "Authorization" => "more than one Authorization field",
                "Last-Event-ID" => "more than one Last-Event-ID field",
                _ => "repeated header field",
            }));
        }
        Ok(first)
    }

    /// True when the client asked to close after this request.
    pub fn wants_close(&self) -> bool {
        let token = |t: &str| {
            self.values("Connection")
                .flat_map(|v| v.split(','))
                .any(|v| v.trim().eq_ignore_ascii_case(t))
        };
        if self.http10 {
            !token("keep-alive")
        } else {
            token("close")
        }
    }

    /// How the body is delimited; refuses ambiguous framing.
    pub fn framing(&self) -> Result<Framing, RequestError> {
        let te: Vec<String> = self
            .values("Transfer-Encoding")
            .flat_map(|v| v.split(','))
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        let has_length = self.values("Content-Length").next().is_some();
        if !te.is_empty() {
            if has_length {
                return Err(RequestError::Bad(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            if self.http10 {
                return Err(RequestError::Bad(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            if te.last().map(String::as_str) != Some("chunked") {
                return Err(RequestError::Bad("Transfer-Encoding must end with chunked"));
            }
            if te.len() > 1 {
                return Err(RequestError::NotImplemented(
                    "only the chunked transfer coding is supported",
                ));
            }
            return Ok(Framing::Chunked);
        }
        let mut length = None;
        for value in self.values("Content-Length").flat_map(|v| v.split(',')) {
            let n = parse_length(value.trim())?;
            if length.is_some_and(|l| l != n) {
                return Err(RequestError::Bad("conflicting Content-Length values"));
            }
            length = Some(n);
        }
        Ok(match length {
            Some(n) => Framing::Length(n),
            None => Framing::None,
        })
    }
}

/// A Content-Length value: one or more decimal digits. A number too large
/// for u64 is still well formed, and simply too large for any route.
fn parse_length(s: &str) -> Result<u64, RequestError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RequestError::Bad("malformed Content-Length"));
    }
    Ok(s.parse().unwrap_or(u64::MAX))
}

/// How a request body is delimited.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Why a request could not be read. Every variant but `Closed` is answered,
/// and the connection is closed afterwards.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestError {
    /// The peer closed, reset or went idle before a request began: nothing
    /// to answer.
    Closed,
    /// The head or body did not arrive within its deadline (408).
    Timeout,
    /// The head is larger than 16 KiB or has too many fields (431).
    HeadTooLarge,
    /// The body is larger than the route accepts (413).
    BodyTooLarge,
    /// Malformed request (400), with the reason.
    Bad(&'static str),
    /// A transfer coding we do not implement (501).
    NotImplemented(&'static str),
    /// An HTTP version other than 1.0 and 1.1 (505).
    Version,
}

impl RequestError {
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Closed => 400,
            RequestError::Timeout => 408,
            RequestError::HeadTooLarge => 431,
            RequestError::BodyTooLarge => 413,
            RequestError::Bad(_) => 400,
            RequestError::NotImplemented(_) => 501,
            RequestError::Version => 505,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::Closed => "connection closed",
            RequestError::Timeout => "request not received in time",
            RequestError::HeadTooLarge => "request head larger than 16 KiB or 100 fields",
            RequestError::BodyTooLarge => "body larger than this route accepts",
            RequestError::Bad(why) | RequestError::NotImplemented(why) => why,
            RequestError::Version => "only HTTP/1.0 and HTTP/1.1 are supported",
        }
    }
}

/// One client connection: the socket and bytes read past the last request.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes into the buffer before `deadline`; Ok(0) at EOF.
    fn fill(&mut self, deadline: Instant, max: usize) -> Result<usize, RequestError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RequestError::Timeout);
        }
        self.stream
            .set_read_timeout(Some(left))
            .map_err(|_| RequestError::Closed)?;
        // Read straight into the heap buffer, which is freed when the
        // connection becomes a stream: a 4 KiB buffer on the stack would stay
        // resident in every stream thread (measured: ~3.5 KiB of RSS each).
        let have = self.buf.len();
        self.buf.resize(have + max.clamp(1, READ_CHUNK), 0);
        let read = loop {
            match self.stream.read(&mut self.buf[have..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        self.buf.truncate(have + *read.as_ref().unwrap_or(&0));
        match read {
            Ok(n) => Ok(n),
            Err(e) if is_timeout(&e) => Err(RequestError::Timeout),
            Err(_) => Err(RequestError::Closed),
        }
    }

    /// Reads the next request head, which must be complete before
    /// `deadline` and within `MAX_HEAD_BYTES`. `Closed` when the peer ends
    /// or idles out before sending a byte of it.
    pub fn read_head(&mut self, deadline: Instant) -> Result<Head, RequestError> {
        let mut searched: usize = 0;
        loop {
            // RFC 9112 §2.2: ignore empty lines before the request line.
            let blank = self
                .buf
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            self.buf.drain(..blank);
            searched = searched.saturating_sub(blank);
            if let Some(end) = find_head_end(&self.buf, searched) {
                let head = parse_head(&self.buf[..end]);
                self.buf.drain(..end);
                return head;
            }
            searched = self.buf.len().saturating_sub(3);
            if self.buf.len() >= MAX_HEAD_BYTES {
                return Err(RequestError::HeadTooLarge);
            }
            let started = !self.buf.is_empty();
            match self.fill(deadline, MAX_HEAD_BYTES - self.buf.len()) {
                Ok(0) => return Err(RequestError::Closed),
                Ok(_) => {}
                Err(RequestError::Timeout) if !started => return Err(RequestError::Closed),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads exactly `n` bytes of body.
    fn take(&mut self, n: usize, deadline: Instant) -> Result<Vec<u8>, RequestError> {
        while self.buf.len() < n {
            let missing = n - self.buf.len();
            if self.fill(deadline, missing)? == 0 {
                return Err(RequestError::Closed);
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads one CRLF-terminated line of at most `max` bytes (without it).
    fn line(&mut self, max: usize, deadline: Instant) -> Result<Vec<u8>, RequestError> {
        let mut searched = 0;
        loop {
            if let Some(i) = self.buf[searched..].iter().position(|b| *b == b'\n') {
                let end = searched + i;
                if end == 0 || self.buf[end - 1] != b'\r' {
                    return Err(RequestError::Bad("chunked body line not ended by CRLF"));
                }
                let line = self.buf[..end - 1].to_vec();
                self.buf.drain(..=end);
                return Ok(line);
            }
            searched = self.buf.len();
            if searched > max {
                return Err(RequestError::Bad("chunked body line too long"));
            }
            if self.fill(deadline, max + 2 - searched)? == 0 {
                return Err(RequestError::Closed);
            }
        }
    }

    /// Reads the body as `framing` says, refusing with `BodyTooLarge`
    /// before reading past `limit` bytes of data.
    pub fn read_body(
        &mut self,
        framing: Framing,
        limit: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>, RequestError> {
        match framing {
            Framing::None => Ok(Vec::new()),
            Framing::Length(n) if n > limit as u64 => Err(RequestError::BodyTooLarge),
            Framing::Length(n) => self.take(n as usize, deadline),
            Framing::Chunked => {
                let mut body = Vec::new();
                loop {
                    let line = self.line(MAX_CHUNK_LINE, deadline)?;
                    let size = parse_chunk_size(&line)?;
                    if size == 0 {
                        break;
                    }
                    if size > (limit - body.len()) as u64 {
                        return Err(RequestError::BodyTooLarge);
                    }
                    body.extend(self.take(size as usize, deadline)?);
                    if self.take(2, deadline)? != b"\r\n" {
                        return Err(RequestError::Bad("chunk data not followed by CRLF"));
                    }
                }
                // Trailer fields are read and ignored.
                let mut trailer = 0;
                loop {
                    let line = self.line(MAX_CHUNK_LINE, deadline)?;
                    if line.is_empty() {
                        return Ok(body);
                    }
                    trailer += line.len();
                    if trailer > MAX_HEAD_BYTES {
                        return Err(RequestError::HeadTooLarge);
                    }
                }
            }
        }
    }

    /// Answers `Expect: 100-continue` before a body is read.
    pub fn send_continue(&mut self) -> io::Result<()> {
        self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
    }

    /// Gives up the read buffer once the connection turns into a stream.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

/// `chunk-size [; ext]`: hex digits whose value fits a u64.
fn parse_chunk_size(line: &[u8]) -> Result<u64, RequestError> {
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii_end();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(RequestError::Bad("malformed chunk size"));
    }
    let significant = digits.iter().skip_while(|b| **b == b'0').count();
    if significant > 16 {
        return Err(RequestError::Bad("chunk size overflows"));
    }
    let text = std::str::from_utf8(digits).expect("hex digits are ASCII");
    u64::from_str_radix(text, 16).map_err(|_| RequestError::Bad("chunk size overflows"))
}

/// The end of the head (after its blank line), searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = buf[i..].iter().position(|b| *b == b'\n') {
        let nl = i + p;
        if buf.get(nl + 1) == Some(&b'\n') {
            return Some(nl + 2);
        }
        if buf.get(nl + 1) == Some(&b'\r') && buf.get(nl + 2) == Some(&b'\n') {
            return Some(nl + 3);
        }
        i = nl + 1;
    }
    None
}

fn parse_head(raw: &[u8]) -> Result<Head, RequestError> {
    let mut lines = raw
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let (method, target, http10) = parse_request_line(request_line)?;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        if headers.len() == MAX_FIELDS {
            return Err(RequestError::HeadTooLarge);
        }
        headers.push(parse_field(line)?);
    }
    let head = Head {
        method,
        target,
        http10,
        headers,
    };
    if !head.http10 && head.single("Host")?.is_none() {
        return Err(RequestError::Bad("missing Host field"));
    }
    Ok(head)
}

fn parse_request_line(line: &[u8]) -> Result<(Method, String, bool), RequestError> {
    let bad = RequestError::Bad("malformed request line");
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad);
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err(bad);
    }
    if target.is_empty() || !target.iter().all(|b| b.is_ascii_graphic()) {
        return Err(RequestError::Bad("malformed request target"));
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        v if v.len() == 8
            && v.starts_with(b"HTTP/")
            && v[5].is_ascii_digit()
            && v[6] == b'.'
            && v[7].is_ascii_digit() =>
        {
            return Err(RequestError::Version)
        }
        _ => return Err(bad),
    };
    let method = std::str::from_utf8(method)
        .expect("tchars are ASCII")
        .parse()
        .map_err(|_| RequestError::Bad("malformed method"))?;
    let target = String::from_utf8(target.to_vec()).expect("graphic ASCII is UTF-8");
    Ok((method, target, http10))
}

fn parse_field(line: &[u8]) -> Result<Header, RequestError> {
    if line[0] == b' ' || line[0] == b'\t' {
        return Err(RequestError::Bad("obsolete line folding in a header field"));
    }
    let colon = line
        .iter()
        .position(|b| *b == b':')
        .ok_or(RequestError::Bad("header field without a colon"))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
        return Err(RequestError::Bad("malformed header field name"));
    }
    let value = line[colon + 1..].trim_ascii();
    if !value
        .iter()
        .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\t')
    {
        return Err(RequestError::Bad(
            "header field value holds a control or non-ASCII byte",
        ));
    }
    Header::from_bytes(name, value).map_err(|()| RequestError::Bad("malformed header field"))
}

/// Client-supplied text, made safe for a log line: escaped and truncated.
pub fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(120).flat_map(char::escape_debug).collect();
    if s.chars().count() > 120 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Head, RequestError> {
        let end = find_head_end(raw.as_bytes(), 0).expect("complete head");
        parse_head(&raw.as_bytes()[..end])
    }

    #[test]
    fn parses_a_request() {
        let h =
            head("POST /events?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n").unwrap();
        assert_eq!(h.method, Method::Post);
        assert_eq!(h.target, "/events?topic=a");
        assert!(!h.http10);
        assert_eq!(h.framing(), Ok(Framing::Length(3)));
    }

    #[test]
    fn bare_lf_heads_are_accepted() {
        let h = head("GET / HTTP/1.0\nX: y\n\n").unwrap();
        assert!(h.http10);
        assert_eq!(h.values("x").collect::<Vec<_>>(), ["y"]);
    }

    #[test]
    fn framing_is_strict() {
        let f = |fields: &str| {
            head(&format!("POST / HTTP/1.1\r\nHost: x\r\n{fields}\r\n"))
                .unwrap()
                .framing()
        };
        assert_eq!(
            f("Content-Length: 5\r\nContent-Length: 5\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(f("Content-Length: 5, 5\r\n"), Ok(Framing::Length(5)));
        assert!(matches!(
            f("Content-Length: 5\r\nContent-Length: 6\r\n"),
            Err(RequestError::Bad(_))
        ));
        assert!(matches!(
            f("Content-Length: -1\r\n"),
            Err(RequestError::Bad(_))
        ));
        assert!(matches!(
            f("Content-Length: 0x10\r\n"),
            Err(RequestError::Bad(_))
        ));
        assert!(matches!(
            f("Content-Length: +5\r\n"),
            Err(RequestError::Bad(_))
        ));
        assert!(matches!(
            f("Content-Length: \r\n"),
            Err(RequestError::Bad(_))
        ));
        assert_eq!(
            f("Content-Length: 18446744073709551616\r\n"),
            Ok(Framing::Length(u64::MAX))
        );
        assert_eq!(f("Transfer-Encoding: chunked\r\n"), Ok(Framing::Chunked));
        assert_eq!(f("Transfer-Encoding: Chunked\r\n"), Ok(Framing::Chunked));
        assert!(matches!(
            f("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"),
            Err(RequestError::Bad(_))
        ));
        assert!(matches!(
            f("Transfer-Encoding: chunked, gzip\r\n"),
            Err(RequestError::Bad(_))
        ));
        assert!(matches!(
            f("Transfer-Encoding: identity\r\n"),
            Err(RequestError::Bad(_))
        ));
        assert!(matches!(
            f("Transfer-Encoding: gzip, chunked\r\n"),
            Err(RequestError::NotImplemented(_))
        ));
        assert_eq!(f(""), Ok(Framing::None));
    }

    #[test]
    fn malformed_heads_are_refused() {
        for raw in [
            "GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost x\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\x01b\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nX: caf\u{e9}\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / FTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(
                matches!(head(raw), Err(RequestError::Bad(_))),
                "{raw:?} accepted"
            );
        }
        assert_eq!(
            head("GET / HTTP/2.0\r\n\r\n").err(),
            Some(RequestError::Version)
        );
    }

    #[test]
    fn too_many_fields_is_431() {
        let fields: String = (0..=MAX_FIELDS).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
        assert_eq!(head(&raw).err(), Some(RequestError::HeadTooLarge));
    }

    #[test]
    fn connection_close() {
        assert!(
            head("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n")
                .unwrap()
                .wants_close()
        );
        assert!(!head("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .wants_close());
        assert!(head("GET / HTTP/1.0\r\n\r\n").unwrap().wants_close());
        assert!(!head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .wants_close());
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a"), Ok(26));
        assert_eq!(parse_chunk_size(b"0000000000000000000010;ext=1"), Ok(16));
        assert_eq!(parse_chunk_size(b"ffffffffffffffff"), Ok(u64::MAX));
        assert!(parse_chunk_size(b"1ffffffffffffffff").is_err());
        assert!(parse_chunk_size(b"").is_err());
        assert!(parse_chunk_size(b"-1").is_err());
        assert!(parse_chunk_size(b"0x10").is_err());
        assert!(parse_chunk_size(b" 10").is_err());
    }
}
