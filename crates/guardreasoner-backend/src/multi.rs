//! Several endpoints used together, with failover.

use crate::{Backend, BackendError, BackendStats, Generation, GenerationRequest};
use async_trait::async_trait;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a [`MultiBackend`] picks the endpoint for a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// The endpoint with the fewest requests in flight (ties in turn): a slow endpoint gets
    /// fewer requests.
    #[default]
    LeastOutstanding,
    /// Each endpoint in turn.
    RoundRobin,
}

struct Member {
    backend: Arc<dyn Backend>,
    outstanding: AtomicUsize,
    /// After a retryable failure the endpoint is avoided until then (unless all are).
    avoid_until: Mutex<Option<Instant>>,
}

impl Member {
    fn avoided(&self, now: Instant) -> bool {
        self.avoid_until
            .lock()
            .map(|t| t.is_some_and(|t| t > now))
            .unwrap_or(false)
    }
}

/// A [`Backend`] that spreads requests over several backends. A request whose endpoint fails
/// with a retryable error (after that endpoint's own retries) is sent to another endpoint it
/// has not tried yet; a non-retryable error is returned as is.
pub struct MultiBackend {
    members: Vec<Member>,
    balance: Balance,
    turn: AtomicUsize,
    cooldown: Duration,
}

impl MultiBackend {
    /// `cooldown`: how long an endpoint that just failed is passed over.
    pub fn new(
        backends: Vec<Arc<dyn Backend>>,
        balance: Balance,
        cooldown: Duration,
    ) -> Result<Self, BackendError> {
        if backends.is_empty() {
            return Err(BackendError::Validation(
                "at least one endpoint is needed".into(),
            ));
        }
        Ok(Self {
            members: backends
                .into_iter()
                .map(|backend| Member {
                    backend,
                    outstanding: AtomicUsize::new(0),
                    avoid_until: Mutex::new(None),
                })
                .collect(),
            balance,
            turn: AtomicUsize::new(0),
            cooldown,
        })
    }

    /// Requests in flight per endpoint, in the order given.
    pub fn outstanding(&self) -> Vec<usize> {
        self.members
            .iter()
            .map(|m| m.outstanding.load(Ordering::Relaxed))
            .collect()
    }

    /// Stats of each endpoint, in the order given.
    pub fn member_stats(&self) -> Vec<(String, BackendStats)> {
        self.members
            .iter()
            .map(|m| (m.backend.name(), m.backend.stats()))
            .collect()
    }

    fn pick(&self, tried: &[bool]) -> Option<usize> {
        let now = Instant::now();
        let n = self.members.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % n;
        let order = (0..n).map(|k| (start + k) % n).filter(|&i| !tried[i]);
        let candidates: Vec<usize> = {
            let healthy: Vec<usize> = order
                .clone()
                .filter(|&i| !self.members[i].avoided(now))
                .collect();
            if healthy.is_empty() {
                order.collect()
            } else {
                healthy
            }
        };
        match self.balance {
            Balance::RoundRobin => candidates.first().copied(),
            Balance::LeastOutstanding => candidates
                .iter()
                .copied()
                .min_by_key(|&i| self.members[i].outstanding.load(Ordering::Relaxed)),
        }
    }
}

/// Decrements an outstanding counter however the request ends (dropped futures included).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Backend for MultiBackend {
    fn name(&self) -> String {
        let names: Vec<String> = self.members.iter().map(|m| m.backend.name()).collect();
        names.join(" + ")
    }

    fn scores_answers(&self) -> bool {
        self.members.iter().all(|m| m.backend.scores_answers())
    }

    async fn generate(&self, request: GenerationRequest) -> Result<Generation, BackendError> {
        request.validate()?;
        let mut tried = vec![false; self.members.len()];
        let mut last_error = None;
        while let Some(i) = self.pick(&tried) {
            tried[i] = true;
            let member = &self.members[i];
            member.outstanding.fetch_add(1, Ordering::Relaxed);
            let result = {
                let _in_flight = InFlight(&member.outstanding);
                member.backend.generate(request.clone()).await
            };
            match result {
                Ok(generation) => return Ok(generation),
                Err(error) if error.is_retryable() => {
                    tracing::warn!(
                        backend = %member.backend.name(),
                        cooldown_s = self.cooldown.as_secs_f64(),
                        %error,
                        "backend failed; trying the next one"
                    );
                    if let Ok(mut until) = member.avoid_until.lock() {
                        *until = Some(Instant::now() + self.cooldown);
                    }
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.expect("at least one member was tried"))
    }

    fn stats(&self) -> BackendStats {
        self.members
            .iter()
            .map(|m| m.backend.stats())
            .fold(BackendStats::default(), |a, b| a.combined(&b))
    }
}
