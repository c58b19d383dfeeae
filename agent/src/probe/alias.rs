//! Alias resolution, sans I/O: which of a set of addresses belong to one router.
//!
//! Two classic techniques, both driven by [`AliasProber`] (probes out, replies and `now`
//! in) and inferred by pure functions over what it recorded:
//!
//! - **Mercator** (Govindan & Tangmunarunkit, 2000): a UDP probe to an unused high port
//!   of address X makes the router answer ICMP Port Unreachable from the address it
//!   sources errors from, often not X. A probed X answered from Y ≠ X makes X and Y
//!   aliases; probed addresses answered from one address are aliases of each other. Any
//!   reply (an Echo Reply too) from an address other than the probed one is the same
//!   kind of evidence ("answering address"), and it is all IPv6 allows.
//! - **IP-ID series** (Ally, MIDAR): many routers stamp every packet they originate with
//!   one IPv4 identification counter, whichever interface it leaves from. Echo probes
//!   go to all candidates round-robin, several rounds, at a bounded rate; each reply's
//!   identification is recorded with the probe's send and receive times. Two addresses
//!   can share a counter only if their merged series passes MIDAR's **monotonic bounds
//!   test**: ordered by time, every step moves the counter forward (modulo 2^16), by no
//!   more than the counter's velocity allows in the time between the two samples.
//!   Addresses whose identification is constant, zero, a copy of the probe's own, or not
//!   monotonic (random per packet) are *unusable*, not aliases. IPv6 has no
//!   identification field in its base header, so IP-ID series are IPv4 only.
//!
//! Groups come from union-find over the pairs that pass, kept only where every pair of a
//! group passes (an inconsistent component is split greedily into groups that do).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracemesh_proto::union_find::UnionFind;

use super::bucket::TokenBucket;
use super::denylist::{Denied, DenyList};
use super::model::Proto;
use super::packet::{Flow, ProbeSpec, QuotedL4, Reply, ReplyBody, build_probe, parse_v4_with_id};

/// Which technique(s) to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Mercator,
    #[serde(rename = "ipid")]
    IpId,
    Both,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Mercator => "mercator",
            Method::IpId => "ipid",
            Method::Both => "both",
        }
    }

    fn mercator(self) -> bool {
        matches!(self, Method::Mercator | Method::Both)
    }

    fn ipid(self) -> bool {
        matches!(self, Method::IpId | Method::Both)
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mercator" => Ok(Method::Mercator),
            "ipid" => Ok(Method::IpId),
            "both" => Ok(Method::Both),
            other => Err(format!(
                "unknown alias method {other:?} (expected mercator, ipid or both)"
            )),
        }
    }
}

/// Thresholds of the IP-ID inference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IpIdParams {
    /// Replies an address needs before its series says anything.
    pub min_samples: usize,
    /// Relative slack on the velocity bound (0.5: a step may be 1.5× the expected one).
    pub tolerance: f64,
    /// Absolute slack, in counter units, added to every bound (bursts of other traffic).
    pub slack: f64,
}

