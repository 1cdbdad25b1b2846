//! The congestion window: how many chunk requests may be unanswered at once,
//! counted across every file on the connection.
//!
//! * [`WindowPolicy::Fixed`]`(n)`: always `n`. `Fixed(5)` is today's client
//!   (`MAX_CWND_SIZE`), `Fixed(1)` the article's stop-and-wait.
//! * [`WindowPolicy::Adaptive`] (default): a delay-based controller in the
//!   manner of TCP Vegas. Chunks are acknowledged by the server only after it
//!   wrote them, so the round-trip time of a chunk is the path delay plus
//!   whatever queue sits in front of it (the link's bottleneck, the server's
//!   disk). With `base` the smallest round trip seen (the empty path) and
//!   `rtt` the smallest round trip of the last round (one window's worth of
//!   acknowledgements), `queued = cwnd * (1 - base/rtt)` estimates how many of
//!   our chunks are waiting in a queue rather than moving.
//!   - Slow start: while `queued < alpha` the window doubles every round;
//!     the first round with `queued >= alpha` ends slow start.
//!   - Then, once per round: `queued < alpha` → `cwnd += 1` (the path has
//!     room); `queued > beta` → `cwnd -= ceil((queued - beta) / 2)` (a queue is
//!     building, at the link or behind a slow disk); otherwise hold.
//!   - The window only grows in rounds where it was actually full, so an idle
//!     or app-limited sender does not inflate it.
//!   - `base` is re-learned every [`BASE_RTT_LIFETIME`] so that a path whose
//!     delay really grew is not mistaken for a queue forever.
//!
//!   The result keeps between `alpha` and `beta` chunks queued: enough to keep
//!   the bottleneck busy (full bandwidth), few enough that a slow disk on the
//!   server does not get hundreds of chunks piled up in front of it. Bounded
//!   by `[min, max]`; it starts at `initial` (5, today's window) and resets
//!   on every new connection.
//!   - **Delivery-rate guard** (issue 16). Each round also measures its
//!     delivery rate (acknowledgements per second since the previous round
//!     ended). After a cut, the next round's rate is compared with the rate
//!     of the round that decided the cut: below [`GUARD`] (80 %) of it, the
//!     cut cost throughput, so the window goes back to its size before the
//!     cut and no cut is made for [`GUARD_LIFETIME`]. On a congested link a
//!     cut leaves a queue at the bottleneck and the rate stays flat, so the
//!     guard never fires and Vegas works as before. Against the deployed
//!     server it fires once: that server has one worker per connection and
//!     no `TCP_NODELAY`, so when a cut leaves the client silent for a few
//!     replies, Nagle holds the server's next replies until the client's
//!     delayed ACK (40 ms), the worker runs dry, the held replies come back
//!     with a huge round trip, and plain Vegas cuts again: a spiral down to
//!     the floor.
//!   - While the verdict stands, Vegas runs without cuts (it may still
//!     grow the window by one a round while its queue estimate is small).
//!     When the verdict expires, Vegas may cut again, which tests it again.
//!
//!   Why a guard on Vegas and not BBR: both read the same signal (rate flat
//!   while the delay grows) at the moment the bottleneck fills, whether it is
//!   a link or the server; only *what a cut does to the rate* tells them
//!   apart. BBR shrinks the window on purpose (drain, ProbeRTT every 10 s,
//!   a target of about two BDPs, and the BDP of a server-bound loopback path
//!   is one or two chunks), so each of those would be a stall here; Vegas
//!   with the guard keeps its measured 40 ms / 100 ms link results and stops
//!   shrinking where shrinking hurts. Figures that decided it, simulated
//!   (`SimConfig::deployed`, 32 MiB, 3 seeds): plain Vegas 15.6 MB/s against
//!   fixed:5 31.8, fixed:32 32.6, fixed:128 31.8; with the guard 31.0 (one
//!   40 ms stall for the test cut). Measured (`cargo bench --bench throughput
//!   -- deployed-model`, a loopback fake with that timing): plain Vegas 0.91x
//!   the best fixed window, with the guard 0.99x; with `TCP_NODELAY` on the
//!   fake, plain Vegas had no dip (1.00x), so Nagle is the mechanism.
//!
//!   Measured since on the real deployed server (built on the same machine,
//!   README "Issue 16, third round"): every window from 3 up gives the same
//!   rate (rotated rounds, medians: fixed:5 58.2, fixed:512 56.9 MB/s), a
//!   full window parks about 20 MB of chunks in that server's memory, and
//!   the stalls the guard answers are Nagle holding replies for the
//!   client's delayed ACK. The runtime now acknowledges that server's
//!   replies at once (`TCP_QUICKACK`, Linux), which removes the stall at
//!   its cause; the guard stays for other platforms and for embedders that
//!   drive this engine over their own sockets.
//!
//!   Why the window is not filled once the server is found to be the
//!   bottleneck (it was, for a while: doubling to `max` after the guard
//!   fired): that bet on the measurement of the deployed server at
//!   512 (44.8 against 39.2 MB/s at 5), which the real server built here
//!   did not reproduce (the shape came from a fixed run order), while a
//!   full window costs that server about 20 MB per connection. Neither
//!   model gains from it either (simulated, 3 seeds: fixed:5 31.7, fixed:32
//!   32.6, fixed:128 31.8, fixed:512 32.6 MB/s). The link tests are
//!   unchanged (the guard never fires there).
//!
//! Invariant: `cwnd()` is always within `[min, max]` (or exactly `n` for
//! `Fixed(n)`); the engine never has more requests unanswered than `cwnd()`
//! allows at the moment it sends.

