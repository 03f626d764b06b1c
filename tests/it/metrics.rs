//! Each counter means one thing: its value after known events, wherever in
//! the hub they are answered, and a line in the README's metrics table.

use std::net::TcpStream;
use std::time::Duration;

use crate::harness::{poll, read_response, Hub, Start};

/// The connection budget the hub logged at startup.
fn connections(hub: &Hub) -> usize {
    assert!(hub.wait_log(" connections)", Duration::from_secs(2)));
    let log = hub.log();
    let line = log
        .lines()
        .find(|l| l.contains("listening on"))
        .expect("listening line");
    let (before, _) = line.split_once(" connections)").expect("budget in it");
    before
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .expect("a number")
}

/// Waits until the hub answers `/metrics` again (it refuses while full),
/// then reads `name`.
fn metric_once_free(hub: &Hub, name: &str) -> u64 {
    assert!(
        poll(Duration::from_secs(5), || hub.get("/metrics").status == 200),
        "the hub stayed full"
    );
    hub.metric(name)
}

/// Of `socks`, those that have something to read, without blocking.
fn answered(socks: &[TcpStream]) -> Vec<usize> {
    let mut b = [0u8; 1];
    (0..socks.len())
        .filter(|i| {
            socks[*i].set_nonblocking(true).unwrap();
            let has = matches!(socks[*i].peek(&mut b), Ok(n) if n > 0);
            socks[*i].set_nonblocking(false).unwrap();
            has
        })
        .collect()
}

/// The 503s of the refusal thread, for connections over the budget, are
/// refusals like any other.
#[test]
fn connections_over_the_budget_are_counted_as_refused() {
    let hub = Hub::start_with(
        &[],
        Start {
            open_files: Some(256),
            ..Start::default()
        },
    );
    let budget = connections(&hub);
    assert!(budget > 50 && budget < 256, "budget {budget}");
    const OVER: usize = 12;
    // Idle connections: each takes a place and is never answered.
    let socks: Vec<TcpStream> = (0..budget + OVER).map(|_| hub.connect()).collect();
    assert!(poll(Duration::from_secs(5), || answered(&socks).len() == OVER));
    let refused = answered(&socks);
    for i in &refused {
        let r = read_response(&mut socks[*i].try_clone().unwrap()).unwrap();
        assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
        assert_eq!(r.text(), "{\"error\":\"too many connections\"}");
    }
    drop(socks);
    assert_eq!(
        metric_once_free(&hub, "ssehub_requests_refused_total"),
        OVER as u64
    );
}

/// The open descriptors of a process, by number, with what each refers to.
fn descriptors(pid: u32) -> std::collections::HashMap<u64, String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            let fd = e.file_name().to_string_lossy().parse().ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Sets the soft open-file limit of a running process.
fn set_open_files(pid: u32, soft: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads and writes only the structs we pass.
    unsafe {
        assert_eq!(
            libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim),
            0
        );
        lim.rlim_cur = soft.min(lim.rlim_max);
        assert_eq!(
            libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()),
            0,
            "prlimit: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// When the process runs out of descriptors despite the budget (another
/// part of it took them), the spare descriptor answers 503, and each such
/// answer is counted.
#[test]
fn running_out_of_descriptors_is_counted_as_refused() {
    let hub = Hub::start(&[]);
    let fds = descriptors(hub.pid());
    let highest = *fds.keys().max().unwrap();
    // The numbers free below the new limit are taken by the first
    // connections, which wait idle; every later one finds none.
    let holes = (highest + 1) as usize - fds.len();
    const OUT: usize = 8;
    set_open_files(hub.pid(), highest + 1);
    let socks: Vec<TcpStream> = (0..holes + OUT).map(|_| hub.connect()).collect();
    // Each connection is either held (a socket of the hub that was not
    // there before) or answered; the count of held ones comes from the hub
    // itself, not from the arithmetic above, which a descriptor the hub
    // opens or closes meanwhile would make wrong by one.
    let held = || {
        descriptors(hub.pid())
            .iter()
            .filter(|(fd, target)| target.starts_with("socket:") && fds.get(fd) != Some(target))
            .count()
    };
    let settled = poll(Duration::from_secs(5), || {
        answered(&socks).len() + held() == socks.len()
    });
    let (refused, kept) = (answered(&socks), held());
    set_open_files(hub.pid(), u64::MAX);
    assert!(
        settled && refused.len() + 1 >= OUT,
        "{refused:?} answered and {kept} held of {} ({holes} free)",
        socks.len()
    );
    for i in &refused {
        let r = read_response(&mut socks[*i].try_clone().unwrap()).unwrap();
        assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
    }
    drop(socks);
    assert_eq!(
        metric_once_free(&hub, "ssehub_requests_refused_total"),
        refused.len() as u64
    );
    let log = hub.log();
    let lines = log.matches("out of file descriptors").count();
    assert!(
        (1..=refused.len()).contains(&lines),
        "{lines} lines:\n{log}"
    );
    hub.canary();
}

/// Every metric the hub renders has its line in the README's table, and
/// the table names none that it does not render.
#[test]
fn the_readme_says_what_each_metric_counts() {
    let readme = include_str!("../../README.md");
    let start = readme.find("## Metrics").expect("a Metrics section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let documented: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .filter(|name| name.starts_with("ssehub_"))
        .collect();
    let hub = Hub::start(&[]);
    let rendered: Vec<String> = hub
        .get("/metrics")
        .text()
        .lines()
        .filter_map(|l| {
            l.strip_prefix("# TYPE ")?
                .split(' ')
                .next()
                .map(String::from)
        })
        .collect();
    for name in &rendered {
        assert!(
            documented.contains(&name.as_str()),
            "{name} is not in the README"
        );
    }
    for name in &documented {
        // Shown only with --redis, --data.
        if !["ssehub_redis_up", "ssehub_disk_up"].contains(name) {
            assert!(rendered.iter().any(|r| r == name), "{name} is not rendered");
        }
    }
}