impl Default for IpIdParams {
    fn default() -> Self {
        IpIdParams {
            min_samples: 3,
            tolerance: 0.5,
            slack: 10.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AliasConfig {
    pub method: Method,
    /// Global cap on probes per second.
    pub rate_pps: u32,
    /// IP-ID rounds: echo probes per address.
    pub rounds: u32,
    /// Least time between two probes to one address (a round is at least this long).
    pub spacing: Duration,
    /// How long to wait for each reply.
    pub wait: Duration,
    /// Mercator UDP probes per address at most (a retry only after a timeout).
    pub mercator_attempts: u8,
    /// Distinguishes our probes from other processes' (ICMP id, UDP source port).
    pub cookie: u16,
    pub denylist: DenyList,
    pub ipid: IpIdParams,
}

impl Default for AliasConfig {
    fn default() -> Self {
        AliasConfig {
            method: Method::Both,
            rate_pps: 100,
            rounds: 8,
            spacing: Duration::from_millis(100),
            wait: Duration::from_secs(1),
            mercator_attempts: 2,
            cookie: 0x7e3b,
            denylist: DenyList::default(),
            ipid: IpIdParams::default(),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AliasError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("source {src} cannot reach {dst}: different address families")]
    Family { src: IpAddr, dst: IpAddr },
    #[error("no targets to resolve")]
    NoTargets,
    #[error("rounds must be between 1 and 1000 (got {0})")]
    Rounds(u32),
    #[error("mercator attempts must be at least 1")]
    Attempts,
}

/// One IP-ID sample: when the probe left, when the reply came (since the prober started),
/// the reply's identification and the one our probe carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpIdSample {
    #[serde(rename = "tx_us")]
    #[serde(with = "micros")]
    pub tx: Duration,
    #[serde(rename = "rx_us")]
    #[serde(with = "micros")]
    pub rx: Duration,
    pub ip_id: u16,
    pub probe_ip_id: u16,
}

mod micros {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_micros)
    }
}

/// Why an address's IP-ID series cannot show aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnusableReason {
    /// IPv6: no identification field in the base header.
    Ipv6,
    /// Fewer replies than `min_samples`.
    TooFewReplies,
    /// Always zero (typical of atomic datagrams with DF set).
    Zero,
    /// The same non-zero value every time.
    Constant,
    /// The reply copies the probe's identification.
    EchoesProbe,
    /// Steps backwards or jumps more than half the space: random or per-destination.
    NotMonotonic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unusable {
    pub addr: IpAddr,
    pub reason: UnusableReason,
}

/// Why two addresses were inferred to be one router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Evidence {
    Mercator {
        /// Probed address → address the Port Unreachable (or echo) came from.
        answers: BTreeMap<IpAddr, IpAddr>,
    },
    IpId {
        /// Samples per address.
        samples: BTreeMap<IpAddr, usize>,
        /// Counter velocity per address, in identifications per second.
        velocity_per_s: BTreeMap<IpAddr, f64>,
        /// Pairs that passed the monotonic bounds test (all pairs of the group).
        pairs_passed: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasGroup {
    /// Sorted.
    pub addrs: Vec<IpAddr>,
    pub method: Method,
    pub evidence: Evidence,
}

/// Everything a run found, shaped as `tracemesh-agent alias --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasReport {
    pub groups: Vec<AliasGroup>,
    pub probes_sent: u64,
    pub probes_per_addr: BTreeMap<IpAddr, u32>,
    pub unusable: Vec<Unusable>,
    /// IP-ID samples per probed address.
    pub samples: BTreeMap<IpAddr, Vec<IpIdSample>>,
    /// Mercator: probed address → answering address (`null`: no Port Unreachable).
    pub mercator: BTreeMap<IpAddr, Option<IpAddr>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Echo,
    Udp,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    target: usize,
    kind: Kind,
    attempt: u8,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    slot: Slot,
    sent: Instant,
}

#[derive(Debug)]
struct Target {
    dst: IpAddr,
    src: IpAddr,
    last_sent: Option<Instant>,
    probes: u32,
    samples: Vec<IpIdSample>,
    /// Source of the Port Unreachable our UDP probe got.
    mercator: Option<IpAddr>,
    /// Source of any other matched reply, when not the probed address.
    answered_from: Option<IpAddr>,
}

/// The alias-probing state machine: feed it `now`, replies and timeouts; it says which
/// packet to send when. Limits live here so no driver can forget them: the deny-list, a
/// global rate cap, and a least spacing between probes to one address.
#[derive(Debug)]
pub struct AliasProber {
    cfg: AliasConfig,
    epoch: Instant,
    targets: Vec<Target>,
    plan: VecDeque<Slot>,
    in_flight: HashMap<u16, InFlight>,
    /// (deadline, probe id) in send order; deadlines only grow since `wait` is fixed.
    deadlines: VecDeque<(Instant, u16)>,
    next_id: u16,
    global: TokenBucket,
    probes_sent: u64,
}

impl AliasProber {
    /// Plans the probes for `targets` (destination, source to send from); duplicates are
    /// probed once. Refused if any target is in the deny-list.
    pub fn new(
        cfg: AliasConfig,
        targets: &[(IpAddr, IpAddr)],
        now: Instant,
    ) -> Result<Self, AliasError> {
        if cfg.rounds == 0 || cfg.rounds > 1000 {
            return Err(AliasError::Rounds(cfg.rounds));
        }
        if cfg.mercator_attempts == 0 {
            return Err(AliasError::Attempts);
        }
        let mut seen = BTreeSet::new();
        let mut list = Vec::new();
        for &(dst, src) in targets {
            cfg.denylist.check(dst)?;
            if dst.is_ipv4() != src.is_ipv4() {
                return Err(AliasError::Family { src, dst });
            }
            if seen.insert(dst) {
                list.push(Target {
                    dst,
                    src,
                    last_sent: None,
                    probes: 0,
                    samples: Vec::new(),
                    mercator: None,
                    answered_from: None,
                });
            }
        }
        if list.is_empty() {
            return Err(AliasError::NoTargets);
        }
        let mut plan = VecDeque::new();
        if cfg.method.mercator() {
            plan.extend((0..list.len()).map(|target| Slot {
                target,
                kind: Kind::Udp,
                attempt: 1,
            }));
        }
        if cfg.method.ipid() {
            // IPv6 has no identification to sample; it gets no echo probes.
            let v4: Vec<usize> = (0..list.len()).filter(|&i| list[i].dst.is_ipv4()).collect();
            for _ in 0..cfg.rounds {
                plan.extend(v4.iter().map(|&target| Slot {
                    target,
                    kind: Kind::Echo,
                    attempt: 1,
                }));
            }
        }
        Ok(AliasProber {
            // Burst 1: probes evenly spaced, so rounds interleave as planned.
            global: TokenBucket::new(cfg.rate_pps, 1, now),
            cfg,
            epoch: now,
            targets: list,
            plan,
            in_flight: HashMap::new(),
            deadlines: VecDeque::new(),
            next_id: 1,
            probes_sent: 0,
        })
    }

