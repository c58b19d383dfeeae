//! Multipath tracing toward one destination, sans I/O: MDA-Lite (Vermeulen et al., IMC
//! 2018) with the MDA's stopping rule (Veitch et al., 2009) and a fall-back to the full
//! MDA's node control where the lite assumptions fail.
//!
//! Flows are numbered; a flow's probes share what load balancers hash on (see
//! [`super::packet::Flow::mda`]), so flow *f* follows one path at every TTL. Per TTL the
//! trace sends probes in batches and plans the next batch once the previous one has been
//! answered or has timed out, in this order:
//!
//! 1. hop-level discovery (the lite rule): with *k* interfaces seen at the hop, probe
//!    until `n_k` flows have been tried there, reusing the previous hop's flows spread
//!    over its interfaces before making new ones;
//! 2. node control (the full MDA's rule), for interfaces of the previous hop seen to
//!    branch (two successors or more): every flow known to cross one is probed on, up to
//!    `n_k` of them; once the trace found a meshed diamond, for every interface, making
//!    new flows at the previous hop when too few are known to cross it (the full MDA);
//! 3. link completion: every interface gets a predecessor and a successor where a flow
//!    can show one (behind a single interface too, unless it is the gateway at TTL 1: a
//!    second one its `n_1` flows missed shows up as an interface only new flows reach);
//! 4. the meshing test: with two interfaces or more at both hops, two flows through each
//!    interface probed at the other hop; an interface with two predecessors facing one
//!    with two successors means a meshed diamond, and node control from then on;
//! 5. the width-asymmetry test: interfaces of the previous hop seen with different
//!    numbers of successors each get the full MDA's count of flows through them (new
//!    flows at this hop, as many as their share of the traffic calls for).
//!
//! The trace ends when every answer at a hop came from the destination (or refused), after
//! `gap_limit` silent hops, at `max_ttl`, or when the probe budget is spent. That last hop
//! gets one flow through each interface of the hop before it, or `n_k` flows when fewer
//! (a branch one hop longer puts a router there; tracelb's stop at the first answer from
//! the destination misses it), and the hop's single address, if single, is linked to
//! every one of them.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::model::Proto;
use super::packet::MDA_MAX_FLOWS;
use super::trace::{Answer, AnswerKind};

/// Interfaces at one hop and their neighbours at the next (or previous) one.
type Adjacency = BTreeMap<IpAddr, BTreeSet<IpAddr>>;

/// Flows through each interface the meshing test wants probed at the neighbouring hop.
const MESH_FLOWS: usize = 2;

/// Node control makes new flows at a hop until it has tried this many times its own
/// stopping point: an interface that rarely gets traffic (or a silent share of the
/// hop) must not eat the whole budget.
const MAX_FLOWS_PER_WIDTH: usize = 16;

/// The width-asymmetry test's node control stops at this many times a hop's own count:
/// an interface with a tiny share of the traffic must not eat the budget.
const ASYMMETRY_MAX_FACTOR: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MdaParams {
    pub proto: Proto,
    /// 95 or 99: the chance, per hop, that no interface stays undiscovered.
    pub confidence: u8,
    pub first_ttl: u8,
    pub max_ttl: u8,
    /// Probes per (TTL, flow) before it counts as silent.
    pub attempts: u8,
    pub wait: Duration,
    pub gap_limit: u8,
    /// Most probes this trace may send (at most 65,534).
    pub budget: u32,
}

impl Default for MdaParams {
    fn default() -> Self {
        MdaParams {
            proto: Proto::Udp,
            confidence: 95,
            first_ttl: 1,
            max_ttl: 30,
            attempts: 2,
            wait: Duration::from_millis(1000),
            gap_limit: 3,
            budget: 5000,
        }
    }
}

