//! Many traceroutes at once over shared sockets, sans I/O: the driver feeds it replies and
//! `now`, and asks it which packet to send next and when to wake up.
//!
//! Limits enforced here, so that no driver can forget them: the deny-list, a global
//! packets-per-second token bucket, a per-destination token bucket, and a window of
//! traces (hence probes) in flight. One trace per (destination, method) is active at a
//! time; further requests for the same pair wait their turn, which keeps reply matching
//! by quoted destination unambiguous.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

use thiserror::Error;

use super::denylist::{Denied, DenyList};
use super::model::{Proto, StopReason, TraceResult};
use super::pacer::Pacer;
use super::packet::{
    BuildError, Flow, ProbeSpec, QuotedL4, Reply, ReplyBody, TCP_RST, TCP_SYN, build_probe,
};
use super::trace::{Answer, AnswerKind, Trace, TraceParams};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Global cap on probes per second.
    pub rate_pps: u32,
    /// Cap on probes per second toward any one destination.
    pub per_dst_pps: u32,
    /// Traces probing at once (each has at most one probe in flight).
    pub window: usize,
    /// Distinguishes this engine's probes from other processes' on the host.
    pub cookie: u16,
    pub denylist: DenyList,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            rate_pps: 1000,
            per_dst_pps: 100,
            window: 4096,
            cookie: 0x7e3a,
            denylist: DenyList::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TraceRequest {
    pub dst: IpAddr,
    pub src: IpAddr,
    pub params: TraceParams,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("source {src} cannot reach {dst}: different address families")]
    Family { src: IpAddr, dst: IpAddr },
    #[error("first TTL {first} is above max TTL {max}")]
    TtlRange { first: u8, max: u8 },
    #[error("attempts must be at least 1")]
    Attempts,
}

/// A packet the driver must send now: the bytes are in the buffer passed to
/// [`Engine::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub dst: IpAddr,
    pub proto: Proto,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    pub probes_sent: u64,
    pub replies_matched: u64,
    pub replies_unmatched: u64,
    pub traces_done: u64,
}

type Key = (IpAddr, Proto);

/// What both engines refuse in a request: a denied destination, source and destination
/// of different families, an empty TTL range, no attempts.
pub(crate) fn check_request(
    cfg: &EngineConfig,
    dst: IpAddr,
    src: IpAddr,
    first_ttl: u8,
    max_ttl: u8,
    attempts: u8,
) -> Result<(), RequestError> {
    cfg.denylist.check(dst)?;
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(RequestError::Family { src, dst });
    }
    if first_ttl > max_ttl {
        return Err(RequestError::TtlRange {
            first: first_ttl,
            max: max_ttl,
        });
    }
    if attempts == 0 {
        return Err(RequestError::Attempts);
    }
    Ok(())
}

#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    queue: VecDeque<TraceRequest>,
    /// Requests waiting for an active trace to the same (destination, method) to end.
    blocked: HashMap<Key, VecDeque<TraceRequest>>,
    traces: HashMap<u64, Trace>,
    by_key: HashMap<Key, u64>,
    next_id: u64,
    /// Turns, caps and deadlines.
    pacer: Pacer,
    results: VecDeque<TraceResult>,
    stats: EngineStats,
    /// The probe last handed out (trace, probe id), for [`Engine::on_sent`].
    last_probe: Option<(u64, u16)>,
}

impl Engine {
    /// `wall_now` is the Unix time (seconds) at `now`.
    pub fn new(cfg: EngineConfig, now: Instant, wall_now: f64) -> Self {
        Engine {
            pacer: Pacer::new(&cfg, now, wall_now),
            cfg,
            queue: VecDeque::new(),
            blocked: HashMap::new(),
            traces: HashMap::new(),
            by_key: HashMap::new(),
            next_id: 0,
            results: VecDeque::new(),
            stats: EngineStats::default(),
            last_probe: None,
        }
    }

    /// The probe [`Engine::poll_transmit`] last handed out left at `at` (just before the
    /// send that took it): its RTT counts from there, not from when it was built.
    pub fn on_sent(&mut self, at: Instant) {
        if let Some((id, probe_id)) = self.last_probe.take()
            && let Some(trace) = self.traces.get_mut(&id)
        {
            trace.restamp(probe_id, at);
        }
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    fn flow(&self, proto: Proto) -> Flow {
        Flow::from_cookie(self.cfg.cookie, proto)
    }

    /// Queues a traceroute. Refused if the deny-list covers the target.
    pub fn add(&mut self, req: TraceRequest) -> Result<(), RequestError> {
        let p = &req.params;
        check_request(
            &self.cfg,
            req.dst,
            req.src,
            p.first_ttl,
            p.max_ttl,
            p.attempts,
        )?;
        self.queue.push_back(req);
        Ok(())
    }

    /// Nothing queued, nothing active, nothing left to report.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
            && self.blocked.is_empty()
            && self.traces.is_empty()
            && self.results.is_empty()
    }

