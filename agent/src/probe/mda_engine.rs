//! Many multipath (MDA-Lite) traces at once, sans I/O, under the same limits as plain
//! traces ([`super::engine::Engine`]): the deny-list, the global and per-destination
//! token buckets, and a window of traces probing at once. Replies are matched by the
//! destination they quote, the probe id and the flow the quoted header carries.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

use super::driver::Prober;
use super::engine::{EngineConfig, RequestError, check_request};
use super::mda::{Mda, MdaParams, MdaResult};
use super::model::Proto;
use super::pacer::Pacer;
use super::packet::{
    Flow, ProbeSpec, QuotedL4, Reply, ReplyBody, build_probe, mda_flow_of_icmp_sum,
    mda_flow_of_sport,
};
use super::trace::{Answer, AnswerKind};

#[derive(Debug, Clone)]
pub struct MdaRequest {
    pub dst: IpAddr,
    pub src: IpAddr,
    pub params: MdaParams,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MdaStats {
    pub probes_sent: u64,
    pub replies_matched: u64,
    pub replies_unmatched: u64,
    pub traces_done: u64,
}

type Key = (IpAddr, Proto);

#[derive(Debug)]
pub struct MdaEngine {
    cfg: EngineConfig,
    queue: VecDeque<MdaRequest>,
    keys: HashSet<Key>,
    traces: HashMap<u64, Mda>,
    by_key: HashMap<Key, u64>,
    next_id: u64,
    /// Turns, caps and deadlines, as the trace engine's.
    pacer: Pacer,
    results: VecDeque<MdaResult>,
    stats: MdaStats,
    /// The probe last handed out (trace, probe id), for [`MdaEngine::on_sent`].
    last_probe: Option<(u64, u16)>,
}

impl MdaEngine {
    /// `wall_now` is the Unix time (seconds) at `now`.
    pub fn new(cfg: EngineConfig, now: Instant, wall_now: f64) -> Self {
        MdaEngine {
            pacer: Pacer::new(&cfg, now, wall_now),
            cfg,
            queue: VecDeque::new(),
            keys: HashSet::new(),
            traces: HashMap::new(),
            by_key: HashMap::new(),
            next_id: 0,
            results: VecDeque::new(),
            stats: MdaStats::default(),
            last_probe: None,
        }
    }

    pub fn stats(&self) -> MdaStats {
        self.stats
    }

    /// Queues a multipath trace. A second one to the same destination and method is
    /// merged into the first (one result): replies could not tell them apart.
    pub fn add(&mut self, req: MdaRequest) -> Result<(), RequestError> {
        let p = &req.params;
        check_request(
            &self.cfg,
            req.dst,
            req.src,
            p.first_ttl,
            p.max_ttl,
            p.attempts,
        )?;
        if !self.keys.insert((req.dst, req.params.proto)) {
            // Already traced in this run: the same diamond, nothing new to learn.
            return Ok(());
        }
        self.queue.push_back(req);
        Ok(())
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.traces.is_empty() && self.results.is_empty()
    }

    pub fn active(&self) -> usize {
        self.traces.len()
    }

    fn admit(&mut self) {
        while self.traces.len() < self.cfg.window {
            let Some(req) = self.queue.pop_front() else {
                break;
            };
            let id = self.next_id;
            self.next_id += 1;
            self.by_key.insert((req.dst, req.params.proto), id);
            self.traces
                .insert(id, Mda::new(req.dst, req.src, req.params));
            self.pacer.push_ready(id);
        }
    }

    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<IpAddr> {
        self.admit();
        self.pacer.release_throttled(now);
        loop {
            let id = self.pacer.next_turn(now)?;
            let Some(trace) = self.traces.get_mut(&id) else {
                continue;
            };
            if !trace.wants_to_send() {
                // Planning may have ended it (all answers in, nothing more to learn).
                if trace.is_done() {
                    self.finish(id);
                }
                continue;
            }
            if !self.pacer.take(id, trace.dst, now) {
                continue;
            }
            let Some((ttl, flow, probe_id)) = trace.next_probe(now) else {
                if trace.is_done() {
                    self.finish(id);
                }
                continue;
            };
            let proto = trace.params.proto;
            let spec = ProbeSpec {
                proto,
                src: trace.src,
                dst: trace.dst,
                ttl,
                flow: Flow::mda(self.cfg.cookie, proto, flow),
                probe_id,
            };
            if let Some(deadline) = trace.deadline_of(probe_id) {
                self.pacer.arm(deadline, id, probe_id);
            }
            // More of this trace's batch goes after the other traces' turns.
            self.pacer.push_ready(id);
            if let Err(e) = build_probe(&spec, buf) {
                // `add` checked families and the trace bounds ids: a bug, not input.
                tracing::error!(dst = %spec.dst, error = %e, "cannot build probe");
                continue;
            }
            self.stats.probes_sent += 1;
            self.last_probe = Some((id, probe_id));
            return Some(spec.dst);
        }
    }

    /// The probe [`MdaEngine::poll_transmit`] last handed out left at `at`: its RTT
    /// counts from there.
    pub fn on_sent(&mut self, at: Instant) {
        if let Some((id, probe_id)) = self.last_probe.take()
            && let Some(trace) = self.traces.get_mut(&id)
        {
            trace.restamp(probe_id, at);
        }
    }

    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let more_to_admit = !self.queue.is_empty() && self.traces.len() < self.cfg.window;
        self.pacer.poll_timeout(now, more_to_admit)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((id, probe_id)) = self.pacer.pop_expired(now) {
            if let Some(trace) = self.traces.get_mut(&id) {
                trace.on_timeout(probe_id);
                self.after_event(id);
            }
        }
        self.pacer.prune(now);
    }

