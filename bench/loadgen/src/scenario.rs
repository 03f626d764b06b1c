//! The scenarios, each against a freshly started server so no stream of an
//! earlier phase lingers: fan-out at the maximum publish rate (100 and
//! 1,000 subscribers); then N idle streams, the same N at 10 events/s, and a
//! reconnect storm after a restart; then the memory a stream holds after a
//! burst of large events and during a replay to clients that do not read;
//! then (ssehub only) the reconnect storm with `--data`, the publish rate of
//! the durable log against Redis's append-only file, and a fixed publish
//! rate through two hub processes on one Redis, and the same load on one
//! hub alone. Every figure lands in `Figures` under a key `report.rs` knows.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::account::{Account, Histogram};
use crate::client::{self, Ctx, Dial, Pace, PubResult, Sub, SubState, STOP};
use crate::server::{self, Kind, Paths, Redis, Server, TempDir, Usage};
use crate::wire::PAYLOAD_BYTES;

pub type Figures = BTreeMap<String, f64>;
pub type Results = BTreeMap<&'static str, Figures>;

/// Sizes and bounds of every phase.
pub struct Plan {
    pub fanouts: Vec<usize>,
    /// Publisher connections at the maximum rate (publishes in flight).
    pub publishers: u32,
    pub fanout_time: Duration,
    /// Events each max-rate publisher may send, by subscriber count.
    pub fanout_cap: fn(usize) -> u64,
    pub streams: usize,
    /// The paced phases on the same streams, in order.
    pub paced: [Paced; 2],
    pub storm_events: u64,
    pub drain: Duration,
    /// Streams held in the memory scenario (0: no memory scenario).
    pub memory_streams: usize,
    /// The burst every one of them reads: this many events of this size.
    pub burst_events: u64,
    pub burst_bytes: usize,
    /// Subscribers that then replay the burst and never read.
    pub replayers: usize,
    /// Their receive buffer, bytes.
    pub replayer_buffer: u32,
    /// How long each publisher count publishes to each durable log
    /// (ssehub only; zero: no durable-log scenario).
    pub durable_time: Duration,
    /// Streams of the reconnect storm with `--data` (ssehub only; 0: none).
    pub data_storm_streams: usize,
    /// Subscriber counts of the Redis scenario (ssehub only).
    pub redis_fanouts: Vec<usize>,
    /// Events per second published in the Redis scenario, by subscriber
    /// count: a moderate load, well below what the machine can deliver, so
    /// that the latency is the path's and not a queue's.
    pub redis_rate: fn(usize) -> u64,
    pub redis_time: Duration,
}

/// One event to every stream every `interval`, `events` times; its figures
/// are named `key.*`.
pub struct Paced {
    pub key: &'static str,
    pub label: &'static str,
    pub interval: Duration,
    pub events: u64,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        Plan {
            fanouts: vec![100, 1000],
            publishers: 8,
            fanout_time: Duration::from_secs(if quick { 2 } else { 5 }),
            fanout_cap: |subs| (4_000_000 / subs as u64).min(50_000),
            streams: if quick { 2000 } else { 10_000 },
            paced: [
                Paced {
                    key: "rate",
                    label: "10 events/s",
                    interval: Duration::from_millis(100),
                    events: if quick { 30 } else { 100 },
                },
                // Sparse: every event finds the streams idle.
                Paced {
                    key: "sparse",
                    label: "2 events/s",
                    interval: Duration::from_millis(500),
                    events: if quick { 6 } else { 12 },
                },
            ],
            storm_events: 10,
            drain: Duration::from_secs(15),
            memory_streams: if quick { 500 } else { 1000 },
            burst_events: 20,
            burst_bytes: 60 * 1024,
            replayers: if quick { 20 } else { 50 },
            replayer_buffer: 4096,
            durable_time: Duration::from_secs(if quick { 1 } else { 3 }),
            data_storm_streams: if quick { 2000 } else { 10_000 },
            redis_fanouts: vec![100, 1000],
            // 100,000 deliveries/s (1,000 events/s to 100 subscribers, 100
            // to 1,000), at most 1,000 events/s.
            redis_rate: |subs| (100_000 / subs.max(1) as u64).clamp(1, 1000),
            redis_time: Duration::from_secs(if quick { 1 } else { 3 }),
        }
    }
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = T> {
    let handle = tokio::task::spawn_blocking(f);
    async move { handle.await.expect("blocking task") }
}

/// One started server and the subscribers held against it; or, for the
/// Redis scenario, the subscribers' hub, the hub publishers use and their
/// Redis.
struct Bench {
    server: Option<Server>,
    publish_server: Option<Server>,
    redis: Option<Redis>,
    /// The server's options beyond the defaults, for its restart.
    extra: Vec<String>,
    /// Where the server or its Redis keeps its log; removed once both are
    /// stopped.
    data: Option<TempDir>,
    ctx: Arc<Ctx>,
    subs: Vec<Sub>,
    tasks: Vec<JoinHandle<()>>,
    next_phase: u32,
}

impl Bench {
    async fn start(kind: Kind, paths: &Paths) -> Bench {
        Bench::start_with(kind, paths, Vec::new(), None).await
    }