    pub fn probes_sent(&self) -> u64 {
        self.probes_sent
    }

    /// Nothing left to send and nothing awaited.
    pub fn is_done(&self) -> bool {
        self.plan.is_empty() && self.in_flight.is_empty()
    }

    fn alloc_id(&mut self) -> u16 {
        // 1..=0xfffe, skipping ids still in flight.
        loop {
            let id = self.next_id;
            self.next_id = if id >= 0xfffe { 1 } else { id + 1 };
            if !self.in_flight.contains_key(&id) {
                return id;
            }
        }
    }

    fn flow(&self, kind: Kind) -> Flow {
        // UDP goes to 33435, a high port no service listens on, as traceroute's do.
        Flow::from_cookie(
            self.cfg.cookie,
            match kind {
                Kind::Echo => Proto::Icmp,
                Kind::Udp => Proto::Udp,
            },
        )
    }

    /// When the head of the plan may go, by the caps.
    fn next_send_at(&self, now: Instant) -> Option<Instant> {
        let slot = self.plan.front()?;
        let mut at = self.global.next_available(now);
        if let Some(last) = self.targets[slot.target].last_sent {
            at = at.max(last + self.cfg.spacing);
        }
        Some(at)
    }

    /// The next probe to send at `now`, written into `buf` (a whole IP packet for a raw
    /// socket); returns its destination. `None` when the caps say wait.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<IpAddr> {
        loop {
            if self.next_send_at(now)? > now {
                return None;
            }
            let slot = self.plan.pop_front()?;
            let id = self.alloc_id();
            let t = &self.targets[slot.target];
            let (kind, dst, src) = (slot.kind, t.dst, t.src);
            let spec = ProbeSpec {
                proto: match kind {
                    Kind::Echo => Proto::Icmp,
                    Kind::Udp => Proto::Udp,
                },
                src,
                dst,
                ttl: 64,
                flow: self.flow(kind),
                probe_id: id,
            };
            if let Err(e) = build_probe(&spec, buf) {
                // `new` checked the families and ids stay in range: a bug, skip the probe.
                tracing::error!(%dst, error = %e, "cannot build alias probe");
                continue;
            }
            self.global.try_take(now);
            let t = &mut self.targets[slot.target];
            t.last_sent = Some(now);
            t.probes += 1;
            self.probes_sent += 1;
            self.in_flight.insert(id, InFlight { slot, sent: now });
            self.deadlines.push_back((now + self.cfg.wait, id));
            return Some(dst);
        }
    }

