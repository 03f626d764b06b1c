//! One subscriber's stream, on the thread that accepted its connection: the
//! response head, `retry:`, the replay, then a `recv_timeout(heartbeat)` loop
//! that drains its queue into one write per wake. The only writer to a
//! subscriber socket; it never takes the hub lock while writing.

use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::RecvTimeoutError;

use crate::event::{EventId, SharedFrame};
use crate::hangup::Hangups;
use crate::hub::{Ending, Subscription};
use crate::metrics::Metrics;
use crate::sse;

/// A wake-up writes at most this many bytes of events in one chunk: enough
/// to coalesce a burst, small enough that a slow client never makes the
/// hub build a large buffer (THREADS.md: drain the queue into one write).
const BATCH_BYTES: usize = 64 * 1024;
/// Room left in front of a batch for the chunk-size line.
const CHUNK_HEAD: usize = 18;

/// What the stream needs to know about the request it answers.
pub struct StreamParams<'a> {
    pub http10: bool,
    pub retry_ms: u64,
    pub heartbeat: Duration,
    pub cors_origin: Option<&'a str>,
    pub last_event_id: Option<EventId>,
    pub hangups: &'a Hangups,
    /// The subscriber's token expires then (Unix seconds): the stream ends
    /// with `ssehub:expired` (SPEC "Signed tokens").
    pub expires: Option<u64>,
}

/// The response head of an event stream.
fn head(http10: bool, cors_origin: Option<&str>) -> String {
    let mut h = String::from(if http10 {
        "HTTP/1.0 200 OK\r\nConnection: close\r\n"
    } else {
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    });
    h.push_str(
        "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n",
    );
    for (name, value) in crate::http::cors_fields(cors_origin) {
        h.push_str(&format!("{name}: {value}\r\n"));
    }
    h.push_str("\r\n");
    h
}

/// Buffers event-stream bytes and writes them as one HTTP chunk (or raw,
/// for HTTP/1.0) with a single write call.
struct Writer {
    stream: TcpStream,
    chunked: bool,
    buf: Vec<u8>,
}

impl Writer {
    fn new(stream: TcpStream, chunked: bool) -> Writer {
        let mut w = Writer {
            stream,
            chunked,
            buf: Vec::new(),
        };
        w.reset();
        w
    }

    fn reset(&mut self) {
        self.buf.clear();
        if self.chunked {
            self.buf.resize(CHUNK_HEAD, 0);
        }
    }