use std::time::{Duration, Instant};

/// How the window is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowPolicy {
    Fixed(u32),
    Adaptive { initial: u32, min: u32, max: u32 },
}

impl Default for WindowPolicy {
    fn default() -> Self {
        WindowPolicy::adaptive()
    }
}

impl WindowPolicy {
    /// The default adaptive window: starts at 5, between 5 and 512 chunks.
    /// The floor is today's fixed window, so adaptive never keeps fewer
    /// chunks in flight than the client it replaces.
    pub fn adaptive() -> WindowPolicy {
        WindowPolicy::Adaptive {
            initial: 5,
            min: 5,
            max: 512,
        }
    }

    /// Parses `adaptive`, `adaptive:MAX` or `fixed:N`.
    pub fn parse(s: &str) -> Result<WindowPolicy, String> {
        let bad = || {
            format!("window {s:?}: expected `adaptive`, `adaptive:MAX` or `fixed:N` with N >= 1")
        };
        match s.split_once(':') {
            None if s == "adaptive" => Ok(WindowPolicy::adaptive()),
            Some(("adaptive", max)) => {
                let max: u32 = max.parse().map_err(|_| bad())?;
                if max < 1 {
                    return Err(bad());
                }
                Ok(WindowPolicy::Adaptive {
                    initial: 5.min(max),
                    min: 5.min(max),
                    max,
                })
            }
            Some(("fixed", n)) => match n.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(WindowPolicy::Fixed(n)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for WindowPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WindowPolicy::Fixed(n) => write!(f, "fixed:{n}"),
            WindowPolicy::Adaptive { .. } => write!(f, "adaptive"),
        }
    }
}

/// Below this many estimated queued chunks the adaptive window grows.
const ALPHA: f64 = 3.0;
/// Above this many estimated queued chunks the adaptive window shrinks.
const BETA: f64 = 8.0;
/// A round after a cut delivering less than this share of the round before
/// it means the cut cost throughput (a server bottleneck, not a link queue).
/// A 40 ms Nagle stall in a ~10 ms round drops it to about 20 %; rounds on
/// a link vary by a few per cent.
pub const GUARD: f64 = 0.8;
/// How long the guard's verdict stands before a cut is tried again.
pub const GUARD_LIFETIME: Duration = Duration::from_secs(10);
/// How long a measured minimum round trip stays the reference.
pub const BASE_RTT_LIFETIME: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Window {
    policy: WindowPolicy,
    cwnd: u32,
    slow_start: bool,
    base_rtt: Option<Duration>,
    base_rtt_at: Option<Instant>,
    round_min_rtt: Option<Duration>,
    /// The round ends when a request numbered at least this is acknowledged.
    round_end_req: u64,
    /// The window was full at some point in this round.
    round_was_full: bool,
    /// When this round started (the previous round's end).
    round_start: Option<Instant>,
    /// Acknowledgements in this round.
    round_acked: u64,
    /// The window before the last cut and the delivery rate (acks per
    /// second) of the round that decided it, until the next round says
    /// whether the cut cost throughput.
    cut_check: Option<(u32, f64)>,
    /// No cuts before this: the last cut cost delivery rate (see the module
    /// docs, "delivery-rate guard").
    no_cut_until: Option<Instant>,
}

impl Window {
    pub fn new(policy: WindowPolicy) -> Window {
        let mut w = Window {
            policy,
            cwnd: 0,
            slow_start: true,
            base_rtt: None,
            base_rtt_at: None,
            round_min_rtt: None,
            round_end_req: 0,
            round_was_full: false,
            round_start: None,
            round_acked: 0,
            cut_check: None,
            no_cut_until: None,
        };
        w.reset();
        w
    }

    pub fn policy(&self) -> WindowPolicy {
        self.policy
    }

    /// The number of requests that may be unanswered now.
    pub fn cwnd(&self) -> u32 {
        self.cwnd
    }