/// The MDA's stopping point: with `k` interfaces found, how many flows must have been
/// tried to rule out a `k + 1`-th one taking an equal share of the traffic, at the
/// given confidence (Veitch et al.'s table, which scamper's tracelb uses): 6, 11, 16,
/// 21, 27, 33, 38, 44 at 95 %; 8, 15, 21, 28, 36 at 99 %. With nothing found yet it is
/// `n(1)`.
pub fn stopping_point(k: usize, confidence: u8) -> usize {
    let k = k.max(1);
    let alpha = 1.0 - f64::from(confidence.clamp(50, 99)) / 100.0;
    let branches = k + 1;
    // The chance that n flows over `branches` equal branches miss one or more of them,
    // by inclusion–exclusion; beyond ~60 branches the alternating sum loses precision
    // and its first term (a union bound, slightly larger n) is used alone.
    let miss = |n: i32| -> f64 {
        let b = branches as f64;
        if branches > 60 {
            return b * ((b - 1.0) / b).powi(n);
        }
        let mut sum = 0.0;
        let mut binom = 1.0;
        for i in 1..branches {
            binom *= (branches - i + 1) as f64 / i as f64;
            let term = binom * ((b - i as f64) / b).powi(n);
            sum += if i % 2 == 1 { term } else { -term };
        }
        sum
    };
    let mut n = k as i32;
    while miss(n) > alpha && n < 100_000 {
        n += 1;
    }
    n as usize
}

/// Why a multipath trace ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MdaStop {
    /// Every answer at the last hop came from the destination.
    Completed,
    /// Every answer at the last hop was a destination unreachable.
    Unreachable,
    GapLimit,
    MaxTtl,
    /// The probe budget was spent first: the last hops may lack interfaces.
    Budget,
    /// The target lies in the deny-list and was not probed.
    Denied,
}

/// One interface found at a TTL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MdaInterface {
    pub addr: IpAddr,
    /// Flows seen reaching it at this TTL.
    pub flows: u32,
    /// The smallest round-trip time over those flows.
    pub rtt_ms: f64,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub reply_ttl: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MdaHop {
    pub ttl: u8,
    pub interfaces: Vec<MdaInterface>,
    /// Flows tried at this TTL that no probe got an answer for.
    pub stars: u32,
    /// Probes sent at this TTL, retries included.
    pub probes: u32,
}

/// A link between an interface at `ttl` and one at `ttl + 1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MdaLink {
    pub ttl: u8,
    pub from: IpAddr,
    pub to: IpAddr,
}

/// A finished multipath trace: one JSON line of `tracemesh-agent trace --mda`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MdaResult {
    /// Always "mda", so consumers tell these lines from plain traces.
    #[serde(rename = "type")]
    pub kind: String,
    pub dst: IpAddr,
    pub src: Option<IpAddr>,
    pub proto: Proto,
    pub confidence: u8,
    pub stop_reason: MdaStop,
    /// Unix seconds when the first probe left.
    pub start: f64,
    pub probes_sent: u32,
    /// Flow ids used.
    pub flows: u32,
    /// Whether a meshed diamond made the trace fall back to the full MDA.
    pub meshed: bool,
    pub hops: Vec<MdaHop>,
    pub links: Vec<MdaLink>,
}

#[derive(Debug, Clone, PartialEq)]
enum Reach {
    /// Queued or in flight.
    Pending,
    Star,
    Answered {
        answer: Answer,
        rtt_ms: f64,
    },
}

#[derive(Debug)]
struct Sent {
    ttl: u8,
    flow: u16,
    at: Instant,
    live: bool,
}

/// One multipath trace's state.
#[derive(Debug)]
pub struct Mda {
    pub dst: IpAddr,
    pub src: IpAddr,
    pub params: MdaParams,
    /// Indexed by probe id − 1.
    sent: Vec<Sent>,
    outstanding: usize,
    queue: VecDeque<(u8, u16)>,
    tries: HashMap<(u8, u16), u8>,
    reach: BTreeMap<u8, BTreeMap<u16, Reach>>,
    next_flow: u16,
    cur: u8,
    gap: u8,
    stop: Option<MdaStop>,
    meshed: bool,
    first_sent: Option<Instant>,
}

