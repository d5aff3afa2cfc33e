//! When and how long to wait before sending a failed request again.

use std::time::{Duration, SystemTime};

/// Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
/// Jitter"): attempt `k` waits a uniform random time in `[0, min(max_delay, base_delay * 2^k)]`,
/// and never less than the server's `Retry-After`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: never retry).
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A `Retry-After` longer than this is not waited for: the request fails instead.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0-based), given the server's `Retry-After`.
    /// `None`: the server asks for a longer wait than `max_retry_after`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let ceiling = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry.min(30)))
            .min(self.max_delay);
        let jitter = ceiling.mul_f64(fastrand::f64());
        match retry_after {
            Some(wait) if wait > self.max_retry_after => None,
            Some(wait) => Some(wait.max(jitter)),
            None => Some(jitter),
        }
    }
}

/// Parse a `Retry-After` header: delay-seconds or an HTTP date (RFC 9110 section 10.2.3).
/// A date in the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    // Some servers send fractional seconds; accept them rather than ignore the hint.
    if let Ok(seconds) = value.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Some(Duration::from_secs_f64(seconds));
        }
        return None;
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after(" 0.5 ", now),
            Some(Duration::from_millis(500))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(7)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn backoff_is_bounded_jitter_and_honours_retry_after() {
        let p = RetryPolicy {
            max_retries: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(5),
        };
        for retry in 0..12 {
            let ceiling =
                (Duration::from_millis(100) * 2u32.pow(retry)).min(Duration::from_secs(1));
            for _ in 0..50 {
                let d = p.delay(retry, None).unwrap();
                assert!(d <= ceiling, "retry {retry}: {d:?} > {ceiling:?}");
            }
        }
        // Full jitter actually spreads: 200 draws are not all the same.
        let draws: Vec<Duration> = (0..200).map(|_| p.delay(3, None).unwrap()).collect();
        assert!(draws.iter().any(|d| *d != draws[0]));
        for _ in 0..50 {
            assert!(p.delay(0, Some(Duration::from_secs(2))).unwrap() >= Duration::from_secs(2));
        }
        assert_eq!(p.delay(0, Some(Duration::from_secs(6))), None);
    }
}
