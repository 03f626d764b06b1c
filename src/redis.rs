//! The event log on one Redis stream, shared by every process started with
//! the same `--redis`, and the follower thread that feeds this process's
//! subscribers from it and resumes after an outage. Nothing outside this
//! file knows Redis exists; nothing here holds the hub lock across a call.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use redis::{Client, Connection, RedisError, RedisResult, Value};

use crate::event::{self, EventId, TopicFilter};
use crate::history::{EventLog, LogError, Page, PAGE_BYTES, PAGE_EVENTS};
use crate::hub::Hub;
use crate::sse::{Event, Frame, SharedFrame};

/// The stream every process appends to and follows.
const STREAM: &str = "ssehub:events";
/// Entries the stream keeps at least, whatever `--history` says, so that a
/// follower a little behind a busy stream never loses entries to trimming.
const MIN_STREAM_LEN: usize = 1000;
/// Entries the follower asks for per `XREAD`.
const FOLLOW_BATCH: usize = 1000;
/// Threads, each with its connection, that append publishes; more
/// publishers wait for one.
const APPEND_THREADS: usize = 8;
/// Threads, each with its connection, that read and decode the pages of
/// replays and catch-ups; more streams wait for one. One: a thread that
/// decoded a burst of replays keeps ~250 KiB of its malloc arena resident
/// afterwards (measured, 50 streams replaying 4 KB events into full
/// sockets: 22 KiB each against 16 idle with one thread, 28 with two), and
/// one was as fast as two for 2,000 clients replaying at once (~0.5 s).
const PAGE_THREADS: usize = 1;
/// Stack of a pool thread. Measured: the deepest path (a page of replies
/// parsed and decoded, events of any size) touches 88 KiB in a debug build
/// and 16 KiB in a release one; untouched pages cost no memory.
const POOL_STACK_BYTES: usize = 256 * 1024;
/// A publish or replay gives up after this, and answers 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one `XREAD` blocks; before each the follower refreshes the length.
const BLOCK: Duration = Duration::from_secs(1);
/// The follower's reconnection delay, doubled after each failure up to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// Why the hub cannot start on Redis: printed to stderr, exit status 1.
#[derive(Debug)]
pub struct StartError {
    /// Where Redis was looked for (no credentials), or the refused URL.
    at: String,
    why: String,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--redis: cannot use redis at {}: {}", self.at, self.why)
    }
}

/// State the log and the follower share.
struct Shared {
    /// Where publishes are appended, and pages read: apart, so that a
    /// publish never waits behind a large page.
    appends: Pool,
    pages: Pool,
    /// Set by the follower: whether its connection works.
    up: AtomicBool,
    /// The stream's length and first entry as the follower last read them.
    len: AtomicUsize,
    oldest: Mutex<Option<EventId>>,
    /// Entries per page that fit `PAGE_BYTES` at the sizes read lately.
    page_hint: AtomicUsize,
    frames: FrameCache,
}

/// The frames of this process's queues and pages by id, so that streams
/// reading the same entries share one decoded copy (as they share a memory
/// log's) instead of holding one each.
#[derive(Default)]
struct FrameCache {
    frames: Mutex<HashMap<EventId, Weak<Frame>>>,
}

impl FrameCache {
    /// The frame of `entry`, decoded once while anyone holds it.
    fn decode(&self, entry: Entry) -> Option<SharedFrame> {
        let id = entry.0;
        if let Some(frame) = self.lock().get(&id).and_then(Weak::upgrade) {
            return Some(frame);
        }
        let frame = decode(entry)?;
        Some(self.keep(frame))
    }