    /// With `extra` options (kept for a restart) and `data`, the directory
    /// they name, removed at the end.
    async fn start_with(
        kind: Kind,
        paths: &Paths,
        extra: Vec<String>,
        data: Option<TempDir>,
    ) -> Bench {
        let port = server::free_port().expect("a free port");
        let server = start_server(kind, port, paths, &extra).await;
        let ctx = Arc::new(Ctx::new(
            server.addr,
            kind.subscribe_path(),
            kind.publish_path(),
        ));
        Bench {
            server: Some(server),
            publish_server: None,
            redis: None,
            extra,
            data,
            ctx,
            subs: Vec::new(),
            tasks: Vec::new(),
            next_phase: 1,
        }
    }

    /// ssehub with `--data` on a directory of our own, `--fsync always`.
    async fn start_durable(paths: &Paths, name: &str) -> Bench {
        let dir = TempDir::new(name).expect("a temporary directory");
        let extra = vec![
            "--data".to_string(),
            dir.path.to_string_lossy().into_owned(),
            "--fsync".to_string(),
            "always".to_string(),
        ];
        Bench::start_with(Kind::Ssehub, paths, extra, Some(dir)).await
    }

    /// One ssehub on a `redis-server` of our own that flushes its
    /// append-only file before every answer (`--appendfsync always`).
    async fn start_on_redis_aof(paths: &Paths) -> Bench {
        let paths = paths.clone();
        let (dir, redis, hub) = blocking(move || {
            let dir = TempDir::new("redis-aof")?;
            let redis = Redis::start_aof(&paths, &dir.path)?;
            let extra = ["--redis".to_string(), redis.url()];
            let hub = Server::start_with(Kind::Ssehub, server::free_port()?, &paths, &extra)?;
            Ok::<_, std::io::Error>((dir, redis, hub))
        })
        .await
        .unwrap_or_else(|e| panic!("start redis-server (AOF) and ssehub on it: {e}"));
        let kind = Kind::Ssehub;
        let ctx = Ctx::new(hub.addr, kind.subscribe_path(), kind.publish_path());
        Bench {
            server: Some(hub),
            publish_server: None,
            redis: Some(redis),
            extra: Vec::new(),
            data: Some(dir),
            ctx: Arc::new(ctx),
            subs: Vec::new(),
            tasks: Vec::new(),
            next_phase: 1,
        }
    }

