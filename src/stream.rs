//! One subscriber's stream, on the thread that accepted its connection: the
//! response head, `retry:`, then a cursor over the event log. Live frames
//! come through its queue, drained into one write per wake; a replay, or a
//! queue that overflowed, is read from the log a page at a time until the
//! stream is back at the live edge. The only writer to a subscriber socket;
//! it never takes the hub lock while writing, and copies no event bytes.

use std::io::{self, IoSlice, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::RecvTimeoutError;

use crate::event::EventId;
use crate::hangup::Hangups;
use crate::history::{now_ms, PAGE_BYTES, PAGE_EVENTS};
use crate::hub::{Ending, Ends, Subscription};
use crate::metrics::Metrics;
use crate::sse::{self, SharedFrame};

/// A wake-up writes at most this many bytes of queued events in one chunk
/// (and at most `PAGE_EVENTS` frames): enough to coalesce a burst
/// (THREADS.md: drain the queue into one write).
const BATCH_BYTES: usize = 64 * 1024;

/// What the stream needs to know about the request it answers.
pub struct StreamParams<'a> {
    pub http10: bool,
    pub retry_ms: u64,
    pub heartbeat: Duration,
    /// Extra fields for the head (CORS).
    pub fields: &'a [(&'static str, String)],
    pub last_event_id: Option<EventId>,
    /// When the subscriber's token expires (Unix seconds).
    pub expires: Option<u64>,
    pub hangups: &'a Hangups,
}

/// The response head of an event stream. The connection always ends with
/// the stream, so it says so: a proxy must not pool it.
fn head(http10: bool, fields: &[(&'static str, String)]) -> String {
    let mut h = String::from(if http10 {
        "HTTP/1.0 200 OK\r\n"
    } else {
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    });
    h.push_str("Connection: close\r\n");
    h.push_str(&format!(
        "Date: {}\r\n",
        httpdate::fmt_http_date(SystemTime::now())
    ));
    h.push_str(
        "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n",
    );
    for (name, value) in fields {
        h.push_str(&format!("{name}: {value}\r\n"));
    }
    h.push_str("\r\n");
    h
}

/// Writes event-stream bytes as HTTP chunks (raw, for HTTP/1.0) with one
/// `writev` per chunk, straight from the shared frames. The socket is
/// non-blocking: a write that finds it full waits for room, telling the hub
/// so, for at most `stall` without progress.
struct Writer {
    stream: TcpStream,
    chunked: bool,
    stall: Duration,
}

/// How a write failed: the client is gone, or it took no data for `stall`.
fn stalled() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "client took no data for two heartbeats",
    )
}

impl Writer {
    /// Writes `parts` as one chunk.
    fn chunk(&mut self, parts: &[&[u8]], blocked: &dyn Fn(bool)) -> io::Result<()> {
        self.chunk_of(parts.iter().copied(), blocked)
    }

