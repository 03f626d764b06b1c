//! The results: saved as `server<TAB>figure<TAB>value` lines, shown as one
//! markdown table (a row per figure, a column per server, then the ratios
//! ssehub/nchan and ssehub/axum), and the median of several saved runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use crate::scenario::{Figures, Results};
use crate::server::Kind;

/// How a figure is shown: its key, its label, its decimals.
const ROWS: &[(&str, &str, usize)] = &[
    ("idle.streams", "idle: streams held", 0),
    ("idle.failures", "idle: failed subscriptions", 0),
    ("idle.mem_kib", "idle: memory per stream, KiB (PSS)", 1),
    ("idle.threads", "idle: threads per stream", 2),
    ("idle.fds", "idle: fds per stream", 2),
    ("idle.maps", "idle: memory maps per stream", 2),
    (
        "idle.charged_kib",
        "idle: memory per stream with the kernel's share, KiB (memory cgroup)",
        1,
    ),
    ("f100.dps", "100 subscribers, max rate: deliveries/s", 0),
    (
        "f100.cpu",
        "100 subscribers: server CPU-s per million deliveries",
        2,
    ),
    ("f100.p50", "100 subscribers: p50 latency, ms", 1),
    ("f100.p99", "100 subscribers: p99 latency, ms", 1),
    ("f100.lost", "100 subscribers: lost", 0),
    ("f100.dup", "100 subscribers: duplicated", 0),
    ("f100.reordered", "100 subscribers: out of order", 0),
    ("f1000.dps", "1,000 subscribers, max rate: deliveries/s", 0),
    (
        "f1000.cpu",
        "1,000 subscribers: server CPU-s per million deliveries",
        2,
    ),
    ("f1000.p50", "1,000 subscribers: p50 latency, ms", 1),
    ("f1000.p99", "1,000 subscribers: p99 latency, ms", 1),
    ("f1000.lost", "1,000 subscribers: lost", 0),
    ("f1000.dup", "1,000 subscribers: duplicated", 0),
    ("f1000.reordered", "1,000 subscribers: out of order", 0),
    (
        "rate.asked",
        "10 events/s to every stream: deliveries/s asked",
        0,
    ),
    ("rate.dps", "10 events/s: deliveries/s reached", 0),
    (
        "rate.cpu",
        "10 events/s: server CPU-s per million deliveries",
        2,
    ),
    ("rate.p50", "10 events/s: p50 latency, ms", 1),
    ("rate.p99", "10 events/s: p99 latency, ms", 1),
    ("rate.p999", "10 events/s: p99.9 latency, ms", 1),
    ("rate.lost", "10 events/s: lost", 0),
    ("rate.dup+reordered", "10 events/s: duplicated + out of order", 0),
    (
        "sparse.asked",
        "2 events/s to every stream: deliveries/s asked",
        0,
    ),
    ("sparse.dps", "2 events/s: deliveries/s reached", 0),
    (
        "sparse.cpu",
        "2 events/s: server CPU-s per million deliveries",
        2,
    ),
    ("sparse.p50", "2 events/s: p50 latency, ms", 1),
    ("sparse.p99", "2 events/s: p99 latency, ms", 1),
    ("sparse.p999", "2 events/s: p99.9 latency, ms", 1),
    ("sparse.lost", "2 events/s: lost", 0),
    ("sparse.dup+reordered", "2 events/s: duplicated + out of order", 0),
    (
        "storm.subscribers",
        "storm: subscribers reconnecting at once",
        0,
    ),
    ("storm.all_s", "storm: s until every one has its replay", 2),
    ("storm.p50_s", "storm: s until half have it", 2),
    ("storm.lost", "storm: replayed events lost", 0),
    ("storm.gaps", "storm: `ssehub:gap` notices", 0),
    (
        "storm.connect_errors",
        "storm: failed connection attempts (retried)",
        0,
    ),
    ("mem.streams", "memory: streams held", 0),
    ("mem.idle_kib", "memory: idle, KiB per stream (PSS)", 1),
    (
        "mem.burst_kib",
        "memory after a burst of 20 × 60 KiB read by every stream, KiB per stream (PSS)",
        1,
    ),
    ("mem.burst_ratio", "memory after the burst ÷ idle (PSS)", 2),
    ("mem.replayers", "memory: streams replaying the burst, never reading", 0),
    (
        "mem.replay_kib",
        "memory during the replay, KiB per stream, all streams (PSS)",
        1,
    ),
    ("mem.replay_ratio", "memory during the replay ÷ idle (PSS)", 2),
    (
        "mem.replayer_kib",
        "memory during the replay: KiB per replaying stream (PSS)",
        1,
    ),
    (
        "mem.replayer_ratio",
        "memory per replaying stream ÷ idle per stream (PSS)",
        2,
    ),
    (
        "mem.replay_queued_kib",
        "replay: KiB in the server's socket send queue per replaying stream (kernel, not in the cgroup figure)",
        1,
    ),
    (
        "mem.charged_idle_kib",
        "memory with the kernel's share: idle, KiB per stream (memory cgroup)",
        1,
    ),
    (
        "mem.charged_burst_kib",
        "memory with the kernel's share: after the burst, KiB per stream",
        1,
    ),
    (
        "mem.charged_burst_ratio",
        "memory with the kernel's share: after the burst ÷ idle",
        2,
    ),
    (
        "mem.charged_replay_kib",
        "memory with the kernel's share: during the replay, KiB per stream, all streams",
        1,
    ),
    (
        "mem.charged_replay_ratio",
        "memory with the kernel's share: during the replay ÷ idle",
        2,
    ),
    (
        "mem.charged_replayer_kib",
        "memory with the kernel's share: KiB per replaying stream",
        1,
    ),
    ("mem.burst_lost", "memory: burst events lost", 0),
    (
        "dstorm.subscribers",
        "storm, ssehub with `--data` (others: their storm): subscribers reconnecting",
        0,
    ),
    ("dstorm.complete", "storm with `--data`: replays complete", 0),
    (
        "dstorm.all_s",
        "storm with `--data`: s until every one has its replay",
        2,
    ),
    ("dstorm.p50_s", "storm with `--data`: s until half have it", 2),
    ("dstorm.lost", "storm with `--data`: replayed events lost", 0),
    ("dstorm.gaps", "storm with `--data`: `ssehub:gap` notices", 0),
    (
        "dstorm.connect_errors",
        "storm with `--data`: failed connection attempts (retried)",
        0,
    ),
    (
        "d.fsync.rate",
        "disk alone: 200-byte appends, each with fdatasync, per s",
        0,
    ),
    ("d.fsync.p50", "disk alone: one append + fdatasync, p50, ms", 2),
    (
        "d.memory.1.rate",
        "publish, 1 publisher, in memory: events/s",
        0,
    ),
    (
        "d.disk.1.rate",
        "publish, 1 publisher, `--data --fsync always`: events/s",
        0,
    ),
    (
        "d.redis.1.rate",
        "publish, 1 publisher, `--redis` on Redis `appendfsync always`: events/s",
        0,
    ),
    ("d.memory.1.p50", "publish, 1 publisher, in memory: p50, ms", 2),
    ("d.disk.1.p50", "publish, 1 publisher, `--data`: p50, ms", 2),
    ("d.redis.1.p50", "publish, 1 publisher, Redis AOF: p50, ms", 2),
    ("d.memory.1.p99", "publish, 1 publisher, in memory: p99, ms", 2),
    ("d.disk.1.p99", "publish, 1 publisher, `--data`: p99, ms", 2),
    ("d.redis.1.p99", "publish, 1 publisher, Redis AOF: p99, ms", 2),
    (
        "d.memory.8.rate",
        "publish, 8 publishers, in memory: events/s",
        0,
    ),
    (
        "d.disk.8.rate",
        "publish, 8 publishers, `--data --fsync always`: events/s",
        0,
    ),
    (
        "d.redis.8.rate",
        "publish, 8 publishers, `--redis` on Redis `appendfsync always`: events/s",
        0,
    ),
    ("d.memory.8.p50", "publish, 8 publishers, in memory: p50, ms", 2),
    ("d.disk.8.p50", "publish, 8 publishers, `--data`: p50, ms", 2),
    ("d.redis.8.p50", "publish, 8 publishers, Redis AOF: p50, ms", 2),
    ("d.memory.8.p99", "publish, 8 publishers, in memory: p99, ms", 2),
    ("d.disk.8.p99", "publish, 8 publishers, `--data`: p99, ms", 2),
    ("d.redis.8.p99", "publish, 8 publishers, Redis AOF: p99, ms", 2),
    (
        "d.1.disk_redis",
        "publish, 1 publisher: `--data` ÷ Redis AOF, events/s",
        2,
    ),
    (
        "d.8.disk_redis",
        "publish, 8 publishers: `--data` ÷ Redis AOF, events/s (target ≥ 2)",
        2,
    ),
    (
        "d.8.disk_memory",
        "publish, 8 publishers: `--data` ÷ in memory, events/s",
        2,
    ),
    (
        "d.disk.8.cpu_us",
        "publish, 8 publishers, `--data`: server CPU µs per publish",
        1,
    ),
    (
        "d.redis.8.cpu_us",
        "publish, 8 publishers, Redis AOF: CPU µs per publish (ssehub + Redis)",
        1,
    ),
    (
        "r100.alone.dps",
        "100 subscribers × 1,000 events/s, one hub: deliveries/s reached",
        0,
    ),
    (
        "r100.redis.dps",
        "100 subscribers × 1,000 events/s, two hubs on Redis: deliveries/s reached",
        0,
    ),
    (
        "r100.alone.cpu",
        "100 subscribers × 1,000 events/s, one hub: CPU-s per million deliveries",
        2,
    ),
    (
        "r100.redis.cpu",
        "100 subscribers × 1,000 events/s, two hubs on Redis: CPU-s per million deliveries (A, B, Redis)",
        2,
    ),
    (
        "r100.alone.p50",
        "100 subscribers × 1,000 events/s, one hub: p50 latency, ms",
        2,
    ),
    (
        "r100.redis.p50",
        "100 subscribers × 1,000 events/s, two hubs on Redis: p50 latency, ms",
        2,
    ),
    (
        "r100.alone.p99",
        "100 subscribers × 1,000 events/s, one hub: p99 latency, ms",
        2,
    ),
    (
        "r100.redis.p99",
        "100 subscribers × 1,000 events/s, two hubs on Redis: p99 latency, ms",
        2,
    ),
    (
        "r100.alone.p999",
        "100 subscribers × 1,000 events/s, one hub: p99.9 latency, ms",
        2,
    ),
    (
        "r100.redis.p999",
        "100 subscribers × 1,000 events/s, two hubs on Redis: p99.9 latency, ms",
        2,
    ),
    (
        "r100.alone.lost",
        "100 subscribers × 1,000 events/s, one hub: lost",
        0,
    ),
    (
        "r100.redis.lost",
        "100 subscribers × 1,000 events/s, two hubs on Redis: lost",
        0,
    ),
    (
        "r100.alone.dup+reordered",
        "100 subscribers × 1,000 events/s, one hub: duplicated + out of order",
        0,
    ),
    (
        "r100.redis.dup+reordered",
        "100 subscribers × 1,000 events/s, two hubs on Redis: duplicated + out of order",
        0,
    ),
    (
        "r1000.alone.dps",
        "1,000 subscribers × 100 events/s, one hub: deliveries/s reached",
        0,
    ),
    (
        "r1000.redis.dps",
        "1,000 subscribers × 100 events/s, two hubs on Redis: deliveries/s reached",
        0,
    ),
    (
        "r1000.alone.cpu",
        "1,000 subscribers × 100 events/s, one hub: CPU-s per million deliveries",
        2,
    ),
    (
        "r1000.redis.cpu",
        "1,000 subscribers × 100 events/s, two hubs on Redis: CPU-s per million deliveries (A, B, Redis)",
        2,
    ),
    (
        "r1000.alone.p50",
        "1,000 subscribers × 100 events/s, one hub: p50 latency, ms",
        2,
    ),
    (
        "r1000.redis.p50",
        "1,000 subscribers × 100 events/s, two hubs on Redis: p50 latency, ms",
        2,
    ),
    (
        "r1000.alone.p99",
        "1,000 subscribers × 100 events/s, one hub: p99 latency, ms",
        2,
    ),
    (
        "r1000.redis.p99",
        "1,000 subscribers × 100 events/s, two hubs on Redis: p99 latency, ms",
        2,
    ),
    (
        "r1000.alone.p999",
        "1,000 subscribers × 100 events/s, one hub: p99.9 latency, ms",
        2,
    ),
    (
        "r1000.redis.p999",
        "1,000 subscribers × 100 events/s, two hubs on Redis: p99.9 latency, ms",
        2,
    ),
    (
        "r1000.alone.lost",
        "1,000 subscribers × 100 events/s, one hub: lost",
        0,
    ),
    (
        "r1000.redis.lost",
        "1,000 subscribers × 100 events/s, two hubs on Redis: lost",
        0,
    ),
    (
        "r1000.alone.dup+reordered",
        "1,000 subscribers × 100 events/s, one hub: duplicated + out of order",
        0,
    ),
    (
        "r1000.redis.dup+reordered",
        "1,000 subscribers × 100 events/s, two hubs on Redis: duplicated + out of order",
        0,
    ),
];