    /// `frame`, or the copy another stream decoded meanwhile.
    fn keep(&self, frame: SharedFrame) -> SharedFrame {
        let mut frames = self.lock();
        if let Some(kept) = frames.get(&frame.id).and_then(Weak::upgrade) {
            return kept;
        }
        // Forget the frames nobody holds, at most once per doubling.
        if frames.len() >= frames.capacity().max(1024) {
            frames.retain(|_, f| f.strong_count() > 0);
        }
        frames.insert(frame.id, Arc::downgrade(&frame));
        frame
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<EventId, Weak<Frame>>> {
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The bytes of an entry's field values, for the page size.
fn entry_bytes(fields: &[Value]) -> usize {
    fields
        .iter()
        .map(|v| match v {
            Value::BulkString(b) => b.len(),
            _ => 8,
        })
        .sum()
}

/// The shared event log: `XADD` to publish, `XRANGE` to replay.
pub struct RedisLog {
    shared: Arc<Shared>,
    /// `--history`: 0 disables replay.
    history: usize,
    /// The approximate `MAXLEN` every `XADD` trims the stream to.
    max_len: usize,
    /// Entries one page asks for at most: a reply holds at most four pages'
    /// bytes of the largest events a publisher may send.
    max_count: usize,
}

/// The thread-to-be that reads the stream and fans it out to this process.
pub struct Follower {
    shared: Arc<Shared>,
    client: Client,
    con: Option<Connection>,
    /// The newest entry fanned out (or present at startup).
    last: EventId,
}

/// Connects to Redis at `url` and reads where the stream ends, so that the
/// follower starts exactly after what is already there.
pub fn connect(
    url: &str,
    history: usize,
    max_event_bytes: usize,
) -> Result<(RedisLog, Follower), StartError> {
    let client = Client::open(url).map_err(|e| StartError {
        // The URL may carry a password: show only its scheme.
        at: url.split("://").next().unwrap_or("").to_string() + "://…",
        why: e.to_string(),
    })?;
    let at = client.get_connection_info().addr().to_string();
    let failed = |e: RedisError| StartError {
        at: at.clone(),
        why: e.to_string(),
    };
    let mut con = connect_with(&client, BLOCK + COMMAND_TIMEOUT).map_err(failed)?;
    let newest: Value = redis::cmd("XREVRANGE")
        .arg(STREAM)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(&mut con)
        .map_err(failed)?;
    let last = entries(newest).last().map_or(START, |(id, _)| *id);
    let len: usize = redis::cmd("XLEN")
        .arg(STREAM)
        .query(&mut con)
        .map_err(failed)?;
    let pool = |name: &str, threads| {
        Pool::start(&client, name, threads).map_err(|e| StartError {
            at: at.clone(),
            why: format!("cannot start a connection thread: {e}"),
        })
    };
    let (appends, pages) = (
        pool("redis-append", APPEND_THREADS)?,
        pool("redis-page", PAGE_THREADS)?,
    );
    log::info!("event log: redis stream {STREAM} at {at}, {len} entries, following after {last}");
    let shared = Arc::new(Shared {
        appends,
        pages,
        up: AtomicBool::new(true),
        len: AtomicUsize::new(len),
        oldest: Mutex::new(None),
        page_hint: AtomicUsize::new(PAGE_BYTES / max_event_bytes.max(1)),
        frames: FrameCache::default(),
    });
    let log = RedisLog {
        shared: shared.clone(),
        history,
        max_len: history.max(MIN_STREAM_LEN),
        max_count: (4 * PAGE_BYTES / max_event_bytes.max(1)).clamp(1, PAGE_EVENTS),
    };
    let follower = Follower {
        shared,
        client,
        con: Some(con),
        last,
    };
    Ok((log, follower))
}

fn connect_with(client: &Client, read_timeout: Duration) -> RedisResult<Connection> {
    let con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(read_timeout))?;
    con.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    Ok(con)
}

/// What a failed call tells the publisher or subscriber (503); the cause
/// goes to the log at debug level, as the follower reports outages itself.
fn refused(e: RedisError) -> LogError {
    log::debug!("redis call failed: {e}");
    if e.is_unrecoverable_error() || e.is_timeout() || e.is_connection_refusal() {
        LogError("redis unavailable".into())
    } else {
        LogError(format!("redis error: {e}"))
    }
}

impl EventLog for RedisLog {
    fn append(&self, event: &Event) -> Result<SharedFrame, LogError> {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_len)
            .arg("*")
            .arg("topic")
            .arg(event.topic);
        if let Some(name) = event.name {
            xadd.arg("event").arg(name);
        }
        xadd.arg("data").arg(event.data);
        let id: String = self.shared.appends.run(move |con| xadd.query(con))?;
        let id = id
            .parse()
            .map_err(|e| LogError(format!("redis gave the malformed id {id:?}: {e}")))?;
        Ok(Arc::new(Frame::new(id, event)))
    }

    /// As `History::read`, as far as a stream can tell: an id that is in
    /// the stream is no gap; any other is one, with the first entry as
    /// `oldest_available` (Redis keeps no record of the last entry it
    /// trimmed, so a client holding exactly that id is told of a gap too).
    /// From the start (no id, or `0-0`) it is a gap only if anything was
    /// ever trimmed. With `--history 0` only the newest id is no gap, and
    /// nothing is read.
    /// A page asks for as many entries as fit `max_bytes` at the sizes seen
    /// lately, so a stream of large events is not read whole into memory.
    fn read(
        &self,
        after: Option<EventId>,
        topics: &TopicFilter,
        max_bytes: usize,
    ) -> Result<Page, LogError> {
        let max_bytes = max_bytes.clamp(1, PAGE_BYTES);
        let hint = self.shared.page_hint.load(Ordering::Relaxed);
        let read = PageRead {
            after,
            topics: topics.clone(),
            max_bytes,
            count: (hint * max_bytes / PAGE_BYTES).clamp(1, self.max_count),
            history: self.history,
        };
        let shared = self.shared.clone();
        // Built, parsed and decoded on the pool thread (see `Pool`).
        self.shared.pages.run(move |con| {
            let replies: Vec<Value> = read.pipeline().query(con)?;
            let from_start = read.history > 0 && read.after.is_none_or(|a| a == START);
            let mut page = read.page(replies, &shared);
            // The start is no gap while nothing was ever trimmed: one more
            // look-up, for a stream that began on an empty Redis stream.
            // (With `--history 0` nothing is retained: approximate trimming
            // may keep entries, but a stream that missed any had a gap.)
            if from_start && page.gap.is_some() && !ever_removed(con)? {
                page.gap = None;
            }
            Ok(page)
        })
    }

    fn oldest(&self) -> Option<EventId> {
        *self.shared.oldest.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn len(&self) -> usize {
        self.shared.len.load(Ordering::Relaxed)
    }

    fn followed(&self) -> bool {
        true
    }

    fn up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    fn store(&self) -> &'static str {
        "redis"
    }
}

/// One `EventLog::read` as it goes to a pool thread.
struct PageRead {
    after: Option<EventId>,
    topics: TopicFilter,
    max_bytes: usize,
    /// Entries to ask for.
    count: usize,
    history: usize,
}

impl PageRead {
    fn pipeline(&self) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        let after_id = self.after.map(|a| a.to_string());
        if let Some(id) = &after_id {
            gap_probe(&mut pipe, id);
            // Where to read on from when this page finds nothing after it.
            pipe.cmd("XREVRANGE")
                .arg(STREAM)
                .arg(id)
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        if self.history > 0 {
            pipe.cmd("XRANGE")
                .arg(STREAM)
                .arg(
                    after_id
                        .as_ref()
                        .map_or("-".to_string(), |id| format!("({id}")),
                )
                .arg("+")
                .arg("COUNT")
                .arg(self.count);
        } else {
            pipe.cmd("XREVRANGE")
                .arg(STREAM)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        pipe
    }

    /// The page from the replies to `pipeline`.
    fn page(self, mut replies: Vec<Value>, shared: &Shared) -> Page {
        let read = entries(replies.pop().unwrap_or(Value::Nil));
        let mut page = Page::default();
        if self.after.is_some() && replies.len() == 3 {
            let before = entries(replies.pop().unwrap_or(Value::Nil));
            let first = entries(replies.pop().unwrap_or(Value::Nil));
            let found = !entries(replies.pop().unwrap_or(Value::Nil)).is_empty();
            page.scanned = before.first().map(|(id, _)| *id);
            if self.history == 0 {
                let newest = read.first().map(|(id, _)| *id);
                page.gap = (newest != self.after).then_some(None);
                page.scanned = newest.or(page.scanned);
                page.end = true;
                return page;
            }
            page.gap = (!found).then(|| first.first().map(|(id, _)| *id));
        } else if self.history == 0 {
            page.scanned = read.first().map(|(id, _)| *id);
            page.gap = page.scanned.map(Some);
            page.end = true;
            return page;
        } else if self.after.is_none() {
            // From the first event ever: the first retained one tells of a
            // gap if anything before it was trimmed (`ever_removed`).
            page.gap = read.first().map(|(id, _)| Some(*id));
        }
        page.end = read.len() < self.count;
        let n = read.len();
        let (mut bytes, mut kept) = (0, 0);
        for entry in read {
            bytes += entry_bytes(&entry.1);
            if kept >= self.max_bytes {
                // The rest is read again by the next page.
                page.end = false;
                continue;
            }
            page.scanned = Some(entry.0);
            if let Some(frame) = shared.frames.decode(entry) {
                if self.topics.matches(&frame.topic) {
                    kept += frame.bytes.len();
                    page.frames.push(frame);
                }
            }
        }
        if let Some(per_entry) = bytes.checked_div(n) {
            shared
                .page_hint
                .store(PAGE_BYTES / per_entry.max(1), Ordering::Relaxed);
        }
        page
    }
}

/// The id below every entry: where a follower of an empty stream stands,
/// and a read from the start.
const START: EventId = EventId { ms: 0, seq: 0 };

/// One stream entry: its id and its field/value list.
type Entry = (EventId, Vec<Value>);

/// The entries of an `XRANGE` reply: `[[id, [field, value, …]], …]`.
/// Anything else is skipped: one foreign entry must not stop every process
/// from following the stream.
fn entries(reply: Value) -> Vec<Entry> {
    let entry = |v: Value| -> Option<Entry> {
        let Value::Array(mut parts) = v else {
            return None;
        };
        let fields = match parts.pop()? {
            Value::Array(fields) => fields,
            Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => return None,
        };
        let id = text(parts.pop()?)?.parse().ok()?;
        Some((id, fields))
    };
    match reply {
        Value::Array(list) => list.into_iter().filter_map(entry).collect(),
        _ => Vec::new(),
    }
}

/// The entries of an `XREAD` reply for one stream: `[[key, entries]]`, a
/// map `{key: entries}` in RESP3, nil on timeout.
fn read_entries(reply: Value) -> Vec<Entry> {
    let streams: Vec<Value> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|kv| match kv {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    streams.into_iter().flat_map(entries).collect()
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// An entry as a frame, checked as `POST /events` checks a publish, so a
/// foreign entry cannot inject fields into the event stream.
fn decode((id, fields): Entry) -> Option<SharedFrame> {
    let (mut topic, mut name, mut data) = (None, None, None);
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match text(k).as_deref() {
            Some("topic") => topic = text(v),
            Some("event") => name = text(v),
            Some("data") => data = text(v),
            _ => {}
        }
    }
    let valid = topic
        .as_deref()
        .is_some_and(|t| event::check_name("topic", t).is_ok())
        && name
            .as_deref()
            .is_none_or(|n| event::check_logged_event_name(n).is_ok())
        && data.is_some();
    if !valid {
        log::warn!("skipped stream entry {id}: not an ssehub event");
        return None;
    }
    let (topic, data) = (topic?, data?);
    Some(Arc::new(Frame::new(
        id,
        &Event::new(&topic, name.as_deref(), &data),
    )))
}

impl Follower {
    /// Starts the follower thread: it runs for the life of the process.
    pub fn start(self, hub: Arc<Hub>) -> std::io::Result<thread::JoinHandle<()>> {
        // Before any subscriber registers: every later event is fanned out
        // by the follower.
        hub.follow_from(self.last);
        thread::Builder::new()
            .name("redis-follower".into())
            .stack_size(256 * 1024)
            .spawn(move || self.run(&hub))
    }

    fn run(mut self, hub: &Hub) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            let mut con = match self.con.take() {
                Some(con) => con,
                None => match connect_with(&self.client, BLOCK + COMMAND_TIMEOUT) {
                    Ok(con) => {
                        log::info!("redis is back: following after {}", self.last);
                        backoff = BACKOFF_FIRST;
                        con
                    }
                    Err(e) => {
                        log::debug!("redis still unreachable: {e}; next try in {backoff:?}");
                        thread::sleep(backoff);
                        backoff = (backoff * 2).min(BACKOFF_CAP);
                        continue;
                    }
                },
            };
            self.shared.up.store(true, Ordering::Relaxed);
            let Err(e) = self.follow(&mut con, hub);
            self.shared.up.store(false, Ordering::Relaxed);
            self.shared.appends.discard_connections();
            self.shared.pages.discard_connections();
            log::warn!(
                "redis unreachable ({e}): publishing answers 503 until it is back; \
                 open streams stay open"
            );
        }
    }

