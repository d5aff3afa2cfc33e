//! Requests-per-minute and tokens-per-minute limits, shared by every caller that holds the
//! limiter (one per API key is the usual setup).

use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Limits per minute; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
}

/// A token bucket per limit. Each bucket holds at most one second's worth of budget (providers
/// enforce per-minute limits over short windows, so bursts of a whole minute get 429s), and may
/// go into debt by one large request: a request waits until its cost (or the whole capacity,
/// if it costs more) is available, then takes its full cost. The long-run rate is therefore
/// exact whatever the request sizes.
///
/// Waiters are served in arrival order: the lock is held while waiting.
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

    /// Time until `cost` may be taken (zero if now).
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
    pub async fn is_limited(&self) -> bool {
        self.state.lock().await.iter().any(Option::is_some)
    }

    /// Wait until one request costing `tokens` (an estimate) is allowed, and take it.
    pub async fn acquire(&self, tokens: u64) {
        let costs = [1.0, tokens as f64];
        let mut buckets = self.state.lock().await;
        loop {
            let now = Instant::now();
            let mut wait = Duration::ZERO;
            for (bucket, cost) in buckets.iter_mut().zip(costs) {
                if let Some(b) = bucket {
                    b.refill(now);
                    wait = wait.max(b.wait_for(cost));
                }
            }
            if wait.is_zero() {
                for (bucket, cost) in buckets.iter_mut().zip(costs) {
                    if let Some(b) = bucket {
                        b.level -= cost;
                    }
                }
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Correct the token bucket once the real usage is known: `actual - estimated` tokens are
    /// taken (or, when negative, given back, up to the capacity).
    pub async fn settle(&self, estimated: u64, actual: u64) {
        let mut buckets = self.state.lock().await;
        if let Some(b) = &mut buckets[TOKENS] {
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
        limiter.settle(100, 10).await;
        let start = Instant::now();
        limiter.acquire(10).await;
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(999), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(1001), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let limiter = RateLimiter::new(RateLimits::default());
        assert!(!limiter.is_limited().await);
        let start = Instant::now();
        for _ in 0..1000 {
            limiter.acquire(1_000_000).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
