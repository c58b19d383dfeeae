//! Limits on what one party may ask of the coordinator, so a hostile or broken client
//! gets a clear status and everyone else carries on: per-agent upload rate and batch
//! size, gRPC message size and open streams per identity, and per-operator caps
//! on live campaigns and their targets. The arithmetic is pure (`now` in, decision out).

use std::time::Duration;

/// Every limit, with the defaults `serve` uses unless told otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Sustained trace uploads per agent, per second (0 = unlimited).
    pub agent_traces_per_s: f64,
    /// Uploads an agent may make at once above the sustained rate (its spool after an
    /// outage drains at the sustained rate once this is spent).
    pub agent_burst: f64,
    /// Largest batch (traces or alias results) in one message.
    pub max_batch: usize,
    /// Largest gRPC message a client may send, bytes.
    pub max_message_bytes: usize,
    /// Open consumer streams per client identity (`streams.rs`); each connection's
    /// HTTP/2 limit is this plus some headroom for unary calls.
    pub max_streams: u32,
    /// Live (not cancelled, not finished) campaigns per operator identity (0 = no cap).
    pub operator_campaigns: usize,
    /// Targets over an operator's live campaigns (0 = no cap).
    pub operator_targets: usize,
    /// How long an agent over its rate is paced (its batch held back) before its session
    /// is ended with `ResourceExhausted`.
    pub max_pacing: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            agent_traces_per_s: 2_000.0,
            agent_burst: 20_000.0,
            max_batch: 10_000,
            max_message_bytes: super::MAX_AGENT_MESSAGE,
            max_streams: 64,
            operator_campaigns: 100,
            operator_targets: 100_000,
            max_pacing: Duration::from_secs(5),
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ns: i64,
}

impl Bucket {
    pub fn new(rate: f64, burst: f64, now_ns: i64) -> Bucket {
        let burst = burst.max(1.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
            last_ns: now_ns,
        }
    }

    /// Takes `n` tokens, going into debt if need be; returns how long the caller must
    /// wait for the debt to be repaid (zero if none). Debt makes a flood pay for itself:
    /// the next batch waits for this one's overdraft.
    pub fn take(&mut self, n: usize, now_ns: i64) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let dt = (now_ns.saturating_sub(self.last_ns)).max(0) as f64 / 1e9;
        self.last_ns = self.last_ns.max(now_ns);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

impl Bucket {
    /// Gives back what [`Bucket::take`] took for an upload that was then refused.
    pub fn refund(&mut self, n: usize) {
        self.tokens = (self.tokens + n as f64).min(self.burst);
    }
}

/// Every agent's upload bucket, kept across its sessions so that reconnecting does not
/// buy a flood a fresh burst.
#[derive(Debug, Default)]
pub struct UploadQuotas {
    buckets: std::sync::Mutex<std::collections::HashMap<String, Bucket>>,
}

impl UploadQuotas {
    /// How long `n` results from `agent` would wait now, charging nothing.
    pub fn would_wait(&self, limits: &Limits, agent: &str, n: usize, now_ns: i64) -> Duration {
        let map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut b = map
            .get(agent)
            .cloned()
            .unwrap_or_else(|| Bucket::new(limits.agent_traces_per_s, limits.agent_burst, now_ns));
        b.take(n, now_ns)
    }

    /// Admits `n` results from `agent` now: `Ok(wait)` to hold them back for `wait`
    /// first, or `Err(wait)` (nothing charged) if that would exceed `limits.max_pacing`.
    pub fn admit(
        &self,
        limits: &Limits,
        agent: &str,
        n: usize,
        now_ns: i64,
    ) -> Result<Duration, Duration> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = map
            .entry(agent.to_string())
            .or_insert_with(|| Bucket::new(limits.agent_traces_per_s, limits.agent_burst, now_ns));
        let wait = b.take(n, now_ns);
        if wait > limits.max_pacing {
            b.refund(n);
            Err(wait)
        } else {
            Ok(wait)
        }
    }
}

