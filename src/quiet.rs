//! Rate limits for log lines about what a client can make happen thousands
//! of times a second (refusals): a few lines, then one a second, each saying
//! how many went unlogged. stderr is written synchronously, so a flood must
//! not become a flood of writes. Decides only; never logs itself.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines let through at once before the rate applies: sporadic refusals are
/// all logged, a flood is sampled.
const BURST: u32 = 5;
/// Then one line per this.
const EVERY: Duration = Duration::from_secs(1);

/// One limiter per kind of line, shared by the threads that log it.
pub struct Quiet {
    /// What the lines are about, plural: "refusals".
    what: &'static str,
    state: Mutex<State>,
}

struct State {
    /// Lines that may be logged now.
    allowance: u32,
    /// When the allowance last grew (None before the first line).
    refilled: Option<Instant>,
    unlogged: u64,
}

impl Quiet {
    pub const fn new(what: &'static str) -> Quiet {
        Quiet {
            what,
            state: Mutex::new(State {
                allowance: BURST,
                refilled: None,
                unlogged: 0,
            }),
        }
    }

    /// Some(suffix for the line) when a line may be logged at `now`, else
    /// None (and the line is counted). The suffix names the lines that were
    /// not logged since the last one: ` (12 similar refusals not logged)`.
    pub fn due(&self, now: Instant) -> Option<String> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let since = s
            .refilled
            .map_or(EVERY * BURST, |at| now.saturating_duration_since(at));
        let earned = (since.as_millis() / EVERY.as_millis()).min(u128::from(BURST)) as u32;
        if earned > 0 || s.refilled.is_none() {
            s.allowance = (s.allowance + earned).min(BURST);
            s.refilled = Some(now);
        }
        if s.allowance == 0 {
            s.unlogged += 1;
            return None;
        }
        s.allowance -= 1;
        Some(match std::mem::take(&mut s.unlogged) {
            0 => String::new(),
            n => format!(" ({n} similar {} not logged)", self.what),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_few_lines_then_one_a_second_and_counts_the_rest() {
        let q = Quiet::new("refusals");
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        for i in 0..BURST {
            assert_eq!(q.due(ms(u64::from(i))).as_deref(), Some(""), "line {i}");
        }
        for n in 10..=500 {
            assert_eq!(q.due(ms(n)), None);
        }
        assert_eq!(
            q.due(ms(1010)).as_deref(),
            Some(" (491 similar refusals not logged)")
        );
        assert_eq!(q.due(ms(1500)), None);
        assert_eq!(
            q.due(ms(2020)).as_deref(),
            Some(" (1 similar refusals not logged)")
        );
        // Quiet for a while: the burst is back.
        for i in 0..BURST {
            assert_eq!(q.due(ms(60_000 + u64::from(i))).as_deref(), Some(""));
        }
        assert_eq!(q.due(ms(60_010)), None);
    }
}