impl Mda {
    pub fn new(dst: IpAddr, src: IpAddr, params: MdaParams) -> Self {
        let first = params.first_ttl.max(1);
        Mda {
            dst,
            src,
            params,
            sent: Vec::new(),
            outstanding: 0,
            queue: VecDeque::new(),
            tries: HashMap::new(),
            reach: BTreeMap::new(),
            next_flow: 0,
            cur: first,
            gap: 0,
            stop: (first > params.max_ttl).then_some(MdaStop::MaxTtl),
            meshed: false,
            first_sent: None,
        }
    }

    pub fn stop_reason(&self) -> Option<MdaStop> {
        self.stop
    }

    /// Stopped, and no probe left to wait for.
    pub fn is_done(&self) -> bool {
        self.stop.is_some() && self.outstanding == 0
    }

    pub fn probes_sent(&self) -> u32 {
        self.sent.len() as u32
    }

    pub fn first_sent(&self) -> Option<Instant> {
        self.first_sent
    }

    /// Whether a probe could go out now (rate caps aside).
    pub fn wants_to_send(&mut self) -> bool {
        if self.stop.is_some() {
            return false;
        }
        if self.queue.is_empty() && self.outstanding == 0 {
            self.plan();
        }
        self.stop.is_none() && !self.queue.is_empty()
    }

    /// The next probe: its TTL, flow id and probe id.
    pub fn next_probe(&mut self, now: Instant) -> Option<(u8, u16, u16)> {
        if !self.wants_to_send() {
            return None;
        }
        let budget = self.params.budget.min(0xfffe) as usize;
        if self.sent.len() >= budget {
            self.stop = Some(MdaStop::Budget);
            self.queue.clear();
            return None;
        }
        let (ttl, flow) = self.queue.pop_front()?;
        *self.tries.entry((ttl, flow)).or_default() += 1;
        self.sent.push(Sent {
            ttl,
            flow,
            at: now,
            live: true,
        });
        self.outstanding += 1;
        self.first_sent.get_or_insert(now);
        Some((ttl, flow, self.sent.len() as u16))
    }

    /// The instant probe `probe_id` really left, when later than the one
    /// [`Mda::next_probe`] was given: its RTT counts from here. Ignored once the probe
    /// is answered or expired.
    pub fn restamp(&mut self, probe_id: u16, at: Instant) {
        if let Some(s) = usize::from(probe_id)
            .checked_sub(1)
            .and_then(|i| self.sent.get_mut(i))
            && s.live
            && at > s.at
        {
            s.at = at;
        }
    }

    /// The flow a probe id was sent on, to check a reply's flow against.
    pub fn flow_of(&self, probe_id: u16) -> Option<u16> {
        self.sent_of(probe_id).map(|s| s.flow)
    }

    fn sent_of(&self, probe_id: u16) -> Option<&Sent> {
        self.sent.get(usize::from(probe_id).checked_sub(1)?)
    }

    pub fn deadline_of(&self, probe_id: u16) -> Option<Instant> {
        self.sent_of(probe_id).map(|s| s.at + self.params.wait)
    }

    pub fn on_timeout(&mut self, probe_id: u16) {
        let Some(i) = usize::from(probe_id).checked_sub(1) else {
            return;
        };
        let Some(s) = self.sent.get_mut(i) else {
            return;
        };
        if !s.live {
            return;
        }
        s.live = false;
        self.outstanding -= 1;
        let (ttl, flow) = (s.ttl, s.flow);
        let slot = self.reach.entry(ttl).or_default().entry(flow);
        let r = slot.or_insert(Reach::Pending);
        if *r != Reach::Pending {
            return;
        }
        let tries = self.tries.get(&(ttl, flow)).copied().unwrap_or(0);
        if tries < self.params.attempts && self.stop.is_none() {
            self.queue.push_front((ttl, flow));
        } else {
            *r = Reach::Star;
        }
    }