    /// When the driver should call back even if no reply arrives.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let deadline = self
            .deadlines
            .iter()
            .find(|(_, id)| self.in_flight.contains_key(id))
            .map(|&(at, _)| at);
        match (deadline, self.next_send_at(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Gives up on probes whose wait is over; a Mercator probe is retried (at the end of
    /// the plan) while attempts remain.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(f) = self.in_flight.remove(&id) else {
                continue;
            };
            if f.slot.kind == Kind::Udp && f.slot.attempt < self.cfg.mercator_attempts {
                self.plan.push_back(Slot {
                    attempt: f.slot.attempt + 1,
                    ..f.slot
                });
            }
        }
    }

    /// Parses an IPv4 packet as a raw ICMP socket delivers it and handles it; returns
    /// whether it answered one of our probes.
    pub fn handle_packet_v4(&mut self, pkt: &[u8], rx: Instant) -> bool {
        match parse_v4_with_id(pkt) {
            Ok((reply, ip_id)) => self.handle_reply(&reply, Some(ip_id), rx),
            Err(_) => false,
        }
    }

    /// Matches a reply to its probe (echo id and sequence; a Port Unreachable by the UDP
    /// probe it quotes); `ip_id` is the reply's IPv4 identification (`None` for IPv6).
    /// Returns whether it was ours.
    pub fn handle_reply(&mut self, reply: &Reply, ip_id: Option<u16>, rx: Instant) -> bool {
        let v6 = reply.from.is_ipv6();
        let (id, kind, quoted_dst, port_unreachable) = match &reply.body {
            ReplyBody::EchoReply { id, seq, .. } if *id == self.cfg.cookie => {
                (*seq, Kind::Echo, None, false)
            }
            ReplyBody::IcmpError {
                icmp_type,
                icmp_code,
                quoted,
                ..
            } => {
                let unreachable = if v6 { 1 } else { 3 };
                let port = if v6 { 4 } else { 3 };
                let pu = *icmp_type == unreachable && *icmp_code == port;
                match quoted.l4 {
                    QuotedL4::Udp {
                        sport,
                        dport,
                        checksum,
                    } => {
                        let f = self.flow(Kind::Udp);
                        if sport != f.sport || dport != f.dport {
                            return false;
                        }
                        (checksum, Kind::Udp, Some(quoted.dst), pu)
                    }
                    QuotedL4::Icmp {
                        icmp_type, id, seq, ..
                    } => {
                        let echo_request = if v6 { 128 } else { 8 };
                        if icmp_type != echo_request || id != self.cfg.cookie {
                            return false;
                        }
                        (seq, Kind::Echo, Some(quoted.dst), false)
                    }
                    _ => return false,
                }
            }
            _ => return false,
        };
        let Some(&f) = self.in_flight.get(&id) else {
            return false;
        };
        let target = &self.targets[f.slot.target];
        if f.slot.kind != kind
            || quoted_dst.is_some_and(|d| d != target.dst)
            || target.dst.is_ipv6() != v6
        {
            return false;
        }
        self.in_flight.remove(&id);
        let epoch = self.epoch;
        let target = &mut self.targets[f.slot.target];
        match (&reply.body, kind) {
            (ReplyBody::EchoReply { .. }, _) => {
                if reply.from != target.dst {
                    target.answered_from = Some(reply.from);
                }
                if let Some(ip_id) = ip_id {
                    target.samples.push(IpIdSample {
                        tx: f.sent.saturating_duration_since(epoch),
                        rx: rx.saturating_duration_since(epoch),
                        ip_id,
                        probe_ip_id: id,
                    });
                }
            }
            (_, Kind::Udp) if port_unreachable => target.mercator = Some(reply.from),
            // Another error (host unreachable, filtered): answered, but no evidence.
            _ => {}
        }
        true
    }