    /// Reads the stream after `last` and fans each batch out, until a call
    /// fails. Each read goes with a look at whether `last` is still there:
    /// a follower that fell further behind than the stream keeps (a stalled
    /// process, a manual `XTRIM`, entries trimmed while this process could
    /// not reach Redis) would otherwise skip the trimmed entries without a
    /// word. The look and the read go in one write, which Redis reads and
    /// runs back to back, so no other client's trim falls between them. The
    /// look after an outage is the first of this loop: a gap ends the
    /// streams once (a second look at the same gap would end the clients
    /// that just came back), and the entries after it are read at once, so
    /// `last` moves past it.
    fn follow(&mut self, con: &mut Connection, hub: &Hub) -> Result<Infallible, RedisError> {
        loop {
            let last = self.last.to_string();
            let mut pipe = redis::pipe();
            gap_probe(&mut pipe, &last)
                .cmd("XLEN")
                .arg(STREAM)
                .cmd("XREAD")
                .arg("COUNT")
                .arg(FOLLOW_BATCH)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(STREAM)
                .arg(&last);
            let (found, first, len, reply): (Value, Value, usize, Value) = pipe.query(con)?;
            self.shared.len.store(len, Ordering::Relaxed);
            let first = entries(first);
            *self.shared.oldest.lock().unwrap_or_else(|e| e.into_inner()) =
                first.first().map(|(id, _)| *id);
            // An empty stream at startup: nothing read yet to miss.
            if self.last != START && trimmed_after(self.last, found, &first) {
                let ended = hub.end_streams();
                log::warn!(
                    "entries after {last} were trimmed before this process read them: \
                     ended {ended} streams so their clients replay and see the gap"
                );
            }
            let batch = read_entries(reply);
            if let Some(&(newest, _)) = batch.last() {
                self.last = newest;
                let frames: Vec<SharedFrame> = batch
                    .into_iter()
                    .filter_map(|entry| self.shared.frames.decode(entry))
                    .collect();
                hub.fan_out_followed(&frames);
            }
        }
    }
}

/// Whether any entry was ever removed from the stream (trimmed, or
/// deleted), from `XINFO STREAM`: entries added against the length, and the
/// largest deleted id. A stream that does not exist had none.
fn ever_removed(con: &mut Connection) -> RedisResult<bool> {
    let info: Value = match redis::cmd("XINFO").arg("STREAM").arg(STREAM).query(con) {
        Ok(info) => info,
        Err(e) if e.detail().is_some_and(|d| d.contains("no such key")) => return Ok(false),
        // The connection failed: the read fails, and is tried again.
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => return Err(e),
        // Refused (an ACL without XINFO, a server that lacks it): it cannot
        // tell, so it assumes the worst.
        Err(_) => return Ok(true),
    };
    let pairs: Vec<(Value, Value)> = match info {
        Value::Map(pairs) => pairs,
        Value::Array(flat) => {
            let mut it = flat.into_iter();
            std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
        }
        _ => Vec::new(),
    };
    let (mut added, mut length, mut deleted) = (None, None, None);
    for (key, value) in pairs {
        match (text(key).as_deref(), value) {
            (Some("entries-added"), Value::Int(n)) => added = Some(n),
            (Some("length"), Value::Int(n)) => length = Some(n),
            (Some("max-deleted-entry-id"), v) => deleted = text(v),
            _ => {}
        }
    }
    Ok(match (added, length) {
        (Some(added), Some(length)) => added > length || deleted.is_some_and(|d| d != "0-0"),
        // A Redis before 7.0 does not say: assume the worst.
        _ => true,
    })
}

/// From the two replies of `gap_probe`: `last` is gone and the stream now
/// starts after it, so entries after `last` may have been trimmed unread.
fn trimmed_after(last: EventId, found: Value, first: &[Entry]) -> bool {
    entries(found).is_empty() && first.first().is_some_and(|(first, _)| *first > last)
}

/// Adds the two look-ups that tell whether entries after `id` may be
/// missing: the entry `id` itself, and the stream's first entry.
fn gap_probe<'p>(pipe: &'p mut redis::Pipeline, id: &str) -> &'p mut redis::Pipeline {
    pipe.cmd("XRANGE")
        .arg(STREAM)
        .arg(id)
        .arg(id)
        .cmd("XRANGE")
        .arg(STREAM)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
}

