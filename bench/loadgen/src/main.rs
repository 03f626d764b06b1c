//! `make bench`: the same scenarios against ssehub, nchan and an axum +
//! tokio broadcast server, in one run, on loopback; one markdown table with
//! the ratios ssehub/nchan and ssehub/axum.
//!
//!     loadgen run [--servers ssehub,nchan,axum] [--quick] [--fanouts 100,1000]
//!                 [--no-streams] [--streams N] [--redis-fanouts 100,1000]
//!                 [--memory-streams N] [--only fanout,streams,memory,durable,redis]
//!     loadgen median RESULTS.tsv...     # the median of several runs
//!     loadgen wake [--threads N] [--futex-buckets N] [--one-cpu]
//!
//! `SSEHUB=path` measures another ssehub build, `SSEHUB_ARGS="..."` adds
//! options (a limit a scenario needs, such as `--max-subscribers`),
//! `REDIS_SERVER=path` names the `redis-server` of the Redis scenario and of
//! the durable-log comparison, `SSEHUB_B=path` adds another ssehub build to
//! the durable-log turns (two builds compared in one run).
//!
//! Every phase is bounded in count and time. The servers (and the Redis of
//! the Redis scenario) are started (and restarted, for the reconnect storm)
//! by this process and only they are signalled.

mod account;
mod client;
mod report;
mod scenario;
mod server;
mod wake;
mod wire;

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use server::{Kind, Paths};

/// The clock every payload's send time is measured on.
pub static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

pub fn usage() -> ! {
    eprintln!(
        "usage: loadgen run [--servers ssehub,nchan,axum] [--quick] [--out DIR]\n                   [--fanouts 100,1000] [--no-streams] [--streams N]\n                   [--redis-fanouts 100,1000] [--memory-streams N]\n                   [--only fanout,streams,memory,durable,redis]\n       loadgen median RESULTS.tsv...\n       loadgen wake [--threads N] [--futex-buckets N] [--one-cpu]"
    );
    std::process::exit(2);
}

fn main() {
    LazyLock::force(&EPOCH);
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("median") if args.len() > 1 => report::median(&args[1..]),
        Some("run") => run(&args[1..]),
        Some("wake") => wake::run(&args[1..]),
        _ => usage(),
    }
}

fn run(args: &[String]) {
    // Absolute: nginx resolves paths against its prefix.
    let root = std::fs::canonicalize(env_or("BENCH_ROOT", ".")).expect("the repository root");
    let mut servers = Kind::ALL.to_vec();
    let mut quick = false;
    let mut fanouts: Option<Vec<usize>> = None;
    let mut redis_fanouts: Option<Vec<usize>> = None;
    let mut only: Option<Vec<String>> = None;
    let mut no_streams = false;
    let mut streams: Option<usize> = None;
    let mut memory_streams: Option<usize> = None;
    let mut out = root.join("target/bench");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--servers" => {
                let list = it.next().unwrap_or_else(|| usage());
                servers = list
                    .split(',')
                    .map(|s| {
                        Kind::ALL
                            .into_iter()
                            .find(|k| k.name() == s)
                            .unwrap_or_else(|| usage())
                    })
                    .collect();
            }
            "--quick" => quick = true,
            "--fanouts" => fanouts = Some(counts(it.next())),
            "--redis-fanouts" => redis_fanouts = Some(counts(it.next())),
            "--only" => {
                let list = it.next().unwrap_or_else(|| usage());
                let names: Vec<String> = list.split(',').map(String::from).collect();
                if names.iter().any(|n| {
                    !["fanout", "streams", "memory", "durable", "redis"].contains(&n.as_str())
                }) {
                    usage();
                }
                only = Some(names);
            }
            "--no-streams" => no_streams = true,
            "--streams" => {
                streams = Some(
                    it.next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "--memory-streams" => {
                memory_streams = Some(
                    it.next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "--out" => out = PathBuf::from(it.next().unwrap_or_else(|| usage())),
            _ => usage(),
        }
    }
    std::fs::create_dir_all(&out).expect("create the output folder");
    let out = std::fs::canonicalize(out).expect("the output folder");
    let paths = Paths {
        // SSEHUB=path measures another build (an A/B of a change).
        ssehub: std::env::var_os("SSEHUB")
            .map_or_else(|| root.join("target/release/ssehub"), PathBuf::from),
        redis: PathBuf::from(env_or("REDIS_SERVER", "redis-server")),
        axum: root.join("target/release/axum-sse"),
        nginx: PathBuf::from(env_or("NGINX", "/usr/sbin/nginx")),
        nchan_conf: root.join("bench/nchan/nginx.conf"),
        work: out.clone(),
    };
    let nofile = server::raise_open_files();
    let mut plan = scenario::Plan::new(quick);
    if let Some(f) = fanouts {
        plan.fanouts = f;
    }
    if let Some(n) = streams {
        plan.streams = n;
        plan.data_storm_streams = n;
    }
    if let Some(n) = memory_streams {
        plan.memory_streams = n;
    }
    if no_streams {
        plan.streams = 0;
        plan.data_storm_streams = 0;
    }
    if let Some(f) = redis_fanouts {
        plan.redis_fanouts = f;
    }
    if let Some(only) = only {
        let on = |name: &str| only.iter().any(|n| n == name);
        if !on("fanout") {
            plan.fanouts.clear();
        }
        if !on("streams") {
            plan.streams = 0;
        }
        if !on("memory") {
            plan.memory_streams = 0;
        }
        if !on("durable") {
            plan.durable_time = Duration::ZERO;
            plan.data_storm_streams = 0;
        }
        if !on("redis") {
            plan.redis_fanouts.clear();
        }
    }
    if !servers.contains(&Kind::Ssehub) {
        plan.redis_fanouts.clear();
        plan.durable_time = Duration::ZERO;
        plan.data_storm_streams = 0;
    }
    // Found now rather than after minutes of other scenarios.
    let needs_redis = !plan.redis_fanouts.is_empty() || !plan.durable_time.is_zero();
    if needs_redis && !runs(&paths.redis) {
        eprintln!(
            "loadgen: {} --version failed: the Redis and durable-log scenarios need \
             redis-server (`make bench-deps` installs it; --only skips them)",
            paths.redis.display()
        );
        std::process::exit(2);
    }
    eprintln!(
        "open-file limit {nofile}; vm.max_map_count {}; {} cores",
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .unwrap_or_default()
            .trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let results = runtime.block_on(scenario::run_all(&plan, &servers, &paths));
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let tsv = out.join(format!("results-{stamp}.tsv"));
    report::save(&results, &tsv).expect("write results");
    let table = report::table(&results, &servers);
    let md = out.join(format!("table-{stamp}.md"));
    std::fs::write(&md, &table).expect("write table");
    println!("{table}");
    eprintln!("results: {}\ntable:   {}", tsv.display(), md.display());
}

/// A comma-separated list of subscriber counts (empty: none).
fn counts(list: Option<&String>) -> Vec<usize> {
    list.unwrap_or_else(|| usage())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or_else(|_| usage()))
        .collect()
}

fn runs(program: &std::path::Path) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}
