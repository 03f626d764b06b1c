//! The accept loop: one OS thread per accepted connection, a cap on open
//! connections below the open-file limit, and 503s instead of failures when
//! the cap or the process's descriptors run out. No protocol logic beyond
//! the fixed refusal.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use socket2::{Domain, Protocol, Socket, Type};

use crate::http::{self, App};
use crate::metrics::Metrics;
use crate::quiet::Quiet;

/// Stack of a connection thread. Measured: the deepest path (publish with
/// JSON, logging) touches well under 64 KiB; untouched pages cost no RSS.
const STACK_BYTES: usize = 128 * 1024;
/// Accepted sockets inherit this from the listener: a write to a client
/// that stopped reading fails after it, so no thread waits on one forever.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Kernel send buffer of every connection. Autotuning would let a
/// subscriber that stops reading pin up to `tcp_wmem`'s maximum (4 MiB
/// here) of kernel memory; this bounds it while leaving room for bursts.
const SEND_BUFFER: usize = 256 * 1024;
/// Refused connections waiting for the refusal thread; more are just
/// closed. With `LINGERING` this stays well inside `limits::RESERVE_FDS`.
pub const REFUSAL_QUEUE: usize = 32;
/// Answered refusals kept open briefly so that closing them does not reset
/// the connection before the client has read the 503.
pub const LINGERING: usize = 32;
const LINGER: Duration = Duration::from_millis(250);
/// How long the accept loop waits before it tries again when not even the
/// spare descriptor can be had back (the kernel does not signal a freed one).
const OUT_OF_DESCRIPTORS_PAUSE: Duration = Duration::from_millis(10);

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Retry-After: 1\r\nConnection: close\r\nContent-Length: 32\r\n\r\n{\"error\":\"too many connections\"}";

/// Binds the listening socket with the options every connection inherits.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Events are small and must not wait behind Nagle for a delayed ACK.
    socket.set_nodelay(true)?;
    socket.set_write_timeout(Some(SEND_TIMEOUT))?;
    socket.set_keepalive(true)?;
    socket.set_send_buffer_size(SEND_BUFFER)?;
    socket.bind(&addr.into())?;
    // A reconnect storm arrives all at once; the kernel caps this at
    // net.core.somaxconn.
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Decrements the open-connection count when a connection thread ends.
struct Counted(Arc<App>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0
            .hub
            .metrics
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts the refusal thread and the accept thread, which accepts until the
/// listener is shut down (`stop`), giving every connection its own thread,
/// or a 503 when `max_connections` are open.
pub fn start(
    listener: TcpListener,
    app: Arc<App>,
    max_connections: usize,
) -> io::Result<thread::JoinHandle<()>> {
    let (refuse_tx, refuse_rx) = crossbeam_channel::bounded(REFUSAL_QUEUE);
    let refusing = app.clone();
    thread::Builder::new()
        .name("refuse".into())
        .spawn(move || refuse_loop(refuse_rx, &refusing.hub.metrics))?;
    // A descriptor held in reserve: when accept fails for lack of
    // descriptors, freeing it lets us accept and answer instead of spinning.
    let spare = File::open("/dev/null").ok();
    thread::Builder::new()
        .name("accept".into())
        .spawn(move || accept_loop(listener, app, max_connections, refuse_tx, spare))
}

fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    max_connections: usize,
    refuse_tx: Sender<TcpStream>,
    mut spare: Option<File>,
) {
    let open: &AtomicU64 = &app.hub.metrics.connections;
    let spawn_failures = Quiet::new("failures");
    let fd_refusals = Quiet::new("refusals");
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                // accept takes a descriptor before it waits: with the spare
                // freed it waits for the next connection, which may come
                // once descriptors are free again. Only if the spare still
                // cannot be had back is that connection refused.
                drop(spare.take());
                let accepted = listener.accept();
                spare = File::open("/dev/null").ok();
                match accepted {
                    Ok((stream, _)) if spare.is_some() => stream,
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(true);
                        if stream.write_all(REFUSAL).is_ok() {
                            Metrics::add(&app.hub.metrics.refused, 1);
                        }
                        drop(stream);
                        if let Some(more) = fd_refusals.due(Instant::now()) {
                            log::warn!("out of file descriptors: refused a connection (503){more}");
                        }
                        spare = File::open("/dev/null").ok();
                        if spare.is_none() {
                            thread::sleep(OUT_OF_DESCRIPTORS_PAUSE);
                        }
                        continue;
                    }
                    Err(_) => {
                        // Someone else took the freed number: no descriptor
                        // to answer with, and nothing signals when one is
                        // free again; pause rather than spin on accept.
                        if spare.is_none() {
                            thread::sleep(OUT_OF_DESCRIPTORS_PAUSE);
                        }
                        continue;
                    }
                }
            }
            Err(e) => {
                // ECONNABORTED and friends concern one connection only.
                log::debug!("accept: {e}");
                continue;
            }
        };
        if open.load(Ordering::Relaxed) as usize >= max_connections {
            refuse(&refuse_tx, stream);
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let counted = Counted(app.clone());
        // The thread takes the stream out; if it cannot be started, the
        // stream is still here to be answered.
        let handed = Arc::new(Mutex::new(Some(stream)));
        let taken = handed.clone();
        let spawned = thread::Builder::new()
            .name("conn".into())
            .stack_size(STACK_BYTES)
            .spawn(move || {
                let stream = taken.lock().ok().and_then(|mut s| s.take());
                drop(taken);
                if let Some(stream) = stream {
                    http::serve_connection(stream, &counted.0);
                }
                drop(counted);
            });
        if let Err(e) = spawned {
            // Out of threads (a cgroup's pids.max, RLIMIT_NPROC, or the
            // machine's thread ids, taken by someone else since startup):
            // answer as for too many connections.
            if let Some(more) = spawn_failures.due(Instant::now()) {
                log::warn!("could not start a connection thread: {e}{more}");
            }
            let stream = handed.lock().ok().and_then(|mut s| s.take());
            if let Some(stream) = stream {
                refuse(&refuse_tx, stream);
            }
        }
    }
}

