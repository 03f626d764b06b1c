//! Counters the hub owns (atomics, no statics) and their Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Each counter means one thing, the same as its HELP line and the
/// README's metrics table.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events accepted from publishers (answered 200).
    pub published: AtomicU64,
    /// Events written to subscriber sockets, counted after the write.
    pub delivered: AtomicU64,
    /// Subscribers the hub ended for falling behind.
    pub evicted: AtomicU64,
    /// 4xx and 5xx answers written: by a connection's thread, by the
    /// refusal thread, and on running out of descriptors.
    pub refused: AtomicU64,
    /// Open connections, streams included.
    pub connections: AtomicU64,
}

/// Values read under the hub lock, so they are consistent with each other.
pub struct Gauges {
    pub subscribers: usize,
    pub history_events: usize,
    pub max_subscribers: usize,
    /// Whether the shared log (Redis) is reachable; `None` for a hub alone.
    pub log_up: Option<(&'static str, bool)>,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(1024);
        let mut put = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        put(
            "ssehub_subscribers",
            "gauge",
            "Open event streams.",
            g.subscribers as u64,
        );
        put(
            "ssehub_max_subscribers",
            "gauge",
            "Open event streams allowed (after clamping to the machine's limits).",
            g.max_subscribers as u64,
        );
        put(
            "ssehub_events_published_total",
            "counter",
            "Events accepted from publishers.",
            self.published.load(Relaxed),
        );
        put(
            "ssehub_events_delivered_total",
            "counter",
            "Events written to subscriber sockets (replay and catch-up included), counted after the write.",
            self.delivered.load(Relaxed),
        );
        put(
            "ssehub_subscribers_evicted_total",
            "counter",
            "Subscribers ended by the hub because they fell behind the oldest retained event or their client took no data for two heartbeats.",
            self.evicted.load(Relaxed),
        );
        put(
            "ssehub_history_events",
            "gauge",
            "Events retained for replay.",
            g.history_events as u64,
        );
        match g.log_up {
            Some(("redis", up)) => put(
                "ssehub_redis_up",
                "gauge",
                "1 while Redis, the shared event log, is reachable; 0 while publishing is refused.",
                u64::from(up),
            ),
            Some((_, up)) => put(
                "ssehub_disk_up",
                "gauge",
                "1 while the event log's files take writes; 0 while publishing is refused.",
                u64::from(up),
            ),
            None => {}
        }
        put(
            "ssehub_connections",
            "gauge",
            "Open TCP connections, streams included.",
            self.connections.load(Relaxed),
        );
        put(
            "ssehub_requests_refused_total",
            "counter",
            "Requests and connections refused with a 4xx or 5xx answer, 503s for too many connections or no free descriptor included.",
            self.refused.load(Relaxed),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::add(&m.published, 3);
        Metrics::add(&m.delivered, 7);
        let text = m.render(&Gauges {
            subscribers: 2,
            history_events: 3,
            max_subscribers: 10,
            log_up: None,
        });
        for line in [
            "# TYPE ssehub_subscribers gauge\nssehub_subscribers 2\n",
            "# TYPE ssehub_events_published_total counter\nssehub_events_published_total 3\n",
            "ssehub_events_delivered_total 7\n",
            "ssehub_subscribers_evicted_total 0\n",
            "ssehub_history_events 3\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("ssehub_redis_up"));
        let text = m.render(&Gauges {
            subscribers: 0,
            history_events: 0,
            max_subscribers: 10,
            log_up: Some(("redis", false)),
        });
        assert!(text.contains("# TYPE ssehub_redis_up gauge\nssehub_redis_up 0\n"));
    }
}
