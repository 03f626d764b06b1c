//! The event log in files under `--data DIR`: append-only segment files of
//! records that carry their length and a checksum, an index rebuilt at start
//! (in memory), group commit (under `--fsync always` by the publisher that
//! leads a flush, under `periodic` by a flusher thread), retention by whole
//! files, and the follower that hands durable events to the hub in id order.
//! Its own lock is held across the write(2) of one batch (one per file) at
//! most, and across one flush of a full file when the next one starts;
//! nothing here takes the hub lock.
//!
//! Under `--fsync always` and `periodic` a file gets its full size before any
//! record goes in: a preparer thread fills the next file with zeros and
//! flushes it while the current one fills. Writing over blocks that exist
//! changes no metadata, so a flush is a data flush without a journal commit
//! (on ext4 about 0.3 ms against 0.85 ms for a file that grows). The clean
//! end of a file is then a header of zeros with only zeros after it.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Fsync;
use crate::event::{self, EventId, IdClock, TopicFilter};
use crate::history::{now_ms, EventLog, LogError, Page, PAGE_BYTES, PAGE_EVENTS, PAGE_SCAN};
use crate::hub::Hub;
use crate::sse::{Event, Frame, SharedFrame};

/// A record's header: the payload's length and the CRC-32 of the length and
/// the payload, both little-endian u32.
const HEADER: usize = 8;
/// The payload before its strings: the id (ms, seq: u64 each), then the
/// lengths of the topic and the event name (u16 each; 0 for no name), then
/// topic, name and data, all UTF-8. The top bit of the name's length marks
/// the first record of a write (`STARTS_WRITE`).
const FIXED: usize = 20;
/// In the name's length: this record starts a write. Only the last write
/// can be torn by a crash (each write is flushed before the next is made,
/// under `--fsync always`), so damage followed by intact records of the
/// same write is a torn write, and damage followed by the start of a later
/// write is damage.
const STARTS_WRITE: u16 = 0x8000;
/// The largest payload read back: the largest event `--max-event-bytes`
/// allows and its names. Anything longer is damage.
const MAX_PAYLOAD: usize = FIXED + 2 * event::MAX_NAME_BYTES + (64 << 20);
/// A file rolls over at an eighth of `--history-bytes` (within these bounds)
/// or of `--history`, so whole-file retention keeps at most an eighth more
/// than the bounds, and disk use stays within `--history-bytes` plus one file.
const SEGMENT_PARTS: usize = 8;
const SEGMENT_MIN_BYTES: u64 = 4 << 10;
const SEGMENT_MAX_BYTES: u64 = 64 << 20;
/// One index entry (id, offset) per this many records: 1,000,000 events
/// take 16,000 entries (384 KB), and a look-up reads at most this many
/// records past its entry.
const MARK_EVERY: usize = 64;
/// `--fsync periodic`.
const PERIOD: Duration = Duration::from_millis(100);
/// The newest durable frames kept in memory too: the follower and readers
/// near the live edge share them instead of reading and decoding the file.
const RECENT_EVENTS: usize = 4096;
const RECENT_BYTES: usize = 8 << 20;
/// Bytes read from a file at once.
const READ_CHUNK: usize = 64 << 10;
/// Zeros written at once into a file made ahead.
const ZERO_CHUNK: usize = 1 << 20;
const LOCK_FILE: &str = "lock";
const SUFFIX: &str = ".log";

/// Why the log cannot be opened: printed to stderr, exit status 1.
#[derive(Debug)]
pub enum OpenError {
    /// Another process holds the directory's lock.
    InUse(PathBuf),
    /// A record that is not the torn end of the log fails its checks.
    Damaged {
        file: PathBuf,
        offset: u64,
        why: &'static str,
    },
    /// The directory or a file in it cannot be created, read or locked.
    Io { path: PathBuf, error: io::Error },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::InUse(dir) => {
                write!(f, "--data: {} is in use by another process", dir.display())
            }
            OpenError::Damaged { file, offset, why } => write!(
                f,
                "--data: damaged record in {} at offset {offset}: {why}",
                file.display()
            ),
            OpenError::Io { path, error } => write!(f, "--data: {}: {error}", path.display()),
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |error| OpenError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// One decoded record, borrowing its strings from a read buffer.
#[derive(Debug)]
struct Record<'a> {
    id: EventId,
    /// The first record of a write (see `STARTS_WRITE`).
    starts_write: bool,
    topic: &'a str,
    name: Option<&'a str>,
    data: &'a str,
}

impl Record<'_> {
    fn frame(&self) -> SharedFrame {
        Arc::new(Frame::new(
            self.id,
            &Event::new(self.topic, self.name, self.data),
        ))
    }
}

