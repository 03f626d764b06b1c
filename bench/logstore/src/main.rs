//! `cargo run --release -p logstore [DIR]`: the publish rate and latency of
//! 1 and 8 appenders, each append a durable commit of its own (no store here
//! shares one flush among concurrent writers), and the time to read every
//! event back in id order, for redb and for SQLite (WAL, synchronous=FULL).
//! The segment log of `--data` runs the same workload in its ignored test
//! `disk::tests::measure_publish_rate` (README, "Keeping history on disk").

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use redb::ReadableDatabase;

const APPENDS: usize = 3000;
const DATA_BYTES: usize = 200;

const EVENTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");

/// What one store does: append one event durably, and read all back.
trait Store: Send + Sync {
    fn append(&self, id: u64, topic: &str, data: &[u8]);
    fn read_all(&self) -> usize;
}

struct Redb(redb::Database);

impl Store for Redb {
    fn append(&self, id: u64, topic: &str, data: &[u8]) {
        let mut value = topic.as_bytes().to_vec();
        value.extend_from_slice(data);
        let txn = self.0.begin_write().expect("begin");
        txn.open_table(EVENTS)
            .expect("table")
            .insert(id, value.as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    }

    fn read_all(&self) -> usize {
        let txn = self.0.begin_read().expect("begin");
        let table = txn.open_table(EVENTS).expect("table");
        table
            .range(0..)
            .expect("range")
            .map(|e| e.expect("entry").1.value().len())
            .filter(|n| *n > 0)
            .count()
    }
}

struct Sqlite(PathBuf);

fn sqlite(path: &Path) -> rusqlite::Connection {
    let con = rusqlite::Connection::open(path).expect("open");
    con.busy_timeout(Duration::from_secs(30)).expect("timeout");
    con.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .expect("wal");
    con.execute_batch(
        "PRAGMA synchronous=FULL;
         CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, topic TEXT, data BLOB);",
    )
    .expect("schema");
    con
}

thread_local! {
    static CON: std::cell::RefCell<Option<rusqlite::Connection>> = const { std::cell::RefCell::new(None) };
}

impl Store for Sqlite {
    fn append(&self, id: u64, topic: &str, data: &[u8]) {
        CON.with(|c| {
            let mut c = c.borrow_mut();
            let con = c.get_or_insert_with(|| sqlite(&self.0));
            con.prepare_cached("INSERT INTO events (id, topic, data) VALUES (?1, ?2, ?3)")
                .expect("prepare")
                .execute(rusqlite::params![id as i64, topic, data])
                .expect("insert");
        });
    }

    fn read_all(&self) -> usize {
        let con = sqlite(&self.0);
        let mut stmt = con
            .prepare("SELECT id, topic, data FROM events ORDER BY id")
            .expect("prepare");
        let rows = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(2))
            .expect("query");
        rows.map(|r| r.expect("row"))
            .filter(|d| !d.is_empty())
            .count()
    }
}

fn measure(name: &str, store: Arc<dyn Store>, threads: usize) {
    let next = Arc::new(AtomicU64::new(1));
    let data = vec![b'x'; DATA_BYTES];
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (store, next, data) = (store.clone(), next.clone(), data.clone());
            thread::spawn(move || {
                (0..APPENDS / threads)
                    .map(|_| {
                        let t = Instant::now();
                        store.append(next.fetch_add(1, Ordering::Relaxed), "t", &data);
                        t.elapsed()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut lat: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    let t = Instant::now();
    let read = store.read_all();
    println!(
        "{name}, {threads} appenders: {:.0} appends/s, p50 {:.2} ms, p99 {:.2} ms; \
         read {read} back in {:.1} ms",
        lat.len() as f64 / secs,
        lat[lat.len() / 2].as_secs_f64() * 1e3,
        lat[lat.len() * 99 / 100].as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3
    );
}

fn main() {
    let base = std::env::args()
        .nth(1)
        .map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("logstore-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    for threads in [1, 8] {
        let path = dir.join(format!("redb-{threads}"));
        let db = redb::Database::create(&path).expect("redb");
        measure("redb", Arc::new(Redb(db)), threads);
        let path = dir.join(format!("sqlite-{threads}"));
        measure("sqlite", Arc::new(Sqlite(path)), threads);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