    /// A `redis-server` of our own and two ssehub processes on it: A for
    /// the publishers, B for the subscribers.
    async fn start_on_redis(paths: &Paths) -> Bench {
        let paths = paths.clone();
        let (redis, a, b) = blocking(move || {
            let redis = Redis::start(&paths)?;
            let extra = ["--redis".to_string(), redis.url()];
            let a = Server::start_with(Kind::Ssehub, server::free_port()?, &paths, &extra)?;
            let b = Server::start_with(Kind::Ssehub, server::free_port()?, &paths, &extra)?;
            Ok::<_, std::io::Error>((redis, a, b))
        })
        .await
        .unwrap_or_else(|e| panic!("start redis-server and two ssehub on it: {e}"));
        let kind = Kind::Ssehub;
        let ctx =
            Ctx::new(b.addr, kind.subscribe_path(), kind.publish_path()).publishing_to(a.addr);
        Bench {
            server: Some(b),
            publish_server: Some(a),
            redis: Some(redis),
            extra: Vec::new(),
            data: None,
            ctx: Arc::new(ctx),
            subs: Vec::new(),
            tasks: Vec::new(),
            next_phase: 1,
        }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    /// Every process serving this bench: the server (with its workers), the
    /// publishers' hub and Redis when there are.
    fn pids(&self) -> Vec<u32> {
        let mut pids = self.server().pids();
        if let Some(a) = &self.publish_server {
            pids.extend(a.pids());
        }
        if let Some(r) = &self.redis {
            pids.push(r.pid());
        }
        pids
    }

    /// Opens `n` more subscribers, at most `pace` connecting at once, and
    /// waits until every one has its head or `timeout` passes. Returns how
    /// many are open.
    async fn subscribe(&mut self, n: usize, pace: usize, timeout: Duration) -> usize {
        let dial = Dial::reading(Some(Arc::new(Semaphore::new(pace))), timeout);
        self.subscribe_dial(n, dial, &[], timeout).await
    }

    /// Opens `n` more subscribers that connect as `dial` says, with
    /// `last_id` (if not empty) as the last event id they had; waits as
    /// `subscribe` does.
    async fn subscribe_dial(
        &mut self,
        n: usize,
        dial: Dial,
        last_id: &[u8],
        timeout: Duration,
    ) -> usize {
        for _ in 0..n {
            let sub: Sub = Arc::new(Mutex::new(SubState {
                last_id: last_id.to_vec(),
                ..SubState::default()
            }));
            self.subs.push(sub.clone());
            self.tasks.push(tokio::spawn(client::subscriber(
                self.ctx.clone(),
                sub,
                dial.clone(),
            )));
        }
        let deadline = Instant::now() + timeout + Duration::from_secs(1);
        loop {
            let (open, settled) = self.count(|s| (s.open, s.open || s.gave_up));
            if settled == self.subs.len() || Instant::now() > deadline {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn count(&self, f: impl Fn(&SubState) -> (bool, bool)) -> (usize, usize) {
        self.subs.iter().fold((0, 0), |(a, b), s| {
            let (x, y) = f(&s.lock().expect("sub"));
            (a + usize::from(x), b + usize::from(y))
        })
    }

    /// Gives every subscriber a fresh account for a new phase.
    fn begin_phase(&mut self, publishers: u32, cap: u64, target: u64) -> u32 {
        let phase = self.next_phase;
        self.next_phase += 1;
        for s in &self.subs {
            s.lock().expect("sub").account =
                Some(Account::new(phase, publishers as usize, cap, target));
        }
        self.ctx.delivered.store(0, Ordering::Relaxed);
        phase
    }

    fn end_phase(&self) -> Vec<Account> {
        self.subs
            .iter()
            .filter_map(|s| s.lock().expect("sub").account.take())
            .collect()
    }

    /// Publishes one event and waits until every open subscriber has it:
    /// proof that each is registered. Returns how many got it.
    async fn sync(&mut self) -> u64 {
        self.begin_phase(1, 1, 1);
        let ctx = self.ctx.clone();
        let phase = self.next_phase - 1;
        client::publisher(
            ctx,
            phase,
            0,
            1,
            Pace::Max,
            Instant::now() + Duration::from_secs(10),
        )
        .await;
        self.wait_delivered(self.subs.len() as u64, Duration::from_secs(15))
            .await;
        let got = self.ctx.delivered.load(Ordering::Relaxed);
        self.end_phase();
        got
    }

    async fn wait_delivered(&self, expected: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.ctx.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs `publishers` publishers for one phase; returns the events
    /// answered 2xx and the publish errors.
    async fn publish(
        &self,
        phase: u32,
        publishers: u32,
        cap: u64,
        pace: Pace,
        until: Instant,
    ) -> (u64, u64) {
        let r = self
            .publish_sized(phase, publishers, cap, pace, until, PAYLOAD_BYTES)
            .await;
        (r.published, r.errors)
    }

    /// `publish` with events of about `bytes`; what they did together,
    /// latency included.
    async fn publish_sized(
        &self,
        phase: u32,
        publishers: u32,
        cap: u64,
        pace: Pace,
        until: Instant,
        bytes: usize,
    ) -> PubResult {
        let handles: Vec<_> = (0..publishers)
            .map(|i| {
                tokio::spawn(client::publisher_sized(
                    self.ctx.clone(),
                    phase,
                    i,
                    cap,
                    pace,
                    until,
                    bytes,
                ))
            })
            .collect();
        let mut all = PubResult::default();
        for h in handles {
            let r = h.await.expect("publisher task");
            all.published += r.published;
            all.errors += r.errors;
            all.latency.merge(&r.latency);
            if let Some(e) = r.last_error {
                eprintln!("  publisher: {e}");
            }
        }
        all
    }

    /// The server's usage from /proc and what its memory cgroup is charged
    /// (when it has one).
    async fn measure(&self) -> (Usage, Option<u64>) {
        let pids = self.pids();
        let charged = self.server().memory_kib();
        (blocking(move || server::usage(&pids)).await, charged)
    }

    /// Ends every subscriber and stops the server.
    async fn finish(mut self) {
        let _ = self.ctx.command.send(STOP);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let (server, publish_server, redis, data) = (
            self.server.take(),
            self.publish_server.take(),
            self.redis.take(),
            self.data.take(),
        );
        blocking(move || {
            for mut s in [server, publish_server].into_iter().flatten() {
                s.stop(Duration::from_secs(5));
            }
            if let Some(mut r) = redis {
                r.stop(Duration::from_secs(5));
            }
            // Only once nobody writes there any more.
            drop(data);
        })
        .await;
    }
}

async fn start_server(kind: Kind, port: u16, paths: &Paths, extra: &[String]) -> Server {
    let paths = paths.clone();
    let extra = extra.to_vec();
    blocking(move || Server::start_with(kind, port, &paths, &extra))
        .await
        .unwrap_or_else(|e| panic!("start {}: {e}", kind.name()))
}

/// Totals over every subscriber's account of one phase.
#[derive(Default)]
struct Tally {
    unique: u64,
    duplicate: u64,
    reordered: u64,
    invalid: u64,
    latency: Histogram,
    last_at: Option<Instant>,
    complete: usize,
    complete_at: Vec<Instant>,
}

fn tally(accounts: &[Account]) -> Tally {
    let mut t = Tally::default();
    for a in accounts {
        t.unique += a.unique;
        t.duplicate += a.duplicate;
        t.reordered += a.reordered;
        t.invalid += a.invalid;
        t.latency.merge(&a.latency);
        t.last_at = t.last_at.max(a.last_at);
        if let Some(at) = a.complete_at {
            t.complete += 1;
            t.complete_at.push(at);
        }
    }
    t.complete_at.sort();
    t
}

pub async fn run_all(plan: &Plan, servers: &[Kind], paths: &Paths) -> Results {
    let mut results: Results = servers.iter().map(|k| (k.name(), Figures::new())).collect();
    // Scenario by scenario, each server in turn: the three see the same
    // background load within minutes of each other.
    for &subs in &plan.fanouts {
        for &kind in servers {
            let f = fanout(plan, kind, paths, subs).await;
            print_row(kind, &f);
            results.get_mut(kind.name()).expect("server").extend(f);
        }
    }
    for &kind in servers {
        if plan.streams == 0 {
            break;
        }
        let f = streams(plan, kind, paths).await;
        print_row(kind, &f);
        results.get_mut(kind.name()).expect("server").extend(f);
    }
    for &kind in servers {
        if plan.memory_streams == 0 {
            break;
        }
        let f = memory(plan, kind, paths).await;
        print_row(kind, &f);
        results.get_mut(kind.name()).expect("server").extend(f);
    }
    if let Some(figures) = results.get_mut(Kind::Ssehub.name()) {
        if plan.data_storm_streams > 0 {
            let f = data_storm(plan, paths).await;
            print_row(Kind::Ssehub, &f);
            figures.extend(f);
        }
        if !plan.durable_time.is_zero() {
            let f = durable(plan, paths).await;
            print_row(Kind::Ssehub, &f);
            figures.extend(f);
        }
    }
    // The storm with --data is ssehub's; the others' storm of this run
    // stands beside it (their history is in memory either way).
    if plan.data_storm_streams > 0 {
        for (name, figures) in results.iter_mut() {
            if *name != Kind::Ssehub.name() {
                let copied: Vec<(String, f64)> = figures
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((format!("dstorm.{}", k.strip_prefix("storm.")?), *v))
                    })
                    .collect();
                figures.extend(copied);
            }
        }
    }
    if let Some(figures) = results.get_mut(Kind::Ssehub.name()) {
        for &subs in &plan.redis_fanouts {
            for on_redis in [false, true] {
                let f = paced(plan, paths, subs, on_redis).await;
                print_row(Kind::Ssehub, &f);
                figures.extend(f);
            }
        }
    }
    results
}

fn print_row(kind: Kind, f: &Figures) {
    let cells: Vec<String> = f.iter().map(|(k, v)| format!("{k}={v:.3}")).collect();
    eprintln!("| {} | {} |", kind.name(), cells.join(" | "));
}

/// Fan-out at the maximum publish rate: `subs` subscribers, `publishers`
/// keep-alive publishers each sending as soon as its last publish is
/// answered, for `fanout_time` or `fanout_cap` events.
async fn fanout(plan: &Plan, kind: Kind, paths: &Paths, subs: usize) -> Figures {
    eprintln!(
        "{}: fan-out to {subs} subscribers at the maximum rate",
        kind.name()
    );
    let key = |k: &str| format!("f{subs}.{k}");
    let mut f = Figures::new();
    let mut b = Bench::start(kind, paths).await;
    let open = b.subscribe(subs, 256, Duration::from_secs(30)).await;
    let synced = b.sync().await;
    f.insert(key("subscribers"), synced as f64);
    if open < subs || (synced as usize) < subs {
        eprintln!("  only {open} open, {synced} synced of {subs}");
    }
    let cap = (plan.fanout_cap)(subs);
    let phase = b.begin_phase(plan.publishers, cap, 0);
    let pids = b.pids();
    let cpu0 = server::cpu_s(&pids);
    let own0 = server::cpu_s(&[std::process::id()]);
    let t0 = Instant::now();
    let (published, errors) = b
        .publish(
            phase,
            plan.publishers,
            cap,
            Pace::Max,
            t0 + plan.fanout_time,
        )
        .await;
    let expected = published * subs as u64;
    b.wait_delivered(expected, plan.drain).await;
    let cpu = server::cpu_s(&pids) - cpu0;
    let own = server::cpu_s(&[std::process::id()]) - own0;
    let t = tally(&b.end_phase());
    let secs = t.last_at.map_or(f64::NAN, |l| (l - t0).as_secs_f64());
    f.insert(key("loadgen_cpu"), own / t.unique as f64 * 1e6);
    f.insert(key("secs"), secs);
    f.insert(key("published"), published as f64);
    f.insert(key("publish_errors"), errors as f64);
    f.insert(key("dps"), t.unique as f64 / secs);
    f.insert(key("cpu"), cpu / t.unique as f64 * 1e6);
    delivery_figures(&mut f, key, &t, expected, &b);
    b.finish().await;
    f
}

/// What every delivery check yields: lost, duplicated and reordered events,
/// latency quantiles, and streams that ended when they should not have.
fn delivery_figures(
    f: &mut Figures,
    key: impl Fn(&str) -> String,
    t: &Tally,
    expected: u64,
    b: &Bench,
) {
    f.insert(key("lost"), expected.saturating_sub(t.unique) as f64);
    f.insert(key("dup"), t.duplicate as f64);
    f.insert(key("reordered"), t.reordered as f64);
    f.insert(key("p50"), t.latency.quantile_ms(0.5));
    f.insert(key("p99"), t.latency.quantile_ms(0.99));
    f.insert(key("p999"), t.latency.quantile_ms(0.999));
    f.insert(key("ended"), ended(b) as f64);
    if t.invalid > 0 {
        eprintln!("  {} deliveries with an impossible sequence", t.invalid);
    }
}

/// Streams that ended while they should have stayed open (evicted, lagged,
/// or failed).
fn ended(b: &Bench) -> u64 {
    let mut why: BTreeMap<String, u64> = BTreeMap::new();
    let mut n = 0;
    for s in &b.subs {
        let s = s.lock().expect("sub");
        if s.ended > 0 {
            n += s.ended;
            *why.entry(s.failure.clone().unwrap_or_default())
                .or_default() += 1;
        }
    }
    for (reason, count) in why {
        eprintln!("  {count} streams ended: {reason}");
    }
    n
}

/// N idle streams (what each costs), the same N at 10 events/s (latency),
/// then a restart and the reconnect storm.
async fn streams(plan: &Plan, kind: Kind, paths: &Paths) -> Figures {
    let n = plan.streams;
    eprintln!("{}: {n} idle streams", kind.name());
    let mut f = Figures::new();
    let mut b = Bench::start(kind, paths).await;
    let pids = b.pids();
    let charged_before = b.server().memory_kib();
    let before = blocking({
        let pids = pids.clone();
        move || server::usage(&pids)
    })
    .await;
    let t0 = Instant::now();
    let open = b.subscribe(n, 512, Duration::from_secs(60)).await;
    let ramp = t0.elapsed().as_secs_f64();
    // Let the server settle (threads started, buffers allocated) before
    // measuring what the streams hold.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pids = b.pids();
    let after = blocking({
        let pids = pids.clone();
        move || server::usage(&pids)
    })
    .await;
    let per = |a: u64, b: u64| (a as f64 - b as f64) / open.max(1) as f64;
    f.insert("idle.streams".into(), open as f64);
    f.insert("idle.failures".into(), (n - open) as f64);
    f.insert("idle.ramp_s".into(), ramp);
    f.insert("idle.mem_kib".into(), per(after.pss_kib, before.pss_kib));
    f.insert("idle.rss_kib".into(), per(after.rss_kib, before.rss_kib));
    f.insert("idle.threads".into(), per(after.threads, before.threads));
    f.insert("idle.fds".into(), per(after.fds, before.fds));
    f.insert("idle.maps".into(), per(after.maps, before.maps));
    if let (Some(charged), Some(before)) = (b.server().memory_kib(), charged_before) {
        f.insert("idle.charged_kib".into(), per(charged, before));
    }
    let synced = b.sync().await;
    f.insert("idle.synced".into(), synced as f64);
    print_row(kind, &f);

    for paced in &plan.paced {
        eprintln!("{}: {n} streams × {}", kind.name(), paced.label);
        paced_phase(plan, paced, &mut b, &pids, open, &mut f).await;
    }

    // The reconnect storm.
    eprintln!(
        "{}: restart, then {open} subscribers reconnect at once",
        kind.name()
    );
    storm(plan, kind, paths, &mut b, &mut f, "storm").await;
    b.finish().await;
    f
}

/// One event to every one of the `open` streams every `p.interval`,
/// `p.events` times; the figures under `p.key`: deliveries/s asked and
/// reached within the window, server CPU per delivery, latency, loss.
async fn paced_phase(
    plan: &Plan,
    p: &Paced,
    b: &mut Bench,
    pids: &[u32],
    open: usize,
    f: &mut Figures,
) {
    let (interval, events) = (p.interval, p.events);
    let phase = b.begin_phase(1, events, 0);
    let cpu0 = server::cpu_s(pids);
    let start = Instant::now() + Duration::from_millis(50);
    let window = interval * events as u32;
    let pace = Pace::Every { start, interval };
    let publishing = {
        let ctx = b.ctx.clone();
        let until = start + window;
        tokio::spawn(client::publisher(ctx, phase, 0, events, pace, until))
    };
    tokio::time::sleep_until((start + window).into()).await;
    let in_window = b.ctx.delivered.load(Ordering::Relaxed);
    let cpu = server::cpu_s(pids) - cpu0;
    let published = publishing.await.expect("publisher").published;
    let expected = published * open as u64;
    b.wait_delivered(expected, plan.drain).await;
    let t = tally(&b.end_phase());
    let mut put = |name: &str, value: f64| f.insert(format!("{}.{name}", p.key), value);
    put(
        "asked",
        (events * open as u64) as f64 / window.as_secs_f64(),
    );
    put("dps", in_window as f64 / window.as_secs_f64());
    put("cpu", cpu / in_window.max(1) as f64 * 1e6);
    put("lost", expected.saturating_sub(t.unique) as f64);
    put("dup", t.duplicate as f64);
    put("reordered", t.reordered as f64);
    put("p50", t.latency.quantile_ms(0.5));
    put("p99", t.latency.quantile_ms(0.99));
    put("p999", t.latency.quantile_ms(0.999));
}

/// Restarts the server; publishes `storm_events` to the new process; then
/// every subscriber reconnects at once with its `Last-Event-ID`. Measures
/// the time from that order until each has received those events (its
/// replay), and what was lost; figures named `prefix.*`. With its history
/// in memory, what came before the restart is gone for all three servers;
/// ssehub says so with an `ssehub:gap` event first (counted, not waited
/// for). With `--data` (the `dstorm` run) ssehub still has it: no gap.
async fn storm(
    plan: &Plan,
    kind: Kind,
    paths: &Paths,
    b: &mut Bench,
    f: &mut Figures,
    prefix: &str,
) {
    let port = b.server().addr.port();
    let gaps0: u64 = b.subs.iter().map(|s| s.lock().expect("sub").gaps).sum();
    let errors0: u64 = b
        .subs
        .iter()
        .map(|s| s.lock().expect("sub").connect_errors)
        .sum();
    let mut old = b.server.take().expect("server");
    blocking(move || old.stop(Duration::from_secs(5))).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.count(|s| (s.open, false)).0 > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.server = Some(start_server(kind, port, paths, &b.extra).await);
    // A restart takes at least this long in practice; and nchan's ids count
    // seconds, so an event published within the second of the last one
    // before the restart could get an id below it and be missed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let events = plan.storm_events;
    let phase = b.begin_phase(1, events, events);
    let (published, _) = b
        .publish(
            phase,
            1,
            events,
            Pace::Max,
            Instant::now() + Duration::from_secs(10),
        )
        .await;
    let n = b.subs.len();
    let t0 = Instant::now();
    b.ctx.command.send_modify(|g| *g += 1);
    let deadline = t0 + Duration::from_secs(60);
    loop {
        let complete = b
            .subs
            .iter()
            .filter(|s| {
                s.lock()
                    .expect("sub")
                    .account
                    .as_ref()
                    .is_some_and(|a| a.complete_at.is_some())
            })
            .count();
        if complete == n || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let accounts = b.end_phase();
    let t = tally(&accounts);
    let gaps: u64 = b
        .subs
        .iter()
        .map(|s| s.lock().expect("sub").gaps)
        .sum::<u64>()
        - gaps0;
    let errors: u64 = b
        .subs
        .iter()
        .map(|s| s.lock().expect("sub").connect_errors)
        .sum::<u64>()
        - errors0;
    let at = |q: f64| {
        if t.complete_at.is_empty() {
            return f64::NAN;
        }
        let i =
            ((t.complete_at.len() as f64 * q).ceil() as usize).clamp(1, t.complete_at.len()) - 1;
        (t.complete_at[i] - t0).as_secs_f64()
    };
    f.insert(format!("{prefix}.subscribers"), n as f64);
    f.insert(format!("{prefix}.published"), published as f64);
    f.insert(format!("{prefix}.complete"), t.complete as f64);
    f.insert(
        format!("{prefix}.all_s"),
        if t.complete == n { at(1.0) } else { f64::NAN },
    );
    f.insert(format!("{prefix}.p50_s"), at(0.5));
    f.insert(
        format!("{prefix}.lost"),
        (published * n as u64).saturating_sub(t.unique) as f64,
    );
    f.insert(format!("{prefix}.dup"), t.duplicate as f64);
    f.insert(format!("{prefix}.gaps"), gaps as f64);
    f.insert(format!("{prefix}.connect_errors"), errors as f64);
}

/// A fixed publish rate, `redis_rate` events/s for `redis_time`, to `subs`
/// subscribers: with `on_redis`, published on hub A and delivered by hub B,
/// two ssehub processes on one Redis; without, one hub alone for both.
/// Latency runs from sending the `POST` to the subscriber reading the event.
async fn paced(plan: &Plan, paths: &Paths, subs: usize, on_redis: bool) -> Figures {
    let rate = (plan.redis_rate)(subs);
    let how = if on_redis { "redis" } else { "alone" };
    eprintln!(
        "ssehub: {subs} subscribers, {rate} events/s, {}",
        if on_redis {
            "published on A, delivered by B, on one Redis"
        } else {
            "one hub alone"
        }
    );
    let key = |k: &str| format!("r{subs}.{how}.{k}");
    let mut f = Figures::new();
    let mut b = if on_redis {
        Bench::start_on_redis(paths).await
    } else {
        Bench::start(Kind::Ssehub, paths).await
    };
    let open = b.subscribe(subs, 256, Duration::from_secs(30)).await;
    let synced = b.sync().await;
    f.insert(key("subscribers"), synced as f64);
    if open < subs || (synced as usize) < subs {
        eprintln!("  only {open} open, {synced} synced of {subs}");
    }
    let events = (rate as f64 * plan.redis_time.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs(1) / rate.max(1) as u32;
    let window = interval * events as u32;
    let phase = b.begin_phase(1, events, 0);
    let pids = b.pids();
    let cpu0 = server::cpu_s(&pids);
    let start = Instant::now() + Duration::from_millis(50);
    let pace = Pace::Every { start, interval };
    let ((published, errors), (in_window, cpu)) =
        tokio::join!(b.publish(phase, 1, events, pace, start + window), async {
            tokio::time::sleep_until((start + window).into()).await;
            (
                b.ctx.delivered.load(Ordering::Relaxed),
                server::cpu_s(&pids) - cpu0,
            )
        });
    let expected = published * open as u64;
    b.wait_delivered(expected, plan.drain).await;
    let t = tally(&b.end_phase());
    f.insert(key("published"), published as f64);
    f.insert(key("publish_errors"), errors as f64);
    f.insert(
        key("asked"),
        (events * open as u64) as f64 / window.as_secs_f64(),
    );
    f.insert(key("dps"), in_window as f64 / window.as_secs_f64());
    f.insert(key("cpu"), cpu / in_window.max(1) as f64 * 1e6);
    delivery_figures(&mut f, key, &t, expected, &b);
    b.finish().await;
    f
}

/// What the streams hold beyond a fresh server's own: `memory_streams` idle
/// streams; the same after a burst of `burst_events` events of
/// `burst_bytes` that every one has read; and while `replayers` more, each
/// with a tiny receive buffer and never reading, replay the whole history
/// (everything after its first event). Figures per stream (PSS, and what
/// the memory cgroup is charged) and their ratio to idle.
async fn memory(plan: &Plan, kind: Kind, paths: &Paths) -> Figures {
    let n = plan.memory_streams;
    eprintln!(
        "{}: {n} streams, a burst of {} × {} KiB, then {} replay it without reading",
        kind.name(),
        plan.burst_events,
        plan.burst_bytes / 1024,
        plan.replayers
    );
    let mut f = Figures::new();
    let mut b = Bench::start(kind, paths).await;
    let base = b.measure().await;
    let open = b.subscribe(n, 512, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = b.measure().await;
    // The first event of the history, and every stream's position.
    let synced = b.sync().await;
    let first_id = b.subs[0].lock().expect("sub").last_id.clone();

    let events = plan.burst_events;
    let phase = b.begin_phase(1, events, 0);
    let sent = b
        .publish_sized(
            phase,
            1,
            events,
            Pace::Max,
            Instant::now() + Duration::from_secs(30),
            plan.burst_bytes,
        )
        .await;
    let expected = sent.published * open as u64;
    b.wait_delivered(expected, plan.drain).await;
    let t = tally(&b.end_phase());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let burst = b.measure().await;

    let dial = Dial {
        never_read: Some(plan.replayer_buffer),
        id_query: kind.replay_query(),
        ..Dial::reading(None, Duration::from_secs(30))
    };
    let all = b
        .subscribe_dial(plan.replayers, dial, &first_id, Duration::from_secs(30))
        .await;
    let replayers = all.saturating_sub(open);
    // Long enough for every replay to have filled what the sockets take.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let replay = b.measure().await;
    let ports: std::collections::HashSet<u16> = b.subs[open.min(b.subs.len())..]
        .iter()
        .map(|s| s.lock().expect("sub").local_port)
        .collect();
    // What the server has written for them that their clients have not
    // taken: kernel memory outside the memory cgroup's figure (v1 charges
    // socket buffers apart), and how far each replay got.
    let (queued, _) = server::socket_queues(b.server().addr.port(), &ports);

    let per = |a: u64, b: u64, streams: usize| (a as f64 - b as f64) / streams.max(1) as f64;
    f.insert("mem.streams".into(), open as f64);
    f.insert("mem.synced".into(), synced as f64);
    f.insert("mem.burst_published".into(), sent.published as f64);
    f.insert(
        "mem.burst_lost".into(),
        expected.saturating_sub(t.unique) as f64,
    );
    f.insert("mem.replayers".into(), replayers as f64);
    f.insert(
        "mem.replay_queued_kib".into(),
        queued as f64 / 1024.0 / replayers.max(1) as f64,
    );
    let figures = [
        (
            "",
            base.0.pss_kib,
            idle.0.pss_kib,
            burst.0.pss_kib,
            replay.0.pss_kib,
        ),
        (
            "charged_",
            base.1.unwrap_or(0),
            idle.1.unwrap_or(0),
            burst.1.unwrap_or(0),
            replay.1.unwrap_or(0),
        ),
    ];
    for (what, base, idle, burst, replay) in figures {
        if what == "charged_" && base == 0 {
            continue; // no memory cgroup
        }
        let idle_kib = per(idle, base, open);
        let burst_kib = per(burst, base, open);
        let replay_kib = per(replay, base, open + replayers);
        let replayer_kib = per(replay, burst, replayers);
        f.insert(format!("mem.{what}idle_kib"), idle_kib);
        f.insert(format!("mem.{what}burst_kib"), burst_kib);
        f.insert(format!("mem.{what}burst_ratio"), burst_kib / idle_kib);
        f.insert(format!("mem.{what}replay_kib"), replay_kib);
        f.insert(format!("mem.{what}replay_ratio"), replay_kib / idle_kib);
        f.insert(format!("mem.{what}replayer_kib"), replayer_kib);
        f.insert(format!("mem.{what}replayer_ratio"), replayer_kib / idle_kib);
    }
    b.finish().await;
    f
}

/// The reconnect storm against ssehub with `--data`: the restarted hub
/// still has the history, so every subscriber gets exactly what it missed,
/// with no `ssehub:gap`.
async fn data_storm(plan: &Plan, paths: &Paths) -> Figures {
    let n = plan.data_storm_streams;
    eprintln!("ssehub --data: {n} streams, restart, then they reconnect at once");
    let mut f = Figures::new();
    let mut b = Bench::start_durable(paths, "storm").await;
    let open = b.subscribe(n, 512, Duration::from_secs(60)).await;
    let synced = b.sync().await;
    f.insert("dstorm.open".into(), open as f64);
    f.insert("dstorm.synced".into(), synced as f64);
    storm(plan, Kind::Ssehub, paths, &mut b, &mut f, "dstorm").await;
    b.finish().await;
    f
}

/// Publishing as fast as answers come, with 1 and then 8 publishers, for
/// `durable_time` each: ssehub in memory, with `--data --fsync always`, and
/// on a Redis that flushes its append-only file before every answer. No
/// subscriber: the figure is the log's. Latency is the publish's round
/// trip. The three run side by side and take turns in slices of a tenth
/// of `durable_time`, so that a disk whose speed drifts (a virtual one
/// does, by half within a minute) drifts under all three alike and the
/// ratios compare like with like. `SSEHUB_B=path` adds a fourth, another
/// ssehub build with `--data` (rows `d.disk_b.*` and `d.N.disk_b_disk` in
/// the results file): two builds compared in one run.
async fn durable(plan: &Plan, paths: &Paths) -> Figures {
    const SLICES: u32 = 10;
    let mut f = Figures::new();
    // What the disk itself does at this moment (the machine's other work
    // shares it): appends of 200 bytes, each flushed, on one thread.
    let (syncs, sync_p50) = blocking(|| fsync_probe(Duration::from_secs(1))).await;
    f.insert("d.fsync.rate".into(), syncs);
    f.insert("d.fsync.p50".into(), sync_p50);
    let other = std::env::var_os("SSEHUB_B").map(std::path::PathBuf::from);
    let mut hows = vec!["memory", "disk", "redis"];
    if other.is_some() {
        hows.push("disk_b");
    }
    let mut benches = Vec::new();
    for &how in &hows {
        eprintln!("ssehub: starting, event log {how}");
        benches.push(match how {
            "memory" => Bench::start(Kind::Ssehub, paths).await,
            "disk" => Bench::start_durable(paths, "publish").await,
            "disk_b" => {
                let mut paths = paths.clone();
                paths.ssehub = other.clone().expect("SSEHUB_B");
                Bench::start_durable(&paths, "publish-b").await
            }
            _ => Bench::start_on_redis_aof(paths).await,
        });
    }
    let slice = plan.durable_time / SLICES;
    for publishers in [1u32, 8] {
        eprintln!("ssehub: {publishers} publishers, taking turns");
        let mut sums: Vec<(PubResult, f64, f64)> = hows
            .iter()
            .map(|_| (PubResult::default(), 0.0, 0.0))
            .collect();
        for _ in 0..SLICES {
            for (b, sum) in benches.iter().zip(sums.iter_mut()) {
                let pids = b.pids();
                let cpu0 = server::cpu_s(&pids);
                let t0 = Instant::now();
                let r = b
                    .publish_sized(0, publishers, u64::MAX, Pace::Max, t0 + slice, 200)
                    .await;
                sum.1 += t0.elapsed().as_secs_f64();
                sum.2 += server::cpu_s(&pids) - cpu0;
                sum.0.published += r.published;
                sum.0.errors += r.errors;
                sum.0.latency.merge(&r.latency);
            }
        }
        for (how, (r, secs, cpu)) in hows.iter().zip(&sums) {
            let key = |k: &str| format!("d.{how}.{publishers}.{k}");
            f.insert(key("rate"), r.published as f64 / secs);
            f.insert(key("errors"), r.errors as f64);
            f.insert(key("p50"), r.latency.quantile_ms(0.5));
            f.insert(key("p99"), r.latency.quantile_ms(0.99));
            f.insert(key("cpu_us"), cpu / r.published.max(1) as f64 * 1e6);
        }
    }
    for b in benches {
        b.finish().await;
    }
    for publishers in [1, 8] {
        let rate = |how: &str| f[&format!("d.{how}.{publishers}.rate")];
        let (disk, redis, mem) = (rate("disk"), rate("redis"), rate("memory"));
        let b = other.is_some().then(|| rate("disk_b") / disk);
        f.insert(format!("d.{publishers}.disk_redis"), disk / redis);
        f.insert(format!("d.{publishers}.disk_memory"), disk / mem);
        if let Some(b) = b {
            f.insert(format!("d.{publishers}.disk_b_disk"), b);
        }
    }
    f
}

/// Appends of 200 bytes to a new file in a temporary directory, each
/// followed by `fdatasync`, for `time`: (flushes per second, median ms).
fn fsync_probe(time: Duration) -> (f64, f64) {
    use std::io::Write as _;
    let Ok(dir) = TempDir::new("fsync") else {
        return (f64::NAN, f64::NAN);
    };
    let Ok(mut file) = std::fs::File::create(dir.path.join("probe")) else {
        return (f64::NAN, f64::NAN);
    };
    let mut h = Histogram::default();
    let t0 = Instant::now();
    while t0.elapsed() < time {
        let t = Instant::now();
        if file.write_all(&[b'x'; 200]).is_err() || file.sync_data().is_err() {
            return (f64::NAN, f64::NAN);
        }
        h.record(t.elapsed().as_micros() as u64);
    }
    (
        h.total as f64 / t0.elapsed().as_secs_f64(),
        h.quantile_ms(0.5),
    )
}