    pub fn on_answer(&mut self, probe_id: u16, answer: Answer, rx: Instant) {
        let Some(i) = usize::from(probe_id).checked_sub(1) else {
            return;
        };
        let Some(s) = self.sent.get_mut(i) else {
            return;
        };
        if s.live {
            s.live = false;
            self.outstanding -= 1;
        }
        let rtt_ms = rx.saturating_duration_since(s.at).as_secs_f64() * 1000.0;
        let slot = self
            .reach
            .entry(s.ttl)
            .or_default()
            .entry(s.flow)
            .or_insert(Reach::Pending);
        // The first answer for a (TTL, flow) counts; a late one still replaces a star.
        if matches!(slot, Reach::Pending | Reach::Star) {
            *slot = Reach::Answered { answer, rtt_ms };
        }
    }

    // -----------------------------------------------------------------------------------
    // Planning

    fn at(&self, ttl: u8) -> Option<&BTreeMap<u16, Reach>> {
        self.reach.get(&ttl)
    }

    fn addr_at(&self, ttl: u8, flow: u16) -> Option<IpAddr> {
        match self.at(ttl)?.get(&flow)? {
            Reach::Answered { answer, .. } => Some(answer.addr),
            _ => None,
        }
    }

    fn probed(&self, ttl: u8, flow: u16) -> bool {
        self.at(ttl).is_some_and(|m| m.contains_key(&flow))
    }

    /// Interfaces at `ttl` with the flows that reached each.
    fn vertices(&self, ttl: u8) -> BTreeMap<IpAddr, Vec<u16>> {
        let mut v: BTreeMap<IpAddr, Vec<u16>> = BTreeMap::new();
        for (&f, r) in self.at(ttl).into_iter().flatten() {
            if let Reach::Answered { answer, .. } = r {
                v.entry(answer.addr).or_default().push(f);
            }
        }
        v
    }

    /// Interfaces at `ttl` that forward (answered Time Exceeded), with their flows.
    fn forwarding(&self, ttl: u8) -> BTreeMap<IpAddr, Vec<u16>> {
        let mut v: BTreeMap<IpAddr, Vec<u16>> = BTreeMap::new();
        for (&f, r) in self.at(ttl).into_iter().flatten() {
            if let Reach::Answered { answer, .. } = r
                && answer.kind == AnswerKind::Intermediate
            {
                v.entry(answer.addr).or_default().push(f);
            }
        }
        v
    }

    /// Flows that go on past `ttl`: they crossed a router there or got no answer.
    fn continuing(&self, ttl: u8) -> Vec<u16> {
        self.at(ttl)
            .into_iter()
            .flatten()
            .filter(|(_, r)| match r {
                Reach::Answered { answer, .. } => answer.kind == AnswerKind::Intermediate,
                _ => true,
            })
            .map(|(&f, _)| f)
            .collect()
    }

    fn fresh_flows(&mut self, n: usize) -> Vec<u16> {
        let mut v = Vec::new();
        while v.len() < n && self.next_flow < MDA_MAX_FLOWS {
            v.push(self.next_flow);
            self.next_flow += 1;
        }
        v
    }

    /// Plans the next batch, moving on hop by hop while a hop needs nothing more.
    fn plan(&mut self) {
        while self.stop.is_none() {
            let h = self.cur;
            let batch = self.wanted(h);
            if !batch.is_empty() {
                for (ttl, flow) in batch {
                    self.reach
                        .entry(ttl)
                        .or_default()
                        .insert(flow, Reach::Pending);
                    self.queue.push_back((ttl, flow));
                }
                return;
            }
            let answers: Vec<AnswerKind> = self
                .at(h)
                .into_iter()
                .flatten()
                .filter_map(|(_, r)| match r {
                    Reach::Answered { answer, .. } => Some(answer.kind),
                    _ => None,
                })
                .collect();
            if answers.is_empty() {
                self.gap += 1;
                if self.gap >= self.params.gap_limit.max(1) {
                    self.stop = Some(MdaStop::GapLimit);
                    return;
                }
            } else {
                self.gap = 0;
                if !answers.contains(&AnswerKind::Intermediate) {
                    self.stop = Some(if answers.contains(&AnswerKind::Destination) {
                        MdaStop::Completed
                    } else {
                        MdaStop::Unreachable
                    });
                    return;
                }
            }
            if h >= self.params.max_ttl {
                self.stop = Some(MdaStop::MaxTtl);
                return;
            }
            self.cur += 1;
        }
    }

