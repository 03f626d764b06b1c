//! The machine's limits that bound how many streams one process can hold:
//! open files, threads and memory maps. Read once at startup (SPEC
//! `--max-subscribers`), when the kernel's futex hash is also sized for
//! that many streams, and the allocator told to give large blocks back;
//! nothing here changes at run time.

use std::fs;

/// File descriptors kept out of the connection budget: the listener and its
/// duplicate, the spare descriptor, the epoll set, the Redis pool (16) and
/// follower, files read at run time, the refusals queued and lingering
/// (32 + 32), and some slack.
pub const RESERVE_FDS: usize = 128;
const _: () = assert!(
    crate::listener::REFUSAL_QUEUE + crate::listener::LINGERING + 32 <= RESERVE_FDS,
    "the refusal thread alone may hold REFUSAL_QUEUE + LINGERING descriptors"
);
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

/// `prctl(2)` options of Linux 6.16 (not in the libc crate yet).
const PR_FUTEX_HASH: libc::c_int = 78;
const PR_FUTEX_HASH_SET_SLOTS: libc::c_ulong = 1;

/// Gives this process a futex hash with a bucket for each of `threads`
/// (rounded up to a power of two; 64 bytes a bucket). Since Linux 6.16 each
/// process has its own hash, sized for its CPUs rather than its threads (16
/// buckets on two CPUs), and every thread that waits (a stream thread
/// parked on its queue, a contended lock) is chained in a bucket that each
/// wake-up walks: with 10,000 parked streams, hundreds of waiters a wake.
/// `loadgen wake` (10,000 parked threads, one sending to each) measured 7.1
/// µs of the sender's CPU and 10.0 µs of the woken thread's per wake-up with
/// the default, 4.2 and 8.0 with a bucket each; 10,000 streams at 2 events/s
/// took a tenth less CPU per delivery. Returns the buckets set, or `None`
/// where the kernel has no per-process hash (older kernels use one shared
/// hash sized for the machine).
pub fn size_futex_hash(threads: usize) -> Option<usize> {
    let buckets = threads.max(16).checked_next_power_of_two()?;
    // SAFETY: prctl with integer arguments only; an unknown option fails
    // with EINVAL and changes nothing.
    let set = unsafe {
        libc::prctl(
            PR_FUTEX_HASH,
            PR_FUTEX_HASH_SET_SLOTS,
            buckets as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    (set == 0).then_some(buckets)
}

/// Blocks this large or larger are mapped on their own, so that freeing one
/// gives its memory back at once. glibc's default (128 KiB, then raised to
/// the largest block freed) leaves what each of thousands of stream threads
/// decoded in its own arena: measured, 50 streams replaying 60 KB events
/// from Redis kept ~490 KiB each after the pages they held were written.
const MMAP_THRESHOLD: i32 = 32 * 1024;

/// Tells the allocator to map large blocks (event bodies, frames, Redis
/// replies) on their own; a no-op where it is not glibc.
pub fn return_large_frees() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_states_the_reserve() {
        let readme = include_str!("../README.md");
        let says = format!("minus {RESERVE_FDS} kept in reserve");
        assert!(readme.contains(&says), "README.md should say {says:?}");
    }

    fn futex_buckets() -> libc::c_int {
        const PR_FUTEX_HASH_GET_SLOTS: libc::c_ulong = 2;
        // SAFETY: prctl with integer arguments only.
        unsafe {
            libc::prctl(
                PR_FUTEX_HASH,
                PR_FUTEX_HASH_GET_SLOTS,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        }
    }

    #[test]
    fn the_futex_hash_gets_a_bucket_per_thread() {
        match size_futex_hash(10_000) {
            Some(buckets) => {
                assert_eq!(buckets, 16_384);
                assert_eq!(futex_buckets(), 16_384);
            }
            // Only where the kernel has no per-process hash: it does not
            // know the option (-1), or has no private hash built in (0).
            None => assert!(futex_buckets() <= 0),
        }
    }
}
