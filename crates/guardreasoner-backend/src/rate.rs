//! Requests-per-minute and tokens-per-minute limits, shared by every caller that holds the
//! limiter (one per API key is the usual setup).

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Limits per minute; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
}

/// A token bucket per limit. Each bucket holds at most one second's worth of budget (providers
/// enforce per-minute limits over short windows, so bursts of a whole minute get 429s), and may
/// go into debt by one large request: a request may start once its cost (or the whole
/// capacity, if it costs more) is available, and takes its full cost. The long-run rate is
/// therefore exact whatever the request sizes.
///
/// Each request reserves its cost the moment it arrives and then sleeps until its start time
/// without holding any lock, so waiters start in arrival order and [`RateLimiter::settle`]
/// never waits behind them.
#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<[Option<Bucket>; 2]>,
}

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    per_second: f64,
    level: f64,
    updated: Instant,
}

impl Bucket {
    fn new(per_minute: u32, now: Instant) -> Self {
        let per_second = f64::from(per_minute.max(1)) / 60.0;
        let capacity = per_second.max(1.0);
        Self {
            capacity,
            per_second,
            level: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
    }

    /// Time until `cost` may be taken from the current level (zero if now).
    fn wait_for(&self, cost: f64) -> Duration {
        let needed = cost.min(self.capacity) - self.level;
        if needed <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(needed / self.per_second)
        }
    }
}

/// Index of the tokens bucket (the requests bucket is index 0).
const TOKENS: usize = 1;

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new([
                limits.requests_per_minute.map(|r| Bucket::new(r, now)),
                limits.tokens_per_minute.map(|t| Bucket::new(t, now)),
            ]),
        }
    }

    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.buckets().iter().any(Option::is_some)
    }

    fn buckets(&self) -> std::sync::MutexGuard<'_, [Option<Bucket>; 2]> {
        // The state stays consistent even if a holder panicked: every update is one assignment.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until one request costing `tokens` (an estimate) may start. The cost is reserved
    /// at once, so a dropped wait still counts against the limit (it errs on the safe side).
    pub async fn acquire(&self, tokens: u64) {
        let wait = {
            let mut buckets = self.buckets();
            let now = Instant::now();
            let mut wait = Duration::ZERO;
            for (bucket, cost) in buckets.iter_mut().zip([1.0, tokens as f64]) {
                if let Some(b) = bucket {
                    b.refill(now);
                    wait = wait.max(b.wait_for(cost));
                    b.level -= cost;
                }
            }
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Correct the token bucket once the real usage is known: `actual - estimated` more
    /// tokens are taken (or, when negative, given back, up to the capacity).
    pub fn settle(&self, estimated: u64, actual: u64) {
        if let Some(b) = &mut self.buckets()[TOKENS] {
            b.refill(Instant::now());
            b.level = (b.level + estimated as f64 - actual as f64).min(b.capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_paces_requests() {
        let limiter = RateLimiter::new(RateLimits {
            requests_per_minute: Some(60),
            tokens_per_minute: None,
        });
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire(0).await;
        }
        // One request of burst, then one per second.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_secs(4), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(4100), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_per_minute_counts_large_requests_in_full() {
        // 600 tokens/minute = 10 per second, capacity 10. Three 100-token requests: the first
        // goes at once and leaves a 90-token debt, so each later one waits 10 s.
        let limiter = RateLimiter::new(RateLimits {
            requests_per_minute: None,
            tokens_per_minute: Some(600),
        });
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire(100).await;
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_secs(19), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(21), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn settle_returns_overestimates() {
        let limiter = RateLimiter::new(RateLimits {
            requests_per_minute: None,
            tokens_per_minute: Some(600),
        });
        limiter.acquire(100).await;
        // Only 10 were really used: the 90-token debt is forgiven, so the next 10-token
        // request waits 1 s for its budget rather than 10 s.
        limiter.settle(100, 10);
        let start = Instant::now();
        limiter.acquire(10).await;
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(999), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(1001), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let limiter = RateLimiter::new(RateLimits::default());
        assert!(!limiter.is_limited());
        let start = Instant::now();
        for _ in 0..1000 {
            limiter.acquire(1_000_000).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_start_in_arrival_order_at_the_limit() {
        let limiter = std::sync::Arc::new(RateLimiter::new(RateLimits {
            requests_per_minute: Some(120),
            tokens_per_minute: None,
        }));
        let start = Instant::now();
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move {
                    l.acquire(0).await;
                    start.elapsed()
                })
            })
            .collect();
        let mut starts = Vec::new();
        for t in tasks {
            starts.push(t.await.unwrap());
        }
        // 2 per second, burst 2: 0, 0, 0.5, 1.0, 1.5, 2.0 s. Settling meanwhile never blocks.
        limiter.settle(5, 5);
        let expected = [0.0, 0.0, 0.5, 1.0, 1.5, 2.0];
        for (got, want) in starts.iter().zip(expected) {
            assert!((got.as_secs_f64() - want).abs() < 0.01, "{starts:?}");
        }
    }
}