/// `event` as a record with a zero id, to be `seal`ed under the log's lock.
fn encode(event: &Event) -> Vec<u8> {
    let name = event.name.unwrap_or("");
    let len = FIXED + event.topic.len() + name.len() + event.data.len();
    let mut out = Vec::with_capacity(HEADER + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4 + 16]);
    // Names are checked to be at most 256 bytes before they get here.
    out.extend_from_slice(&(event.topic.len() as u16).to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(event.topic.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(event.data.as_bytes());
    out
}

/// Puts `id` and the checksum into an `encode`d record.
fn seal(record: &mut [u8], id: EventId) {
    record[HEADER..HEADER + 8].copy_from_slice(&id.ms.to_le_bytes());
    record[HEADER + 8..HEADER + 16].copy_from_slice(&id.seq.to_le_bytes());
    let crc = checksum(&record[..4], &record[HEADER..]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Marks a sealed record as the first of a write, and seals it again.
fn mark_start(record: &mut [u8]) {
    record[HEADER + 19] |= (STARTS_WRITE >> 8) as u8;
    let crc = checksum(&record[..4], &record[HEADER..]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(len: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(payload);
    h.finalize()
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

/// A whole record (header and payload), checked.
fn parse(record: &[u8]) -> Result<Record<'_>, &'static str> {
    let (head, p) = record.split_at(HEADER);
    if checksum(&head[..4], p) != u32_at(head, 4) {
        return Err("checksum mismatch");
    }
    let topic_len = u16::from_le_bytes([p[16], p[17]]) as usize;
    let name_field = u16::from_le_bytes([p[18], p[19]]);
    let name_len = (name_field & !STARTS_WRITE) as usize;
    let rest = &p[FIXED..];
    if topic_len + name_len > rest.len() {
        return Err("lengths beyond the record");
    }
    let text = |b| std::str::from_utf8(b).map_err(|_| "text that is not UTF-8");
    let topic = text(&rest[..topic_len])?;
    let name = text(&rest[topic_len..topic_len + name_len])?;
    let data = text(&rest[topic_len + name_len..])?;
    // As `POST /events` checks them, so that no file can inject fields
    // into an event stream.
    event::check_name("topic", topic).map_err(|_| "invalid topic")?;
    if !name.is_empty() {
        event::check_logged_event_name(name).map_err(|_| "invalid event name")?;
    }
    Ok(Record {
        id: EventId {
            ms: u64_at(p, 0),
            seq: u64_at(p, 8),
        },
        starts_write: name_field & STARTS_WRITE != 0,
        topic,
        name: (!name.is_empty()).then_some(name),
        data,
    })
}

/// Why a scan stopped early.
#[derive(Debug)]
enum Bad {
    Io(io::Error),
    Damaged { offset: u64, why: &'static str },
}

/// Reads the records of one file between two offsets through a buffer.
struct Scan {
    file: Arc<File>,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    /// The file offset of `buf[0]`.
    buf_at: u64,
}

impl Scan {
    fn new(file: Arc<File>, pos: u64, end: u64) -> Scan {
        Scan {
            file,
            pos,
            end,
            buf: Vec::new(),
            buf_at: 0,
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.end
    }

    /// Makes `file[at..at + n]` readable in `buf`; false if it reaches past
    /// `end`.
    fn window(&mut self, at: u64, n: usize) -> io::Result<bool> {
        if at + n as u64 > self.end {
            return Ok(false);
        }
        if at >= self.buf_at && at + n as u64 <= self.buf_at + self.buf.len() as u64 {
            return Ok(true);
        }
        let want = (n.max(READ_CHUNK) as u64).min(self.end - at) as usize;
        self.buf.resize(want, 0);
        self.file.read_exact_at(&mut self.buf, at)?;
        self.buf_at = at;
        Ok(true)
    }

    /// The next record and its offset; None at `end`.
    fn next(&mut self) -> Result<Option<(u64, Record<'_>)>, Bad> {
        let at = self.pos;
        if at >= self.end {
            return Ok(None);
        }
        let damaged = |why| Bad::Damaged { offset: at, why };
        if !self.window(at, HEADER).map_err(Bad::Io)? {
            return Err(damaged("header cut short"));
        }
        let i = (at - self.buf_at) as usize;
        let len = u32_at(&self.buf, i) as usize;
        if !(FIXED..=MAX_PAYLOAD).contains(&len) {
            return Err(damaged("impossible length"));
        }
        if !self.window(at, HEADER + len).map_err(Bad::Io)? {
            return Err(damaged("record cut short"));
        }
        self.pos = at + (HEADER + len) as u64;
        let i = (at - self.buf_at) as usize;
        let record = parse(&self.buf[i..i + HEADER + len]).map_err(damaged)?;
        Ok(Some((at, record)))
    }
}

/// How far a file is written, or readable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Extent {
    len: u64,
    count: usize,
    last: Option<EventId>,
}

/// One file of the log.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: Arc<File>,
    /// What was written to it.
    written: Extent,
    /// What readers may see: flushed under `--fsync always`, else written.
    visible: Extent,
    /// (id, offset) of its 0th, MARK_EVERYth, … record: ids and offsets grow.
    marks: Vec<(EventId, u64)>,
    /// Bytes past `written.len` that could not be cut off yet: cut before
    /// the next write.
    cut: bool,
    /// The number in its name: files are read back in this order.
    number: u64,
    /// Its length on disk: past `written.len` only zeros (flushed, if the
    /// preparer made them), which a record overwrites.
    alloc: u64,
}

impl Segment {
    fn new(path: PathBuf, file: File, number: u64) -> Segment {
        Segment {
            path,
            file: Arc::new(file),
            written: Extent::default(),
            visible: Extent::default(),
            marks: Vec::new(),
            cut: false,
            number,
            alloc: 0,
        }
    }

    /// The bytes it takes on disk.
    fn size(&self) -> u64 {
        self.alloc.max(self.written.len)
    }

    fn push(&mut self, at: u64, id: EventId, size: usize) {
        if self.written.count.is_multiple_of(MARK_EVERY) {
            self.marks.push((id, at));
        }
        self.written = Extent {
            len: at + size as u64,
            count: self.written.count + 1,
            last: Some(id),
        };
    }

    /// The first id readers may see.
    fn first(&self) -> Option<EventId> {
        (self.visible.count > 0).then(|| self.marks[0].0)
    }

    /// Where to start reading for the first record after `after`: the
    /// offset of the last index entry not above it.
    fn start_for(&self, after: EventId) -> u64 {
        let visible = self.marks.partition_point(|m| m.1 < self.visible.len);
        let k = self.marks[..visible].partition_point(|m| m.0 <= after);
        k.checked_sub(1).map_or(0, |k| self.marks[k].1)
    }

    /// Forgets what was written but not made visible, cutting it off the
    /// file (or marking it to be cut before the next write).
    fn revert(&mut self) {
        if self.written.len > self.visible.len {
            self.cut = self.file.set_len(self.visible.len).is_err();
            self.alloc = self.alloc.min(self.visible.len);
        }
        self.written = self.visible;
        let len = self.written.len;
        self.marks.retain(|m| m.1 < len);
    }
}

fn segment_name(number: u64) -> String {
    format!("{number:020}{SUFFIX}")
}

/// Everything behind the log's lock.
struct State {
    /// Oldest first; appends go to the last.
    segments: VecDeque<Segment>,
    /// The next file, zero-filled and flushed, name and all, by the
    /// preparer: a roll takes it.
    spare: Option<Segment>,
    /// The size of the next file while the preparer makes it.
    making: Option<u64>,
    /// When the preparer tries again after a file it could not make.
    retry_at: Option<Instant>,
    next_number: u64,
    clock: IdClock,
    /// Sealed under `--fsync always`, neither written nor flushed yet, in
    /// id order: the next flush writes them in one go and flushes them.
    unsynced: Vec<Pending>,
    /// An appender is writing and flushing (`--fsync always`): the others
    /// wait for it, and it hands the flush of what came meanwhile on to one
    /// of them.
    flushing: bool,
    /// The pace of `--fsync always`; see `Pace`.
    pace: Pace,
    /// Written since the last flush (`--fsync periodic`).
    dirty: bool,
    /// A new file's name is not flushed into the directory yet.
    dir_unsynced: bool,
    /// The newest id readers may see.
    visible_id: Option<EventId>,
    /// The newest id of the newest file removed: a reader that saw it
    /// missed nothing that is still retained.
    evicted_upto: Option<EventId>,
    /// The newest visible frames: every one above `recent_floor`.
    recent: VecDeque<SharedFrame>,
    recent_bytes: usize,
    recent_floor: Option<EventId>,
    failure: String,
    closing: bool,
    /// Tests hold the flush back to look at what is not durable yet.
    #[cfg(test)]
    hold: bool,
}

/// A record of `--fsync always` on its way to the disk.
struct Pending {
    /// Sealed under `frame.id`.
    record: Vec<u8>,
    frame: SharedFrame,
    waiter: Arc<Waiter>,
}

/// Who a flush of `--fsync always` waits for. Publishers that wait for
/// their answer before they publish again come back a moment after the
/// flush that answered them, while the next flush already runs, and wait
/// for that one and then their own: left alone they settle into two halves
/// that take turns, each publish waiting about two flushes. So the leader
/// of a flush first waits for the looping publishers the last flush
/// answered to be back, but never longer than a flush takes: they join
/// this flush instead of waiting for the next, and a publisher that does
/// not come back delays the others by less than the flush it would
/// otherwise have waited for. A lone publisher, or publishers that do not
/// loop (back later than two such waits after their answer), are never
/// waited for.
#[derive(Default)]
struct Pace {
    /// Flushes ended so far: the number of the newest one.
    flushes: u64,
    /// Looping publishers the newest flush answered (but not its leader
    /// when that one flushes again at once).
    expected: usize,
    /// Records appended since then by publishers it answered.
    returned: usize,
    /// How long the last two flushes took: the wait is the shorter one, so
    /// one slow flush does not make the next wait long.
    took: [Duration; 2],
    /// A leader waits on `Shared::returned` for the last of them.
    waiting: bool,
    /// Tests set the wait.
    #[cfg(test)]
    wait: Option<Duration>,
}

impl Pace {
    /// How long a leader waits at most: the shorter of the last two flushes.
    fn wait(&self) -> Duration {
        #[cfg(test)]
        if let Some(wait) = self.wait {
            return wait;
        }
        self.took[0].min(self.took[1])
    }
}

/// What a thread's last publish under `--fsync always` was answered by.
#[derive(Clone, Copy)]
struct Answered {
    /// The log (the address of its `Shared`; 0: none yet).
    log: usize,
    /// The number of the flush.
    flush: u64,
    at: Option<Instant>,
}

thread_local! {
    static ANSWERED: std::cell::Cell<Answered> =
        const { std::cell::Cell::new(Answered { log: 0, flush: 0, at: None }) };
}

/// An appender waiting for the flush that covers its record (`--fsync
/// always`). The appender that flushes settles it and wakes exactly that
/// thread: a flush does not wake the appenders that wait for the next one,
/// and a woken appender does not take the log's lock again.
struct Waiter {
    thread: thread::Thread,
    /// `PENDING` until the leader of a flush settles it `DURABLE`,
    /// `FAILED` or `LEAD`.
    state: AtomicU8,
    /// The number of the flush that settled it, stored before `state`.
    flush: AtomicU64,
    /// Its appender came straight back: its previous record was answered
    /// by one of the last two flushes, less than two waits ago (`Pace`).
    looping: bool,
}

const PENDING: u8 = 0;
const DURABLE: u8 = 1;
const FAILED: u8 = 2;
/// Not flushed yet, and the flush is this appender's to do.
const LEAD: u8 = 3;

impl Waiter {
    fn new(looping: bool) -> Arc<Waiter> {
        Arc::new(Waiter {
            thread: thread::current(),
            state: AtomicU8::new(PENDING),
            flush: AtomicU64::new(0),
            looping,
        })
    }

    fn settle(&self, to: u8, flush: u64) {
        self.flush.store(flush, Ordering::Relaxed);
        self.state.store(to, Ordering::Release);
        self.thread.unpark();
    }

    /// Parks until settled (a park may end early: the state decides).
    fn wait(&self) -> u8 {
        loop {
            match self.state.load(Ordering::Acquire) {
                PENDING => thread::park(),
                settled => return settled,
            }
        }
    }
}

/// What the log, its flusher and its follower share.
struct Shared {
    dir: PathBuf,
    fsync: Fsync,
    history: usize,
    history_bytes: u64,
    segment_bytes: u64,
    segment_events: usize,
    state: Mutex<State>,
    /// Wakes the flusher of `--fsync periodic` (and a held leader, in tests).
    flush: Condvar,
    /// Wakes the preparer.
    prepare: Condvar,
    /// Wakes a leader waiting for looping publishers (`Pace`).
    returned: Condvar,
    /// Whether files get their full size up front (not `--fsync never`).
    prepared: bool,
    /// Wakes the follower (and, under `--fsync periodic`, nobody else:
    /// appenders of `always` wait as `Waiter`s).
    visible: Condvar,
    /// Whether the last write or flush succeeded.
    up: AtomicBool,
}

/// The event log of `--data DIR`.
pub struct DiskLog {
    shared: Arc<Shared>,
    flusher: Option<thread::JoinHandle<()>>,
    preparer: Option<thread::JoinHandle<()>>,
    /// Held (flock) for the life of the log: one process per directory.
    _lock: File,
}

/// The thread-to-be that hands durable events to the hub, in id order.
pub struct Follower {
    shared: Arc<Shared>,
    /// The newest id handed on (or on disk at open).
    last: Option<EventId>,
}

/// Takes the directory's lock, or says who has it.
fn lock(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_at(&path))?;
    // SAFETY: flock on a descriptor we own; it only reads its arguments.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(OpenError::InUse(dir.to_path_buf()));
        }
        return Err(OpenError::Io { path, error });
    }
    Ok(file)
}

/// Whether an intact record starts anywhere in `file` after `offset`: then
/// the damage at `offset` is not the torn end of the log.
fn intact_after(file: &File, offset: u64, len: u64, starts_only: bool) -> io::Result<bool> {
    let mut rest = vec![0; (len - offset) as usize];
    file.read_exact_at(&mut rest, offset)?;
    Ok((1..rest.len().saturating_sub(HEADER + FIXED - 1)).any(|i| {
        let n = u32_at(&rest, i) as usize;
        (FIXED..=MAX_PAYLOAD).contains(&n)
            && i + HEADER + n <= rest.len()
            && parse(&rest[i..i + HEADER + n]).is_ok_and(|r| r.starts_write || !starts_only)
    }))
}

/// Whether `file[offset..len]` is all zeros: the space a file was given up
/// front and no record has used yet.
fn zeros_from(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    let mut buf = vec![0; READ_CHUNK];
    let mut at = offset;
    while at < len {
        let n = ((len - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Whether the file at `path` holds nothing but zeros (a next file made
/// ahead that no record went into yet).
fn blank(path: &Path) -> Result<bool, OpenError> {
    let file = File::open(path).map_err(io_at(path))?;
    let len = file.metadata().map_err(io_at(path))?.len();
    zeros_from(&file, 0, len).map_err(io_at(path))
}

/// Reads one file back into a segment. It ends where the records end: at
/// the end of the file, or at a header of zeros with only zeros after it.
/// Damage at the end of the newest file with records is a record torn by a
/// crash: cut off, with a warning.
fn load(
    path: PathBuf,
    number: u64,
    newest_file: bool,
    newest: &mut Option<EventId>,
) -> Result<Segment, OpenError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_at(&path))?;
    let len = file.metadata().map_err(io_at(&path))?.len();
    let mut seg = Segment::new(path, file, number);
    seg.alloc = len;
    let mut scan = Scan::new(seg.file.clone(), 0, len);
    scan.buf.reserve(1 << 20);
    // Whether the file marks where writes start (files of earlier versions
    // do not: there any intact record after damage makes it damage).
    let mut marked = false;
    let damage = loop {
        match scan.next() {
            Ok(None) => break None,
            Ok(Some((at, record))) => {
                marked |= record.starts_write;
                if Some(record.id) <= *newest {
                    break Some((at, "id not above the one before"));
                }
                *newest = Some(record.id);
                let id = record.id;
                let size = (scan.pos - at) as usize;
                seg.push(at, id, size);
            }
            Err(Bad::Io(e)) => return Err(io_at(&seg.path)(e)),
            Err(Bad::Damaged { offset, why }) => break Some((offset, why)),
        }
    };
    let clean_end = match damage {
        Some((offset, _)) => zeros_from(&seg.file, offset, len).map_err(io_at(&seg.path))?,
        None => true,
    };
    if let Some((offset, why)) = damage.filter(|_| !clean_end) {
        // Torn: no write starts after the damage (with marks), or no
        // record at all is intact after it (without).
        let torn = newest_file
            && !intact_after(&seg.file, offset, len, marked).map_err(io_at(&seg.path))?;
        if !torn {
            return Err(OpenError::Damaged {
                file: seg.path,
                offset,
                why,
            });
        }
        log::warn!(
            "event log: cut off a write torn at offset {offset} of {} ({why}, {} bytes): \
             it was never answered",
            seg.path.display(),
            len - offset
        );
        seg.file
            .set_len(offset)
            .and_then(|()| seg.file.sync_all())
            .map_err(io_at(&seg.path))?;
        seg.alloc = offset;
    }
    seg.visible = seg.written;
    Ok(seg)
}

/// Opens (or creates) the log in `dir`: takes its lock, reads every file
/// back and checks every record, and starts the flusher thread (`--fsync
/// periodic`) and the preparer. The
/// follower is returned to be started once the hub exists.
pub fn open(
    dir: &Path,
    history: usize,
    history_bytes: usize,
    fsync: Fsync,
) -> Result<(DiskLog, Follower), OpenError> {
    let started = Instant::now();
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    let lock = lock(dir)?;
    let mut numbers: Vec<u64> = fs::read_dir(dir)
        .map_err(io_at(dir))?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let stem = name.to_str()?.strip_suffix(SUFFIX)?;
            (stem.len() == 20).then(|| stem.parse().ok())?
        })
        .collect();
    numbers.sort_unstable();
    // Files made ahead that no record went into yet may follow the newest
    // file with records, the one that may end in a torn record.
    let mut last_written = numbers.len().saturating_sub(1);
    while last_written > 0 && blank(&dir.join(segment_name(numbers[last_written])))? {
        last_written -= 1;
    }
    let mut segments = VecDeque::new();
    let mut newest = None;
    for (i, number) in numbers.iter().enumerate() {
        let path = dir.join(segment_name(*number));
        let seg = load(path, *number, i >= last_written, &mut newest)?;
        if seg.written.count == 0 && i + 1 < numbers.len() {
            fs::remove_file(&seg.path).map_err(io_at(&seg.path))?;
            continue;
        }
        segments.push_back(seg);
    }
    // An empty file after the newest with records was made ahead: records
    // go on after the last one, and it waits for the next roll.
    let mut spare = None;
    if segments.len() >= 2 && segments.back().is_some_and(|s| s.written.count == 0) {
        let last = segments.pop_back().expect("two segments");
        match last.alloc {
            0 => fs::remove_file(&last.path).map_err(io_at(&last.path))?,
            _ => spare = Some(last),
        }
    }
    let segment_bytes = (history_bytes / SEGMENT_PARTS) as u64;
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        fsync,
        history,
        history_bytes: history_bytes as u64,
        segment_bytes: segment_bytes.clamp(SEGMENT_MIN_BYTES, SEGMENT_MAX_BYTES),
        segment_events: (history / SEGMENT_PARTS).max(1),
        state: Mutex::new(State {
            segments,
            spare,
            making: None,
            retry_at: None,
            next_number: numbers.last().map_or(0, |n| n + 1),
            clock: newest.map(IdClock::after).unwrap_or_default(),
            unsynced: Vec::new(),
            flushing: false,
            pace: Pace::default(),
            dirty: false,
            dir_unsynced: false,
            visible_id: newest,
            evicted_upto: None,
            recent: VecDeque::new(),
            recent_bytes: 0,
            recent_floor: newest,
            failure: String::new(),
            closing: false,
            #[cfg(test)]
            hold: false,
        }),
        flush: Condvar::new(),
        prepare: Condvar::new(),
        returned: Condvar::new(),
        prepared: fsync != Fsync::Never,
        visible: Condvar::new(),
        up: AtomicBool::new(true),
    });
    let removed = shared.lock().retain(&shared);
    remove(removed);
    if shared.prepared && shared.lock().segments.is_empty() {
        // A new log: its first file is made now, not while the first
        // publishers wait.
        let number = shared.lock().take_number();
        let seg = shared
            .make_file(number, shared.segment_bytes)
            .map_err(io_at(dir))?;
        shared.lock().spare = Some(seg);
    }
    let preparer = match shared.prepared {
        false => None,
        true => {
            let shared = shared.clone();
            let thread = thread::Builder::new()
                .name("disk-preparer".into())
                .stack_size(256 * 1024)
                .spawn(move || shared.prepare_files())
                .map_err(io_at(dir))?;
            Some(thread)
        }
    };
    let flusher = match fsync {
        // Under `always` the appenders flush, one for all (see `commit`).
        Fsync::Never | Fsync::Always => None,
        Fsync::Periodic => {
            let shared = shared.clone();
            let thread = thread::Builder::new()
                .name("disk-flusher".into())
                .stack_size(256 * 1024)
                .spawn(move || shared.flush_periodic())
                .map_err(io_at(dir))?;
            Some(thread)
        }
    };
    let log = DiskLog {
        shared: shared.clone(),
        flusher,
        preparer,
        _lock: lock,
    };
    log::info!(
        "event log: {} events in {}, opened in {} ms",
        log.len(),
        dir.display(),
        started.elapsed().as_millis()
    );
    Ok((
        log,
        Follower {
            shared,
            last: newest,
        },
    ))
}

/// Removes files retention let go of (outside the lock: a reader that still
/// has one open reads on).
fn remove(paths: Vec<PathBuf>) {
    for path in paths {
        if let Err(e) = fs::remove_file(&path) {
            log::warn!("event log: cannot remove {}: {e}", path.display());
        }
    }
}

impl State {
    /// Writes `record` (sealed under `id`) at the end of the newest file;
    /// see `write_records`.
    fn write(&mut self, sh: &Shared, record: &[u8], id: EventId) -> io::Result<()> {
        self.write_records(sh, &[(record, id)])
    }

    /// Writes sealed records at the end of the newest file, rolling over to
    /// a new file first whenever the newest is full: one write for the
    /// records that go into one file. A failed write is cut off again, so no
    /// reader and no restart sees part of it (records written into a file
    /// before it are cut off by `revert`).
    fn write_records(&mut self, sh: &Shared, records: &[(&[u8], EventId)]) -> io::Result<()> {
        for seg in self.segments.iter_mut().filter(|s| s.cut) {
            seg.file.set_len(seg.written.len)?;
            seg.cut = false;
            seg.alloc = seg.written.len;
        }
        if self.dir_unsynced {
            File::open(&sh.dir)?.sync_all()?;
            self.dir_unsynced = false;
        }
        let full = |written: Extent, len: usize| {
            written.count > 0
                && (written.len + len as u64 > sh.segment_bytes
                    || written.count >= sh.segment_events)
        };
        let mut rest = records;
        let mut joined = Vec::new();
        while let Some((first, _)) = rest.first() {
            if self
                .segments
                .back()
                .is_none_or(|s| full(s.written, first.len()))
            {
                self.roll(sh)?;
            }
            let seg = self.segments.back_mut().expect("rolled over");
            let at = seg.written.len;
            // The records that fit into this file: at least the first.
            let mut end = seg.written;
            let n = rest
                .iter()
                .take_while(|(r, _)| {
                    let fits = !full(end, r.len());
                    if fits {
                        end.len += r.len() as u64;
                        end.count += 1;
                    }
                    fits
                })
                .count();
            let (these, after) = rest.split_at(n);
            joined.clear();
            these.iter().for_each(|(r, _)| joined.extend_from_slice(r));
            mark_start(&mut joined[..these[0].0.len()]);
            if let Err(e) = seg.file.write_all_at(&joined, at) {
                seg.cut = seg.file.set_len(at).is_err();
                seg.alloc = seg.alloc.min(at);
                return Err(e);
            }
            let before = seg.written;
            for (r, id) in these {
                seg.push(seg.written.len, *id, r.len());
            }
            let half =
                |e: Extent| 2 * e.len >= sh.segment_bytes || 2 * e.count >= sh.segment_events;
            if sh.prepared && half(seg.written) && !half(before) {
                sh.prepare.notify_one();
            }
            rest = after;
        }
        Ok(())
    }

    /// Whether the next file should be made now: once the newest is half
    /// full, so that it is sized from what goes into files, and the disk is
    /// not busy with it while the publishers of a new log start.
    fn wants_spare(&self, sh: &Shared) -> bool {
        self.spare.is_none()
            && self.retry_at.is_none_or(|t| Instant::now() >= t)
            && self.segments.back().is_none_or(|s| {
                2 * s.written.len >= sh.segment_bytes || 2 * s.written.count >= sh.segment_events
            })
    }

    /// Starts a new file. The full one is flushed first, whatever --fsync
    /// says (once per file), so a record torn by a crash can only be at the
    /// end of the newest file with records; the new name is flushed into the
    /// directory before any record in it is answered. The new file is the
    /// one the preparer made ahead if it is ready (then this is all), else
    /// one that grows as records go in.
    fn roll(&mut self, sh: &Shared) -> io::Result<()> {
        if let Some(full) = self.segments.back() {
            full.file.sync_data()?;
        }
        sh.prepare.notify_one();
        if let Some(spare) = self.spare.take() {
            self.segments.push_back(spare);
            return Ok(());
        }
        let number = self.next_number;
        let path = sh.dir.join(segment_name(number));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        self.next_number += 1;
        self.segments.push_back(Segment::new(path, file, number));
        self.dir_unsynced = true;
        File::open(&sh.dir)?.sync_all()?;
        self.dir_unsynced = false;
        Ok(())
    }

    /// The size to give the next file: a quarter more than the last full
    /// one holds, or the newest will hold (files roll over after
    /// `--history`/8 events too), within the bounds of a file. A record
    /// beyond it grows the file. Every byte of it is written (zeros) and
    /// flushed ahead, and the flushes of records that run meanwhile wait
    /// for the disk to take them: the smaller, the shorter that wait.
    fn next_size(&self, sh: &Shared) -> u64 {
        let n = self.segments.len();
        let last_full = n.checked_sub(2).map(|i| self.segments[i].written.len);
        let newest = self.segments.back().map(|s| s.written).unwrap_or_default();
        let newest_full = match newest.count {
            0 => sh.segment_bytes,
            n => newest.len / n as u64 * sh.segment_events as u64,
        };
        let like = last_full.unwrap_or(newest_full);
        let want = like + like / 4;
        want.clamp(SEGMENT_MIN_BYTES, sh.segment_bytes)
            .next_multiple_of(SEGMENT_MIN_BYTES)
            .min(sh.segment_bytes)
    }

    fn take_number(&mut self) -> u64 {
        self.next_number += 1;
        self.next_number - 1
    }

    /// Makes `frames` visible, oldest first: they are written (and flushed,
    /// as --fsync asks) up to `extent` of `file`, and every file before it
    /// is complete.
    fn reveal(&mut self, file: &Arc<File>, extent: Extent, frames: Vec<SharedFrame>) {
        for seg in self.segments.iter_mut() {
            if Arc::ptr_eq(&seg.file, file) {
                seg.visible = extent;
                break;
            }
            seg.visible = seg.written;
        }
        for frame in frames {
            self.visible_id = Some(frame.id);
            self.recent_bytes += frame.bytes.len();
            self.recent.push_back(frame);
        }
        while self.recent.len() > RECENT_EVENTS || self.recent_bytes > RECENT_BYTES {
            let old = self.recent.pop_front().expect("over the bound");
            self.recent_bytes -= old.bytes.len();
            self.recent_floor = Some(old.id);
        }
    }

    /// Removes the oldest whole files while the newer ones still hold
    /// `--history` events or take `--history-bytes` bytes on disk (the
    /// newest and the one made ahead at their full size), but never the
    /// newest file with events in it (it holds the id the clock goes on
    /// from). Returns the files to remove.
    fn retain(&mut self, sh: &Shared) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let mut events: usize = self.segments.iter().map(|s| s.visible.count).sum();
        let mut bytes: u64 = self.segments.iter().map(Segment::size).sum();
        bytes += self.spare.as_ref().map_or(0, Segment::size);
        bytes += self.making.unwrap_or(0);
        while let Some(front) = self.segments.front() {
            let newest_with_events = self.segments.iter().rposition(|s| s.visible.count > 0);
            let closed = front.visible == front.written;
            if newest_with_events.is_none_or(|i| i == 0) || !closed {
                break;
            }
            let rest_events = events - front.visible.count;
            let rest_bytes = bytes - front.size();
            if rest_events < sh.history && rest_bytes < sh.history_bytes {
                break;
            }
            let front = self.segments.pop_front().expect("a front segment");
            (events, bytes) = (rest_events, rest_bytes);
            if front.visible.last.is_some() {
                self.evicted_upto = front.visible.last;
            }
            removed.push(front.path);
        }
        removed
    }

    fn oldest(&self) -> Option<EventId> {
        self.segments.iter().find_map(Segment::first)
    }

    /// A page from the frames in memory, if they hold every frame after
    /// `after` and, for a replay, no gap precedes them (the follower takes
    /// them even if retention removed them from the files meanwhile).
    fn recent_page(
        &self,
        after: Option<EventId>,
        topics: &TopicFilter,
        replay: bool,
        max_bytes: usize,
    ) -> Option<Page> {
        let covered = match (after, self.recent_floor) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(a), Some(floor)) => a >= floor,
        };
        if !covered {
            return None;
        }
        let lo = self.recent.partition_point(|f| Some(f.id) <= after);
        let below = match lo.checked_sub(1) {
            Some(i) => Some(self.recent[i].id),
            None => self.recent_floor.filter(|f| Some(*f) == after),
        };
        let oldest = self.oldest();
        if let Some(a) = after.filter(|_| replay) {
            let retained = below == Some(a) && oldest.is_some_and(|o| a >= o);
            if !retained && Some(a) != self.evicted_upto {
                return None;
            }
        }
        let mut pager = Pager::new(topics, max_bytes);
        pager.page.scanned = below.filter(|b| !replay || oldest.is_some_and(|o| *b >= o));
        let mut looked = lo;
        for frame in self.recent.range(lo..) {
            looked += 1;
            if !pager.take(frame.id, &frame.topic, || frame.clone()) {
                break;
            }
        }
        pager.page.end = looked == self.recent.len();
        Some(pager.page)
    }
}

