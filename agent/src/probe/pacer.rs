//! The scheduling the trace engine and the MDA engine share, sans I/O: whose turn it is
//! to send among the active traces, the global and per-destination token buckets (a
//! trace held back by its destination's cap waits until the instant it allows one), the
//! probes' deadlines, and the Unix time of an engine instant. The engines keep what
//! differs: what a trace is, how requests are admitted and how replies are matched.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

use super::bucket::TokenBucket;
use super::engine::EngineConfig;

#[derive(Debug)]
pub(crate) struct Pacer {
    /// Traces with a probe to send, in turn order.
    ready: VecDeque<u64>,
    /// (deadline, trace, probe id); stale entries are skipped by the engines.
    timers: BinaryHeap<Reverse<(Instant, u64, u16)>>,
    /// Traces held back by their destination's cap, until the instant it allows one.
    throttled: BinaryHeap<Reverse<(Instant, u64)>>,
    global: TokenBucket,
    per_dst: HashMap<IpAddr, TokenBucket>,
    per_dst_pps: u32,
    window: usize,
    /// Maps engine instants to Unix time for the results' `start`.
    epoch: (Instant, f64),
}

impl Pacer {
    /// `wall_now` is the Unix time (seconds) at `now`.
    pub(crate) fn new(cfg: &EngineConfig, now: Instant, wall_now: f64) -> Self {
        // A burst of 2 ms worth of tokens lets a driver that wakes on a 1 ms timer keep up
        // with the rate, without bursts that overflow queues on the way.
        let burst = (cfg.rate_pps / 500).max(1);
        Pacer {
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            throttled: BinaryHeap::new(),
            global: TokenBucket::new(cfg.rate_pps, burst, now),
            per_dst: HashMap::new(),
            per_dst_pps: cfg.per_dst_pps,
            window: cfg.window,
            epoch: (now, wall_now),
        }
    }

    /// Trace `id` has a probe to send: it joins the end of the line.
    pub(crate) fn push_ready(&mut self, id: u64) {
        self.ready.push_back(id);
    }

    /// Traces whose destination allows a probe again rejoin the line.
    pub(crate) fn release_throttled(&mut self, now: Instant) {
        while let Some(&Reverse((at, id))) = self.throttled.peek() {
            if at > now {
                break;
            }
            self.throttled.pop();
            self.ready.push_back(id);
        }
    }

    /// The trace whose turn it is, taken off the line, if the global cap allows a probe
    /// at `now`.
    pub(crate) fn next_turn(&mut self, now: Instant) -> Option<u64> {
        self.ready.front()?;
        if self.global.next_available(now) > now {
            return None;
        }
        self.ready.pop_front()
    }

    /// Spends a token of `dst`'s cap and of the global one for trace `id`; without one
    /// for `dst`, holds the trace back until its destination allows a probe.
    pub(crate) fn take(&mut self, id: u64, dst: IpAddr, now: Instant) -> bool {
        let pps = self.per_dst_pps;
        let bucket = self
            .per_dst
            .entry(dst)
            .or_insert_with(|| TokenBucket::new(pps, (pps / 10).max(1), now));
        if !bucket.try_take(now) {
            self.throttled
                .push(Reverse((bucket.next_available(now), id)));
            return false;
        }
        self.global.try_take(now);
        true
    }

    /// Probe `probe_id` of trace `id` times out at `deadline`.
    pub(crate) fn arm(&mut self, deadline: Instant, id: u64, probe_id: u16) {
        self.timers.push(Reverse((deadline, id, probe_id)));
    }

    /// The next probe whose wait is over at `now`: (trace, probe id).
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(u64, u16)> {
        let &Reverse((at, id, probe_id)) = self.timers.peek()?;
        if at > now {
            return None;
        }
        self.timers.pop();
        Some((id, probe_id))
    }

    /// A full bucket is the same as a fresh one, so idle destinations cost no memory.
    pub(crate) fn prune(&mut self, now: Instant) {
        if self.per_dst.len() > 4 * self.window {
            self.per_dst.retain(|_, b| b.next_available(now) > now);
        }
    }

    /// When the driver should call back even if no reply arrives; `more_to_admit`: the
    /// engine has queued requests and room for them.
    pub(crate) fn poll_timeout(&self, now: Instant, more_to_admit: bool) -> Option<Instant> {
        let mut t = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let mut consider = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(Reverse((at, _))) = self.throttled.peek() {
            consider(*at);
        }
        if !self.ready.is_empty() || more_to_admit {
            consider(self.global.next_available(now));
        }
        t
    }

    /// Unix time of a trace's first probe (the engine's start time if none went out).
    pub(crate) fn unix_time(&self, first_sent: Option<Instant>) -> f64 {
        first_sent.map_or(self.epoch.1, |t| {
            self.epoch.1 + t.saturating_duration_since(self.epoch.0).as_secs_f64()
        })
    }
}
