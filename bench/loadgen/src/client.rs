//! The clients: subscribers (one task per stream, held until told to stop,
//! reconnecting with `Last-Event-ID` when told to) and publishers (one
//! keep-alive connection each, publishing in sequence). Every read is
//! bounded by a timeout; nothing here retries forever.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::account::{Account, Histogram};
use crate::wire::{self, Payload, StreamParser, PAYLOAD_BYTES};

/// Shared by every client of one server.
pub struct Ctx {
    /// Where subscribers connect.
    pub addr: SocketAddr,
    /// Where publishers connect: `addr`, or another process of the same hub.
    pub publish_addr: SocketAddr,
    pub subscribe_path: &'static str,
    pub publish_path: &'static str,
    pub epoch: Instant,
    /// New in-phase deliveries, all subscribers together.
    pub delivered: AtomicU64,
    /// Subscribers' command: a generation number; subscribers whose stream
    /// ended reconnect when it grows, and `STOP` ends them.
    pub command: watch::Sender<u64>,
}

pub const STOP: u64 = u64::MAX;

impl Ctx {
    pub fn new(addr: SocketAddr, subscribe_path: &'static str, publish_path: &'static str) -> Ctx {
        Ctx {
            addr,
            publish_addr: addr,
            subscribe_path,
            publish_path,
            epoch: *crate::EPOCH,
            delivered: AtomicU64::new(0),
            command: watch::channel(0).0,
        }
    }

