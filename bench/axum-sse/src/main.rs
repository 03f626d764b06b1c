//! The async baseline of `make bench`: the SSE hub one would write with axum
//! and a tokio broadcast channel, with the same contract the load generator
//! checks on ssehub (publish, subscribe, replay after `Last-Event-ID`). It
//! is a measuring stick, never part of ssehub.
//!
//!     axum-sse --bind 127.0.0.1:PORT
//!
//! `POST /events` publishes its body; `GET /events` streams `retry:`, the
//! retained events after `Last-Event-ID`, then live events. One topic only.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::serve::{Listener, ListenerExt};
use axum::Router;
use futures_util::{stream, Stream, StreamExt};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

/// The same bounds as ssehub's defaults: `--client-queue 1024` (a receiver
/// further behind loses its stream) and `--history 10000`.
const QUEUE: usize = 1024;
const HISTORY: usize = 10_000;

struct Published {
    id: u64,
    data: String,
}

struct Log {
    next_id: u64,
    ring: VecDeque<Arc<Published>>,
}

struct Hub {
    tx: broadcast::Sender<Arc<Published>>,
    /// Publishing and subscribing both take this lock, so a subscriber's
    /// replay and its live receiver meet without a lost or repeated event.
    log: Mutex<Log>,
}

async fn publish(State(hub): State<Arc<Hub>>, data: String) -> String {
    let mut log = hub.log.lock().expect("log lock");
    let id = log.next_id;
    log.next_id += 1;
    let event = Arc::new(Published { id, data });
    if log.ring.len() == HISTORY {
        log.ring.pop_front();
    }
    log.ring.push_back(event.clone());
    let receivers = hub.tx.send(event).unwrap_or(0);
    format!("{{\"id\":\"{id}\",\"receivers\":{receivers}}}")
}

async fn subscribe(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let last: Option<u64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let (rx, replay) = {
        let log = hub.log.lock().expect("log lock");
        let replay: Vec<Arc<Published>> = match last {
            Some(last) => log.ring.iter().filter(|e| e.id > last).cloned().collect(),
            None => Vec::new(),
        };
        (hub.tx.subscribe(), replay)
    };
    // A lagged receiver ends its stream, as ssehub evicts a slow subscriber.
    let live = BroadcastStream::new(rx)
        .take_while(|r| std::future::ready(r.is_ok()))
        .filter_map(|r| std::future::ready(r.ok()));
    let events = stream::iter(replay)
        .chain(live)
        .map(|e| Ok(Event::default().id(e.id.to_string()).data(&e.data)));
    let retry = stream::once(async { Ok(Event::default().retry(Duration::from_millis(3000))) });
    Sse::new(retry.chain(events)).keep_alive(KeepAlive::new().interval(Duration::from_secs(30)))
}

fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // The same backlog as ssehub's, for the reconnect storm.
    socket.listen(4096)?;
    Ok(socket.into())
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut bind: SocketAddr = "127.0.0.1:8090".parse().expect("address");
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--bind", Some(v)) => bind = v.parse().expect("--bind ADDR"),
            _ => {
                eprintln!("usage: axum-sse [--bind ADDR]");
                std::process::exit(2);
            }
        }
    }
    raise_open_files();
    // Ids grow across restarts, as ssehub's do: a client's old id is below
    // every id of the new process, so it is answered with the whole ring.
    let start_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    let hub = Arc::new(Hub {
        tx: broadcast::channel(QUEUE).0,
        log: Mutex::new(Log {
            next_id: start_ms * 1000,
            ring: VecDeque::new(),
        }),
    });
    let app = Router::new()
        .route("/events", get(subscribe).post(publish))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(hub);
    let std_listener = listener(bind).expect("bind");
    let listener = tokio::net::TcpListener::from_std(std_listener)
        .expect("tokio listener")
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    eprintln!(
        "listening on http://{}",
        listener.local_addr().expect("bound")
    );
    axum::serve(listener, app).await.expect("serve");
}
