//! Checking every delivery: per subscriber and phase, which events arrived
//! (a bitset per publisher sequence), duplicates, reordering within one
//! publisher's sequence, and a latency histogram from the send time in the
//! payload.

use std::time::Instant;

use crate::wire::Payload;

/// Latency buckets in microseconds: exact below 16 µs, then 16 buckets per
/// power of two (within ~3%), up to 2^28 µs (~4.5 min).
const BUCKETS: usize = 16 + 24 * 16;

fn bucket(us: u64) -> usize {
    if us < 16 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros() as usize;
    let m = ((us >> (e - 4)) & 15) as usize;
    (16 + (e - 4) * 16 + m).min(BUCKETS - 1)
}

/// The middle of a bucket, in microseconds.
fn bucket_value(i: usize) -> f64 {
    if i < 16 {
        return i as f64;
    }
    let e = (i - 16) / 16 + 4;
    let m = ((i - 16) % 16) as u64;
    let width = 1u64 << (e - 4);
    ((16 + m) << (e - 4)) as f64 + width as f64 / 2.0
}

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    pub total: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        self.counts[bucket(us)] += 1;
        self.total += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    /// The `q` quantile (0..1) in milliseconds; NaN when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.total == 0 {
            return f64::NAN;
        }
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_value(i) / 1000.0;
            }
        }
        f64::NAN
    }
}

/// What one subscriber received in one phase.
pub struct Account {
    pub phase: u32,
    /// Sequence numbers each publisher may use in this phase.
    cap: u64,
    seen: Vec<u64>,
    last: Vec<Option<u64>>,
    pub unique: u64,
    pub duplicate: u64,
    pub reordered: u64,
    /// Events of this phase whose sequence is outside the cap (a bug).
    pub invalid: u64,
    pub latency: Histogram,
    pub last_at: Option<Instant>,
    /// When `unique` reached `target` (if a target was set).
    pub target: u64,
    pub complete_at: Option<Instant>,
}

impl Account {
    pub fn new(phase: u32, publishers: usize, cap: u64, target: u64) -> Account {
        let bits = publishers as u64 * cap;
        Account {
            phase,
            cap,
            seen: vec![0; bits.div_ceil(64) as usize],
            last: vec![None; publishers],
            unique: 0,
            duplicate: 0,
            reordered: 0,
            invalid: 0,
            latency: Histogram::default(),
            last_at: None,
            target,
            complete_at: None,
        }
    }

    /// Records one delivery; returns true when it was new.
    pub fn record(&mut self, p: &Payload, now: Instant, now_ns: u64) -> bool {
        let publisher = p.publisher as usize;
        if publisher >= self.last.len() || p.seq >= self.cap {
            self.invalid += 1;
            return false;
        }
        let bit = publisher as u64 * self.cap + p.seq;
        let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
        if self.seen[word] & mask != 0 {
            self.duplicate += 1;
            return false;
        }
        self.seen[word] |= mask;
        if self.last[publisher].is_some_and(|l| p.seq < l) {
            self.reordered += 1;
        } else {
            self.last[publisher] = Some(p.seq);
        }
        self.unique += 1;
        self.latency.record(now_ns.saturating_sub(p.sent_ns) / 1000);
        self.last_at = Some(now);
        if self.unique == self.target {
            self.complete_at = Some(now);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for us in [0, 1, 15, 16, 17, 31, 32, 100, 1000, 12345, 1 << 20, 1 << 27] {
            let b = bucket(us);
            assert!(b >= last);
            last = b;
            let v = bucket_value(b);
            assert!(
                (v - us as f64).abs() <= (us as f64 * 0.04).max(0.5),
                "{us} {v}"
            );
        }
    }

    #[test]
    fn account_counts_dup_and_reorder() {
        let now = Instant::now();
        let mut a = Account::new(1, 2, 10, 3);
        let p = |publisher, seq| Payload {
            phase: 1,
            publisher,
            seq,
            sent_ns: 0,
        };
        assert!(a.record(&p(0, 1), now, 5_000));
        assert!(a.record(&p(0, 0), now, 5_000));
        assert!(!a.record(&p(0, 1), now, 5_000));
        assert!(a.record(&p(1, 9), now, 5_000));
        assert!(!a.record(&p(1, 10), now, 5_000));
        assert_eq!(
            (a.unique, a.duplicate, a.reordered, a.invalid),
            (3, 1, 1, 1)
        );
        assert!(a.complete_at.is_some());
        assert_eq!(a.latency.quantile_ms(0.5), 0.005);
    }
}
