//! The machine's limits that bound how many streams one process can hold:
//! open files, threads and memory maps. Read once at startup (SPEC
//! `--max-subscribers`); nothing here changes at run time.

use std::fs;

/// File descriptors kept out of the connection budget: stdio, the listener,
/// the spare descriptor, log and Redis sockets, and some slack.
pub const RESERVE_FDS: usize = 64;
/// Memory maps one stream thread adds: its stack and guard page, and the
/// signal stack std gives every thread with its own guard page (measured
/// with `/proc/PID/maps`, see README "Why threads, and what it costs").
const MAPS_PER_STREAM: usize = 4;
/// Threads and maps left for everything that is not a stream.
const MARGIN: usize = 512;

/// What the machine lets this process hold.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// The soft open-file limit after raising it to the hard limit.
    pub open_files: usize,
    /// Connections (streams and requests) the accept loop admits.
    pub connections: usize,
    /// Streams that fit every limit, and the limit that binds.
    pub streams: usize,
    pub binding: &'static str,
}

/// Raises the soft open-file limit to the hard limit; returns the soft limit
/// now in force.
fn raise_open_files() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

fn read_number(path: &str) -> Option<usize> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn count_entries(path: &str) -> usize {
    fs::read_dir(path).map_or(0, |d| d.count())
}

/// Threads on the whole machine now (the 4th field of /proc/loadavg).
fn threads_in_use() -> usize {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            let field = s.split_whitespace().nth(3)?;
            field.split_once('/')?.1.parse().ok()
        })
        .unwrap_or(0)
}

/// Raises the open-file limit and works out how many streams fit.
pub fn measure() -> Capacity {
    let open_files = raise_open_files();
    let fds_free = open_files
        .saturating_sub(count_entries("/proc/self/fd"))
        .saturating_sub(RESERVE_FDS);
    // One fd per connection; streams are connections, and a tenth of the
    // connections stays free for publishers and scrapes when streams are full.
    let mut streams = fds_free - fds_free / 10;
    let mut binding = "open files";
    let mut bound = |what: &'static str, n: Option<usize>| {
        if let Some(n) = n {
            if n < streams {
                streams = n;
                binding = what;
            }
        }
    };
    // pid_max bounds thread ids machine-wide, as threads-max does.
    let thread_ids = match (
        read_number("/proc/sys/kernel/threads-max"),
        read_number("/proc/sys/kernel/pid_max"),
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    bound(
        "threads",
        thread_ids.map(|t| t.saturating_sub(threads_in_use() + MARGIN)),
    );
    let maps_in_use = fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count());
    bound(
        "memory maps",
        read_number("/proc/sys/vm/max_map_count")
            .map(|m| m.saturating_sub(maps_in_use + MARGIN) / MAPS_PER_STREAM),
    );
    Capacity {
        open_files,
        connections: fds_free,
        streams,
        binding,
    }
}