    pub fn active(&self) -> usize {
        self.traces.len()
    }

    pub fn queued(&self) -> usize {
        self.queue.len() + self.blocked.values().map(VecDeque::len).sum::<usize>()
    }

    fn admit(&mut self) {
        while self.traces.len() < self.cfg.window {
            let Some(req) = self.queue.pop_front() else {
                break;
            };
            let key = (req.dst, req.params.proto);
            if self.by_key.contains_key(&key) {
                self.blocked.entry(key).or_default().push_back(req);
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.by_key.insert(key, id);
            self.traces
                .insert(id, Trace::new(req.dst, req.src, req.params));
            self.pacer.push_ready(id);
        }
    }

    /// The next probe to send at `now`, written into `buf`; `None` when the caps or the
    /// traces' state say wait (see [`Engine::poll_timeout`]).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.admit();
        self.pacer.release_throttled(now);
        loop {
            let id = self.pacer.next_turn(now)?;
            let Some(trace) = self.traces.get_mut(&id) else {
                continue;
            };
            if !trace.wants_to_send() {
                continue;
            }
            if !self.pacer.take(id, trace.dst, now) {
                continue;
            }
            let Some((ttl, probe_id)) = trace.next_probe(now) else {
                continue;
            };
            let spec = ProbeSpec {
                proto: trace.params.proto,
                src: trace.src,
                dst: trace.dst,
                ttl,
                flow: Flow::from_cookie(self.cfg.cookie, trace.params.proto),
                probe_id,
            };
            match build_probe(&spec, buf) {
                Ok(()) => {}
                // `add` checked families and the trace bounds ids, so this is a bug; end
                // the trace rather than the process.
                Err(e @ (BuildError::FamilyMismatch { .. } | BuildError::ProbeId(_))) => {
                    tracing::error!(dst = %spec.dst, error = %e, "cannot build probe");
                    trace.on_timeout(probe_id);
                    continue;
                }
            }
            if let Some(deadline) = trace.deadline_of(probe_id) {
                self.pacer.arm(deadline, id, probe_id);
            }
            self.stats.probes_sent += 1;
            self.last_probe = Some((id, probe_id));
            return Some(Transmit {
                dst: spec.dst,
                proto: spec.proto,
            });
        }
    }