pub fn save(results: &Results, path: &Path) -> io::Result<()> {
    let mut out = String::new();
    for (server, figures) in results {
        for (k, v) in figures {
            let _ = writeln!(out, "{server}\t{k}\t{v}");
        }
    }
    fs::write(path, out)
}

fn value(figures: Option<&Figures>, key: &str) -> Option<f64> {
    let f = figures?;
    if let Some(prefix) = key.strip_suffix(".dup+reordered") {
        return Some(f.get(&format!("{prefix}.dup"))? + f.get(&format!("{prefix}.reordered"))?);
    }
    f.get(key).copied()
}

fn show(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => {
            if decimals == 0 && v.abs() >= 10_000.0 {
                // Group thousands: 1234567 → 1,234,567.
                let digits = format!("{:.0}", v.abs());
                let mut s = String::new();
                for (i, c) in digits.chars().enumerate() {
                    if i > 0 && (digits.len() - i) % 3 == 0 {
                        s.push(',');
                    }
                    s.push(c);
                }
                if v < 0.0 {
                    s.insert(0, '-');
                }
                s
            } else {
                format!("{v:.decimals$}")
            }
        }
        Some(_) => "n/a".into(),
        None => "—".into(),
    }
}

/// `a / b`, or "=" when both show as zero, or "—" when `b` does (a ratio
/// to a figure too small to print means nothing).
fn ratio(a: Option<f64>, b: Option<f64>, decimals: usize) -> String {
    let shown_zero = |v: f64| (v * 10f64.powi(decimals as i32)).round() == 0.0;
    match (a, b) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() => {
            if shown_zero(b) {
                if shown_zero(a) {
                    "=".into()
                } else {
                    "—".into()
                }
            } else {
                format!("{:.2}", a / b)
            }
        }
        _ => "—".into(),
    }
}