    /// What hop `h` still needs, as (TTL, flow) pairs never probed before.
    fn wanted(&mut self, h: u8) -> Vec<(u8, u16)> {
        let first = h <= self.params.first_ttl.max(1);
        let conf = self.params.confidence;

        // 1. Hop-level discovery.
        let tried = self.at(h).map_or(0, BTreeMap::len);
        let answers: Vec<&Answer> = self
            .at(h)
            .into_iter()
            .flatten()
            .filter_map(|(_, r)| match r {
                Reach::Answered { answer, .. } => Some(answer),
                _ => None,
            })
            .collect();
        // Flows that answered from the end of the path (the destination, or a refusal)
        // end there: nothing else sits at that distance on those paths.
        let at_end =
            !answers.is_empty() && answers.iter().all(|a| a.kind != AnswerKind::Intermediate);
        let prev_width = if first {
            1
        } else {
            self.forwarding(h - 1).len().max(1)
        };
        let need = if h == 1 {
            // TTL 1 is the vantage's own gateway: its default route has one next hop.
            1
        } else if tried == 0 {
            // First one flow per interface of the previous hop (links need them anyway),
            // to learn whether this is the end of the path before spending `n_k`.
            prev_width.min(stopping_point(0, conf))
        } else if at_end {
            // The end of the path: one flow through each interface of the previous
            // hop, or `n_k` flows when that is fewer (the hop-level rule itself). Not
            // one flow and done, as tracelb does once the destination answers: branches
            // of unequal length put a router at this distance on the other branches
            // (the lab has them), which only a flow through them shows. Linux over IPv6
            // also answers for an address it only routes from the interface the probe
            // came in on: one address per way in, which these flows find.
            prev_width.min(stopping_point(self.vertices(h).len(), conf))
        } else {
            stopping_point(self.vertices(h).len(), conf)
        };
        if tried < need {
            let mut want = need - tried;
            let mut batch = Vec::new();
            if !first {
                // Previous hop's flows, round-robin over its interfaces (those with the
                // fewest flows tried here first, so batches keep them even), silent
                // ones last.
                let prev = self.forwarding(h - 1);
                let mut groups: Vec<(usize, VecDeque<u16>)> = prev
                    .values()
                    .map(|fs| {
                        let done = fs.iter().filter(|&&f| self.probed(h, f)).count();
                        (
                            done,
                            fs.iter().copied().filter(|&f| !self.probed(h, f)).collect(),
                        )
                    })
                    .collect();
                groups.sort_by_key(|g| g.0);
                let mut groups: Vec<VecDeque<u16>> = groups.into_iter().map(|g| g.1).collect();
                let stars: VecDeque<u16> = self
                    .continuing(h - 1)
                    .into_iter()
                    .filter(|&f| self.addr_at(h - 1, f).is_none() && !self.probed(h, f))
                    .collect();
                groups.push(stars);
                while want > 0 && groups.iter().any(|g| !g.is_empty()) {
                    for g in &mut groups {
                        if want == 0 {
                            break;
                        }
                        if let Some(f) = g.pop_front() {
                            batch.push((h, f));
                            want -= 1;
                        }
                    }
                }
            }
            batch.extend(self.fresh_flows(want).into_iter().map(|f| (h, f)));
            if !batch.is_empty() {
                return batch;
            }
        }
        if first {
            return Vec::new();
        }
        // One address at the end after that, and either every interface of the
        // previous hop sent an answered flow to it or `n_k` flows ruled out a second
        // address at this distance: every path through the previous hop ends there,
        // and `result` links them without more probes (link completion would spend one
        // per interface, which is what `n_k` spared).
        let ends = self.vertices(h);
        if at_end
            && ends.len() == 1
            && (tried >= stopping_point(1, conf)
                || self
                    .forwarding(h - 1)
                    .values()
                    .all(|fs| fs.iter().any(|&f| self.addr_at(h, f).is_some())))
        {
            return Vec::new();
        }

        // 2. Node control where an interface branches, or everywhere once meshed. One
        // interface at the previous hop that answered every flow there is crossed by
        // every flow: hop-level discovery has been its node control.
        let prev = self.forwarding(h - 1);
        let single_prev = prev.len() == 1
            && self
                .at(h - 1)
                .is_some_and(|m| m.values().all(|r| matches!(r, Reach::Answered { .. })));
        let mut batch = Vec::new();
        let mut short = 0usize;
        for flows in prev.values() {
            if single_prev || at_end {
                break;
            }
            let succ: BTreeSet<IpAddr> = flows.iter().filter_map(|&f| self.addr_at(h, f)).collect();
            if !self.meshed && succ.len() < 2 {
                continue;
            }
            let through = flows.iter().filter(|&&f| self.probed(h, f)).count();
            let need = stopping_point(succ.len(), conf);
            if through >= need {
                continue;
            }
            let mut missing = need - through;
            for &f in flows.iter().filter(|&&f| !self.probed(h, f)) {
                if missing == 0 {
                    break;
                }
                batch.push((h, f));
                missing -= 1;
            }
            short += missing;
        }
        if !batch.is_empty() {
            return batch;
        }
        // Making new flows at the previous hop until enough cross one interface is what
        // makes the full MDA expensive (most land elsewhere); the lite does it only in a
        // meshed diamond, where hop-level counts say nothing about one interface.
        let tried_prev = self.at(h - 1).map_or(0, BTreeMap::len);
        if self.meshed
            && short > 0
            && tried_prev < MAX_FLOWS_PER_WIDTH * stopping_point(prev.len(), conf)
        {
            // Too few flows are known to pass some interface: new flows at the previous
            // hop, each landing on one of its interfaces.
            let n = short * prev.len().max(1);
            return self
                .fresh_flows(n)
                .into_iter()
                .map(|f| (h - 1, f))
                .collect();
        }

        // 3. Link completion. A single interface at the previous hop is every flow's
        // way through only as far as `n_1` flows there could tell: an interface here that
        // only new flows reached may hang off a second one those flows missed (a
        // two-way split seen one way, 3 % at 95 %), and one of its flows there says
        // which. Not behind TTL 1, whose one address is the vantage's own gateway.
        let here = self.vertices(h);
        let trusted_single = single_prev && h - 1 == 1;
        for flows in here.values() {
            let has_pred =
                trusted_single || flows.iter().any(|&f| self.addr_at(h - 1, f).is_some());
            if !has_pred && let Some(&f) = flows.iter().find(|&&f| !self.probed(h - 1, f)) {
                batch.push((h - 1, f));
            }
        }
        for flows in prev.values() {
            let has_succ = flows.iter().any(|&f| self.addr_at(h, f).is_some());
            if !has_succ && let Some(&f) = flows.iter().find(|&&f| !self.probed(h, f)) {
                batch.push((h, f));
            }
        }
        if !batch.is_empty() {
            return batch;
        }

        // 4. The meshing test.
        if self.meshed || at_end || prev.len() < 2 || here.len() < 2 {
            return Vec::new();
        }
        for flows in here.values() {
            let known = flows.iter().filter(|&&f| self.probed(h - 1, f)).count();
            batch.extend(
                flows
                    .iter()
                    .filter(|&&f| !self.probed(h - 1, f))
                    .take(MESH_FLOWS.saturating_sub(known))
                    .map(|&f| (h - 1, f)),
            );
        }
        for flows in prev.values() {
            let known = flows.iter().filter(|&&f| self.probed(h, f)).count();
            batch.extend(
                flows
                    .iter()
                    .filter(|&&f| !self.probed(h, f))
                    .take(MESH_FLOWS.saturating_sub(known))
                    .map(|&f| (h, f)),
            );
        }
        if !batch.is_empty() {
            return batch;
        }
        let (succ, pred) = self.adjacency(h - 1);
        if succ.values().any(|s| s.len() >= 2) && pred.values().any(|p| p.len() >= 2) {
            tracing::debug!(dst = %self.dst, ttl = h, "meshed diamond: full MDA from here");
            self.meshed = true;
            return self.wanted(h);
        }

        // 5. Width asymmetry.
        self.width_asymmetry(h, &prev, &succ, &pred)
    }

