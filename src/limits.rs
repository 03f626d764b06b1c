//! The machine's limits that bound how many streams one process can hold:
//! open files, threads and memory maps. Read once at startup (SPEC
//! `--max-subscribers`); nothing here changes at run time.

use std::fs;

/// File descriptors kept out of the connection budget: stdio, the listener,
/// the spare descriptor, the epoll set, the Redis pool and follower, the
/// refusals queued and lingering (32 + 32), and some slack.
pub const RESERVE_FDS: usize = 128;
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

/// Threads this process may still start: the machine's thread ids, its
/// cgroup's `pids.max` (systemd `TasksMax`, container pid limits) and, for a
/// user other than root, `RLIMIT_NPROC`, whichever is smallest.
fn threads_free() -> Option<usize> {
    // pid_max bounds thread ids machine-wide, as threads-max does.
    let machine = [
        read_number("/proc/sys/kernel/threads-max"),
        read_number("/proc/sys/kernel/pid_max"),
    ]
    .into_iter()
    .flatten()
    .min()
    .map(|t| t.saturating_sub(threads_in_use()));
    // cgroup v1 names the pids controller; v2 has one hierarchy, "0::".
    let cgroup = fs::read_to_string("/proc/self/cgroup").ok().and_then(|c| {
        let dir = c.lines().find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            match rest.split_once(':')? {
                ("pids", path) => Some(format!("/sys/fs/cgroup/pids{path}")),
                ("", path) => Some(format!("/sys/fs/cgroup{path}")),
                _ => None,
            }
        })?;
        let max = read_number(&format!("{dir}/pids.max"))?;
        Some(max.saturating_sub(read_number(&format!("{dir}/pids.current"))?))
    });
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: geteuid has no preconditions; getrlimit writes to our struct.
    let nproc = unsafe {
        (libc::geteuid() != 0
            && libc::getrlimit(libc::RLIMIT_NPROC, &mut lim) == 0
            && lim.rlim_cur != libc::RLIM_INFINITY)
            .then(|| usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX))
            .map(|n| n.saturating_sub(count_entries("/proc/self/task")))
    };
    [machine, cgroup, nproc]
        .into_iter()
        .flatten()
        .min()
        .map(|n| n.saturating_sub(MARGIN))
}

/// Raises the open-file limit and works out how many connections and
/// streams fit.
pub fn measure() -> Capacity {
    let open_files = raise_open_files();
    let fds_free = open_files
        .saturating_sub(count_entries("/proc/self/fd"))
        .saturating_sub(RESERVE_FDS);
    // Every connection holds one descriptor and one thread.
    let (connections, mut binding) = match threads_free() {
        Some(t) if t < fds_free => (t, "threads"),
        _ => (fds_free, "open files"),
    };
    // Streams are connections; a tenth of the connections stays free for
    // publishers and scrapes when streams are full.
    let mut streams = connections - connections / 10;
    let maps_in_use = fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count());
    if let Some(maps) = read_number("/proc/sys/vm/max_map_count")
        .map(|m| m.saturating_sub(maps_in_use + MARGIN) / MAPS_PER_STREAM)
    {
        if maps < streams {
            streams = maps;
            binding = "memory maps";
        }
    }
    Capacity {
        open_files,
        connections,
        streams,
        binding,
    }
}