pub fn table(results: &Results, servers: &[Kind]) -> String {
    let mut out = String::new();
    let names: Vec<&str> = servers.iter().map(|k| k.name()).collect();
    let _ = write!(out, "| figure |");
    for n in &names {
        let _ = write!(out, " {n} |");
    }
    let _ = writeln!(out, " ssehub/nchan | ssehub/axum |");
    let _ = write!(out, "| --- |");
    for _ in &names {
        let _ = write!(out, " ---: |");
    }
    let _ = writeln!(out, " ---: | ---: |");
    for (key, label, decimals) in ROWS {
        let get = |server: &str| value(results.get(server), key);
        if names.iter().all(|n| get(n).is_none()) {
            continue;
        }
        let _ = write!(out, "| {label} |");
        for n in &names {
            let _ = write!(out, " {} |", show(get(n), *decimals));
        }
        let _ = writeln!(
            out,
            " {} | {} |",
            ratio(get("ssehub"), get("nchan"), *decimals),
            ratio(get("ssehub"), get("axum"), *decimals)
        );
    }
    out
}

/// Reads saved runs and prints the table of their medians.
pub fn median(paths: &[String]) {
    let mut all: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for p in paths {
        let text = fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        for line in text.lines() {
            let mut parts = line.split('\t');
            if let (Some(s), Some(k), Some(v)) = (parts.next(), parts.next(), parts.next()) {
                if let Ok(v) = v.parse::<f64>() {
                    all.entry((s.into(), k.into())).or_default().push(v);
                }
            }
        }
    }
    let mut results = Results::new();
    for ((server, key), mut values) in all {
        let Some(kind) = Kind::ALL.into_iter().find(|k| k.name() == server) else {
            continue;
        };
        values.sort_by(f64::total_cmp);
        let m = values.len();
        let med = if m % 2 == 1 {
            values[m / 2]
        } else {
            (values[m / 2 - 1] + values[m / 2]) / 2.0
        };
        results.entry(kind.name()).or_default().insert(key, med);
    }
    let servers: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| results.contains_key(k.name()))
        .collect();
    println!("Medians of {} runs.\n", paths.len());
    println!("{}", table(&results, &servers));
}