    /// What the run found; call when [`AliasProber::is_done`] (or to stop early).
    pub fn report(&self) -> AliasReport {
        let mut samples = BTreeMap::new();
        let mut probes_per_addr = BTreeMap::new();
        let mut mercator = BTreeMap::new();
        let mut answers = BTreeMap::new();
        for t in &self.targets {
            probes_per_addr.insert(t.dst, t.probes);
            if self.cfg.method.ipid() && t.dst.is_ipv4() {
                samples.insert(t.dst, t.samples.clone());
            }
            if self.cfg.method.mercator() {
                mercator.insert(t.dst, t.mercator);
            }
            if let Some(from) = t.mercator.or(t.answered_from) {
                answers.insert(t.dst, from);
            }
        }
        let mut groups = Vec::new();
        let mut unusable = Vec::new();
        if self.cfg.method.mercator() || !answers.is_empty() {
            groups.extend(mercator_groups(&answers));
        }
        if self.cfg.method.ipid() {
            let (g, u) = ipid_groups(&samples, &self.cfg.ipid);
            groups.extend(g);
            unusable.extend(u);
            unusable.extend(
                self.targets
                    .iter()
                    .filter(|t| t.dst.is_ipv6())
                    .map(|t| Unusable {
                        addr: t.dst,
                        reason: UnusableReason::Ipv6,
                    }),
            );
        }
        AliasReport {
            groups,
            probes_sent: self.probes_sent,
            probes_per_addr,
            unusable,
            samples,
            mercator,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Inference

/// Mercator groups from probed → answering addresses: X with its answering address, and
/// every probed address answered from one address, together.
pub fn mercator_groups(answers: &BTreeMap<IpAddr, IpAddr>) -> Vec<AliasGroup> {
    let addrs: Vec<IpAddr> = answers
        .iter()
        .flat_map(|(&x, &y)| [x, y])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let index = |a: &IpAddr| addrs.binary_search(a).unwrap_or(0);
    let mut dsu = UnionFind::new(addrs.len());
    for (x, y) in answers {
        dsu.union(index(x), index(y));
    }
    dsu.components()
        .into_iter()
        .map(|c| {
            let members: Vec<IpAddr> = c.iter().map(|&i| addrs[i]).collect();
            let answers = answers
                .iter()
                .filter(|(x, _)| members.contains(x))
                .map(|(&x, &y)| (x, y))
                .collect();
            AliasGroup {
                addrs: members,
                method: Method::Mercator,
                evidence: Evidence::Mercator { answers },
            }
        })
        .collect()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn by_time(a: &IpIdSample, b: &IpIdSample) -> Ordering {
    a.tx.cmp(&b.tx).then(a.rx.cmp(&b.rx))
}

/// Checks one address's own series and returns its counter velocity (identifications
/// per second), or why the series is unusable.
pub fn series_velocity(samples: &[IpIdSample], p: &IpIdParams) -> Result<f64, UnusableReason> {
    if samples.len() < p.min_samples.max(2) {
        return Err(UnusableReason::TooFewReplies);
    }
    if samples.iter().all(|s| s.ip_id == 0) {
        return Err(UnusableReason::Zero);
    }
    if samples.iter().all(|s| s.ip_id == samples[0].ip_id) {
        return Err(UnusableReason::Constant);
    }
    if 2 * samples.iter().filter(|s| s.ip_id == s.probe_ip_id).count() > samples.len() {
        return Err(UnusableReason::EchoesProbe);
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(by_time);
    let mut total = 0u64;
    for w in sorted.windows(2) {
        let d = w[1].ip_id.wrapping_sub(w[0].ip_id);
        if d == 0 || d >= 0x8000 {
            return Err(UnusableReason::NotMonotonic);
        }
        total += u64::from(d);
    }
    let mid = |s: &IpIdSample| (secs(s.tx) + secs(s.rx)) / 2.0;
    let (first, last) = (&sorted[0], &sorted[sorted.len() - 1]);
    // Samples within a millisecond say little about time; do not divide by nothing.
    let span = (mid(last) - mid(first)).max(1e-3);
    Ok(total as f64 / span)
}

/// Why a merged series failed the monotonic bounds test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundsViolation {
    /// Index in the merged, time-ordered series of the sample that broke it.
    pub at: usize,
    /// Forward distance from the previous identification (mod 2^16).
    pub step: u16,
    pub bound: f64,
}

/// MIDAR's monotonic bounds test on two series (each from one address): merged in send
/// order, every identification must lie ahead of the previous one (modulo 2^16, so a
/// wrap is a small forward step), by at least one and at most the counter's `velocity`
/// × the most time that can separate the two samples' generation (the later reply's
/// receive minus the earlier probe's send), plus slack. Where two samples' windows
/// overlap, their replies may have been generated in either order, so a small step back
/// is allowed too.
pub fn monotonic_bounds_test(
    a: &[IpIdSample],
    b: &[IpIdSample],
    velocity: f64,
    p: &IpIdParams,
) -> Result<(), BoundsViolation> {
    let mut merged: Vec<IpIdSample> = a.iter().chain(b).copied().collect();
    merged.sort_by(by_time);
    for (i, w) in merged.windows(2).enumerate() {
        let (x, y) = (&w[0], &w[1]);
        let window = secs(y.rx.saturating_sub(x.tx));
        let bound = (velocity * window * (1.0 + p.tolerance) + p.slack).min(32767.0);
        let step = y.ip_id.wrapping_sub(x.ip_id);
        let forward = step != 0 && f64::from(step) <= bound;
        let overlap = y.tx <= x.rx;
        let back = step.wrapping_neg();
        let backward_ok = overlap && back != 0 && f64::from(back) <= bound;
        if !(forward || backward_ok) {
            return Err(BoundsViolation {
                at: i + 1,
                step,
                bound,
            });
        }
    }
    Ok(())
}

/// IP-ID inference over every address's samples: the unusable addresses, and groups of
/// addresses every pair of which passes the monotonic bounds test.
pub fn ipid_groups(
    samples: &BTreeMap<IpAddr, Vec<IpIdSample>>,
    p: &IpIdParams,
) -> (Vec<AliasGroup>, Vec<Unusable>) {
    let mut unusable = Vec::new();
    let mut usable: Vec<(IpAddr, &[IpIdSample], f64)> = Vec::new();
    for (&addr, s) in samples {
        if addr.is_ipv6() {
            unusable.push(Unusable {
                addr,
                reason: UnusableReason::Ipv6,
            });
            continue;
        }
        match series_velocity(s, p) {
            Ok(v) => usable.push((addr, s.as_slice(), v)),
            Err(reason) => unusable.push(Unusable { addr, reason }),
        }
    }
    let n = usable.len();
    let mut pass = vec![vec![false; n]; n];
    let mut dsu = UnionFind::new(n);
    for i in 0..n {
        for j in i + 1..n {
            let v = usable[i].2.max(usable[j].2);
            if monotonic_bounds_test(usable[i].1, usable[j].1, v, p).is_ok() {
                pass[i][j] = true;
                pass[j][i] = true;
                dsu.union(i, j);
            }
        }
    }
    let mut groups = Vec::new();
    for comp in dsu.components() {
        // Greedy cliques: a member joins the first group it passes with entirely.
        let mut cliques: Vec<Vec<usize>> = Vec::new();
        for &m in &comp {
            match cliques.iter_mut().find(|c| c.iter().all(|&o| pass[m][o])) {
                Some(c) => c.push(m),
                None => cliques.push(vec![m]),
            }
        }
        for c in cliques.into_iter().filter(|c| c.len() > 1) {
            let k = c.len();
            groups.push(AliasGroup {
                addrs: c.iter().map(|&i| usable[i].0).collect(),
                method: Method::IpId,
                evidence: Evidence::IpId {
                    samples: c
                        .iter()
                        .map(|&i| (usable[i].0, usable[i].1.len()))
                        .collect(),
                    velocity_per_s: c.iter().map(|&i| (usable[i].0, usable[i].2)).collect(),
                    pairs_passed: k * (k - 1) / 2,
                },
            });
        }
    }
    (groups, unusable)
}

#[cfg(test)]
mod tests;