    /// Successors of each interface at `ttl` and predecessors of each at `ttl + 1`, from
    /// the links flows showed.
    fn adjacency(&self, ttl: u8) -> (Adjacency, Adjacency) {
        let mut succ = Adjacency::new();
        let mut pred = Adjacency::new();
        for (a, b) in self.links_between(ttl) {
            succ.entry(a).or_default().insert(b);
            pred.entry(b).or_default().insert(a);
        }
        (succ, pred)
    }

    /// MDA-Lite's width-asymmetry test: when interfaces of the previous hop are seen
    /// with different numbers of successors, the hop-level count (`n_k` flows over the
    /// whole hop) leaves the wider ones short (in `1 → {a, b}, a → {a1, a2, a3}`,
    /// `b → {b1}`, half the flows reach `a`, and its three successors share them), so
    /// each gets the full MDA's count: `n_k` flows through it, `k` its successors. Flows
    /// known to cross it go first, then new flows at this hop, as many as its share of
    /// the previous hop says it takes (at most [`ASYMMETRY_MAX_FACTOR`] times the hop's
    /// own count); a new flow counts for the interface whose only successor it reached.
    fn width_asymmetry(
        &mut self,
        h: u8,
        prev: &BTreeMap<IpAddr, Vec<u16>>,
        succ: &Adjacency,
        pred: &Adjacency,
    ) -> Vec<(u8, u16)> {
        let conf = self.params.confidence;
        if prev.len() < 2 {
            return Vec::new();
        }
        let widths: BTreeSet<usize> = prev
            .keys()
            .filter_map(|v| succ.get(v).map(BTreeSet::len))
            .collect();
        if widths.len() < 2 {
            return Vec::new();
        }
        let mut through: BTreeMap<IpAddr, usize> = BTreeMap::new();
        for (&f, r) in self.at(h).into_iter().flatten() {
            let Reach::Answered { answer, .. } = r else {
                continue;
            };
            let via = if self.probed(h - 1, f) {
                self.addr_at(h - 1, f)
            } else {
                pred.get(&answer.addr)
                    .filter(|p| p.len() == 1)
                    .and_then(|p| p.first().copied())
            };
            if let Some(v) = via {
                *through.entry(v).or_default() += 1;
            }
        }
        let answered_prev: usize = prev.values().map(Vec::len).sum();
        let mut batch = Vec::new();
        let mut fresh = 0usize;
        for (v, flows) in prev {
            let need = stopping_point(succ.get(v).map_or(1, BTreeSet::len), conf);
            let have = through.get(v).copied().unwrap_or(0);
            let mut missing = need.saturating_sub(have);
            for &f in flows.iter().filter(|&&f| !self.probed(h, f)) {
                if missing == 0 {
                    break;
                }
                batch.push((h, f));
                missing -= 1;
            }
            if missing > 0 {
                let share = flows.len() as f64 / answered_prev.max(1) as f64;
                fresh = fresh.max((missing as f64 / share).ceil() as usize);
            }
        }
        if !batch.is_empty() {
            return batch;
        }
        let tried = self.at(h).map_or(0, BTreeMap::len);
        let cap = ASYMMETRY_MAX_FACTOR * stopping_point(self.vertices(h).len(), conf);
        let n = fresh.min(cap.saturating_sub(tried));
        if n > 0 {
            tracing::debug!(dst = %self.dst, ttl = h, flows = n, "width asymmetry: node control");
        }
        self.fresh_flows(n).into_iter().map(|f| (h, f)).collect()
    }