    pub fn handle_reply(&mut self, reply: &Reply, rx: Instant) -> bool {
        let Some((key, probe_id, flow, answer)) = self.classify(reply) else {
            self.stats.replies_unmatched += 1;
            return false;
        };
        let Some(&id) = self.by_key.get(&key) else {
            self.stats.replies_unmatched += 1;
            return false;
        };
        let Some(trace) = self.traces.get_mut(&id) else {
            self.stats.replies_unmatched += 1;
            return false;
        };
        // A reply naming a flow must name the flow its probe id was sent on.
        if flow.is_some() && trace.flow_of(probe_id) != flow {
            self.stats.replies_unmatched += 1;
            return false;
        }
        self.stats.replies_matched += 1;
        trace.on_answer(probe_id, answer, rx);
        self.after_event(id);
        true
    }

    fn after_event(&mut self, id: u64) {
        let Some(trace) = self.traces.get_mut(&id) else {
            return;
        };
        if trace.is_done() {
            self.finish(id);
        } else if trace.wants_to_send() {
            self.pacer.push_ready(id);
        } else if trace.is_done() {
            // Planning the next batch (inside `wants_to_send`) found nothing left to learn.
            self.finish(id);
        }
    }

    fn finish(&mut self, id: u64) {
        let Some(trace) = self.traces.remove(&id) else {
            return;
        };
        self.by_key.remove(&(trace.dst, trace.params.proto));
        let start = self.pacer.unix_time(trace.first_sent());
        self.stats.traces_done += 1;
        self.results.push_back(trace.result(start));
    }

    pub fn poll_result(&mut self) -> Option<MdaResult> {
        self.results.pop_front()
    }

    /// Which trace, probe id and (when the reply shows it) flow a reply answers.
    fn classify(&self, reply: &Reply) -> Option<(Key, u16, Option<u16>, Answer)> {
        let v6 = reply.from.is_ipv6();
        let cookie = self.cfg.cookie;
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
                let (proto, probe_id, flow) = match quoted.l4 {
                    QuotedL4::Icmp {
                        icmp_type,
                        id,
                        seq,
                        checksum,
                    } => {
                        let echo_request = if v6 { 128 } else { 8 };
                        if icmp_type != echo_request || id != cookie {
                            return None;
                        }
                        (Proto::Icmp, seq, mda_flow_of_icmp_sum(checksum)?)
                    }
                    QuotedL4::Udp {
                        sport,
                        dport,
                        checksum,
                    } => {
                        if dport != Flow::from_cookie(cookie, Proto::Udp).dport {
                            return None;
                        }
                        (Proto::Udp, checksum, mda_flow_of_sport(cookie, sport)?)
                    }
                    QuotedL4::Tcp { sport, dport, seq } => {
                        if dport != Flow::from_cookie(cookie, Proto::Tcp).dport
                            || seq >> 16 != u32::from(cookie)
                        {
                            return None;
                        }
                        (Proto::Tcp, seq as u16, mda_flow_of_sport(cookie, sport)?)
                    }
                    QuotedL4::Other { .. } => return None,
                };
                let time_exceeded = if v6 { 3 } else { 11 };
                let port_unreachable = if v6 { 4 } else { 3 };
                answer.kind = if *icmp_type == time_exceeded {
                    AnswerKind::Intermediate
                } else if *icmp_code == port_unreachable {
                    AnswerKind::Destination
                } else {
                    AnswerKind::Unreachable
                };
                answer.icmp_type = Some(*icmp_type);
                answer.icmp_code = Some(*icmp_code);
                answer.quoted_ttl = Some(quoted.ttl);
                answer.mpls = mpls.clone();
                Some(((quoted.dst, proto), probe_id, Some(flow), answer))
            }
            ReplyBody::EchoReply { icmp_type, id, seq } => {
                if *id != cookie {
                    return None;
                }
                answer.kind = AnswerKind::Destination;
                answer.icmp_type = Some(*icmp_type);
                answer.icmp_code = Some(0);
                Some(((reply.from, Proto::Icmp), *seq, None, answer))
            }
            ReplyBody::Tcp {
                sport,
                dport,
                ack,
                flags,
                ..
            } => {
                let seq = ack.wrapping_sub(1);
                if *sport != Flow::from_cookie(cookie, Proto::Tcp).dport
                    || seq >> 16 != u32::from(cookie)
                {
                    return None;
                }
                let flow = mda_flow_of_sport(cookie, *dport)?;
                answer.kind = AnswerKind::Destination;
                let mut f = String::new();
                for (bit, c) in [
                    (super::packet::TCP_SYN, 'S'),
                    (super::packet::TCP_RST, 'R'),
                    (super::packet::TCP_ACK, 'A'),
                ] {
                    if flags & bit != 0 {
                        f.push(c);
                    }
                }
                answer.tcp_flags = Some(f);
                Some(((reply.from, Proto::Tcp), seq as u16, Some(flow), answer))
            }
        }
    }
}

impl Prober for MdaEngine {
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<IpAddr> {
        MdaEngine::poll_transmit(self, now, buf)
    }
    fn on_sent(&mut self, at: Instant) {
        MdaEngine::on_sent(self, at);
    }
    fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        MdaEngine::poll_timeout(self, now)
    }
    fn handle_timeout(&mut self, now: Instant) {
        MdaEngine::handle_timeout(self, now);
    }
    fn handle_reply(&mut self, reply: &Reply, _ip_id: Option<u16>, rx: Instant) {
        MdaEngine::handle_reply(self, reply, rx);
    }
    fn is_done(&self) -> bool {
        self.is_idle()
    }
}

#[cfg(test)]
mod tests;