/// A call for a pool thread: it answers its caller itself.
type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// A fixed set of threads that make the Redis calls of publishers or of
/// streams, each on a connection of its own, and parse and decode the
/// replies there: redis-rs's parser touches most of a 128 KiB stack and
/// allocates in its thread's arena, and on a stream thread both stayed
/// resident for the stream's life (measured: ~170 KiB for each stream that
/// had replayed). A stream thread gets only shared frames back.
struct Pool {
    /// Jobs in the order they came; each caller bounds how long its own
    /// job may wait here (`Call::wait`), and one it gave up on is skipped.
    jobs: Sender<Job>,
    /// Bumped by `discard_connections`: a connection opened before is not
    /// used again.
    generation: Arc<AtomicU64>,
}

impl Pool {
    fn start(client: &Client, name: &str, threads: usize) -> std::io::Result<Pool> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let generation = Arc::new(AtomicU64::new(0));
        for _ in 0..threads {
            let queue = queue.clone();
            let worker = Worker {
                client: client.clone(),
                generation: generation.clone(),
                con: None,
            };
            thread::Builder::new()
                .name(name.into())
                .stack_size(POOL_STACK_BYTES)
                .spawn(move || worker.run(&queue))?;
        }
        Ok(Pool { jobs, generation })
    }

    /// Runs `call` on a pool thread's connection. Waits the command timeout
    /// for a pool thread to take it ("redis busy" after that: the call is
    /// dropped unrun), then for its answer as long as the call may take.
    fn run<T: Send + 'static>(
        &self,
        call: impl FnOnce(&mut Connection) -> RedisResult<T> + Send + 'static,
    ) -> Result<T, LogError> {
        let waiting = Arc::new(Call::new());
        let taken = waiting.clone();
        let job: Job = Box::new(move |worker| {
            if !taken.take() {
                return;
            }
            let result = worker.connection().and_then(call);
            if result
                .as_ref()
                .is_err_and(|e| e.is_unrecoverable_error() || e.is_timeout())
            {
                worker.con = None;
            }
            taken.answer(result.map_err(refused));
        });
        self.jobs
            .send(job)
            .map_err(|_| LogError("redis unavailable: no connection threads".into()))?;
        waiting.wait()
    }

    /// Closes every connection before its next use: after an outage they
    /// are dead.
    fn discard_connections(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

/// A pool thread's own state.
struct Worker {
    client: Client,
    generation: Arc<AtomicU64>,
    /// The connection and the generation it was opened in.
    con: Option<(u64, Connection)>,
}

impl Worker {
    /// Runs jobs until the pool is dropped. A panic is a bug, but must not
    /// take a shared thread with it: its caller gets no answer, and the
    /// connection, in an unknown state, is closed.
    fn run(mut self, queue: &Receiver<Job>) {
        for job in queue {
            if panic::catch_unwind(AssertUnwindSafe(|| job(&mut self))).is_err() {
                self.con = None;
            }
        }
    }

    /// This thread's connection, opened on first use and again after a
    /// failure or an outage. One that failed is closed, not reused.
    fn connection(&mut self) -> RedisResult<&mut Connection> {
        let now = self.generation.load(Ordering::Relaxed);
        let (at, con) = match self.con.take().filter(|(at, _)| *at == now) {
            Some(kept) => kept,
            None => (now, connect_with(&self.client, COMMAND_TIMEOUT)?),
        };
        Ok(&mut self.con.insert((at, con)).1)
    }
}

/// One caller's call as it goes through the pool. A condition variable
/// rather than a channel per call, and a queue that never blocks the
/// sender: the caller sleeps in one shallow wait, which keeps a stream
/// thread within the stack pages an idle one touches (measured with 50
/// replaying streams: a `bounded(1)` answer and a blocking hand-over cost
/// each one a 4 KiB stack page more, and the answer channels ~3 KiB of
/// their arenas).
struct Call<T> {
    stage: Mutex<Stage<T>>,
    changed: Condvar,
}

enum Stage<T> {
    Queued,
    Taken,
    Answered(Result<T, LogError>),
    /// The caller gave up while the call was queued: it is not run.
    Abandoned,
}

impl<T> Call<T> {
    fn new() -> Call<T> {
        Call {
            stage: Mutex::new(Stage::Queued),
            changed: Condvar::new(),
        }
    }

    fn stage(&self) -> MutexGuard<'_, Stage<T>> {
        self.stage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For the pool thread: takes the call, unless its caller gave up.
    fn take(&self) -> bool {
        let mut stage = self.stage();
        if matches!(*stage, Stage::Abandoned) {
            return false;
        }
        *stage = Stage::Taken;
        true
    }

    fn answer(&self, answer: Result<T, LogError>) {
        *self.stage() = Stage::Answered(answer);
        self.changed.notify_one();
    }

    /// For the caller: the answer, once a pool thread took the call within
    /// the command timeout and answered within the time a call may take.
    fn wait(&self) -> Result<T, LogError> {
        let waited = |stage, limit, until: fn(&Stage<T>) -> bool| {
            self.changed
                .wait_timeout_while(stage, limit, |s| !until(s))
                .unwrap_or_else(|e| e.into_inner())
                .0
        };
        let mut stage = waited(self.stage(), COMMAND_TIMEOUT, |s| {
            !matches!(s, Stage::Queued)
        });
        if matches!(*stage, Stage::Queued) {
            *stage = Stage::Abandoned;
            return Err(LogError("redis busy: every connection is in use".into()));
        }
        stage = waited(stage, CONNECT_TIMEOUT + COMMAND_TIMEOUT, |s| {
            matches!(s, Stage::Answered(_))
        });
        match std::mem::replace(&mut *stage, Stage::Abandoned) {
            Stage::Answered(answer) => answer,
            _ => {
                log::debug!("redis call got no answer in time");
                Err(LogError("redis unavailable".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    fn id(ms: u64, seq: u64) -> EventId {
        EventId { ms, seq }
    }

    #[test]
    fn xrange_replies_parse() {
        let reply = Value::Array(vec![
            entry("5-0", &["topic", "a", "data", "x"]),
            entry("5-1", &["topic", "b", "data", "y"]),
        ]);
        let ids: Vec<EventId> = entries(reply).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, [id(5, 0), id(5, 1)]);
        assert!(entries(Value::Array(vec![])).is_empty());
        assert!(entries(Value::Nil).is_empty());
    }

    #[test]
    fn xread_replies_parse() {
        let stream = Value::Array(vec![entry("7-3", &["topic", "a", "data", "x"])]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk(STREAM), stream.clone()])]);
        assert_eq!(read_entries(resp2)[0].0, id(7, 3));
        let resp3 = Value::Map(vec![(bulk(STREAM), stream)]);
        assert_eq!(read_entries(resp3)[0].0, id(7, 3));
        assert!(read_entries(Value::Nil).is_empty());
    }

    #[test]
    fn entries_decode_to_frames_once_encoded() {
        let frame = decode((
            id(9, 1),
            ["topic", "orders", "event", "created", "data", "a\nb"]
                .map(bulk)
                .to_vec(),
        ))
        .unwrap();
        assert_eq!(&*frame.topic, "orders");
        assert_eq!(
            std::str::from_utf8(&frame.bytes).unwrap(),
            "id: 9-1\nevent: created\ndata: a\ndata: b\n\n"
        );
        let plain = decode((id(9, 2), ["data", "x", "topic", "t"].map(bulk).to_vec())).unwrap();
        assert_eq!(&*plain.bytes, b"id: 9-2\ndata: x\n\n");
    }

    #[test]
    fn a_call_no_thread_took_in_time_is_refused_and_never_run() {
        let call = Call::<()>::new();
        let refused = call.wait().unwrap_err();
        assert_eq!(refused.0, "redis busy: every connection is in use");
        assert!(!call.take(), "a pool thread would run it after the 503");
    }

    #[test]
    fn a_taken_call_is_answered() {
        let call = Arc::new(Call::new());
        assert!(call.take());
        let answering = call.clone();
        thread::spawn(move || answering.answer(Ok(7)));
        assert_eq!(call.wait(), Ok(7));
    }

    #[test]
    fn foreign_entries_are_skipped() {
        for fields in [
            &["data", "x"][..],
            &["topic", "t"],
            &["topic", "a\nb", "data", "x"],
            &["topic", "t", "event", "ssehub:gap", "data", "x"],
            &["topic", "t", "event", "a\rid: 1", "data", "x"],
        ] {
            let values = fields.iter().map(|f| bulk(f)).collect();
            assert!(decode((id(1, 0), values)).is_none(), "{fields:?}");
        }
    }
}