    fn pending(&self) -> usize {
        self.buf.len() - if self.chunked { CHUNK_HEAD } else { 0 }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Writes what is buffered, if anything, as one chunk. `blocked` is
    /// told when the socket has no room for it and the write must wait for
    /// the client, and when that wait is over.
    fn flush(&mut self, blocked: &dyn Fn(bool)) -> io::Result<()> {
        let len = self.pending();
        if len == 0 {
            return Ok(());
        }
        let start = if self.chunked {
            // The size line is written backwards into the room left for
            // it: no allocation per write.
            let mut at = CHUNK_HEAD - 2;
            self.buf[at..CHUNK_HEAD].copy_from_slice(b"\r\n");
            let mut rest = len;
            loop {
                at -= 1;
                self.buf[at] = b"0123456789abcdef"[rest % 16];
                rest /= 16;
                if rest == 0 {
                    break;
                }
            }
            self.buf.extend_from_slice(b"\r\n");
            at
        } else {
            0
        };
        let result = write_waiting(&mut self.stream, &self.buf[start..], blocked);
        if self.buf.capacity() > 4 * BATCH_BYTES {
            self.buf = Vec::new();
        }
        self.reset();
        result
    }

    /// Ends the body: the zero-size chunk for HTTP/1.1, the close for 1.0.
    fn finish(mut self) {
        if self.chunked {
            let _ = self.stream.write_all(b"0\r\n\r\n");
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// True when the peer has closed its side (EOF is readable). A
    /// subscriber sends nothing after its request, so any readable EOF
    /// means it is gone; the first write into such a socket can still
    /// succeed, so this is checked before each heartbeat.
    fn peer_closed(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: recv on a valid fd into a one-byte buffer we own.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n == 0
            || (n < 0
                && !matches!(
                    io::Error::last_os_error().kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ))
    }
}

/// Writes all of `bytes`: first what the socket takes at once, then the
/// rest waiting for room, with `blocked` told around that wait.
fn write_waiting(stream: &mut TcpStream, bytes: &[u8], blocked: &dyn Fn(bool)) -> io::Result<()> {
    // SAFETY: send on a valid fd from a buffer we own, never waiting.
    let sent = unsafe {
        libc::send(
            stream.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    let rest = match usize::try_from(sent) {
        Ok(n) => &bytes[n..],
        Err(_) => {
            let e = io::Error::last_os_error();
            if !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                return Err(e);
            }
            bytes
        }
    };
    if rest.is_empty() {
        return Ok(());
    }
    blocked(true);
    let written = stream.write_all(rest);
    blocked(false);
    written
}

/// Lowers this thread to the weakest scheduling priority. THREADS.md: with
/// stream threads at nice 19 a publisher's fan-out to 10k busy streams fell
/// from ~0.5 s to ~1.2 ms, because the threads it wakes no longer preempt
/// it. Only stream threads do this; accept and publish keep theirs.
fn lower_priority() {
    // SAFETY: gettid and setpriority have no memory-safety preconditions;
    // on Linux PRIO_PROCESS with a thread id sets that thread's nice value.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

/// Serves one subscription until the client goes, the hub lets go of it, or
/// a write fails. Writes the stream end unless the client is gone, before
/// the subscription is dropped (shutdown waits for that drop).
pub fn serve(stream: TcpStream, sub: Subscription<'_>, p: &StreamParams) {
    lower_priority();
    // A client that vanishes without a FIN or RST (a phone that lost its
    // network, a NAT that forgot the flow) never acknowledges the next
    // heartbeat; the kernel gives up on it after another heartbeat instead
    // of ~15 minutes of retransmissions, and the hang-up watch sees the
    // error. A client that is alive acknowledges even with a full window.
    let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(p.heartbeat));
    p.hangups.watch(&stream, sub.key());
    let mut w = Writer::new(stream, !p.http10);
    match run(&mut w, &sub, p) {
        Ok(()) => w.finish(),
        Err(e) => log::debug!("stream closed by client: {e}"),
    }
    drop(sub);
}

/// Where the stream stands after a wake-up: go on, end it properly (Ok), or
/// give up on a client that is gone (Err).
fn check(sub: &Subscription<'_>) -> io::Result<Option<()>> {
    match sub.ended() {
        None => Ok(None),
        Some(Ending::Released) => Ok(Some(())),
        Some(Ending::Gone) => Err(io::ErrorKind::ConnectionAborted.into()),
    }
}

/// Answers a subscriber whose replay cannot be read now (the shared log is
/// out of reach): the head, `retry:` and the stream end, so the client
/// reconnects after that delay with the same last event id.
pub fn retry_later(stream: TcpStream, p: &StreamParams) {
    let mut w = Writer::new(stream, !p.http10);
    let started = w
        .stream
        .write_all(head(p.http10, p.cors_origin).as_bytes())
        .and_then(|()| {
            w.push(&sse::retry(jittered(p.retry_ms)));
            w.flush(&|_| {})
        });
    match started {
        Ok(()) => w.finish(),
        Err(e) => log::debug!("stream closed by client: {e}"),
    }
}

/// Ok when the hub ended the stream, Err when the client went away.
fn run(w: &mut Writer, sub: &Subscription<'_>, p: &StreamParams) -> io::Result<()> {
    let metrics = sub.metrics();
    let delivered = |n: u64| Metrics::add(&metrics.delivered, n);
    // The hub evicts a subscriber whose thread waits on its client while
    // events pile up, and publishers do not wait for it.
    let flush = |w: &mut Writer| w.flush(&|blocked| sub.set_blocked(blocked));

    w.stream
        .write_all(head(p.http10, p.cors_origin).as_bytes())?;
    w.push(&sse::retry(jittered(p.retry_ms)));
    if let (Some(last), Some(oldest)) = (p.last_event_id, sub.replay.gap) {
        w.push(&sse::gap(last, oldest));
    }
    flush(w)?;

    // Replay, then live. With a shared log the queue may repeat the tail of
    // the replay, or the client's own last event when the follower lags, so
    // live frames at or below the last id the client has are skipped (ids
    // only grow). After a gap that id may be from another log: no floor.
    let mut last_sent = p.last_event_id.filter(|_| sub.replay.gap.is_none());
    for frame in &sub.replay.frames {
        if w.pending() + frame.bytes.len() > BATCH_BYTES {
            flush(w)?;
        }
        w.push(&frame.bytes);
        last_sent = Some(frame.id);
        delivered(1);
    }
    flush(w)?;

    // The expiry as an instant, so that the wait below needs no timer: the
    // heartbeat wait ends at the earlier of the two.
    let expires_at = p.expires.and_then(|exp| {
        // An exp beyond what the clocks hold never comes.
        let at = UNIX_EPOCH.checked_add(Duration::from_secs(exp))?;
        let left = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Some((exp, Instant::now().checked_add(left)?))
    });
    let take = |w: &mut Writer, f: &SharedFrame, last_sent: &mut Option<EventId>| -> u64 {
        if last_sent.is_some_and(|l| f.id <= l) {
            return 0;
        }
        *last_sent = Some(f.id);
        w.push(&f.bytes);
        1
    };
    loop {
        if let Some(done) = check(sub)? {
            return Ok(done);
        }
        let mut wait = p.heartbeat;
        if let Some((exp, at)) = expires_at {
            match at.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => wait = wait.min(left),
                _ => {
                    w.push(&sse::expired(exp));
                    return flush(w);
                }
            }
        }
        match sub.rx.recv_timeout(wait) {
            Ok(first) => {
                let mut n = take(w, &first, &mut last_sent);
                while w.pending() < BATCH_BYTES {
                    match sub.rx.try_recv() {
                        Ok(f) => n += take(w, &f, &mut last_sent),
                        Err(_) => break,
                    }
                }
                if let Some(done) = check(sub)? {
                    return Ok(done);
                }
                flush(w)?;
                delivered(n);
            }
            Err(RecvTimeoutError::Timeout)
                if expires_at.is_some_and(|(_, at)| Instant::now() >= at) => {}
            Err(RecvTimeoutError::Timeout) => {
                if w.peer_closed() {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                w.push(sse::HEARTBEAT);
                flush(w)?;
            }
            Err(RecvTimeoutError::Disconnected) => return check(sub).map(|_| ()),
        }
    }
}

/// The base delay plus a random jitter of up to 50%, so that clients
/// dropped together do not reconnect together.
fn jittered(base_ms: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS once per thread and advanced per
    // instance: a fresh, unpredictable u64 without a random-number crate.
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    base_ms + r % (base_ms / 2 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_the_base() {
        let seen: Vec<u64> = (0..200).map(|_| jittered(3000)).collect();
        assert!(seen.iter().all(|ms| (3000..=4500).contains(ms)));
        assert!(seen.iter().any(|ms| *ms != seen[0]), "no jitter at all");
    }

    #[test]
    fn chunks_carry_their_size_in_hex() {
        let (client, server) = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            (client, listener.accept().unwrap().0)
        };
        let mut w = Writer::new(server, true);
        for size in [1, 15, 16, 255, 4096] {
            w.push(&vec![b'a'; size]);
            w.flush(&|_| {}).unwrap();
        }
        w.finish();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut &client, &mut got).unwrap();
        let mut want = Vec::new();
        for size in [1usize, 15, 16, 255, 4096] {
            want.extend_from_slice(format!("{size:x}\r\n").as_bytes());
            want.extend(std::iter::repeat_n(b'a', size));
            want.extend_from_slice(b"\r\n");
        }
        want.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(
            String::from_utf8(got).unwrap(),
            String::from_utf8(want).unwrap()
        );
    }

    #[test]
    fn stream_head() {
        assert_eq!(
            head(false, Some("https://a.example")),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\
             Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n\
             Access-Control-Allow-Origin: https://a.example\r\nVary: Origin\r\n\r\n"
        );
    }
}