    /// Links seen between `ttl` and `ttl + 1` through a flow answered at both.
    fn links_between(&self, ttl: u8) -> BTreeSet<(IpAddr, IpAddr)> {
        let mut out = BTreeSet::new();
        for (&f, r) in self.at(ttl).into_iter().flatten() {
            if let Reach::Answered { answer, .. } = r
                && answer.kind == AnswerKind::Intermediate
                && let Some(b) = self.addr_at(ttl + 1, f)
            {
                out.insert((answer.addr, b));
            }
        }
        out
    }

    /// The result so far (complete once [`Mda::is_done`]).
    pub fn result(&self, start: f64) -> MdaResult {
        let mut hops = Vec::new();
        let mut per_ttl_probes: BTreeMap<u8, u32> = BTreeMap::new();
        for s in &self.sent {
            *per_ttl_probes.entry(s.ttl).or_default() += 1;
        }
        let mut links = BTreeSet::new();
        for (&ttl, flows) in &self.reach {
            let mut ifaces: BTreeMap<IpAddr, MdaInterface> = BTreeMap::new();
            let mut stars = 0;
            for r in flows.values() {
                match r {
                    Reach::Answered { answer, rtt_ms } => {
                        let e = ifaces.entry(answer.addr).or_insert(MdaInterface {
                            addr: answer.addr,
                            flows: 0,
                            rtt_ms: *rtt_ms,
                            icmp_type: answer.icmp_type,
                            icmp_code: answer.icmp_code,
                            reply_ttl: answer.reply_ttl,
                        });
                        e.flows += 1;
                        e.rtt_ms = e.rtt_ms.min(*rtt_ms);
                    }
                    Reach::Star => stars += 1,
                    Reach::Pending => {}
                }
            }
            hops.push(MdaHop {
                ttl,
                interfaces: ifaces.into_values().collect(),
                stars,
                probes: per_ttl_probes.get(&ttl).copied().unwrap_or(0),
            });
            for (a, b) in self.links_between(ttl) {
                links.insert(MdaLink {
                    ttl,
                    from: a,
                    to: b,
                });
            }
        }
        // One forwarding interface at a hop where every flow tried answered: all flows
        // crossed it, so it links to everything at the next hop.
        for w in hops.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            if b.ttl != a.ttl + 1 || a.stars > 0 || a.interfaces.len() != 1 {
                continue;
            }
            let only = &a.interfaces[0];
            if only.icmp_type != Some(if only.addr.is_ipv4() { 11 } else { 3 }) {
                continue;
            }
            for i in &b.interfaces {
                links.insert(MdaLink {
                    ttl: a.ttl,
                    from: only.addr,
                    to: i.addr,
                });
            }
        }
        // A last hop with one address, where every answer ended the path (the
        // destination, or a refusal): every forwarding interface of the hop before
        // ends there, whether or not a flow showed it (`wanted` ends such a hop once a
        // flow through each of them answered, or `n_k` flows ruled out a second
        // address there).
        if matches!(self.stop, Some(MdaStop::Completed | MdaStop::Unreachable))
            && let [.., before, last] = hops.as_slice()
            && before.ttl + 1 == last.ttl
            && let [end] = last.interfaces.as_slice()
        {
            for &from in self.forwarding(before.ttl).keys() {
                links.insert(MdaLink {
                    ttl: before.ttl,
                    from,
                    to: end.addr,
                });
            }
        }
        MdaResult {
            kind: "mda".into(),
            dst: self.dst,
            src: Some(self.src),
            proto: self.params.proto,
            confidence: self.params.confidence,
            stop_reason: self.stop.unwrap_or(MdaStop::MaxTtl),
            start,
            probes_sent: self.probes_sent(),
            flows: u32::from(self.next_flow),
            meshed: self.meshed,
            hops,
            links: links.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests;