    /// Publishers connect to `addr` instead (another hub on one Redis).
    pub fn publishing_to(self, addr: SocketAddr) -> Ctx {
        Ctx {
            publish_addr: addr,
            ..self
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// One subscriber's state, read by the coordinator between phases.
#[derive(Default)]
pub struct SubState {
    /// A 200 head arrived on the current connection.
    pub open: bool,
    pub opened_at: Option<Instant>,
    /// The last reason a connection attempt failed or a stream ended.
    pub failure: Option<String>,
    /// Connections that failed before their head (each retried).
    pub connect_errors: u64,
    /// Streams that ended (by the server or an error) after their head.
    pub ended: u64,
    /// `ssehub:gap` events seen.
    pub gaps: u64,
    /// Events of no current phase (not bench payloads, or an old phase).
    pub stale: u64,
    pub last_id: Vec<u8>,
    /// The local port of the current connection.
    pub local_port: u16,
    /// The last connection attempt ran out of patience without a stream.
    pub gave_up: bool,
    pub account: Option<Account>,
}

pub type Sub = Arc<Mutex<SubState>>;

/// How a subscriber connects.
#[derive(Clone)]
pub struct Dial {
    /// Held while connecting, to pace a large ramp (None: all at once).
    pub pace: Option<Arc<Semaphore>>,
    /// Give up reconnecting after this long.
    pub patience: Duration,
    /// A subscriber that never reads: its receive buffer is this small
    /// (bytes) and, once the head has arrived, it only holds the socket.
    pub never_read: Option<u32>,
    /// Send the last event id as this query parameter rather than as the
    /// `Last-Event-ID` header.
    pub id_query: Option<&'static str>,
}

impl Dial {
    /// A subscriber that reads everything, the id (if any) in the header.
    pub fn reading(pace: Option<Arc<Semaphore>>, patience: Duration) -> Dial {
        Dial {
            pace,
            patience,
            never_read: None,
            id_query: None,
        }
    }
}

/// Runs one subscriber until `STOP`: connects, reads, and after its stream
/// ends waits for the next command generation to reconnect.
pub async fn subscriber(ctx: Arc<Ctx>, sub: Sub, dial: Dial) {
    let mut command = ctx.command.subscribe();
    let mut generation = *command.borrow_and_update();
    loop {
        if generation == STOP {
            return;
        }
        let deadline = Instant::now() + dial.patience;
        let mut stream = None;
        sub.lock().expect("sub").gave_up = false;
        while Instant::now() < deadline {
            let permit = match &dial.pace {
                Some(s) => Some(s.clone().acquire_owned().await.expect("semaphore")),
                None => None,
            };
            let last_id = sub.lock().expect("sub").last_id.clone();
            let attempt = tokio::time::timeout(
                deadline.saturating_duration_since(Instant::now()),
                open(&ctx, &last_id, &dial),
            )
            .await
            .unwrap_or_else(|_| Err("no head before the deadline".into()));
            drop(permit);
            match attempt {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => {
                    {
                        let mut st = sub.lock().expect("sub");
                        st.connect_errors += 1;
                        st.failure = Some(e);
                    }
                    if *command.borrow() == STOP {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if let Some((tcp, parser, rest)) = stream {
            {
                let mut st = sub.lock().expect("sub");
                st.open = true;
                st.opened_at = Some(Instant::now());
                st.local_port = tcp.local_addr().map_or(0, |a| a.port());
                st.failure = None;
            }
            if dial.never_read.is_some() {
                // Holds the socket, unread, until told to stop.
                wait_for(&mut command, STOP).await;
                drop(tcp);
                return;
            }
            let why = tokio::select! {
                why = read_stream(&ctx, &sub, tcp, parser, rest) => why,
                _ = wait_for(&mut command, STOP) => return,
            };
            let mut st = sub.lock().expect("sub");
            st.open = false;
            st.ended += 1;
            st.failure = Some(why);
        } else {
            sub.lock().expect("sub").gave_up = true;
        }
        // Wait for a newer generation (a reconnect order) or STOP.
        loop {
            let g = *command.borrow_and_update();
            if g != generation {
                generation = g;
                break;
            }
            if command.changed().await.is_err() {
                return;
            }
        }
    }
}

async fn wait_for(command: &mut watch::Receiver<u64>, value: u64) {
    while *command.borrow_and_update() != value {
        if command.changed().await.is_err() {
            return;
        }
    }
}

type Opened = (TcpStream, StreamParser, Vec<u8>);

/// Connects and reads the response head; Err unless 200.
async fn open(ctx: &Ctx, last_id: &[u8], dial: &Dial) -> Result<Opened, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(bytes) = dial.never_read {
        // Before connecting, so that the window offered is small too.
        socket
            .set_recv_buffer_size(bytes)
            .map_err(|e| format!("SO_RCVBUF: {e}"))?;
    }
    let mut tcp = socket
        .connect(ctx.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).ok();
    let mut target = ctx.subscribe_path.to_string();
    if let (Some(name), false) = (dial.id_query, last_id.is_empty()) {
        // The ids of ssehub need no escaping ("<ms>-<seq>").
        target = format!("{target}&{name}={}", String::from_utf8_lossy(last_id));
    }
    let mut req = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
    )
    .into_bytes();
    if !last_id.is_empty() && dial.id_query.is_none() {
        req.extend_from_slice(b"Last-Event-ID: ");
        req.extend_from_slice(last_id);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    tcp.write_all(&req)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(head) = wire::response_head(&buf) {
            let head = head?;
            if head.status != 200 {
                return Err(format!("status {}", head.status));
            }
            let rest = buf[head.len..].to_vec();
            return Ok((tcp, StreamParser::new(head.chunked), rest));
        }
        if buf.len() > 16 * 1024 {
            return Err("response head too large".into());
        }
        let mut chunk = [0u8; 1024];
        let n = tcp
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read head: {e}"))?;
        if n == 0 {
            return Err("closed before the head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads a stream until it ends; returns why it ended.
async fn read_stream(
    ctx: &Ctx,
    sub: &Sub,
    mut tcp: TcpStream,
    mut parser: StreamParser,
    rest: Vec<u8>,
) -> String {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending = rest;
    loop {
        if !pending.is_empty() {
            let now = Instant::now();
            let now_ns = ctx.now_ns();
            let mut st = sub.lock().expect("sub");
            let st = &mut *st;
            let mut fresh = 0u64;
            parser.feed(&pending, &mut |e| {
                if e.event_type == b"ssehub:gap" {
                    st.gaps += 1;
                    return;
                }
                match (Payload::decode(e.data), st.account.as_mut()) {
                    (Some(p), Some(a)) if p.phase == a.phase => {
                        fresh += u64::from(a.record(&p, now, now_ns));
                    }
                    _ => st.stale += 1,
                }
            });
            st.last_id.clone_from(&parser.last_id);
            if fresh > 0 {
                ctx.delivered.fetch_add(fresh, Ordering::Relaxed);
            }
            if parser.done() {
                return "stream ended by the server".into();
            }
        }
        pending.clear();
        match tcp.read(&mut buf).await {
            Ok(0) => return "closed by the server".into(),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) => return format!("read: {e}"),
        }
    }
}

/// When a publisher sends.
#[derive(Clone, Copy)]
pub enum Pace {
    /// The next publish as soon as the previous one is answered.
    Max,
    /// Publish `i` at `start + i × interval` (or at once when late).
    Every { start: Instant, interval: Duration },
}

/// What a publisher did.
#[derive(Default, Clone)]
pub struct PubResult {
    pub published: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// From sending each answered publish to reading its answer.
    pub latency: Histogram,
}

/// Publishes up to `count` events of `phase` as publisher `index`, on one
/// keep-alive connection, until `count` or `until`.
pub async fn publisher(
    ctx: Arc<Ctx>,
    phase: u32,
    index: u32,
    count: u64,
    pace: Pace,
    until: Instant,
) -> PubResult {
    publisher_sized(ctx, phase, index, count, pace, until, PAYLOAD_BYTES).await
}

/// `publisher`, with event data of about `bytes` each.
pub async fn publisher_sized(
    ctx: Arc<Ctx>,
    phase: u32,
    index: u32,
    count: u64,
    pace: Pace,
    until: Instant,
    bytes: usize,
) -> PubResult {
    let mut result = PubResult::default();
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    let mut seq = 0u64;
    while seq < count && Instant::now() < until {
        if let Pace::Every { start, interval } = pace {
            let at = start + interval * seq as u32;
            if at > until {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
        }
        let sent_ns = ctx.now_ns();
        let payload = Payload {
            phase,
            publisher: index,
            seq,
            sent_ns,
        }
        .encode_to(bytes);
        let mut req = format!(
            "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            ctx.publish_path,
            payload.len()
        )
        .into_bytes();
        req.extend_from_slice(&payload);
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            publish_once(&ctx, &mut conn, &req, &mut buf),
        )
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".into()));
        // A failed publish keeps its sequence number unused: receivers
        // count only what was answered 2xx.
        match outcome {
            Ok(()) => {
                result.published += 1;
                result
                    .latency
                    .record(ctx.now_ns().saturating_sub(sent_ns) / 1000);
            }
            Err(e) => {
                conn = None;
                result.errors += 1;
                result.last_error = Some(e);
                if result.errors > 100 {
                    break;
                }
            }
        }
        seq += 1;
    }
    result
}

async fn publish_once(
    ctx: &Ctx,
    conn: &mut Option<TcpStream>,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    if conn.is_none() {
        let tcp = TcpStream::connect(ctx.publish_addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).ok();
        *conn = Some(tcp);
        buf.clear();
    }
    let tcp = conn.as_mut().expect("connected");
    tcp.write_all(req)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head) = wire::response_head(buf) {
            let head = head?;
            let body = head
                .content_length
                .ok_or("publish answer without Content-Length")?;
            if buf.len() >= head.len + body {
                buf.drain(..head.len + body);
                if head.close {
                    *conn = None;
                }
                if !(200..300).contains(&head.status) {
                    return Err(format!("publish answered {}", head.status));
                }
                return Ok(());
            }
        }
        let n = tcp
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("publisher connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
