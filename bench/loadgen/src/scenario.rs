//! The scenarios, each against a freshly started server so no stream of an
//! earlier phase lingers: fan-out at the maximum publish rate (100 and
//! 1,000 subscribers); then N idle streams, the same N at 10 events/s, and a
//! reconnect storm after a restart; then (ssehub only) a fixed publish rate
//! through two hub processes on one Redis, and the same load on one hub
//! alone. Every figure lands in `Figures` under a key `report.rs` knows.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::account::{Account, Histogram};
use crate::client::{self, Ctx, Dial, Pace, Sub, SubState, STOP};
use crate::server::{self, Kind, Paths, Redis, Server};

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
    ctx: Arc<Ctx>,
    subs: Vec<Sub>,
    tasks: Vec<JoinHandle<()>>,
    next_phase: u32,
}

impl Bench {
    async fn start(kind: Kind, paths: &Paths) -> Bench {
        let port = server::free_port().expect("a free port");
        let server = start_server(kind, port, paths).await;
        let ctx = Arc::new(Ctx::new(
            server.addr,
            kind.subscribe_path(),
            kind.publish_path(),
        ));
        Bench {
            server: Some(server),
            publish_server: None,
            redis: None,
            ctx,
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
        let dial = Dial {
            pace: Some(Arc::new(Semaphore::new(pace))),
            patience: timeout,
        };
        for _ in 0..n {
            let sub: Sub = Arc::new(Mutex::new(SubState::default()));
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
        let handles: Vec<_> = (0..publishers)
            .map(|i| {
                tokio::spawn(client::publisher(
                    self.ctx.clone(),
                    phase,
                    i,
                    cap,
                    pace,
                    until,
                ))
            })
            .collect();
        let (mut published, mut errors) = (0, 0);
        for h in handles {
            let r = h.await.expect("publisher task");
            published += r.published;
            errors += r.errors;
            if let Some(e) = r.last_error {
                eprintln!("  publisher: {e}");
            }
        }
        (published, errors)
    }

    /// Ends every subscriber and stops the server.
    async fn finish(mut self) {
        let _ = self.ctx.command.send(STOP);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let (server, publish_server, redis) = (
            self.server.take(),
            self.publish_server.take(),
            self.redis.take(),
        );
        blocking(move || {
            for mut s in [server, publish_server].into_iter().flatten() {
                s.stop(Duration::from_secs(5));
            }
            if let Some(mut r) = redis {
                r.stop(Duration::from_secs(5));
            }
        })
        .await;
    }
}

async fn start_server(kind: Kind, port: u16, paths: &Paths) -> Server {
    let paths = paths.clone();
    blocking(move || Server::start(kind, port, &paths))
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
    storm(plan, kind, paths, &mut b, &mut f).await;
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
/// replay), and what was lost. The history of all three servers is in
/// memory, so what came before the restart is gone for all three; ssehub
/// says so with an `ssehub:gap` event first (counted, not waited for).
async fn storm(plan: &Plan, kind: Kind, paths: &Paths, b: &mut Bench, f: &mut Figures) {
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
    b.server = Some(start_server(kind, port, paths).await);
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
    f.insert("storm.subscribers".into(), n as f64);
    f.insert("storm.published".into(), published as f64);
    f.insert("storm.complete".into(), t.complete as f64);
    f.insert(
        "storm.all_s".into(),
        if t.complete == n { at(1.0) } else { f64::NAN },
    );
    f.insert("storm.p50_s".into(), at(0.5));
    f.insert(
        "storm.lost".into(),
        (published * n as u64).saturating_sub(t.unique) as f64,
    );
    f.insert("storm.dup".into(), t.duplicate as f64);
    f.insert("storm.gaps".into(), gaps as f64);
    f.insert("storm.connect_errors".into(), errors as f64);
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
