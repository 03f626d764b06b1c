//! ssehub: a Server-Sent Events hub. `main` reads the config, starts the
//! logger, binds, runs the accept loop and waits for a signal to shut down;
//! it holds no protocol logic. Exit 2 for a refused configuration, 1 when the
//! address cannot be bound, Redis cannot be reached or the `--data` log
//! cannot be opened (damaged, in use).

mod access;
mod config;
mod disk;
mod event;
mod hangup;
mod history;
mod hold;
mod http;
mod hub;
mod limits;
mod listener;
mod logging;
mod metrics;
mod quiet;
mod redis;
mod request;
mod sse;
mod stream;

use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use config::{Config, ConfigError};
use history::{EventLog, MemoryLog};
use http::App;
use hub::{Hub, HubLimits};

/// Streams get this long to write their end before the process exits
/// (SPEC: exit within 2 seconds).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// How long an exit waits for its last log lines to reach stderr.
const LAST_LINES: Duration = Duration::from_millis(200);

/// The thread that feeds the hub from a followed log, to start once the hub
/// exists.
enum Follower {
    Redis(Box<redis::Follower>),
    Disk(disk::Follower),
}

fn main() {
    let config = match Config::parse(std::env::args_os(), std::env::vars_os()) {
        Ok(config) => config,
        Err(ConfigError::Args(e)) => e.exit(),
        Err(e) => {
            eprintln!("ssehub: error: {e}");
            exit(2);
        }
    };
    logging::init();
    limits::return_large_frees();
    if let Some(signed) = &config.signed {
        for skipped in &signed.keys.skipped {
            log::warn!("--jwks: left out {skipped}");
        }
    }

    let capacity = limits::measure();
    let mut max_subscribers = config.max_subscribers;
    if capacity.streams < max_subscribers {
        log::warn!(
            "--max-subscribers {} does not fit this machine's {} (open files {}): holding at most {} streams",
            max_subscribers,
            capacity.binding,
            capacity.open_files,
            capacity.streams
        );
        max_subscribers = capacity.streams.max(1);
    }
    match limits::size_futex_hash(max_subscribers) {
        Some(buckets) => log::debug!("futex hash: {buckets} buckets"),
        None => log::debug!("futex hash: the kernel's own"),
    }

    // The log first: a hub that cannot reach Redis, or whose files are
    // damaged or in use, must not look ready.
    let (log, follower): (Box<dyn EventLog>, _) = match (&config.redis, &config.data) {
        (Some(url), _) => match redis::connect(url, config.history, config.max_event_bytes) {
            Ok((log, follower)) => (Box::new(log), Some(Follower::Redis(Box::new(follower)))),
            Err(e) => {
                eprintln!("ssehub: error: {e}");
                leave(1);
            }
        },
        (None, Some(dir)) => {
            match disk::open(dir, config.history, config.history_bytes, config.fsync) {
                Ok((log, follower)) => (Box::new(log), Some(Follower::Disk(follower))),
                Err(e) => {
                    eprintln!("ssehub: error: {e}");
                    leave(1);
                }
            }
        }
        (None, None) => (
            Box::new(MemoryLog::new(config.history, config.history_bytes)),
            None,
        ),
    };

    let listener = match listener::bind(config.bind) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "ssehub: error: --bind: cannot listen on {}: {e}",
                config.bind
            );
            leave(1);
        }
    };
    let addr = listener
        .local_addr()
        .expect("a bound socket has an address");
    let stopper = listener
        .try_clone()
        .expect("duplicate the listening socket");

    let hub = Arc::new(Hub::new(
        log,
        HubLimits {
            max_subscribers,
            client_queue: config.client_queue,
        },
    ));
    // The ends the log holds (files read back, the shared stream), before
    // any request is served: an ended topic stays ended across restarts.
    let ended = hub.recall_ends();
    if ended > 0 {
        log::info!("event log: {ended} ended topics");
    }
    let started = match follower {
        Some(Follower::Redis(f)) => f.start(hub.clone()).map(drop),
        Some(Follower::Disk(f)) => f.start(hub.clone()).map(drop),
        None => Ok(()),
    };
    started.expect("start the follower thread of the event log");
    let hangups = match hangup::Hangups::new() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ssehub: error: cannot create an epoll set: {e}");
            leave(1);
        }
    };
    let access = access::Access::new(config.access_rules());
    let app = Arc::new(App {
        hub,
        config,
        hangups,
        refusal_log: quiet::Quiet::new("refusals"),
        access,
    });
    {
        let app = app.clone();
        std::thread::Builder::new()
            .name("hangup".into())
            .spawn(move || app.hangups.run(|key| app.hub.hang_up(key)))
            .expect("start the hang-up thread");
    }

    let (signal_tx, signal_rx) = crossbeam_channel::bounded::<()>(1);
    let signalled = AtomicBool::new(false);
    ctrlc::set_handler(move || {
        if signalled.swap(true, Ordering::SeqCst) {
            // A second signal: leave now.
            exit(130);
        }
        let _ = signal_tx.try_send(());
    })
    .expect("install the SIGINT/SIGTERM handler");
    if app.access.jwks().is_some() {
        reload_on_sighup(app.clone());
    }

    let accept = listener::start(listener, app.clone(), capacity.connections)
        .expect("start the accept thread");
    log::info!(
        "listening on http://{addr} (max {max_subscribers} subscribers, {} connections)",
        capacity.connections
    );

    let _ = signal_rx.recv();
    let started = Instant::now();
    log::info!("shutting down");
    listener::stop(&stopper);
    let _ = accept.join();
    app.hub.close();
    let left = app.hub.wait_streams_ended(SHUTDOWN_GRACE);
    log::info!(
        "stopped in {} ms ({left} streams still ending)",
        started.elapsed().as_millis()
    );
    leave(0);
}

/// Exits once the lines logged so far are written (for a moment at most:
/// a stderr nobody reads does not hold the exit up).
fn leave(code: i32) -> ! {
    logging::flush(LAST_LINES);
    exit(code)
}

/// SIGHUP re-reads `--jwks` on a thread of its own; open streams are not
/// touched. ctrlc's `termination` feature takes SIGHUP for a shutdown too,
/// and signal-hook would call that handler after its own: the hub's
/// reload replaces it.
fn reload_on_sighup(app: Arc<App>) {
    // SAFETY: resets one signal's disposition; no handler of ours runs.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_DFL);
    }
    let mut signals = match signal_hook::iterator::Signals::new([libc::SIGHUP]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("ssehub: error: cannot handle SIGHUP: {e}");
            leave(1);
        }
    };
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            for _ in signals.forever() {
                match app.access.reload() {
                    Ok(done) => log::info!("reloaded {done}"),
                    Err(why) => log::warn!("reload failed: {why}"),
                }
            }
        })
        .expect("start the reload thread");
}