/// Fills one page within its bounds.
struct Pager<'t> {
    topics: &'t TopicFilter,
    page: Page,
    bytes: usize,
    max_bytes: usize,
    looked: usize,
}

impl<'t> Pager<'t> {
    fn new(topics: &'t TopicFilter, max_bytes: usize) -> Pager<'t> {
        Pager {
            topics,
            page: Page::default(),
            bytes: 0,
            max_bytes: max_bytes.min(PAGE_BYTES),
            looked: 0,
        }
    }

    /// Looks at one entry; false once the page is full.
    fn take(&mut self, id: EventId, topic: &str, frame: impl FnOnce() -> SharedFrame) -> bool {
        self.looked += 1;
        self.page.scanned = Some(id);
        if self.topics.matches(topic) {
            let frame = frame();
            self.bytes += frame.bytes.len();
            self.page.frames.push(frame);
        }
        self.page.frames.len() < PAGE_EVENTS
            && self.bytes < self.max_bytes
            && self.looked < PAGE_SCAN
    }
}

/// A read across files, in order, up to what was visible when it began.
struct Walk {
    /// (file, path, start offset, visible length), oldest first.
    spans: VecDeque<(Arc<File>, PathBuf, u64, u64)>,
    scan: Option<(Scan, PathBuf)>,
}

impl Walk {
    /// Moves on to a file with something left to read; false at the end.
    fn ready(&mut self) -> bool {
        loop {
            if self.scan.as_ref().is_some_and(|(s, _)| !s.at_end()) {
                return true;
            }
            let Some((file, path, start, end)) = self.spans.pop_front() else {
                return false;
            };
            self.scan = Some((Scan::new(file, start, end), path));
        }
    }

