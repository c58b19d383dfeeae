//! Token bucket for packet-rate caps, driven by the caller's clock.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` tokens per second, holding at most `capacity` (at least one).
    pub fn new(rate: u32, capacity: u32, now: Instant) -> Self {
        let capacity = f64::from(capacity.max(1));
        TokenBucket {
            rate: f64::from(rate.max(1)),
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if now > self.last {
            let dt = now.duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
            self.last = now;
        }
    }

    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be there (now, if one is).
    pub fn next_available(&self, now: Instant) -> Instant {
        let tokens = if now > self.last {
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
                .min(self.capacity)
        } else {
            self.tokens
        };
        if tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_the_rate_over_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 10, t0);
        let taken = (0..100).filter(|_| b.try_take(t0)).count();
        assert_eq!(taken, 10, "burst is the capacity");
        assert_eq!(b.next_available(t0), t0 + Duration::from_millis(1));
        let mut sent = 0;
        for ms in 1..=1000 {
            let now = t0 + Duration::from_millis(ms);
            while b.try_take(now) {
                sent += 1;
            }
        }
        assert!(
            (999..=1001).contains(&sent),
            "sent {sent} in one second at 1000/s"
        );
    }
}