    /// When the driver should call back even if no reply arrives.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let more_to_admit = !self.queue.is_empty() && self.traces.len() < self.cfg.window;
        self.pacer.poll_timeout(now, more_to_admit)
    }

    /// Expires probes whose wait is over.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((id, probe_id)) = self.pacer.pop_expired(now) {
            if let Some(trace) = self.traces.get_mut(&id) {
                trace.on_timeout(probe_id);
                self.after_event(id);
            }
        }
        self.pacer.prune(now);
    }

    /// Matches a reply to its probe by what it quotes; returns whether it was ours.
    pub fn handle_reply(&mut self, reply: &Reply, rx: Instant) -> bool {
        let matched = self.classify(reply);
        let Some((key, probe_id, answer)) = matched else {
            self.stats.replies_unmatched += 1;
            return false;
        };
        let Some(&id) = self.by_key.get(&key) else {
            self.stats.replies_unmatched += 1;
            return false;
        };
        self.stats.replies_matched += 1;
        if let Some(trace) = self.traces.get_mut(&id) {
            trace.on_answer(probe_id, answer, rx);
            self.after_event(id);
        }
        true
    }

    fn after_event(&mut self, id: u64) {
        let Some(trace) = self.traces.get(&id) else {
            return;
        };
        if trace.stop_reason().is_some() {
            self.finish(id);
        } else if trace.wants_to_send() {
            self.pacer.push_ready(id);
        }
    }

    fn finish(&mut self, id: u64) {
        let Some(trace) = self.traces.remove(&id) else {
            return;
        };
        let key = (trace.dst, trace.params.proto);
        self.by_key.remove(&key);
        if let Some(waiting) = self.blocked.get_mut(&key) {
            if let Some(next) = waiting.pop_front() {
                self.queue.push_front(next);
            }
            if waiting.is_empty() {
                self.blocked.remove(&key);
            }
        }
        let start = self.pacer.unix_time(trace.first_sent());
        let result = TraceResult {
            dst: trace.dst,
            src: Some(trace.src),
            proto: trace.params.proto,
            stop_reason: trace.stop_reason().unwrap_or(StopReason::MaxTtl),
            start,
            probes_sent: trace.probes_sent(),
            hops: trace.into_hops(),
        };
        self.stats.traces_done += 1;
        self.results.push_back(result);
    }

    pub fn poll_result(&mut self) -> Option<TraceResult> {
        self.results.pop_front()
    }

    /// Which trace and probe a reply answers, and what kind of answer it is.
    fn classify(&self, reply: &Reply) -> Option<(Key, u16, Answer)> {
        let v6 = reply.from.is_ipv6();
        let mut answer = Answer {
            kind: AnswerKind::Intermediate,
            addr: reply.from,
            icmp_type: None,
            icmp_code: None,
            reply_ttl: reply.reply_ttl,
            quoted_ttl: None,
            tcp_flags: None,
            mpls: Vec::new(),
        };
        match &reply.body {
            ReplyBody::IcmpError {
                icmp_type,
                icmp_code,
                quoted,
                mpls,
            } => {
                let (proto, probe_id) = self.match_quote(&quoted.l4, v6)?;
                let time_exceeded = if v6 { 3 } else { 11 };
                let port_unreachable = if v6 { 4 } else { 3 };
                answer.kind = if *icmp_type == time_exceeded {
                    AnswerKind::Intermediate
                } else if *icmp_code == port_unreachable {
                    // Only the destination host generates port-unreachable, sometimes from
                    // another of its addresses; scamper counts it as completion too.
                    AnswerKind::Destination
                } else {
                    AnswerKind::Unreachable
                };
                answer.icmp_type = Some(*icmp_type);
                answer.icmp_code = Some(*icmp_code);
                answer.quoted_ttl = Some(quoted.ttl);
                answer.mpls = mpls.clone();
                Some(((quoted.dst, proto), probe_id, answer))
            }
            ReplyBody::EchoReply { icmp_type, id, seq } => {
                if *id != self.cfg.cookie {
                    return None;
                }
                answer.kind = AnswerKind::Destination;
                answer.icmp_type = Some(*icmp_type);
                answer.icmp_code = Some(0);
                Some(((reply.from, Proto::Icmp), *seq, answer))
            }
            ReplyBody::Tcp {
                sport,
                dport,
                ack,
                flags,
                ..
            } => {
                let flow = self.flow(Proto::Tcp);
                let seq = ack.wrapping_sub(1);
                if *dport != flow.sport
                    || *sport != flow.dport
                    || seq >> 16 != u32::from(flow.cookie)
                {
                    return None;
                }
                answer.kind = AnswerKind::Destination;
                answer.tcp_flags = Some(tcp_flags_str(*flags));
                Some(((reply.from, Proto::Tcp), seq as u16, answer))
            }
        }
    }

    fn match_quote(&self, l4: &QuotedL4, v6: bool) -> Option<(Proto, u16)> {
        match *l4 {
            QuotedL4::Icmp {
                icmp_type, id, seq, ..
            } => {
                let echo_request = if v6 { 128 } else { 8 };
                (icmp_type == echo_request && id == self.cfg.cookie).then_some((Proto::Icmp, seq))
            }
            QuotedL4::Udp {
                sport,
                dport,
                checksum,
            } => {
                let f = self.flow(Proto::Udp);
                (sport == f.sport && dport == f.dport).then_some((Proto::Udp, checksum))
            }
            QuotedL4::Tcp { sport, dport, seq } => {
                let f = self.flow(Proto::Tcp);
                (sport == f.sport && dport == f.dport && seq >> 16 == u32::from(f.cookie))
                    .then_some((Proto::Tcp, seq as u16))
            }
            QuotedL4::Other { .. } => None,
        }
    }
}

fn tcp_flags_str(flags: u8) -> String {
    let mut s = String::new();
    if flags & TCP_SYN != 0 {
        s.push('S');
    }
    if flags & TCP_RST != 0 {
        s.push('R');
    }
    if flags & super::packet::TCP_ACK != 0 {
        s.push('A');
    }
    s
}

#[cfg(test)]
mod tests;