    /// Writes `parts` as one chunk; a few of them (one wake-up's usual
    /// share) without allocating.
    fn chunk_of<'p>(
        &mut self,
        parts: impl Iterator<Item = &'p [u8]> + Clone,
        blocked: &dyn Fn(bool),
    ) -> io::Result<()> {
        let len: usize = parts.clone().map(<[u8]>::len).sum();
        if len == 0 {
            return Ok(());
        }
        // The size line, hex digits written backwards, then CRLF.
        let mut size = [0u8; 18];
        let mut at = size.len() - 2;
        size[at..].copy_from_slice(b"\r\n");
        let mut rest = len;
        loop {
            at -= 1;
            size[at] = b"0123456789abcdef"[rest % 16];
            rest /= 16;
            if rest == 0 {
                break;
            }
        }
        let size = &size[at..];
        let count = parts.clone().count() + 2;
        if count <= 8 {
            let mut stack = [IoSlice::new(&[]); 8];
            let mut n = 0;
            if self.chunked {
                stack[n] = IoSlice::new(size);
                n += 1;
            }
            for part in parts {
                stack[n] = IoSlice::new(part);
                n += 1;
            }
            if self.chunked {
                stack[n] = IoSlice::new(b"\r\n");
                n += 1;
            }
            return self.write_all(&mut stack[..n], blocked);
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(count);
        if self.chunked {
            slices.push(IoSlice::new(size));
        }
        for part in parts {
            slices.push(IoSlice::new(part));
        }
        if self.chunked {
            slices.push(IoSlice::new(b"\r\n"));
        }
        self.write_all(&mut slices, blocked)
    }

    fn write_all(
        &mut self,
        mut slices: &mut [IoSlice<'_>],
        blocked: &dyn Fn(bool),
    ) -> io::Result<()> {
        let mut waiting = false;
        let result = loop {
            if slices.is_empty() {
                break Ok(());
            }
            match (&self.stream).write_vectored(slices) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !waiting {
                        waiting = true;
                        blocked(true);
                    }
                    if let Err(e) = self.wait_for_room() {
                        break Err(e);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        if waiting {
            blocked(false);
        }
        result
    }

    /// Waits until the socket takes data again, for at most `stall`.
    fn wait_for_room(&self) -> io::Result<()> {
        let mut fd = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = self.stall.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll on one pollfd we own.
        match unsafe { libc::poll(&mut fd, 1, ms) } {
            0 => Err(stalled()),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(())
                } else {
                    Err(e)
                }
            }
            // Ready, or an error the next write reports.
            _ => Ok(()),
        }
    }

    /// Bytes the socket takes now without waiting: what its send buffer has
    /// room for (the kernel counts half of `SO_SNDBUF` as payload). Waits
    /// for room first, telling the hub, when there is none.
    fn room(&self, blocked: &dyn Fn(bool)) -> io::Result<usize> {
        let free = || {
            let size = socket2::SockRef::from(&self.stream)
                .send_buffer_size()
                .unwrap_or(0);
            let mut queued: libc::c_int = 0;
            // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int we own.
            let rc = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
            if rc != 0 {
                return PAGE_BYTES;
            }
            (size / 2).saturating_sub(queued.max(0) as usize)
        };
        let room = free();
        if room > 0 {
            return Ok(room);
        }
        blocked(true);
        let waited = self.wait_for_room();
        blocked(false);
        waited.map(|()| free().max(1))
    }

    /// Ends the body: the zero-size chunk for HTTP/1.1, the close for 1.0.
    fn finish(&mut self) {
        if self.chunked {
            let _ = self.write_all(&mut [IoSlice::new(b"0\r\n\r\n")], &|_| {});
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

fn writer(stream: TcpStream, p: &StreamParams) -> io::Result<Writer> {
    stream.set_nonblocking(true)?;
    Ok(Writer {
        stream,
        chunked: !p.http10,
        stall: 2 * p.heartbeat,
    })
}

/// Serves one subscription until the client goes, the hub lets go of it, or
/// a write fails. Writes the stream end unless the client is gone, before
/// the subscription is dropped (shutdown waits for that drop); the socket
/// is closed after it, so the hub never shuts down a reused descriptor.
/// A stream of exact topics ends properly once it has written the
/// `ssehub:closed` of each (SPEC "Ending a topic").
pub fn serve(stream: TcpStream, mut sub: Subscription<'_>, p: &StreamParams) {
    lower_priority();
    // A client that vanishes without a FIN or RST (a phone that lost its
    // network, a NAT that forgot the flow) never acknowledges the next
    // heartbeat; the kernel gives up on it after another heartbeat instead
    // of ~15 minutes of retransmissions, and the hang-up watch sees the
    // error. It also ends a connection whose window stays shut that long (a
    // client that reads nothing), as `Writer::stall` would.
    let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(p.heartbeat));
    p.hangups.watch(&stream, sub.key());
    let mut w = match writer(stream, p) {
        Ok(w) => w,
        Err(e) => return log::debug!("stream not started: {e}"),
    };
    let ends = sub.ends.take();
    let mut at = Position {
        cursor: sub.start,
        has_id: p.last_event_id.is_some(),
    };
    match run(&mut w, &sub, ends, p, &mut at) {
        Ok(()) => {
            // Out of the registry and the gauge before its end is written.
            sub.leave();
            if let Some(line) = at.owed() {
                let _ = w.chunk(&[line.as_bytes()], &|_| {});
            }
            w.finish();
        }
        // Its own wait for room ran out, or the kernel's TCP_USER_TIMEOUT
        // ended the connection (the hang-up watch may have seen that first).
        Err(e)
            if e.kind() == io::ErrorKind::TimedOut
                || matches!(w.stream.take_error(), Ok(Some(e)) if e.kind() == io::ErrorKind::TimedOut) =>
        {
            log::debug!("subscriber evicted: {e}");
            sub.evict();
        }
        Err(e) => log::debug!("stream closed by client: {e}"),
    }
    drop(sub);
    drop(w);
}

/// Where a stream's client stands in the log.
struct Position {
    /// The last id the client has, or the position read on from after a
    /// gap; queued frames not above it are skipped (ids only grow). After a
    /// gap the client's id may be from another log: no floor.
    cursor: Option<EventId>,
    /// Whether the client has an id from this stream (or its own).
    has_id: bool,
}

impl Position {
    /// What a client that has no id yet is owed when its stream ends
    /// properly (shutdown, expiry, release): its position as an id with no
    /// data. EventSource keeps it as its last event id and dispatches
    /// nothing, so it resumes from there instead of starting over and
    /// missing what is published until it is back.
    fn owed(&self) -> Option<String> {
        self.cursor
            .filter(|_| !self.has_id)
            .map(|at| format!("id: {at}\n\n"))
    }
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

/// Answers a subscriber that should come back a little later (the hub is
/// shutting down, or cannot read its log now): the head, `retry:` and the
/// stream end, so the client reconnects after that delay with the same last
/// event id. EventSource does not retry after a 503.
pub fn retry_later(stream: TcpStream, p: &StreamParams) {
    let started = writer(stream, p).and_then(|mut w| {
        open(&mut w, p)?;
        Ok(w)
    });
    match started {
        Ok(mut w) => w.finish(),
        Err(e) => log::debug!("stream closed by client: {e}"),
    }
}

/// The head and the `retry:` line.
fn open(w: &mut Writer, p: &StreamParams) -> io::Result<()> {
    let head = head(p.http10, p.fields);
    w.write_all(&mut [IoSlice::new(head.as_bytes())], &|_| {})?;
    w.chunk(&[&sse::retry(jittered(p.retry_ms))], &|_| {})
}

fn unix_now() -> u64 {
    now_ms() / 1000
}

/// Ok when the stream should end properly, Err when the client went away
/// (`TimedOut`: it took no data for two heartbeats).
fn run(
    w: &mut Writer,
    sub: &Subscription<'_>,
    mut ends: Option<Ends>,
    p: &StreamParams,
    at: &mut Position,
) -> io::Result<()> {
    let metrics = sub.metrics();
    let delivered = |n: usize| Metrics::add(&metrics.delivered, n as u64);
    let blocked = |b: bool| sub.set_blocked(b);
    open(w, p)?;

    let Position { cursor, has_id } = at;
    if let Some(at) = *cursor {
        sub.set_start(at);
    }
    let mut replaying = sub.replay;
    let mut first_page = replaying;
    // A log read failed while the log is up (a Redis page read under load),
    // or its client has no id to come back with: the stream stays open and
    // reads again at its next wake-up, a queued frame or the heartbeat.
    // Frames queued meanwhile are in the log too. If that read fails too,
    // the stream ends unless it has no position at all to give its client.
    let mut unread = false;
    // The read that failed is being tried again.
    let mut retried = false;
    let mut last_write = Instant::now();
    let mut batch: Vec<SharedFrame> = Vec::new();
    // Whether `f`, once written, leaves every topic of the stream ended:
    // nothing is written after it.
    let mut last_one = |f: &SharedFrame| ends.as_mut().is_some_and(|e| e.wrote(f));
    loop {
        if let Some(done) = check(sub)? {
            return Ok(done);
        }
        if let Some(exp) = p.expires.filter(|exp| unix_now() >= *exp) {
            w.chunk(&[&sse::expired(exp)], &blocked)?;
            return Ok(());
        }
        if replaying || sub.take_behind() {
            // Whatever is queued is in the log too, after `cursor` or at
            // most up to it: read from the log until the live edge.
            let above = |f: &SharedFrame| cursor.is_none_or(|at| f.id > at);
            sub.to_read(sub.rx.try_iter().filter(above).count());
            unread = false;
            loop {
                // What the socket takes now: a stream whose client does not
                // read holds one frame at most, not a page of its own.
                let room = w.room(&blocked)?;
                if let Some(done) = check(sub)? {
                    return Ok(done);
                }
                // A long replay or catch-up ends at the token's exp too.
                if let Some(exp) = p.expires.filter(|exp| unix_now() >= *exp) {
                    w.chunk(&[&sse::expired(exp)], &blocked)?;
                    return Ok(());
                }
                let page = match sub.read(*cursor, room) {
                    Ok(page) => page,
                    // The log is down (the follower saw Redis go): a client
                    // with an id reconnects with it after `retry:`, perhaps to
                    // a process that can reach Redis. A read that fails again
                    // at the next wake-up is no passing overload (a damaged
                    // file): the client comes back with its id, or the
                    // position the stream's end gives it, after `retry:`.
                    // Debug: the follower reports an outage once.
                    Err(e)
                        if (*has_id && !sub.log_up())
                            || (retried && (*has_id || cursor.is_some())) =>
                    {
                        log::debug!(
                            "cannot read the event log ({e}): the stream ends, to be resumed"
                        );
                        return Ok(());
                    }
                    Err(e) => {
                        log::debug!(
                            "cannot read the event log ({e}): the stream reads again at its next wake-up"
                        );
                        unread = true;
                        retried = true;
                        break;
                    }
                };
                retried = false;
                let gap = match page.gap {
                    Some(oldest) if first_page => {
                        p.last_event_id.map(|last| sse::gap(Some(last), oldest))
                    }
                    Some(oldest) if cursor.is_none() => {
                        // Subscribed before the first event, owed every
                        // one, and some were dropped before it read them:
                        // its client has no id to replay from, so it is
                        // told here, and reads on from the oldest.
                        Some(sse::gap(None, oldest))
                    }
                    Some(_) => {
                        // Fell behind the oldest retained event: its client
                        // reconnects, and its replay starts with the gap.
                        sub.evict();
                        log::debug!("subscriber evicted: fell off the history");
                        return Ok(());
                    }
                    None => None,
                };
                first_page = false;
                let mut frames = &page.frames[..];
                let mut done = false;
                if let Some(i) = frames.iter().position(&mut last_one) {
                    frames = &frames[..=i];
                    done = true;
                }
                let mut parts: Vec<&[u8]> = Vec::with_capacity(frames.len() + 1);
                parts.extend(gap.as_deref());
                parts.extend(frames.iter().map(|f| &*f.bytes));
                w.chunk(&parts, &blocked)?;
                delivered(frames.len());
                *has_id |= !frames.is_empty();
                sub.read_back(frames.len());
                if !parts.is_empty() {
                    last_write = Instant::now();
                }
                *cursor = match (done, frames.last()) {
                    (true, Some(f)) => Some(f.id),
                    _ => page.scanned,
                };
                if let Some(at) = *cursor {
                    sub.set_position(at, frames.last().map(|f| f.id));
                }
                if done {
                    return Ok(());
                }
                if page.end {
                    sub.at_edge();
                    break;
                }
                sub.progress();
                if let Some(done) = check(sub)? {
                    return Ok(done);
                }
            }
            replaying = false;
            continue;
        }

        let mut wait = p.heartbeat.saturating_sub(last_write.elapsed());
        if let Some(exp) = p.expires {
            // To the millisecond: whole seconds would wake up to a second
            // late.
            let left = exp.saturating_mul(1000).saturating_sub(now_ms());
            wait = wait.min(Duration::from_millis(left));
        }
        match sub.rx.recv_timeout(wait) {
            // It is in the log too, after `cursor`: read from there.
            Ok(f) if unread => {
                sub.to_read(usize::from(cursor.is_none_or(|at| f.id > at)));
                replaying = true;
            }
            Ok(first) => {
                // Where it stood: the client has none of the batch until it
                // is written.
                let was = *cursor;
                let (mut next, mut bytes, mut done) = (Some(first), 0, false);
                while let Some(f) = next.take() {
                    if cursor.is_none_or(|at| f.id > at) {
                        *cursor = Some(f.id);
                        bytes += f.bytes.len();
                        done = last_one(&f);
                        batch.push(f);
                    }
                    if !done && batch.len() < PAGE_EVENTS && bytes < BATCH_BYTES {
                        next = sub.rx.try_recv().ok();
                    }
                }
                if let Some(done) = check(sub)? {
                    *cursor = was;
                    return Ok(done);
                }
                w.chunk_of(batch.iter().map(|f| &*f.bytes), &blocked)?;
                delivered(batch.len());
                *has_id |= !batch.is_empty();
                if let Some(at) = cursor.filter(|_| !batch.is_empty()) {
                    sub.set_position(at, Some(at));
                    last_write = Instant::now();
                }
                batch.clear();
                if done {
                    return Ok(());
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                replaying = unread;
                if last_write.elapsed() < p.heartbeat {
                    continue;
                }
                if w.peer_closed() {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                w.chunk(&[sse::HEARTBEAT], &blocked)?;
                last_write = Instant::now();
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

    fn pair() -> (TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (client, listener.accept().unwrap().0)
    }

    #[test]
    fn chunks_carry_their_size_in_hex() {
        let (client, server) = pair();
        server.set_nonblocking(true).unwrap();
        let mut w = Writer {
            stream: server,
            chunked: true,
            stall: Duration::from_secs(5),
        };
        for size in [1, 15, 16, 255, 4096] {
            let a = vec![b'a'; size / 2];
            let b = vec![b'a'; size - size / 2];
            w.chunk(&[&a, &[], &b], &|_| {}).unwrap();
        }
        w.chunk(&[], &|_| {}).unwrap();
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
    fn a_write_no_one_reads_gives_up_after_the_stall() {
        let (_client, server) = pair();
        server.set_nonblocking(true).unwrap();
        let mut w = Writer {
            stream: server,
            chunked: false,
            stall: Duration::from_millis(200),
        };
        let big = vec![b'x'; 64 << 20];
        let was_blocked = std::cell::Cell::new(false);
        let started = Instant::now();
        let e = w
            .chunk(&[&big], &|b| was_blocked.set(was_blocked.get() || b))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(was_blocked.get());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// A hub of 10 subscribers at most, with a queue of 2 each.
    fn small_hub(log: Box<dyn crate::history::EventLog>) -> crate::hub::Hub {
        crate::hub::Hub::new(
            log,
            crate::hub::HubLimits {
                max_subscribers: 10,
                client_queue: 2,
            },
        )
    }

    /// A subscription to every topic, from no id, on `server`'s socket.
    fn subscribed<'h>(
        hub: &'h crate::hub::Hub,
        server: &TcpStream,
    ) -> crate::hub::Subscription<'h> {
        hub.subscribe(
            crate::event::TopicFilter::all(),
            None,
            server.as_raw_fd(),
            crate::hub::Peer::default(),
        )
        .unwrap()
    }

    /// An HTTP/1.0 stream (no chunks to decode) for a client that gave no
    /// id.
    fn unchunked_without_id(hangups: &Hangups) -> StreamParams<'_> {
        StreamParams {
            http10: true,
            retry_ms: 1000,
            heartbeat: Duration::from_secs(30),
            fields: &[],
            last_event_id: None,
            expires: None,
            hangups,
        }
    }

    /// A stream that subscribed before the first event and read nothing
    /// before the history dropped some of what it was owed is told so with
    /// `ssehub:gap` (no last id: it had none), then gets what is retained,
    /// over a real socket.
    #[test]
    fn a_subscriber_from_before_the_first_event_learns_of_what_was_dropped() {
        use crate::history::MemoryLog;
        use crate::sse::{Event, Frame};

        let hub = small_hub(Box::new(MemoryLog::new(3, 1 << 20)));
        let (client, server) = pair();
        let sub = subscribed(&hub, &server);
        // Its thread has not started: the queue fills, the rest is left to
        // the history, which keeps the last 3 of 10.
        let ids: Vec<EventId> = (0..10)
            .map(|i| hub.publish("t", None, &i.to_string()).unwrap().id)
            .collect();
        let hangups = Hangups::new().unwrap();
        let p = unchunked_without_id(&hangups);
        let mut want = format!(
            "event: ssehub:gap\ndata: {{\"last_event_id\":null,\"oldest_available\":\"{}\"}}\n\n",
            ids[7]
        )
        .into_bytes();
        for (i, id) in ids.iter().enumerate().skip(7) {
            want.extend_from_slice(&Frame::new(*id, &Event::new("t", None, &i.to_string())).bytes);
        }
        let got = std::thread::scope(|scope| {
            scope.spawn(|| serve(server, sub, &p));
            client
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let mut reader = &client;
            while !got.ends_with(&want) {
                match io::Read::read(&mut reader, &mut buf) {
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            hub.close();
            got
        });
        let text = String::from_utf8_lossy(&got);
        let body = &text[text.find("\r\n\r\n").expect("a head") + 4..];
        let (retry, events) = body.split_once("\n\n").expect("the retry line");
        assert!(retry.starts_with("retry: "), "{body:?}");
        assert_eq!(events, String::from_utf8_lossy(&want), "{body:?}");
    }

    /// Memory whose first `failures` reads fail, as a Redis page read can
    /// under load or in an outage.
    struct Unreadable {
        log: crate::history::MemoryLog,
        failures: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl crate::history::EventLog for Unreadable {
        fn append(
            &self,
            event: &crate::sse::Event,
        ) -> Result<SharedFrame, crate::history::LogError> {
            self.log.append(event)
        }
        fn read(
            &self,
            after: Option<EventId>,
            topics: &crate::event::TopicFilter,
            max_bytes: usize,
        ) -> Result<crate::history::Page, crate::history::LogError> {
            use std::sync::atomic::Ordering;
            let failing = self
                .failures
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Err(crate::history::LogError("redis busy".into()));
            }
            self.log.read(after, topics, max_bytes)
        }
        fn oldest(&self) -> Option<EventId> {
            self.log.oldest()
        }
        fn len(&self) -> usize {
            self.log.len()
        }
        fn followed(&self) -> bool {
            false
        }
        fn up(&self) -> bool {
            true
        }
        fn store(&self) -> &'static str {
            "test"
        }
    }

    /// The log, and the count of reads left to fail.
    fn unreadable(
        failures: usize,
    ) -> (
        Box<Unreadable>,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(failures));
        let log = Unreadable {
            log: crate::history::MemoryLog::new(100, 1 << 20),
            failures: failures.clone(),
        };
        (Box::new(log), failures)
    }

    /// Reads `client` until what it got ends with `want` or the read fails
    /// (10 s without data), then ends the hub's streams and reads to the end.
    fn read_until(client: &TcpStream, want: &[u8], hub: &crate::hub::Hub) -> String {
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let mut reader = client;
        while !got.ends_with(want) {
            match io::Read::read(&mut reader, &mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        hub.close();
        io::Read::read_to_end(&mut reader, &mut got).unwrap();
        let text = String::from_utf8_lossy(&got).into_owned();
        let body = &text[text.find("\r\n\r\n").expect("a head") + 4..];
        let (retry, rest) = body.split_once("\n\n").expect("the retry line");
        assert!(retry.starts_with("retry: "), "{body:?}");
        rest.to_string()
    }

    /// A stream whose log read fails stays open and reads again at its next
    /// wake-up: its client, which has no id yet, gets every event it is
    /// owed, in order, once.
    #[test]
    fn a_stream_whose_log_read_fails_reads_again_and_loses_nothing() {
        use crate::sse::{Event, Frame};

        let (log, failures) = unreadable(1);
        let hub = small_hub(log);
        hub.publish("t", None, "before").unwrap();
        let (client, server) = pair();
        let sub = subscribed(&hub, &server);
        // More than its queue: it is behind, and must read the log.
        let publish = |data: &str| {
            let id = hub.publish("t", None, data).unwrap().id;
            Frame::new(id, &Event::new("t", None, data)).bytes.to_vec()
        };
        let mut want: Vec<u8> = (0..5).flat_map(|i| publish(&i.to_string())).collect();
        let hangups = Hangups::new().unwrap();
        let p = unchunked_without_id(&hangups);
        let rest = std::thread::scope(|scope| {
            scope.spawn(|| serve(server, sub, &p));
            // Once its read failed, the next event wakes it.
            while failures.load(std::sync::atomic::Ordering::Acquire) > 0 {
                std::thread::yield_now();
            }
            want.extend(publish("after"));
            read_until(&client, &want, &hub)
        });
        assert_eq!(rest, String::from_utf8(want).unwrap());
    }

    /// A read that fails again at the next wake-up is not a passing
    /// overload: the stream ends, and its client, which has no id yet, gets
    /// its position to come back with.
    #[test]
    fn a_read_that_fails_again_ends_the_stream_with_the_clients_position() {
        let (log, failures) = unreadable(2);
        let hub = small_hub(log);
        let before = hub.publish("t", None, "before").unwrap().id;
        let (client, server) = pair();
        let sub = subscribed(&hub, &server);
        for i in 0..5 {
            hub.publish("t", None, &i.to_string()).unwrap();
        }
        let hangups = Hangups::new().unwrap();
        let p = unchunked_without_id(&hangups);
        let rest = std::thread::scope(|scope| {
            let served = scope.spawn(|| serve(server, sub, &p));
            while failures.load(std::sync::atomic::Ordering::Acquire) > 1 {
                std::thread::yield_now();
            }
            // The next event wakes it; the read fails again; it ends.
            hub.publish("t", None, "after").unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !served.is_finished() && Instant::now() < deadline {
                std::thread::yield_now();
            }
            let ended = served.is_finished();
            // (Ends it if it did not, so that the test can fail.)
            let rest = read_until(&client, b"", &hub);
            assert!(ended, "the stream stayed open: {rest:?}");
            rest
        });
        assert_eq!(rest, format!("id: {before}\n\n"));
        assert_eq!(failures.load(std::sync::atomic::Ordering::Acquire), 0);
    }

    /// A stream that ends properly (here the hub closes) before it wrote any
    /// event, for a client that gave no id, ends with its position as an id
    /// with no data: the client resumes from it instead of starting over and
    /// missing what is published meanwhile.
    #[test]
    fn a_stream_ended_before_its_first_event_gives_its_client_a_position() {
        let hub = small_hub(Box::new(crate::history::MemoryLog::new(100, 1 << 20)));
        let before = hub.publish("t", None, "before").unwrap().id;
        let (client, server) = pair();
        let sub = subscribed(&hub, &server);
        let hangups = Hangups::new().unwrap();
        let p = unchunked_without_id(&hangups);
        let rest = std::thread::scope(|scope| {
            scope.spawn(|| serve(server, sub, &p));
            read_until(&client, b"", &hub)
        });
        assert_eq!(rest, format!("id: {before}\n\n"));
    }

    #[test]
    fn stream_head() {
        let fields = [
            (
                "Access-Control-Allow-Origin",
                "https://a.example".to_string(),
            ),
            ("Vary", "Origin".to_string()),
        ];
        let h = head(false, &fields);
        let (start, rest) = h.split_once("Date: ").unwrap();
        assert_eq!(
            start,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
        );
        let (date, rest) = rest.split_once("\r\n").unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        assert_eq!(
            rest,
            "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n\
             Access-Control-Allow-Origin: https://a.example\r\nVary: Origin\r\n\r\n"
        );
        assert!(head(true, &[]).starts_with("HTTP/1.0 200 OK\r\nConnection: close\r\nDate: "));
    }
}
