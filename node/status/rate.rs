//! A transfer rate over the last few seconds, from a growing byte count: what `cascade
//! status` shows as "now", and what the progress log's ETA is computed from.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the rate looks.
const WINDOW: Duration = Duration::from_secs(3);
/// Shortest span a rate is computed over (a first sample alone says nothing).
const MIN_SPAN: Duration = Duration::from_millis(500);

/// Samples of a byte count, newest last, none older than [`WINDOW`] but the one just before it.
#[derive(Debug, Default)]
pub struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    /// Records that `total` bytes were done at `now`, and returns the bytes per second over the
    /// last [`WINDOW`] (0 until at least [`MIN_SPAN`] was seen).
    pub fn sample(&mut self, now: Instant, total: u64) -> u64 {
        self.samples.push_back((now, total));
        // Keep one sample at or before the window's start, so the span covers all of it.
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= WINDOW {
            self.samples.pop_front();
        }
        let (t0, b0) = self.samples[0];
        let span = now.duration_since(t0);
        if span < MIN_SPAN {
            return 0;
        }
        (total.saturating_sub(b0) as f64 / span.as_secs_f64()) as u64
    }

    /// Seconds left for `left` bytes at `rate` bytes per second (`None` while the rate is 0).
    pub fn eta(left: u64, rate: u64) -> Option<Duration> {
        (rate > 0).then(|| Duration::from_secs(left.div_ceil(rate)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_follows_the_last_seconds_only() {
        let t0 = Instant::now();
        let mut r = Rate::default();
        assert_eq!(r.sample(t0, 0), 0);
        assert_eq!(r.sample(t0 + Duration::from_millis(100), 100), 0);
        // 1 MB/s for 10 s.
        let mut rate = 0;
        for s in 1..=10 {
            rate = r.sample(t0 + Duration::from_secs(s), s * 1_000_000);
        }
        assert_eq!(rate, 1_000_000);
        // Then stalled: within the window the rate falls, after it it is 0.
        let falling = r.sample(t0 + Duration::from_secs(11), 10_000_000);
        assert!(falling < 1_000_000 && falling > 0, "{falling}");
        for s in 12..=14 {
            rate = r.sample(t0 + Duration::from_secs(s), 10_000_000);
        }
        assert_eq!(rate, 0);
        assert!(r.samples.len() <= 5);
    }

    #[test]
    fn eta_needs_a_rate() {
        assert_eq!(Rate::eta(10, 0), None);
        assert_eq!(Rate::eta(10, 3), Some(Duration::from_secs(4)));
    }
}