/// Wakes the accept loop out of `accept` for good.
pub fn stop(listener: &TcpListener) {
    let _ = socket2::SockRef::from(listener).shutdown(Shutdown::Both);
}

fn refuse(queue: &Sender<TcpStream>, stream: TcpStream) {
    // When the queue is full the stream is dropped: closed unanswered.
    let _ = queue.try_send(stream);
}

/// Answers refused connections with a 503 without ever blocking on one:
/// reads what the client has sent so far, writes the refusal, shuts down
/// writing, and keeps the socket a moment, draining it, so that the close is
/// a FIN rather than a reset that could destroy the answer.
fn refuse_loop(queue: Receiver<TcpStream>, metrics: &Metrics) {
    let mut lingering: VecDeque<(TcpStream, Instant)> = VecDeque::new();
    let refusals = Quiet::new("refusals");
    loop {
        let next = match lingering.front() {
            Some((_, until)) => queue.recv_deadline(*until),
            None => queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(stream) => {
                if answer_refusal(&stream) {
                    Metrics::add(&metrics.refused, 1);
                    if lingering.len() == LINGERING {
                        lingering.pop_front();
                    }
                    lingering.push_back((stream, Instant::now() + LINGER));
                }
                if let Some(more) = refusals.due(Instant::now()) {
                    log::info!("refused a connection: too many connections (503){more}");
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        lingering.retain(|(stream, until)| now < *until && !drained_to_eof(stream));
    }
}

/// Writes the 503 on a non-blocking socket; false if the client is gone.
fn answer_refusal(mut stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() || drained_to_eof(stream) {
        return false;
    }
    let answered = stream.write(REFUSAL).is_ok();
    let _ = stream.shutdown(Shutdown::Write);
    answered
}

/// Reads and discards what is waiting; true at EOF or on an error.
fn drained_to_eof(mut stream: &TcpStream) -> bool {
    let mut scratch = [0u8; 4096];
    for _ in 0..4 {
        match stream.read(&mut scratch) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
    false
}