    /// The smallest round trip measured on this connection.
    pub fn base_rtt(&self) -> Option<Duration> {
        self.base_rtt
    }

    /// A new connection: start again from the initial window.
    pub fn reset(&mut self) {
        self.cwnd = match self.policy {
            WindowPolicy::Fixed(n) => n.max(1),
            WindowPolicy::Adaptive { initial, min, max } => initial.clamp(min.max(1), max.max(1)),
        };
        self.slow_start = true;
        self.base_rtt = None;
        self.base_rtt_at = None;
        self.round_min_rtt = None;
        self.round_end_req = 0;
        self.round_was_full = false;
        self.round_start = None;
        self.round_acked = 0;
        self.cut_check = None;
        self.no_cut_until = None;
    }

    /// Whether the delivery-rate guard holds the window from shrinking at
    /// `now` (a recent cut cost throughput).
    pub fn holding(&self, now: Instant) -> bool {
        self.no_cut_until.is_some_and(|t| now < t)
    }

    /// Called when a request goes out; `in_flight` counts it.
    pub fn on_send(&mut self, in_flight: u32) {
        if in_flight >= self.cwnd {
            self.round_was_full = true;
        }
    }

    /// Called for every success reply: `req` is the request's number,
    /// `next_req` the number the next request will get.
    pub fn on_ack(&mut self, now: Instant, rtt: Duration, req: u64, next_req: u64) {
        let WindowPolicy::Adaptive { min, max, .. } = self.policy else {
            return;
        };
        let expired = self
            .base_rtt_at
            .is_some_and(|at| now.saturating_duration_since(at) > BASE_RTT_LIFETIME);
        if self.base_rtt.is_none_or(|b| rtt < b) || expired {
            self.base_rtt = Some(rtt);
            self.base_rtt_at = Some(now);
        }
        self.round_min_rtt = Some(self.round_min_rtt.map_or(rtt, |r| r.min(rtt)));
        self.round_acked += 1;
        let round_start = *self.round_start.get_or_insert(now - rtt);
        if req < self.round_end_req {
            return;
        }
        // End of a round: adjust once.
        let (Some(base), Some(round_rtt)) = (self.base_rtt, self.round_min_rtt) else {
            return;
        };
        let lo = min.max(1);
        let hi = max.max(lo);
        let elapsed = now.saturating_duration_since(round_start).as_secs_f64();
        let rate = (elapsed > 0.0).then(|| self.round_acked as f64 / elapsed);
        // Delivery-rate guard: did the last cut cost throughput?
        if let (Some((before, rate_before)), Some(rate)) = (self.cut_check.take(), rate) {
            if rate < GUARD * rate_before {
                tracing::debug!(
                    rate,
                    rate_before,
                    before,
                    "window: a cut cost delivery rate; the server is the bottleneck"
                );
                self.cwnd = self.cwnd.max(before);
                self.no_cut_until = Some(now + GUARD_LIFETIME);
            }
        }
        let holding = self.holding(now);
        let round_rtt = round_rtt.max(Duration::from_nanos(1));
        let queued = self.cwnd as f64 * (1.0 - base.as_secs_f64() / round_rtt.as_secs_f64());
        if queued < ALPHA {
            if self.round_was_full {
                self.cwnd = if self.slow_start {
                    self.cwnd.saturating_mul(2)
                } else {
                    self.cwnd + 1
                };
            }
        } else {
            self.slow_start = false;
            if queued > BETA && self.cwnd > lo && !holding {
                let cut = ((queued - BETA) / 2.0).ceil() as u32;
                self.cut_check = rate.map(|r| (self.cwnd, r));
                self.cwnd = self.cwnd.saturating_sub(cut.max(1));
            }
        }
        self.cwnd = self.cwnd.clamp(lo, hi);
        self.round_min_rtt = None;
        self.round_was_full = false;
        self.round_end_req = next_req;
        self.round_start = Some(now);
        self.round_acked = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_policies() {
        assert_eq!(WindowPolicy::parse("fixed:5"), Ok(WindowPolicy::Fixed(5)));
        assert_eq!(
            WindowPolicy::parse("adaptive"),
            Ok(WindowPolicy::adaptive())
        );
        assert!(matches!(
            WindowPolicy::parse("adaptive:64"),
            Ok(WindowPolicy::Adaptive { max: 64, .. })
        ));
        assert!(WindowPolicy::parse("fixed:0").is_err());
        assert!(WindowPolicy::parse("fast").is_err());
    }

    /// Drives the controller with a model: a path of `base` delay and a
    /// bottleneck that serves one chunk per `service`; a round trip is the
    /// delay plus the queue the window builds.
    fn converge(base: Duration, service: Duration, rounds: usize) -> u32 {
        let mut w = Window::new(WindowPolicy::adaptive());
        let t0 = Instant::now();
        let mut req = 0u64;
        let mut now = t0;
        for _ in 0..rounds {
            let cwnd = w.cwnd() as u64;
            let bdp = base.as_secs_f64() / service.as_secs_f64();
            let queue = (cwnd as f64 - bdp).max(0.0);
            let rtt = base + service.mul_f64(queue + 1.0);
            for _ in 0..cwnd {
                w.on_send(cwnd as u32);
            }
            let first = req;
            req += cwnd;
            for r in first..req {
                w.on_ack(now, rtt, r, req);
            }
            now += rtt;
        }
        w.cwnd()
    }

    #[test]
    fn adaptive_fills_a_long_fat_path_and_stays_small_on_a_short_one() {
        // 40 ms round trip, 1.75 ms per chunk at 200 Mbit/s: about 23 chunks fill it.
        let long = converge(Duration::from_millis(40), Duration::from_micros(1750), 60);
        assert!((23..=23 + 2 * BETA as u32).contains(&long), "cwnd {long}");
        // A slow disk (2 ms per chunk) behind a 0.1 ms path: one chunk fills
        // it; the window stays near its minimum plus the tolerated queue.
        let short = converge(Duration::from_micros(100), Duration::from_millis(2), 60);
        assert!(short <= 16, "cwnd {short}");
    }

    /// Like `converge`, but a round right after the window shrank also
    /// takes `stall` (the client fell silent; Nagle held the replies).
    /// Returns the number of cuts, the final window and the guard's state.
    fn drive(
        base: Duration,
        service: Duration,
        stall: Duration,
        rounds: usize,
    ) -> (u32, u32, bool) {
        let mut w = Window::new(WindowPolicy::adaptive());
        let mut now = Instant::now();
        let (mut req, mut cuts, mut prev) = (0u64, 0, w.cwnd());
        for _ in 0..rounds {
            let cwnd = w.cwnd() as u64;
            let bdp = base.as_secs_f64() / service.as_secs_f64();
            let queue = (cwnd as f64 - bdp).max(0.0);
            let rtt = base + service.mul_f64(queue + 1.0);
            let mut gap = Duration::ZERO;
            if w.cwnd() < prev {
                cuts += 1;
                gap = stall;
            }
            prev = w.cwnd();
            for _ in 0..cwnd {
                w.on_send(cwnd as u32);
            }
            // After the stall, the server answers at its own pace: acks
            // spread over the round.
            let start = now + gap;
            now += gap + rtt;
            let first = req;
            req += cwnd;
            for (i, r) in (first..req).enumerate() {
                let at = start + rtt.mul_f64((i + 1) as f64 / cwnd as f64);
                w.on_ack(at, rtt + gap, r, req);
            }
        }
        (cuts, w.cwnd(), w.holding(now))
    }

    #[test]
    fn guard_stops_cuts_that_cost_delivery_rate_and_only_those() {
        // Server-bound (1 ms per chunk, 0.1 ms path) where a cut stalls the
        // replies for 40 ms: one test cut, then no more cuts while the
        // verdict stands (25 rounds end within its 10 s).
        let (cuts, cwnd, holding) = drive(
            Duration::from_micros(100),
            Duration::from_millis(1),
            Duration::from_millis(40),
            25,
        );
        assert!(holding, "cwnd {cwnd}");
        assert_eq!(cuts, 1, "cwnd {cwnd}, cuts {cuts}");
        // ... and holds the window near where the cut found it instead of
        // growing the server's queue (a full window parks about 20 MB in the
        // deployed server, which gains nothing from it).
        assert!(cwnd <= 32, "cwnd {cwnd}");
        // The same path where a cut costs nothing: Vegas keeps cutting to
        // its small queue and the guard never fires.
        let (cuts, cwnd, holding) = drive(
            Duration::from_micros(100),
            Duration::from_millis(1),
            Duration::ZERO,
            60,
        );
        assert!(
            !holding && cuts >= 1 && cwnd <= 16,
            "cwnd {cwnd}, cuts {cuts}"
        );
        // A long fat link: a cut leaves a queue at the bottleneck, the rate
        // stays, the guard stays quiet.
        let (_, cwnd, holding) = drive(
            Duration::from_millis(40),
            Duration::from_micros(1750),
            Duration::ZERO,
            60,
        );
        assert!(!holding, "cwnd {cwnd}");
    }

    #[test]
    fn fixed_never_moves() {
        let mut w = Window::new(WindowPolicy::Fixed(5));
        let now = Instant::now();
        for r in 0..100 {
            w.on_send(5);
            w.on_ack(now, Duration::from_millis(1), r, r + 1);
        }
        assert_eq!(w.cwnd(), 5);
    }
}