    fn next(&mut self) -> Result<Option<Record<'_>>, LogError> {
        if !self.ready() {
            return Ok(None);
        }
        let (scan, path) = self.scan.as_mut().expect("ready");
        match scan.next() {
            Ok(record) => Ok(record.map(|(_, r)| r)),
            Err(Bad::Io(e)) => {
                log::error!("event log: cannot read {}: {e}", path.display());
                Err(LogError(format!("event log: cannot read: {e}")))
            }
            Err(Bad::Damaged { offset, why }) => {
                let at = format!("{} at offset {offset}", path.display());
                log::error!("event log: damaged record in {at}: {why}");
                Err(LogError(format!("event log: damaged record in {at}")))
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation of the state finishes before anything that can
        // panic, so a poisoned lock still guards a consistent log.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append(&self, event: &Event) -> Result<SharedFrame, LogError> {
        let mut record = encode(event);
        let now = now_ms();
        let mut st = self.lock();
        if st.closing {
            return Err(LogError("event log closed".into()));
        }
        let id = st.clock.next(now);
        seal(&mut record, id);
        if self.fsync == Fsync::Always {
            // Written with the others of its flush by whoever leads it: the
            // lock is held here for no system call.
            let frame = Arc::new(Frame::new(id, event));
            let answered = ANSWERED.get();
            let pace = &mut st.pace;
            let last = if answered.log == self.key() {
                answered.flush
            } else {
                0
            };
            if last != 0 && last == pace.flushes {
                pace.returned += 1;
                if pace.waiting && pace.returned >= pace.expected {
                    self.returned.notify_one();
                }
            }
            // Back within two waits (`Pace::wait`) of its answer, and before
            // a second flush ended: it publishes as soon as it is answered.
            let soon = answered
                .at
                .is_some_and(|at| at.elapsed() <= 2 * pace.wait());
            let waiter = Waiter::new(soon && last != 0 && last + 1 >= pace.flushes);
            st.unsynced.push(Pending {
                record,
                frame: frame.clone(),
                waiter: waiter.clone(),
            });
            if st.flushing {
                drop(st);
                match waiter.wait() {
                    DURABLE => {
                        self.answered(&waiter);
                        return Ok(frame);
                    }
                    FAILED => return Err(LogError(self.lock().failure.clone())),
                    _ => st = self.lock(),
                }
            }
            st.flushing = true;
            let committed = self.commit(st, &waiter);
            self.answered(&waiter);
            return committed.map(|()| frame).map_err(LogError);
        }
        if let Err(e) = st.write(self, &record, id) {
            drop(st);
            self.failed(&format!("cannot write in {}: {e}", self.dir.display()));
            return Err(LogError(format!("event log: cannot write: {e}")));
        }
        let frame = Arc::new(Frame::new(id, event));
        let newest = st.segments.back().expect("written");
        let (extent, file) = (newest.written, newest.file.clone());
        st.reveal(&file, extent, vec![frame.clone()]);
        let removed = st.retain(self);
        if !st.dirty {
            st.dirty = true;
            self.flush.notify_one();
        }
        self.visible.notify_all();
        drop(st);
        remove(removed);
        self.succeeded();
        Ok(frame)
    }

    /// Tells this log apart from another in the same process (tests).
    fn key(&self) -> usize {
        self as *const Shared as usize
    }

    /// Notes on this thread which flush answered its publish, and when.
    fn answered(&self, waiter: &Waiter) {
        ANSWERED.set(Answered {
            log: self.key(),
            flush: waiter.flush.load(Ordering::Relaxed),
            at: Some(Instant::now()),
        });
    }

    /// A write or flush failed: said once, until one succeeds again.
    fn failed(&self, what: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            log::error!(
                "event log: {what}; publishing answers 503 until writes succeed again, open \
                 streams stay open"
            );
        }
    }

    fn succeeded(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            log::info!("event log: writing again");
        }
    }

