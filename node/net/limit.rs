//! Rate limits: a token bucket shared by every stream a node sends to its children
//! (`upload_limit`, like rsync's `--bwlimit`).
//!
//! The bucket is plain logic over instants ([`Bucket::take`]); [`Limiter`] wraps it for async
//! senders. Taking more than is available puts the bucket in debt, and the taker waits until
//! the debt is repaid, so writes of any size are allowed and the long-run rate holds.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Token bucket: `rate` bytes per second, at most `burst` bytes saved up.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        // A tenth of a second of traffic, at least 64 KiB, may go out at once.
        let burst = (rate / 10.0).max(64.0 * 1024.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `n` bytes at `now`; returns how long the taker must wait before sending them.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// A bucket shared by async senders.
#[derive(Debug)]
pub struct Limiter {
    bucket: Mutex<Bucket>,
}

impl Limiter {
    pub fn new(bytes_per_second: u64) -> Self {
        Limiter {
            bucket: Mutex::new(Bucket::new(bytes_per_second, Instant::now())),
        }
    }

    /// Waits until `n` more bytes may be sent.
    pub async fn acquire(&self, n: u64) {
        let wait = self
            .bucket
            .lock()
            .expect("limiter lock")
            .take(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Parses a rate such as `20MiB/s`, `500 KB/s`, `1.5GiB` or `20M`. The unit is required: a
/// bare number is refused, because rsync's `--bwlimit=2000` means KiB/s and a number here
/// could be read either way. KB/MB/GB (and B) are powers of 1000; KiB/MiB/GiB powers of 1024;
/// rsync's one-letter suffixes K/M/G (either case) are KiB/MiB/GiB, as in `--bwlimit=20M`.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate like \"20MiB/s\" or \"20M\""))?;
    let mult = match unit.trim() {
        "" => {
            return Err(format!(
                "{s:?} has no unit: write \"{num}B/s\" for bytes per second or \"{num}K\" for KiB/s (what rsync's --bwlimit={num} means)"
            ))
        }
        "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" | "K" | "k" => 1024.0,
        "MiB" | "M" | "m" => 1024.0 * 1024.0,
        "GiB" | "G" | "g" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use B, KB, MB, GB, KiB, MiB, GiB, or K, M, G as rsync's --bwlimit does: KiB, MiB, GiB)"
            ))
        }
    };
    let rate = num * mult;
    if !(rate >= 1.0 && rate.is_finite()) {
        return Err(format!("{s:?} must be at least 1 byte per second"));
    }
    Ok(rate as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_run_rate_holds_whatever_the_write_size() {
        let t0 = Instant::now();
        for chunk in [1400u64, 64 * 1024, 1 << 20, 8 << 20] {
            let mut b = Bucket::new(10 << 20, t0);
            let mut now = t0;
            let mut sent = 0u64;
            while sent < 100 << 20 {
                now += b.take(chunk, now);
                sent += chunk;
            }
            let secs = now.duration_since(t0).as_secs_f64();
            // What was sent at 10 MiB/s, less the initial burst (0.1 s of traffic).
            let want = sent as f64 / (10 << 20) as f64 - 0.1;
            assert!(
                (secs - want).abs() < 0.01,
                "chunk {chunk}: {secs} s, want {want} s"
            );
        }
    }

    #[test]
    fn a_rate_needs_a_unit_and_takes_rsyncs_suffixes() {
        assert_eq!(parse_rate("20MiB/s"), Ok(20 << 20));
        assert_eq!(parse_rate("20M"), Ok(20 << 20));
        assert_eq!(parse_rate("2000k"), Ok(2000 << 10));
        assert_eq!(parse_rate("1.5 MB/s"), Ok(1_500_000));
        assert_eq!(parse_rate("4096B/s"), Ok(4096));
        let bare = parse_rate("2000").unwrap_err();
        assert!(bare.contains("no unit") && bare.contains("2000K"), "{bare}");
        assert!(parse_rate("3 furlongs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_rate("0.1B").is_err());
    }

    #[test]
    fn idle_time_saves_at_most_a_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1 << 20, t0);
        assert_eq!(b.take(64 * 1024, t0), Duration::ZERO);
        // An hour idle allows only one burst more, not an hour's worth.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.take(100 * 1024, later), Duration::ZERO);
        assert!(b.take(1 << 20, later) > Duration::from_millis(900));
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("20MiB/s"), Ok(20 << 20));
        assert_eq!(parse_rate("500 KB/s"), Ok(500_000));
        assert_eq!(parse_rate("1.5GiB"), Ok(1_610_612_736));
        assert!(parse_rate("1000000").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10 furlongs/s")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_rate("0MiB/s").is_err());
    }
}
