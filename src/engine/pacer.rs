//! The upload rate cap: a token bucket over upload frames' wire bytes, so
//! a user on a phone hotspot keeps chatting while a video uploads.
//! Downloads and probes are never held back (they are small requests).
//!
//! Invariants: without a rate every frame may go. With one, a frame may go
//! whenever the bucket is not in debt; its bytes are then taken (the bucket
//! may go negative by one frame), and the bucket refills at `rate` bytes/s
//! up to a small burst (50 ms of the rate), so over any long stretch the
//! bytes sent are the rate times the time, plus at most one burst and one
//! frame.

use std::time::{Duration, Instant};

/// Burst allowance, as time at the capped rate.
const BURST: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
pub(super) struct Pacer {
    rate: Option<u64>,
    tokens: f64,
    last: Option<Instant>,
}

impl Pacer {
    pub fn new(rate: Option<u64>) -> Pacer {
        Pacer {
            rate: rate.filter(|r| *r > 0),
            tokens: 0.0,
            last: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let Some(rate) = self.rate else { return };
        if let Some(last) = self.last {
            let earned = now.saturating_duration_since(last).as_secs_f64() * rate as f64;
            let burst = BURST.as_secs_f64() * rate as f64;
            self.tokens = (self.tokens + earned).min(burst);
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
    }

    /// Whether an upload frame may go now.
    pub fn allows(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.rate.is_none() || self.tokens >= 0.0
    }

    /// An upload frame of `bytes` went.
    pub fn spent(&mut self, bytes: usize) {
        if self.rate.is_some() {
            self.tokens -= bytes as f64;
        }
    }

    /// When the bucket is out of debt again (`None`: it is not in debt).
    pub fn ready_at(&self) -> Option<Instant> {
        let rate = self.rate?;
        if self.tokens >= 0.0 {
            return None;
        }
        let wait = Duration::from_secs_f64(-self.tokens / rate as f64);
        Some(self.last? + wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_rate_everything_goes() {
        let mut p = Pacer::new(None);
        let now = Instant::now();
        for _ in 0..1000 {
            assert!(p.allows(now));
            p.spent(50_000);
        }
        assert_eq!(p.ready_at(), None);
    }

    #[test]
    fn a_rate_spaces_frames_to_the_rate() {
        let rate = 1_000_000; // bytes/s
        let mut p = Pacer::new(Some(rate));
        let start = Instant::now();
        let mut now = start;
        let mut sent = 0u64;
        while sent < 10 * rate {
            if p.allows(now) {
                p.spent(44_000);
                sent += 44_000;
            } else {
                now = p.ready_at().expect("in debt");
            }
        }
        let secs = now.duration_since(start).as_secs_f64();
        let measured = sent as f64 / secs;
        assert!((measured / rate as f64 - 1.0).abs() < 0.02, "{measured}");
    }
}