    /// `--fsync always`, by the appender that leads (`own` is its waiter):
    /// everything appended since the last flush is written in one go and
    /// flushed once (group commit); the appenders it covers are answered.
    /// What was appended meanwhile it flushes too, and what was appended
    /// during that it hands to one of those appenders to flush next. No
    /// thread is woken to flush, and none but those answered and the next
    /// leader is woken after. A failed write or flush fails the
    /// whole batch and cuts its records off: after a failed fsync nobody
    /// can tell what reached the disk.
    fn commit<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        own: &Arc<Waiter>,
    ) -> Result<(), String> {
        // Its own batch, then the one gathered while that one flushed, so
        // that the disk is not left idle while a next leader wakes up; after
        // that it hands on, so no appender waits for more than two flushes
        // (and, before each, less than a flush for publishers on their way
        // back: `Pace`).
        let (more, mine) = self.flush_batch(st, own, true);
        if more {
            st = self.lock();
            let _ = self.flush_batch(st, own, false);
        }
        mine
    }

    /// One flush of `commit`. What was appended meanwhile is left for this
    /// leader if it `goes_on` (returns true then), else handed to the first
    /// of its appenders.
    fn flush_batch<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        own: &Arc<Waiter>,
        goes_on: bool,
    ) -> (bool, Result<(), String>) {
        while st.held() {
            st = self.flush.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st = self.await_returners(st);
        let batch = std::mem::take(&mut st.unsynced);
        let records: Vec<(&[u8], EventId)> =
            batch.iter().map(|p| (&p.record[..], p.frame.id)).collect();
        let written = st.write_records(self, &records);
        drop(records);
        let result = match written {
            Err(e) => Err(("write", e)),
            Ok(()) => {
                let newest = st.segments.back().expect("written");
                let (extent, file) = (newest.written, newest.file.clone());
                // The flush runs without the lock: appenders go on.
                drop(st);
                let start = Instant::now();
                let synced = file.sync_data();
                let took = start.elapsed();
                st = self.lock();
                st.pace.took = [st.pace.took[1], took];
                synced.map(|()| (extent, file)).map_err(|e| ("flush", e))
            }
        };
        let outcome = match result {
            Ok((extent, file)) => {
                let frames = batch.iter().map(|p| p.frame.clone()).collect();
                st.reveal(&file, extent, frames);
                self.visible.notify_all();
                Ok(st.retain(self))
            }
            Err((what, e)) => {
                // Written or not, flushed or not: none of the batch is kept.
                // What was appended since is written by the next leader.
                for seg in st.segments.iter_mut() {
                    seg.revert();
                }
                st.failure = format!("event log: cannot {what}: {e}");
                Err((
                    st.failure.clone(),
                    format!("cannot {what} in {}: {e}", self.dir.display()),
                ))
            }
        };
        let more = !st.unsynced.is_empty();
        let next = (!goes_on)
            .then(|| st.unsynced.first().map(|p| p.waiter.clone()))
            .flatten();
        st.flushing = more;
        let pace = &mut st.pace;
        pace.flushes += 1;
        pace.returned = 0;
        // The leader is answered after its last flush, whichever batch
        // its record was in.
        let leaves = !(more && goes_on) && own.looping;
        pace.expected = match outcome {
            Ok(_) => {
                let others = batch.iter().map(|p| &p.waiter);
                let others = others.filter(|w| w.looping && !Arc::ptr_eq(w, own));
                others.count() + usize::from(leaves)
            }
            Err(_) => 0,
        };
        let number = pace.flushes;
        drop(st);
        if let Some(next) = next {
            next.settle(LEAD, number);
        }
        let settled = match &outcome {
            Ok(_) => {
                self.succeeded();
                DURABLE
            }
            Err((_, complaint)) => {
                self.failed(complaint);
                FAILED
            }
        };
        own.flush.store(number, Ordering::Relaxed);
        for p in batch.iter().filter(|p| !Arc::ptr_eq(&p.waiter, own)) {
            p.waiter.settle(settled, number);
        }
        (more && goes_on, outcome.map(remove).map_err(|(why, _)| why))
    }

    /// Waits, before a flush, for the looping publishers the last flush
    /// answered to append again, for no longer than `Pace::wait`.
    fn await_returners<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        if st.pace.returned >= st.pace.expected {
            return st;
        }
        let until = Instant::now() + st.pace.wait();
        st.pace.waiting = true;
        while st.pace.returned < st.pace.expected {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self
                .returned
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.pace.waiting = false;
        st
    }

    /// Makes file `number` at its full size: zeros, flushed, and its name
    /// flushed into the directory. Whatever fails, no file is left.
    fn make_file(&self, number: u64, size: u64) -> io::Result<Segment> {
        let path = self.dir.join(segment_name(number));
        let made = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?;
            let zeros = vec![0; ZERO_CHUNK.min(size as usize)];
            let mut at = 0;
            while at < size {
                let n = (size - at).min(zeros.len() as u64);
                file.write_all_at(&zeros[..n as usize], at)?;
                at += n;
            }
            file.sync_data()?;
            File::open(&self.dir)?.sync_all()?;
            Ok(file)
        })();
        match made {
            Ok(file) => {
                let mut seg = Segment::new(path, file, number);
                seg.alloc = size;
                Ok(seg)
            }
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// The preparer thread: keeps the next file ready (made again after a
    /// roll took it), and cuts the zeros off the end of full files. A file
    /// it could not make (disk full) is tried again a second later; one
    /// overtaken by a roll that could not wait for it is removed.
    fn prepare_files(&self) {
        let mut st = self.lock();
        let mut failing = false;
        loop {
            if st.closing {
                return;
            }
            let newest = st.segments.len().saturating_sub(1);
            let cuts: Vec<(Arc<File>, u64)> = st
                .segments
                .range(..newest)
                .filter(|s| s.alloc > s.written.len && s.written == s.visible)
                .map(|s| (s.file.clone(), s.written.len))
                .collect();
            let number = st.wants_spare(self).then(|| st.take_number());
            // Room for the new file, within --history-bytes.
            st.making = number.map(|_| st.next_size(self));
            let removed = match st.making {
                Some(_) => st.retain(self),
                None => Vec::new(),
            };
            if cuts.is_empty() && number.is_none() {
                st = match st.retry_at {
                    Some(t) => {
                        let left = t.saturating_duration_since(Instant::now());
                        self.prepare
                            .wait_timeout(st, left)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                    None => self.prepare.wait(st).unwrap_or_else(|e| e.into_inner()),
                };
                continue;
            }
            let making = st.making;
            drop(st);
            remove(removed);
            for (file, len) in &cuts {
                if let Err(e) = file.set_len(*len) {
                    log::warn!("event log: cannot cut the unused end off a full file: {e}");
                }
            }
            let made = number.zip(making).map(|(n, size)| self.make_file(n, size));
            st = self.lock();
            st.making = None;
            for (file, len) in cuts {
                if let Some(seg) = st.segments.iter_mut().find(|s| Arc::ptr_eq(&s.file, &file)) {
                    seg.alloc = seg.alloc.min(len);
                }
            }
            match made {
                Some(Ok(seg)) => {
                    st.retry_at = None;
                    if failing {
                        log::info!("event log: making the next file ahead again");
                        failing = false;
                    }
                    if st.segments.back().is_some_and(|b| b.number > seg.number) {
                        drop(st);
                        remove(vec![seg.path]);
                        st = self.lock();
                    } else {
                        st.spare = Some(seg);
                    }
                }
                Some(Err(e)) => {
                    st.retry_at = Some(Instant::now() + Duration::from_secs(1));
                    if !failing {
                        log::warn!(
                            "event log: cannot make the next file ahead in {}: {e}; trying \
                             again every second, files grow as records go in meanwhile",
                            self.dir.display()
                        );
                        failing = true;
                    }
                }
                None => {}
            }
        }
    }

    /// `--fsync periodic`: a flush at most every PERIOD while there are
    /// writes to flush.
    fn flush_periodic(&self) {
        let mut st = self.lock();
        let mut flushed_at = Instant::now();
        loop {
            while !st.dirty && !st.closing {
                st = self.flush.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.closing {
                return;
            }
            let due = flushed_at + PERIOD;
            while !st.closing && Instant::now() < due {
                let left = due.saturating_duration_since(Instant::now());
                st = self
                    .flush
                    .wait_timeout(st, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            st.dirty = false;
            let file = st.segments.back().expect("written").file.clone();
            drop(st);
            if let Err(e) = file.sync_data() {
                log::error!("event log: cannot flush in {}: {e}", self.dir.display());
                self.up.store(false, Ordering::Relaxed);
            }
            flushed_at = Instant::now();
            st = self.lock();
        }
    }

    /// A page after `after` (None: from the oldest, no gap), as
    /// `History::read` reads one. A `replay` honours `--history 0`; the
    /// follower reads what was written anyway.
    fn read(
        &self,
        after: Option<EventId>,
        topics: &TopicFilter,
        replay: bool,
        max_bytes: usize,
    ) -> Result<Page, LogError> {
        let st = self.lock();
        if let Some(a) = after.filter(|a| Some(*a) == st.visible_id) {
            return Ok(Page {
                scanned: Some(a),
                end: true,
                ..Page::default()
            });
        }
        if replay && self.history == 0 {
            return Ok(Page {
                gap: after.map(|_| None),
                end: true,
                ..Page::default()
            });
        }
        if let Some(page) = st.recent_page(after, topics, replay, max_bytes) {
            return Ok(page);
        }
        let live = st.segments.iter().filter(|s| s.visible.count > 0);
        let firsts: Vec<EventId> = live.clone().filter_map(Segment::first).collect();
        let mut spans: VecDeque<_> = live
            .clone()
            .map(|s| (s.file.clone(), s.path.clone(), 0, s.visible.len))
            .collect();
        if let Some(a) = after {
            let i = firsts.partition_point(|f| *f <= a);
            if let Some(i) = i.checked_sub(1) {
                spans.drain(..i);
                spans[0].2 = live.clone().nth(i).expect("as many as firsts").start_for(a);
            }
        }
        // From the first event ever (`None`): a gap if any file was removed.
        let gap_unless_known = match after {
            Some(_) => after != st.evicted_upto,
            None => st.evicted_upto.is_some(),
        }
        .then(|| firsts.first().copied());
        drop(st);

        let mut walk = Walk { spans, scan: None };
        let mut pager = Pager::new(topics, max_bytes);
        let mut known = false;
        let mut full = false;
        // The few records from the index entry up to `after`.
        while let Some(record) = walk.next()? {
            if Some(record.id) <= after {
                known |= Some(record.id) == after;
                pager.page.scanned = Some(record.id);
                continue;
            }
            full = !pager.take(record.id, record.topic, || record.frame());
            break;
        }
        if !known {
            pager.page.gap = gap_unless_known;
        }
        while !full {
            let Some(record) = walk.next()? else {
                break;
            };
            full = !pager.take(record.id, record.topic, || record.frame());
        }
        pager.page.end = !walk.ready();
        Ok(pager.page)
    }
}

impl State {
    #[cfg(test)]
    fn held(&self) -> bool {
        self.hold
    }

    #[cfg(not(test))]
    fn held(&self) -> bool {
        false
    }
}

impl EventLog for DiskLog {
    /// Returns once the record is written and, under `--fsync always`,
    /// flushed. On a failed write or flush nothing of it is kept.
    fn append(&self, event: &Event) -> Result<SharedFrame, LogError> {
        self.shared.append(event)
    }

    /// Only records that are durable as --fsync says, never one being
    /// written.
    fn read(
        &self,
        after: Option<EventId>,
        topics: &TopicFilter,
        max_bytes: usize,
    ) -> Result<Page, LogError> {
        self.shared.read(after, topics, true, max_bytes)
    }

    fn oldest(&self) -> Option<EventId> {
        match self.shared.history {
            0 => None,
            _ => self.shared.lock().oldest(),
        }
    }

    fn len(&self) -> usize {
        match self.shared.history {
            0 => 0,
            _ => self
                .shared
                .lock()
                .segments
                .iter()
                .map(|s| s.visible.count)
                .sum(),
        }
    }

    /// Events reach subscribers through the follower, once durable.
    fn followed(&self) -> bool {
        true
    }

    /// Whether the last write (and flush) succeeded.
    fn up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    fn store(&self) -> &'static str {
        "disk"
    }
}

impl Drop for DiskLog {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.flush.notify_all();
        self.shared.visible.notify_all();
        self.shared.prepare.notify_all();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        if let Some(preparer) = self.preparer.take() {
            let _ = preparer.join();
        }
    }
}

impl Follower {
    /// Starts the follower thread for `hub`: it runs for the life of the
    /// log. Should it fall so far behind that retention removed events it
    /// had not handed on, every stream is ended, so that its client replays
    /// and learns of the gap.
    pub fn start(self, hub: Arc<Hub>) -> io::Result<thread::JoinHandle<()>> {
        if let Some(at) = self.last {
            hub.follow_from(at);
        }
        let ends = hub.clone();
        self.spawn(
            move |frames| hub.fan_out_followed(frames),
            move || {
                let ended = ends.end_streams();
                log::warn!(
                    "event log: events were removed before the follower handed them on: \
                     ended {ended} streams so their clients replay and see the gap"
                );
            },
        )
    }

    /// Starts the follower thread: after each flush it calls `feed` with
    /// the newly durable frames, oldest first, and `lost` if it fell so far
    /// behind that retention removed frames it had not handed on. It ends
    /// when the log is dropped.
    pub fn spawn(
        self,
        mut feed: impl FnMut(&[SharedFrame]) + Send + 'static,
        mut lost: impl FnMut() + Send + 'static,
    ) -> io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name("disk-follower".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let sh = self.shared;
                let mut last = self.last;
                loop {
                    let mut st = sh.lock();
                    while !st.closing && st.visible_id == last {
                        st = sh.visible.wait(st).unwrap_or_else(|e| e.into_inner());
                    }
                    if st.closing {
                        return;
                    }
                    let newest = st.visible_id;
                    drop(st);
                    match sh.read(last, &TopicFilter::all(), false, PAGE_BYTES) {
                        Ok(page) => {
                            if page.gap.is_some() {
                                lost();
                            }
                            if !page.frames.is_empty() {
                                feed(&page.frames);
                            }
                            last = page.scanned.or(newest);
                        }
                        Err(_) => thread::sleep(PERIOD),
                    }
                }
            })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A directory under the system's temporary one, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "ssehub-disk-{name}-{}-{}",
                std::process::id(),
                now_ms()
            ));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn open_log(dir: &TempDir, history: usize, history_bytes: usize, fsync: Fsync) -> DiskLog {
        open(&dir.0, history, history_bytes, fsync)
            .unwrap_or_else(|e| panic!("open: {e}"))
            .0
    }

    fn publish(log: &DiskLog, topic: &str, data: &str) -> SharedFrame {
        log.append(&Event::new(topic, None, data)).expect("append")
    }

    /// Every retained id after `after`, page by page.
    fn read_all(log: &DiskLog, after: EventId, topics: &TopicFilter) -> (Page, Vec<EventId>) {
        let first = log.read(Some(after), topics, PAGE_BYTES).expect("read");
        let mut ids: Vec<EventId> = first.frames.iter().map(|f| f.id).collect();
        let (mut at, mut end) = (first.scanned, first.end);
        while !end {
            let page = log.read(at, topics, PAGE_BYTES).expect("read");
            assert!(page.gap.is_none(), "a gap on a later page");
            ids.extend(page.frames.iter().map(|f| f.id));
            (at, end) = (page.scanned.or(at), page.end);
        }
        (first, ids)
    }

    fn files(dir: &TempDir) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        files
    }

    /// The files with records in them (not the one made ahead).
    fn written_files(dir: &TempDir) -> Vec<PathBuf> {
        let mut files = files(dir);
        files.retain(|p| fs::read(p).unwrap().iter().any(|b| *b != 0));
        files
    }

    /// Where the records of a file end: zeros (if any) follow.
    fn records_end(path: &Path) -> u64 {
        let bytes = fs::read(path).unwrap();
        bytes
            .iter()
            .rposition(|b| *b != 0)
            .map_or(0, |i| i as u64 + 1)
    }

    fn disk_bytes(dir: &TempDir) -> u64 {
        // A file listed may be removed by retention before it is looked at.
        files(dir)
            .iter()
            .map(|p| p.metadata().map_or(0, |m| m.len()))
            .sum()
    }

    const ZERO: EventId = EventId { ms: 0, seq: 0 };

    #[test]
    fn round_trip_keeps_every_field() {
        let dir = TempDir::new("round-trip");
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        let a = log
            .append(&Event::new("orders", Some("created"), "a\nb\r\nc"))
            .unwrap();
        let b = publish(&log, "other", "");
        assert!(b.id > a.id);
        let page = log
            .read(Some(ZERO), &TopicFilter::all(), PAGE_BYTES)
            .unwrap();
        assert_eq!(page.gap, Some(Some(a.id)));
        assert_eq!(page.frames.len(), 2);
        assert_eq!(page.frames[0].bytes, a.bytes);
        assert_eq!(&*page.frames[0].topic, "orders");
        assert_eq!(page.scanned, Some(b.id));
        assert!(page.end);
        drop(log);
        // From the file this time, not from memory.
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        let page = log
            .read(Some(a.id), &TopicFilter::all(), PAGE_BYTES)
            .unwrap();
        assert_eq!((page.gap, page.frames.len()), (None, 1));
        assert_eq!(page.frames[0].bytes, b.bytes);
        assert_eq!(
            std::str::from_utf8(
                &log.read(Some(ZERO), &TopicFilter::all(), PAGE_BYTES)
                    .unwrap()
                    .frames[0]
                    .bytes
            )
            .unwrap(),
            format!(
                "id: {}\nevent: created\ndata: a\ndata: b\ndata: c\n\n",
                a.id
            )
        );
        assert_eq!((log.len(), log.oldest()), (2, Some(a.id)));
    }

    #[test]
    fn a_restart_continues_ids_above_the_last_even_with_the_clock_behind() {
        let dir = TempDir::new("restart");
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        publish(&log, "t", "1");
        // An id far in the future, as a clock that later steps back gave.
        let future = EventId {
            ms: now_ms() + 3_600_000,
            seq: 5,
        };
        log.shared.lock().clock = IdClock::after(future);
        let last = publish(&log, "t", "2");
        assert_eq!(last.id, EventId { seq: 6, ..future });
        drop(log);
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        let next = publish(&log, "t", "3");
        assert_eq!(next.id, EventId { seq: 7, ..future });
        assert_eq!(log.len(), 3);
        let (page, ids) = read_all(&log, last.id, &TopicFilter::all());
        assert_eq!((page.gap, ids), (None, vec![next.id]));
    }

    #[test]
    fn a_second_open_of_the_directory_is_refused() {
        let dir = TempDir::new("in-use");
        let _log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        let Err(e) = open(&dir.0, 100, 1 << 20, Fsync::Always) else {
            panic!("opened twice");
        };
        assert!(matches!(e, OpenError::InUse(_)));
        assert!(e.to_string().contains("is in use"), "{e}");
    }

    #[test]
    fn a_torn_tail_is_cut_off() {
        let dir = TempDir::new("torn");
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        let ids: Vec<EventId> = (0..5)
            .map(|i| publish(&log, "t", &i.to_string()).id)
            .collect();
        drop(log);
        // The last record's end never reached the disk: zeros follow the
        // rest of it.
        let file = written_files(&dir).pop().unwrap();
        let end = records_end(&file);
        let f = OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(&[0; 3], end - 3).unwrap();
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        assert_eq!(log.len(), 4);
        let (_, read) = read_all(&log, ids[0], &TopicFilter::all());
        assert_eq!(read, ids[1..4]);
        // The next record goes where the torn one was, and survives.
        let next = publish(&log, "t", "again");
        drop(log);
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        let (_, read) = read_all(&log, ids[3], &TopicFilter::all());
        assert_eq!(read, [next.id]);
        // A tail of zeros, as a crash may leave after the size grew.
        drop(log);
        let f = OpenOptions::new().append(true).open(&file).unwrap();
        io::Write::write_all(&mut &f, &[0; 100]).unwrap();
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        assert_eq!(log.len(), 5);
    }

    /// One write of two records, torn by a power cut so that the first is
    /// damaged and the second intact (the disk persists a write's sectors
    /// in any order): it was never flushed, so never answered, and is cut
    /// off. The same damage with a later write after it is damage.
    #[test]
    fn a_write_torn_in_its_first_record_is_cut_off_whole() {
        let dir = TempDir::new("torn-write");
        let log = Arc::new(open_log(&dir, 100, 1 << 20, Fsync::Always));
        let kept: Vec<EventId> = (0..3)
            .map(|i| publish(&log, "t", &i.to_string()).id)
            .collect();
        let file = written_files(&dir).pop().unwrap();
        let batch_at = records_end(&file);
        // Two appenders, one flush: one write of two records.
        log.shared.lock().hold = true;
        let appenders: Vec<_> = (0..2)
            .map(|i| {
                let log = log.clone();
                thread::spawn(move || publish(&log, "t", &format!("batch {i}")))
            })
            .collect();
        assert!(poll(|| log.shared.lock().unsynced.len() == 2));
        log.shared.lock().hold = false;
        log.shared.flush.notify_all();
        for a in appenders {
            a.join().unwrap();
        }
        drop(Arc::into_inner(log).unwrap());
        let damage = |at: u64| {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&file)
                .unwrap();
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, at).unwrap();
            f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
        };
        // The first record of the write: its data's last byte.
        let first_len = HEADER as u64 + {
            let mut len = [0u8; 4];
            File::open(&file)
                .unwrap()
                .read_exact_at(&mut len, batch_at)
                .unwrap();
            u32::from_le_bytes(len) as u64
        };
        damage(batch_at + first_len - 1);
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        assert_eq!(log.len(), 3);
        let (_, read) = read_all(&log, kept[0], &TopicFilter::all());
        assert_eq!(read, kept[1..]);
        // Damage in an older write, with a whole write after it, stops the
        // start.
        let next = publish(&log, "t", "after").id;
        drop(log);
        // The last byte of the record before the torn write: the write of
        // `next` went where the torn one was.
        damage(batch_at - 1);
        match open(&dir.0, 100, 1 << 20, Fsync::Always) {
            Err(OpenError::Damaged { offset, .. }) => assert!(offset < batch_at),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened over damage; next was {next}"),
        }
    }

    /// Files get their size up front: the zeros after the last record are
    /// the clean end, kept as they are, and a restart writes on after the
    /// last record.
    #[test]
    fn the_zeros_after_the_last_record_are_the_clean_end() {
        let dir = TempDir::new("zero-end");
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        let size = log.shared.segment_bytes;
        let ids: Vec<EventId> = (0..3)
            .map(|i| publish(&log, "t", &i.to_string()).id)
            .collect();
        drop(log);
        let file = written_files(&dir).pop().unwrap();
        assert_eq!(file.metadata().unwrap().len(), size);
        let end = records_end(&file);
        assert!(end < size);
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        assert_eq!(log.len(), 3);
        assert_eq!(file.metadata().unwrap().len(), size, "nothing cut off");
        let next = publish(&log, "t", "after the restart");
        drop(log);
        assert_eq!(file.metadata().unwrap().len(), size);
        let bytes = fs::read(&file).unwrap();
        let at = end as usize;
        let len = HEADER + u32_at(&bytes, at) as usize;
        assert_eq!(parse(&bytes[at..at + len]).unwrap().id, next.id);
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        let (_, read) = read_all(&log, ids[0], &TopicFilter::all());
        assert_eq!(read, [ids[1], ids[2], next.id]);
    }

    /// A record of which only the first part reached the disk, zeros after
    /// it: torn, cut off, and the next record goes where it was.
    #[test]
    fn a_torn_record_followed_by_zeros_is_cut_off() {
        let dir = TempDir::new("torn-zeros");
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        let a = publish(&log, "t", "kept").id;
        let at = log.shared.lock().segments.back().unwrap().written.len;
        publish(&log, "t", &"x".repeat(3000));
        drop(log);
        let file = written_files(&dir).pop().unwrap();
        let end = records_end(&file);
        let f = OpenOptions::new().write(true).open(&file).unwrap();
        let half = at + (end - at) / 2;
        f.write_all_at(&vec![0; (end - half) as usize], half)
            .unwrap();
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        assert_eq!((log.len(), log.oldest()), (1, Some(a)));
        assert_eq!(file.metadata().unwrap().len(), at, "cut at the torn record");
        let b = publish(&log, "t", "again").id;
        drop(log);
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        let (_, read) = read_all(&log, a, &TopicFilter::all());
        assert_eq!(read, [b]);
    }

    /// Zeros, or a record that fails its checks, with records after them
    /// in the newest file: damage, not the end.
    #[test]
    fn zeros_or_damage_before_a_record_stop_the_open() {
        let dir = TempDir::new("zero-damage");
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        for i in 0..3 {
            publish(&log, "t", &format!("event {i}"));
        }
        drop(log);
        let file = written_files(&dir).pop().unwrap();
        let bytes = fs::read(&file).unwrap();
        let first = HEADER + u32_at(&bytes, 0) as usize;
        let second = HEADER + u32_at(&bytes, first) as usize;
        let zeroed = {
            let mut b = bytes.clone();
            b[first..first + second].fill(0);
            b
        };
        let flipped = {
            let mut b = bytes.clone();
            b[first + HEADER + FIXED] ^= 0x01;
            b
        };
        for damaged in [zeroed, flipped] {
            fs::write(&file, &damaged).unwrap();
            let Err(e) = open(&dir.0, 100, 1 << 20, Fsync::Always) else {
                panic!("opened a damaged log");
            };
            let text = e.to_string();
            let want = format!("{} at offset {first}", file.display());
            assert!(text.contains(&want), "{text}");
        }
        fs::write(&file, &bytes).unwrap();
        assert_eq!(open_log(&dir, 100, 1 << 20, Fsync::Always).len(), 3);
    }

    /// With files made ahead, the files on disk (at their full size, the
    /// next one included) stay within --history-bytes plus one file.
    #[test]
    fn files_made_ahead_stay_within_the_disk_bound() {
        let dir = TempDir::new("bound");
        let history_bytes = 64 << 10;
        let log = open_log(&dir, 10_000, history_bytes, Fsync::Always);
        let bound = history_bytes as u64 + log.shared.segment_bytes;
        let data = "x".repeat(500);
        for _ in 0..3 * history_bytes / 500 {
            publish(&log, "t", &data);
            let used = disk_bytes(&dir);
            assert!(used <= bound, "{used} bytes on disk");
        }
        assert!(log.len() * 500 >= history_bytes / 2, "{} events", log.len());
    }

    #[test]
    fn damage_before_the_end_names_the_file_and_offset() {
        let dir = TempDir::new("damage");
        // Three files of two events each.
        let log = open_log(&dir, 16, 1 << 20, Fsync::Always);
        for i in 0..6 {
            publish(&log, "t", &format!("event {i}"));
        }
        drop(log);
        let all = written_files(&dir);
        assert_eq!(all.len(), 3);
        for (file, newest) in [(&all[0], false), (&all[2], true)] {
            let bytes = fs::read(file).unwrap();
            let first_len = HEADER + u32_at(&bytes, 0) as usize;
            // A byte of the first record's data: the second one is intact.
            let at = first_len - 2;
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x20;
            fs::write(file, &flipped).unwrap();
            let Err(e) = open(&dir.0, 16, 1 << 20, Fsync::Always) else {
                panic!("opened a damaged log (newest file: {newest})");
            };
            let text = e.to_string();
            assert!(
                text.contains(&file.display().to_string()) && text.contains("at offset 0"),
                "{text}"
            );
            fs::write(file, &bytes).unwrap();
        }
        assert_eq!(open_log(&dir, 16, 1 << 20, Fsync::Always).len(), 6);
    }

    #[test]
    fn retention_removes_whole_files_within_the_bounds() {
        let dir = TempDir::new("retention");
        let history_bytes = 64 << 10;
        let log = open_log(&dir, 10_000, history_bytes, Fsync::Never);
        let data = "x".repeat(500);
        let mut ids = Vec::new();
        for _ in 0..3 * history_bytes / 500 {
            ids.push(publish(&log, "t", &data).id);
            let used = disk_bytes(&dir);
            assert!(
                used <= (history_bytes as u64) + log.shared.segment_bytes + 600,
                "{used} bytes on disk"
            );
        }
        let oldest = log.oldest().unwrap();
        let kept = ids.iter().position(|id| *id == oldest).unwrap();
        assert_eq!(log.len(), ids.len() - kept);
        assert!(disk_bytes(&dir) >= history_bytes as u64);
        // A removed id is a gap; the last removed one is not.
        let (page, read) = read_all(&log, ids[0], &TopicFilter::all());
        assert_eq!(page.gap, Some(Some(oldest)));
        assert_eq!(read, ids[kept..]);
        let (page, read) = read_all(&log, ids[kept - 1], &TopicFilter::all());
        assert_eq!(page.gap, None);
        assert_eq!(read, ids[kept..]);
        // By count: 40 events, files of 5.
        let dir = TempDir::new("retention-count");
        let log = open_log(&dir, 40, 1 << 20, Fsync::Never);
        for i in 0..200 {
            publish(&log, "t", &i.to_string());
            assert!(log.len() <= 45, "{} events", log.len());
        }
        assert!(log.len() >= 40);
        assert!(files(&dir).len() <= 9);
    }

    #[test]
    fn pages_are_bounded_and_follow_the_gap_rules() {
        let dir = TempDir::new("pages");
        let log = open_log(&dir, 100_000, 1 << 30, Fsync::Never);
        let mut ids = Vec::new();
        for i in 0..RECENT_EVENTS + 3000 {
            let topic = if i % 100 == 0 { "rare" } else { "common" };
            ids.push(publish(&log, topic, "data").id);
        }
        let newest = *ids.last().unwrap();
        // From the file (older than the frames in memory) and from memory.
        for start in [0, ids.len() - 300] {
            let page = log
                .read(Some(ids[start]), &TopicFilter::all(), PAGE_BYTES)
                .unwrap();
            assert_eq!(page.gap, None);
            assert_eq!(page.frames.len(), PAGE_EVENTS.min(ids.len() - start - 1));
            assert_eq!(page.frames[0].id, ids[start + 1]);
            assert_eq!(page.scanned, Some(ids[start + PAGE_EVENTS]));
            assert!(!page.end);
            let (_, read) = read_all(&log, ids[start], &TopicFilter::all());
            assert_eq!(read, ids[start + 1..]);
        }
        // A rare topic: a page looks at PAGE_SCAN entries at most.
        let rare = TopicFilter::topics(["rare"]);
        let page = log.read(Some(ids[0]), &rare, PAGE_BYTES).unwrap();
        assert_eq!(page.frames.len(), PAGE_SCAN / 100);
        assert_eq!(page.scanned, Some(ids[PAGE_SCAN]));
        let (_, read) = read_all(&log, ids[0], &rare);
        let want: Vec<EventId> = (100..ids.len()).step_by(100).map(|i| ids[i]).collect();
        assert_eq!(read, want);
        // The newest id: nothing, no gap, at the end.
        let page = log
            .read(Some(newest), &TopicFilter::all(), PAGE_BYTES)
            .unwrap();
        assert!(page.gap.is_none() && page.frames.is_empty() && page.end);
        // Unknown ids, from the future, never issued, from before the log:
        // a gap, and on after them.
        let future = EventId {
            ms: newest.ms + 1,
            seq: 0,
        };
        let page = log
            .read(Some(future), &TopicFilter::all(), PAGE_BYTES)
            .unwrap();
        assert_eq!(page.gap, Some(Some(ids[0])));
        assert!(page.frames.is_empty() && page.end);
        assert_eq!(page.scanned, Some(newest));
        let never = EventId {
            seq: ids[10].seq + 1_000_000,
            ..ids[10]
        };
        let next = ids.iter().position(|id| *id > never).unwrap();
        let page = log
            .read(Some(never), &TopicFilter::all(), PAGE_BYTES)
            .unwrap();
        assert_eq!(page.gap, Some(Some(ids[0])));
        assert_eq!(page.frames[0].id, ids[next]);
        assert_eq!(page.scanned.unwrap(), ids[next + PAGE_EVENTS - 1]);
        let page = log
            .read(Some(ZERO), &TopicFilter::all(), PAGE_BYTES)
            .unwrap();
        assert_eq!(page.gap, Some(Some(ids[0])));
        assert_eq!(page.frames[0].id, ids[0]);
        // From the oldest: no gap.
        let page = log.read(None, &TopicFilter::all(), PAGE_BYTES).unwrap();
        assert_eq!((page.gap, page.frames[0].id), (None, ids[0]));
        // Big events: a page stops after about PAGE_BYTES.
        let big = "y".repeat(100 << 10);
        let first = publish(&log, "big", &big).id;
        for _ in 0..9 {
            publish(&log, "big", &big);
        }
        let page = log
            .read(Some(newest), &TopicFilter::all(), PAGE_BYTES)
            .unwrap();
        assert_eq!(page.frames.len(), 3);
        assert_eq!(page.frames[0].id, first);
    }

    #[test]
    fn an_empty_log_is_a_gap_with_nothing_available() {
        let dir = TempDir::new("empty");
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        let page = log
            .read(
                Some(EventId { ms: 5, seq: 0 }),
                &TopicFilter::all(),
                PAGE_BYTES,
            )
            .unwrap();
        assert_eq!((page.gap, page.scanned, page.end), (Some(None), None, true));
        let page = log.read(None, &TopicFilter::all(), PAGE_BYTES).unwrap();
        assert_eq!((page.gap, page.scanned, page.end), (None, None, true));
        assert_eq!((log.len(), log.oldest()), (0, None));
    }

    /// The log against a plain list of what it retains (every id from
    /// `oldest()` on), across file removals, pages from the files and from
    /// memory, and every kind of id.
    #[test]
    fn agrees_with_a_plain_list() {
        let mut seed = 11u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let dir = TempDir::new("model");
        let log = open_log(&dir, 6000, 1 << 30, Fsync::Never);
        let mut model: Vec<(EventId, bool)> = Vec::new();
        let even = TopicFilter::topics(["even"]);
        for n in 0..12_000 {
            let topic = if next(3) == 0 { "even" } else { "odd" };
            let id = publish(&log, topic, &"d".repeat(next(40) as usize)).id;
            model.push((id, topic == "even"));
            if next(400) != 0 {
                continue;
            }
            let oldest = log.oldest().unwrap();
            let first = model.iter().position(|(id, _)| *id == oldest).unwrap();
            assert_eq!(log.len(), model.len() - first);
            let pick = |i: usize| model[i.min(model.len() - 1)].0;
            let later = |id: EventId| EventId {
                seq: id.seq + 100_000,
                ..id
            };
            for after in [
                pick(usize::MAX),
                oldest,
                pick(first + next((model.len() - first) as u64) as usize),
                pick(
                    model
                        .len()
                        .saturating_sub(1 + next(RECENT_EVENTS as u64 * 2) as usize),
                ),
                pick(first.saturating_sub(1)),
                pick(first.saturating_sub(1 + next(100) as usize)),
                later(pick(first + next((model.len() - first) as u64) as usize)),
                later(pick(usize::MAX)),
                ZERO,
            ] {
                let (page, got) = read_all(&log, after, &even);
                let want: Vec<EventId> = model[first..]
                    .iter()
                    .filter(|(id, even)| *even && *id > after)
                    .map(|(id, _)| *id)
                    .collect();
                assert_eq!(got, want, "after {after} at {n}");
                let no_gap = model[first..].iter().any(|(id, _)| *id == after)
                    || after == pick(usize::MAX)
                    || (first > 0 && after == model[first - 1].0);
                assert_eq!(page.gap.is_none(), no_gap, "after {after} at {n}");
                if let Some(gap) = page.gap {
                    assert_eq!(gap, Some(oldest));
                }
            }
        }
    }

    #[test]
    fn history_zero_replays_nothing_but_keeps_ids() {
        let dir = TempDir::new("zero");
        let log = open_log(&dir, 0, 1 << 20, Fsync::Always);
        let a = publish(&log, "t", "1");
        let b = publish(&log, "t", "2");
        assert_eq!((log.len(), log.oldest()), (0, None));
        let page = log
            .read(Some(a.id), &TopicFilter::all(), PAGE_BYTES)
            .unwrap();
        assert_eq!((page.gap, page.scanned, page.end), (Some(None), None, true));
        let page = log
            .read(Some(b.id), &TopicFilter::all(), PAGE_BYTES)
            .unwrap();
        assert!(page.gap.is_none() && page.frames.is_empty());
        assert_eq!((page.scanned, page.end), (Some(b.id), true));
        let page = log.read(None, &TopicFilter::all(), PAGE_BYTES).unwrap();
        assert!(page.gap.is_none() && page.frames.is_empty() && page.end);
        drop(log);
        let log = open_log(&dir, 0, 1 << 20, Fsync::Always);
        assert!(publish(&log, "t", "3").id > b.id);
    }

    #[test]
    fn reads_and_answers_wait_for_the_flush() {
        let dir = TempDir::new("durable");
        let log = Arc::new(open_log(&dir, 100, 1 << 20, Fsync::Always));
        let first = publish(&log, "t", "flushed");
        log.shared.lock().hold = true;
        let appender = {
            let log = log.clone();
            thread::spawn(move || publish(&log, "t", "not yet"))
        };
        // Written but not flushed: neither answered nor readable.
        assert!(poll(|| !log.shared.lock().unsynced.is_empty()));
        thread::sleep(Duration::from_millis(50));
        assert!(!appender.is_finished());
        let page = log
            .read(Some(first.id), &TopicFilter::all(), PAGE_BYTES)
            .unwrap();
        assert!(page.frames.is_empty() && page.end && page.gap.is_none());
        assert_eq!(log.len(), 1);
        log.shared.lock().hold = false;
        log.shared.flush.notify_all();
        let second = appender.join().unwrap();
        let page = log
            .read(Some(first.id), &TopicFilter::all(), PAGE_BYTES)
            .unwrap();
        assert_eq!(page.frames[0].id, second.id);
    }

    fn poll(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            thread::sleep(Duration::from_millis(1));
        }
        false
    }

    /// A publisher on a thread of its own (the pace of `--fsync always`
    /// follows threads): each message publishes once and sends back the id.
    fn publisher(log: &Arc<DiskLog>) -> (mpsc::Sender<&'static str>, mpsc::Receiver<EventId>) {
        let (ask, asked) = mpsc::channel::<&'static str>();
        let (tell, told) = mpsc::channel();
        let log = log.clone();
        thread::spawn(move || {
            for data in asked {
                let _ = tell.send(publish(&log, "t", data).id);
            }
        });
        (ask, told)
    }

    type Looping = (
        Arc<DiskLog>,
        mpsc::Sender<&'static str>,
        mpsc::Receiver<EventId>,
        EventId,
    );

    /// A log whose last flush answered a publisher that publishes again as
    /// soon as it is answered (twice so far: the id of the second is
    /// returned), with the wait before a flush set to `wait`.
    fn log_with_a_looping_publisher(dir: &TempDir, wait: Duration) -> Looping {
        let log = Arc::new(open_log(dir, 100, 1 << 20, Fsync::Always));
        log.shared.lock().pace.wait = Some(Duration::from_secs(30));
        let (ask, told) = publisher(&log);
        let mut last = None;
        for data in ["one", "two"] {
            ask.send(data).unwrap();
            last = Some(told.recv_timeout(Duration::from_secs(10)).unwrap());
        }
        let mut st = log.shared.lock();
        assert_eq!((st.pace.flushes, st.pace.expected), (2, 1));
        st.pace.wait = Some(wait);
        drop(st);
        (log, ask, told, last.unwrap())
    }

    #[test]
    fn a_flush_waits_for_the_publisher_the_last_one_answered() {
        let dir = TempDir::new("pace");
        let (log, ask, told, two) = log_with_a_looping_publisher(&dir, Duration::from_secs(30));
        let started = Instant::now();
        let other = {
            let log = log.clone();
            thread::spawn(move || publish(&log, "t", "other").id)
        };
        // The other publisher leads the flush, and waits.
        assert!(poll(|| log.shared.lock().pace.waiting));
        assert!(!other.is_finished());
        assert_eq!(log.len(), 2);
        // The looping one comes back: both go into one flush, at once.
        ask.send("three").unwrap();
        let three = told.recv_timeout(Duration::from_secs(10)).unwrap();
        let other = other.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(other < three);
        assert_eq!(log.shared.lock().pace.flushes, 3);
        let (_, ids) = read_all(&log, two, &TopicFilter::all());
        assert_eq!(ids, [other, three]);
    }

    #[test]
    fn a_publisher_that_does_not_come_back_is_waited_for_one_flush_at_most() {
        let dir = TempDir::new("pace");
        let wait = Duration::from_millis(300);
        let (log, ask, told, _) = log_with_a_looping_publisher(&dir, wait);
        let started = Instant::now();
        publish(&log, "t", "alone");
        let took = started.elapsed();
        assert!(took >= wait && took < Duration::from_secs(10), "{took:?}");
        let st = log.shared.lock();
        assert_eq!(
            (st.pace.flushes, st.pace.expected, st.pace.waiting),
            (3, 0, false)
        );
        drop(st);
        // Nobody is waited for now: the looping publisher's next flush is
        // at once.
        log.shared.lock().pace.wait = Some(Duration::from_secs(30));
        let started = Instant::now();
        ask.send("three").unwrap();
        told.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_publisher_that_comes_back_late_is_not_waited_for() {
        let dir = TempDir::new("pace");
        let log = Arc::new(open_log(&dir, 100, 1 << 20, Fsync::Always));
        let (ask, told) = publisher(&log);
        // Published again well after two waits: not looping.
        let wait = Duration::from_millis(20);
        log.shared.lock().pace.wait = Some(wait);
        for data in ["one", "two"] {
            ask.send(data).unwrap();
            told.recv_timeout(Duration::from_secs(10)).unwrap();
            thread::sleep(3 * wait);
        }
        log.shared.lock().pace.wait = Some(Duration::from_secs(30));
        assert_eq!(log.shared.lock().pace.expected, 0);
        // So another publisher's flush does not wait for it.
        let started = Instant::now();
        publish(&log, "t", "other");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(log.shared.lock().pace.flushes, 3);
    }

    #[test]
    fn a_lone_publisher_is_never_waited_for() {
        let dir = TempDir::new("pace");
        let (log, ask, told, _) = log_with_a_looping_publisher(&dir, Duration::from_secs(30));
        // Expected back: itself. Each publish of it ends the wait at once.
        let started = Instant::now();
        for data in ["three", "four", "five"] {
            ask.send(data).unwrap();
            told.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        let st = log.shared.lock();
        assert_eq!((st.pace.flushes, st.pace.expected), (5, 1));
    }

    #[test]
    fn the_follower_hands_on_durable_frames_in_order() {
        for fsync in [Fsync::Always, Fsync::Periodic, Fsync::Never] {
            let dir = TempDir::new("follower");
            let (log, follower) = open(&dir.0, 100, 1 << 20, fsync).unwrap();
            let before = publish(&log, "t", "before");
            drop(log);
            drop(follower);
            let (log, follower) = open(&dir.0, 100, 1 << 20, fsync).unwrap();
            let (tx, rx) = crossbeam_channel::unbounded();
            let thread = follower
                .spawn(
                    move |frames| {
                        for f in frames {
                            tx.send(f.id).unwrap();
                        }
                    },
                    || panic!("lost"),
                )
                .unwrap();
            let log = Arc::new(log);
            let publishers: Vec<_> = (0..4)
                .map(|_| {
                    let log = log.clone();
                    thread::spawn(move || {
                        (0..50)
                            .map(|_| publish(&log, "t", "x").id)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut published: Vec<EventId> = publishers
                .into_iter()
                .flat_map(|p| p.join().unwrap())
                .collect();
            published.sort();
            let got: Vec<EventId> = (0..200)
                .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
                .collect();
            assert_eq!(got, published, "{fsync:?}");
            assert!(got[0] > before.id);
            drop(Arc::into_inner(log).unwrap());
            thread.join().unwrap();
        }
    }

    #[test]
    fn a_failed_write_is_cut_off_and_writing_recovers() {
        let dir = TempDir::new("fail");
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        let a = publish(&log, "t", "kept");
        // A file that refuses writes: the newest one, made read-only by
        // swapping its descriptor.
        let path = files(&dir).pop().unwrap();
        let good = {
            let mut st = log.shared.lock();
            let seg = st.segments.back_mut().unwrap();
            let ro = Arc::new(File::open(&path).unwrap());
            std::mem::replace(&mut seg.file, ro)
        };
        assert!(log.append(&Event::new("t", None, "lost")).is_err());
        assert!(!log.up());
        log.shared.lock().segments.back_mut().unwrap().file = good;
        let b = publish(&log, "t", "after");
        assert!(log.up());
        let (_, ids) = read_all(&log, a.id, &TopicFilter::all());
        assert_eq!(ids, [b.id]);
        drop(log);
        let log = open_log(&dir, 100, 1 << 20, Fsync::Always);
        assert_eq!(log.len(), 2);
    }

    /// Group commit: 8 appenders, each answered after the flush that covers
    /// it. `cargo test --release disk::tests::measure_publish_rate --
    /// --ignored --nocapture` (DATA_DIR picks the file system).
    #[test]
    #[ignore]
    fn measure_publish_rate() {
        let base = std::env::var_os("DATA_DIR").map(PathBuf::from);
        for fsync in [Fsync::Always, Fsync::Periodic] {
            for threads in [1, 8] {
                let dir = TempDir::new("rate");
                let dir = match &base {
                    Some(base) => TempDir(base.join(dir.0.file_name().unwrap())),
                    None => dir,
                };
                let log = Arc::new(open_log(&dir, 1_000_000, 1 << 30, fsync));
                let per = 3000 / threads;
                let data = "x".repeat(200);
                let started = Instant::now();
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        let (log, data) = (log.clone(), data.clone());
                        thread::spawn(move || {
                            (0..per)
                                .map(|_| {
                                    let t = Instant::now();
                                    publish(&log, "t", &data);
                                    t.elapsed()
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                let mut lat: Vec<Duration> = workers
                    .into_iter()
                    .flat_map(|w| w.join().unwrap())
                    .collect();
                let secs = started.elapsed().as_secs_f64();
                lat.sort();
                // Read back from the file: a reopened log has no frames in
                // memory.
                drop(Arc::into_inner(log).unwrap());
                let log = open_log(&dir, 1_000_000, 1 << 30, fsync);
                let t = Instant::now();
                let mut read = 0;
                let mut at = None;
                loop {
                    let page = log.read(at, &TopicFilter::all(), PAGE_BYTES).unwrap();
                    read += page.frames.len();
                    at = page.scanned;
                    if page.end {
                        break;
                    }
                }
                assert_eq!(read, lat.len());
                println!(
                    "segment log, fsync {fsync:?}, {threads} appenders: {:.0} appends/s, \
                     p50 {:.2} ms, p99 {:.2} ms; read {read} back in {:.1} ms",
                    lat.len() as f64 / secs,
                    lat[lat.len() / 2].as_secs_f64() * 1e3,
                    lat[lat.len() * 99 / 100].as_secs_f64() * 1e3,
                    t.elapsed().as_secs_f64() * 1e3
                );
            }
        }
    }

    /// What a roll to the next file costs the append that makes it:
    /// `cargo test --release disk::tests::measure_roll_stall -- --ignored
    /// --nocapture`. The default bounds (files of 1,250 events), one
    /// appender.
    #[test]
    #[ignore]
    fn measure_roll_stall() {
        let dir = TempDir::new("roll");
        let log = open_log(&dir, 10_000, 64 << 20, Fsync::Always);
        let data = "x".repeat(200);
        let (mut plain, mut rolls) = (Vec::new(), Vec::new());
        let mut number = None;
        for _ in 0..12_000 {
            let t = Instant::now();
            publish(&log, "t", &data);
            let took = t.elapsed();
            let now = log.shared.lock().segments.back().map(|s| s.number);
            match number.replace(now) {
                Some(before) if before != now => rolls.push(took),
                _ => plain.push(took),
            }
        }
        plain.sort();
        rolls.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{} appends: p50 {:.2} ms, p99 {:.2} ms; {} rolls: p50 {:.2} ms, max {:.2} ms",
            plain.len(),
            ms(plain[plain.len() / 2]),
            ms(plain[plain.len() * 99 / 100]),
            rolls.len(),
            ms(rolls[rolls.len() / 2]),
            ms(*rolls.last().unwrap())
        );
    }

    /// `cargo test --release disk::tests::measure_open_time -- --ignored
    /// --nocapture`: a default log (10,000 events of 1 KiB) and a big one
    /// (1,000,000 events, 1 GiB).
    #[test]
    #[ignore]
    fn measure_open_time() {
        for (events, history_bytes) in [(10_000, 64 << 20), (1_000_000, 2 << 30)] {
            let dir = TempDir::new("open");
            let log = open_log(&dir, events, history_bytes, Fsync::Never);
            let data = "z".repeat(1024);
            let started = Instant::now();
            for _ in 0..events {
                publish(&log, "topic", &data);
            }
            let wrote = started.elapsed();
            drop(log);
            let started = Instant::now();
            let log = open_log(&dir, events, history_bytes, Fsync::Never);
            let opened = started.elapsed();
            drop(log);
            // Cold: the files' pages dropped from the page cache.
            for path in files(&dir) {
                let file = File::open(&path).unwrap();
                file.sync_all().unwrap();
                // SAFETY: advice on a descriptor we own.
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            }
            let started = Instant::now();
            let log = open_log(&dir, events, history_bytes, Fsync::Never);
            let cold = started.elapsed();
            // The index look-up from the middle, from the file.
            let middle = {
                let st = log.shared.lock();
                st.segments[st.segments.len() / 2].marks[3].0
            };
            let t = Instant::now();
            let page = log
                .read(Some(middle), &TopicFilter::all(), PAGE_BYTES)
                .unwrap();
            let looked_up = t.elapsed();
            assert!(page.gap.is_none() && page.frames[0].id > middle);
            println!(
                "{events} events, {} MiB on disk: written in {:.1} s, opened in {} ms \
                 ({} ms from the disk), a page from the middle in {} us",
                disk_bytes(&dir) >> 20,
                wrote.as_secs_f64(),
                opened.as_millis(),
                cold.as_millis(),
                looked_up.as_micros()
            );
            assert_eq!(log.len(), events);
        }
    }
}