/// Whether an operator with `live` campaigns over `live_targets` targets may add one with
/// `new_targets`; the refusal says which cap and by how much.
pub fn operator_may_create(
    limits: &Limits,
    live: usize,
    live_targets: usize,
    new_targets: usize,
) -> Result<(), String> {
    if limits.operator_campaigns > 0 && live >= limits.operator_campaigns {
        return Err(format!(
            "this identity already has {live} live campaigns (cap {}); cancel one first",
            limits.operator_campaigns
        ));
    }
    if limits.operator_targets > 0 && live_targets + new_targets > limits.operator_targets {
        return Err(format!(
            "{new_targets} more targets would make {} over this identity's live campaigns (cap {})",
            live_targets + new_targets,
            limits.operator_targets
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn bucket_allows_burst_then_paces_at_rate() {
        let mut b = Bucket::new(100.0, 500.0, 0);
        assert_eq!(b.take(500, 0), Duration::ZERO);
        // 100 over: a second's worth at 100/s.
        assert_eq!(b.take(100, 0), Duration::from_secs(1));
        // After that second the debt is repaid, nothing saved.
        assert_eq!(b.take(50, S), Duration::from_millis(500));
        // Long idle refills to the burst, no more.
        assert_eq!(b.take(500, 100 * S), Duration::ZERO);
        assert!(b.take(1, 100 * S) > Duration::ZERO);
        let mut free = Bucket::new(0.0, 0.0, 0);
        assert_eq!(free.take(1_000_000, 0), Duration::ZERO);
    }

    #[test]
    fn operator_caps() {
        let l = Limits {
            operator_campaigns: 2,
            operator_targets: 10,
            ..Limits::default()
        };
        assert!(operator_may_create(&l, 1, 5, 5).is_ok());
        assert!(
            operator_may_create(&l, 2, 0, 1)
                .unwrap_err()
                .contains("cap 2")
        );
        assert!(
            operator_may_create(&l, 1, 5, 6)
                .unwrap_err()
                .contains("cap 10")
        );
        let none = Limits {
            operator_campaigns: 0,
            operator_targets: 0,
            ..l
        };
        assert!(operator_may_create(&none, 1_000, 1 << 30, 1 << 30).is_ok());
    }

    #[test]
    fn quotas_outlive_sessions_and_refusals_cost_nothing() {
        let l = Limits {
            agent_traces_per_s: 10.0,
            agent_burst: 10.0,
            max_pacing: Duration::from_secs(1),
            ..Limits::default()
        };
        let q = UploadQuotas::default();
        assert_eq!(q.admit(&l, "a", 10, 0), Ok(Duration::ZERO));
        assert_eq!(q.admit(&l, "a", 5, 0), Ok(Duration::from_millis(500)));
        // 50 more would need 5.5 s: refused, not charged.
        assert!(q.admit(&l, "a", 50, 0).is_err());
        assert_eq!(q.admit(&l, "a", 5, 0), Ok(Duration::from_secs(1)));
        // Another agent has its own bucket.
        assert_eq!(q.would_wait(&l, "b", 20, 0), Duration::from_secs(1));
        assert_eq!(q.admit(&l, "b", 10, 0), Ok(Duration::ZERO));
        // Looking does not charge.
        assert_eq!(q.would_wait(&l, "b", 10, 0), Duration::from_secs(1));
    }

    proptest! {
        /// Over any schedule, what is admitted without waiting never exceeds the burst
        /// plus the rate times the time elapsed.
        #[test]
        fn never_more_than_rate_allows(
            rate in 1.0f64..10_000.0,
            burst in 1.0f64..10_000.0,
            steps in proptest::collection::vec((0i64..2 * S, 0usize..5_000), 1..100),
        ) {
            let mut b = Bucket::new(rate, burst, 0);
            let (mut now, mut admitted) = (0i64, 0f64);
            for (dt, n) in steps {
                now += dt;
                let wait = b.take(n, now);
                // A caller that waits out the debt is admitted at now + wait.
                admitted += n as f64;
                let t = now as f64 / 1e9 + wait.as_secs_f64();
                prop_assert!(admitted <= burst.max(1.0) + rate * t + 1e-6 * admitted.max(1.0));
            }
        }
    }
}
