//! Diversion detection and triangulation: pure logic over traces, vantage metadata and
//! an [`Annotator`]; no I/O and no clock (the caller passes `now`).
//!
//! Per (vantage, destination) the detector keeps the path of every clean round (paths
//! are interned, so a stable path costs a few bytes per round) and the details of every
//! diverted round. Episodes, hand-offs and positions are computed at report time, which
//! makes the result independent of the order in which rounds arrive and lets a normal
//! path learned *after* an episode still name the hand-off of an episode that was
//! active from the very first round.

mod handoff;
mod types;
mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use rustc_hash::FxHashMap;

pub use types::*;
pub use view::render_text;

use crate::annotate::Annotator;
use crate::geo::{
    Disc, Estimate, Gazetteer, GeoPoint, Ring, TYPICAL_SPEED_FRACTION, great_circle_km,
    multilaterate, rtt_radius_km,
};
use handoff::{Pick, Quality, find_handoff};

/// Largest TTL distance between two answering hops still treated as one stretch of
/// path for positioning.
const MAX_LINK_GAP: u8 = 3;

/// A hop as the detector keeps it.
#[derive(Debug, Clone, PartialEq)]
struct Hop {
    ttl: u8,
    addr: Option<IpAddr>,
    rtt: Option<f64>,
    asn: Option<u32>,
    /// The adversary AS this hop belongs to, if any.
    adversary: Option<u32>,
}

/// (TTL, address or silence) along a path.
type PathHops = Vec<(u8, Option<IpAddr>)>;
type CleanPath = Arc<PathHops>;
/// A located address: the feasible region, the preferred point in it, its city.
type Located = Option<(Estimate, GeoPoint, Option<(String, String)>)>;
/// Positions are shared by every record through the same routers: compute once per report.
type LocateCache = HashMap<(IpAddr, u8), Located>;

#[derive(Debug, Clone)]
struct CleanObs {
    path: CleanPath,
    dst_rtt: Option<f64>,
}

#[derive(Debug, Clone)]
struct DivertedObs {
    start: f64,
    hops: Vec<Hop>,
    /// Index in `hops` of the first adversary hop.
    ingress: usize,
    dst_rtt: Option<f64>,
}

/// What the annotator says about an address, as the detector needs it per hop: asked
/// once per address rather than once per hop (three longest-prefix matches each).
#[derive(Debug, Clone, Copy)]
struct AddrFacts {
    asn: Option<u32>,
    adversary: Option<u32>,
}

/// Most vantages a link keeps RTT minima for: any one whose path crosses the link
/// bounds its length, a few guard against one vantage's bad luck. Kept inline (no heap
/// indirection): there is one per link and one update per hop.
const LINK_VANTAGES: usize = 4;

/// A link a → b as seen by up to [`LINK_VANTAGES`] vantages: per vantage, the minimum
/// RTT to each end over the traces that crossed the link. The step is taken between the
/// two minima, not per trace: one round in which the near end's answer came back late
/// (a busy prober stamps its send early) would otherwise shrink the step, and the bound
/// it gives, below the link's real length. RTTs as f32: 0.1 µs resolution at 1 s.
#[derive(Debug, Default, Clone, Copy)]
struct LinkObs {
    len: u8,
    seen: [(u32, f32, f32); LINK_VANTAGES],
}

impl LinkObs {
    fn observe(&mut self, vid: u32, ra: f64, rb: f64) {
        let (ra, rb) = (ra as f32, rb as f32);
        let n = usize::from(self.len);
        if let Some((_, a, b)) = self.seen[..n].iter_mut().find(|(v, _, _)| *v == vid) {
            *a = a.min(ra);
            *b = b.min(rb);
        } else if n < LINK_VANTAGES {
            self.seen[n] = (vid, ra, rb);
            self.len += 1;
        }
    }

    fn step(&self) -> f64 {
        self.seen[..usize::from(self.len)]
            .iter()
            .map(|(_, a, b)| f64::from(*b) - f64::from(*a))
            .fold(f64::INFINITY, f64::min)
    }
}

#[derive(Debug, Default)]
struct PairState {
    clean: BTreeMap<u64, CleanObs>,
    diverted: BTreeMap<u64, DivertedObs>,
    starts: BTreeMap<u64, f64>,
}

/// The stateful detector. Feed it traces with [`Detector::ingest`], ask for the current
/// picture with [`Detector::report`].
#[derive(Debug)]
pub struct Detector {
    adversary: Adversary,
    vantages: Vec<VantageInfo>,
    vantage_ids: HashMap<String, u32>,
    /// Keyed by vantage id, so one vantage's pairs are a contiguous range.
    pairs: BTreeMap<(u32, IpAddr), PairState>,
    /// Minimum RTT per (hop address, vantage): congestion only ever adds delay, so the
    /// minimum is the tightest distance bound.
    rtts: FxHashMap<IpAddr, FxHashMap<u32, f64>>,
    /// For each address, the hops seen answering shortly before it (at most
    /// `MAX_LINK_GAP` TTLs): a stretch of path whose length the RTT step bounds.
    preds: FxHashMap<IpAddr, FxHashMap<IpAddr, LinkObs>>,
    /// Per-address annotation, valid for annotator generation `facts_generation`.
    facts: FxHashMap<IpAddr, AddrFacts>,
    facts_generation: u64,
}

fn dedup_asns(it: impl Iterator<Item = Option<u32>>) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for a in it.flatten() {
        if out.last() != Some(&a) {
            out.push(a);
        }
    }
    out
}

impl Detector {
    pub fn new(adversary: Adversary) -> Self {
        Detector {
            adversary,
            vantages: Vec::new(),
            vantage_ids: HashMap::new(),
            pairs: BTreeMap::new(),
            rtts: FxHashMap::default(),
            preds: FxHashMap::default(),
            facts: FxHashMap::default(),
            facts_generation: 0,
        }
    }

    pub fn adversary(&self) -> &Adversary {
        &self.adversary
    }

    /// Registers or updates a vantage's metadata (position, country, AS).
    pub fn set_vantage(&mut self, info: VantageInfo) {
        match self.vantage_ids.get(&info.name) {
            Some(&id) => self.vantages[id as usize] = info,
            None => {
                let id = self.vantages.len() as u32;
                self.vantage_ids.insert(info.name.clone(), id);
                self.vantages.push(info);
            }
        }
    }

    fn vantage_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.vantage_ids.get(name) {
            return id;
        }
        self.set_vantage(VantageInfo {
            name: name.to_owned(),
            loc: None,
            country: None,
            asn: None,
        });
        self.vantage_ids.get(name).copied().unwrap_or(0)
    }

    /// The adversary AS an address belongs to, by any origin of its prefix or by the
    /// registration country of its primary origin. IXP LAN addresses belong to nobody:
    /// their prefix says nothing about which member's router answered.
    fn adversary_of(&self, annot: &Annotator, addr: IpAddr) -> Option<u32> {
        if annot.ixp(addr).is_some() {
            return None;
        }
        let (_, origin) = annot.origin(addr)?;
        if let Some(a) = origin
            .asns()
            .iter()
            .find(|a| self.adversary.asns.contains(a))
        {
            return Some(*a);
        }
        origin
            .asns()
            .iter()
            .find(|a| self.adversary.has_country(annot.as_country(**a)))
            .copied()
    }

    fn facts(&mut self, annot: &Annotator, addr: IpAddr) -> AddrFacts {
        if let Some(f) = self.facts.get(&addr) {
            return *f;
        }
        let f = AddrFacts {
            asn: annot.asn(addr),
            adversary: self.adversary_of(annot, addr),
        };
        self.facts.insert(addr, f);
        f
    }

    fn vantage_belongs(&self, annot: &Annotator, v: &VantageInfo) -> bool {
        v.asn.is_some_and(|a| {
            self.adversary.asns.contains(&a) || self.adversary.has_country(annot.as_country(a))
        }) || self.adversary.has_country(v.country.as_deref())
    }

    /// Ingests one traceroute. Traces may arrive in any order; a repeated (vantage,
    /// destination, round) replaces the earlier one.
    pub fn ingest(&mut self, trace: &Trace, annot: &Annotator) {
        if self.facts_generation != annot.generation() {
            self.facts.clear();
            self.facts_generation = annot.generation();
        }
        let vid = self.vantage_id(&trace.vantage);
        let mut hops: Vec<Hop> = Vec::with_capacity(trace.hops.len());
        for h in trace.hops.iter().filter(|h| h.addr != Some(trace.dst)) {
            let facts = h.addr.map(|a| self.facts(annot, a));
            hops.push(Hop {
                ttl: h.ttl,
                addr: h.addr,
                rtt: h.rtt_ms.filter(|r| r.is_finite() && *r >= 0.0),
                asn: facts.and_then(|f| f.asn),
                adversary: facts.and_then(|f| f.adversary),
            });
        }
        if !hops.is_sorted_by_key(|h| h.ttl) {
            hops.sort_by_key(|h| h.ttl);
        }
        hops.dedup_by_key(|h| h.ttl);
        let dst_rtt = trace
            .hops
            .iter()
            .filter(|h| h.addr == Some(trace.dst))
            .filter_map(|h| h.rtt_ms)
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.min(r))));

        for h in &hops {
            if let (Some(a), Some(r)) = (h.addr, h.rtt) {
                let e = self.rtts.entry(a).or_default().entry(vid).or_insert(r);
                if r < *e {
                    *e = r;
                }
            }
        }

        // Links between answering hops; across up to two silent hops too, since a silent
        // router next to the ingress is common and the step still bounds the distance.
        let mut last: Option<(u8, IpAddr, f64)> = None;
        for h in &hops {
            let (Some(b), Some(rb)) = (h.addr, h.rtt) else {
                continue;
            };
            if let Some((ta, a, ra)) = last
                && h.ttl > ta
                && h.ttl - ta <= MAX_LINK_GAP
                && a != b
            {
                self.preds
                    .entry(b)
                    .or_default()
                    .entry(a)
                    .or_default()
                    .observe(vid, ra, rb);
            }
            last = Some((h.ttl, b, rb));
        }

        let dst_facts = self.facts(annot, trace.dst);
        let dst_belongs = dst_facts.adversary.is_some();
        let ingress = hops.iter().position(|h| h.adversary.is_some());
        // Traffic to or from the adversary's own country legitimately rides its national
        // carriers (a Korean user reaching a Chinese university crosses China Telecom by
        // design), so an end registered in the entered AS's country also counts as
        // belonging to it.
        let home = ingress
            .and_then(|i| hops[i].adversary)
            .and_then(|a| annot.as_country(a));
        let dst_country = dst_facts.asn.and_then(|a| annot.as_country(a));
        let same_country = |cc: Option<&str>| matches!((cc, home), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b));
        let vinfo = &self.vantages[vid as usize];
        let domestic = same_country(dst_country) || same_country(vinfo.country.as_deref());
        let diverted =
            ingress.is_some() && !dst_belongs && !domestic && !self.vantage_belongs(annot, vinfo);

        let pair = self.pairs.entry((vid, trace.dst)).or_default();
        pair.starts.insert(trace.round, trace.start);
        pair.clean.remove(&trace.round);
        pair.diverted.remove(&trace.round);
        match (diverted, ingress) {
            (true, Some(ingress)) => {
                tracing::debug!(vantage = %trace.vantage, dst = %trace.dst, round = trace.round, "diverted round");
                pair.diverted.insert(
                    trace.round,
                    DivertedObs {
                        start: trace.start,
                        hops,
                        ingress,
                        dst_rtt,
                    },
                );
            }
            _ => {
                let path: Vec<(u8, Option<IpAddr>)> =
                    hops.iter().map(|h| (h.ttl, h.addr)).collect();
                // Share storage with the neighbouring round when the path is unchanged.
                let shared = pair
                    .clean
                    .range(..trace.round)
                    .next_back()
                    .map(|(_, o)| &o.path)
                    .filter(|p| ***p == path)
                    .cloned();
                pair.clean.insert(
                    trace.round,
                    CleanObs {
                        path: shared.unwrap_or_else(|| Arc::new(path)),
                        dst_rtt,
                    },
                );
            }
        }
    }

    /// The learned normal path for a pair as of `round`: the latest clean path before
    /// it (or, failing that, the earliest after it), with silent TTLs filled from older
    /// clean rounds that agree on the hop before.
    fn normal_path(pair: &PairState, round: u64) -> Option<(PathHops, Option<f64>)> {
        let mut it: Box<dyn Iterator<Item = &CleanObs>> =
            Box::new(pair.clean.range(..round).rev().map(|(_, o)| o));
        let mut first = it.next();
        if first.is_none() {
            it = Box::new(pair.clean.range(round..).map(|(_, o)| o));
            first = it.next();
        }
        let first = first?;
        let mut path: Vec<(u8, Option<IpAddr>)> = first.path.as_ref().clone();
        let mut seen_paths = 0;
        let mut last: Option<&CleanPath> = Some(&first.path);
        for older in it.take(64) {
            if path.iter().all(|(_, a)| a.is_some()) {
                break;
            }
            if last.is_some_and(|l| Arc::ptr_eq(l, &older.path)) {
                continue;
            }
            last = Some(&older.path);
            seen_paths += 1;
            if seen_paths > 8 {
                break;
            }
            for i in 0..path.len() {
                if path[i].1.is_some() {
                    continue;
                }
                let ttl = path[i].0;
                let prev = if i == 0 { None } else { path[i - 1].1 };
                let agrees_before = i == 0
                    || older
                        .path
                        .iter()
                        .any(|(t, a)| *t + 1 == ttl && *a == prev && a.is_some());
                if agrees_before
                    && let Some((_, a)) = older.path.iter().find(|(t, a)| *t == ttl && a.is_some())
                {
                    path[i].1 = *a;
                }
            }
        }
        Some((path, first.dst_rtt))
    }

    /// Position of any answering address, from RTT constraints only: a disc per vantage
    /// (its best RTT), and for each hop seen answering right before it (up to `depth`
    /// links back) a disc around that hop's own estimate grown by the RTT step between
    /// the two, plus a soft ring at the step's typical distance. When the hard
    /// constraints leave a wide region, the likeliest metro inside it is preferred (see
    /// [`Gazetteer::hub_prior`]); the returned estimate keeps the region's centroid and
    /// radius, the second value is the preferred point and its city.
    fn locate(
        &self,
        addr: IpAddr,
        depth: u8,
        gazetteer: &Gazetteer,
        cache: &mut LocateCache,
    ) -> Located {
        if let Some(hit) = cache.get(&(addr, depth)) {
            return hit.clone();
        }
        let out = self.locate_uncached(addr, depth, gazetteer, cache);
        cache.insert((addr, depth), out.clone());
        out
    }

    fn locate_uncached(
        &self,
        addr: IpAddr,
        depth: u8,
        gazetteer: &Gazetteer,
        cache: &mut LocateCache,
    ) -> Located {
        let mut discs: Vec<Disc> = self
            .rtts
            .get(&addr)
            .into_iter()
            .flatten()
            .filter_map(|(vid, rtt)| {
                let loc = self.vantages.get(*vid as usize)?.loc?;
                Some(Disc::from_rtt(loc, *rtt))
            })
            .collect();
        let mut rings = Vec::new();
        if depth > 0
            && let Some(preds) = self.preds.get(&addr)
        {
            let mut preds: Vec<(IpAddr, f64)> = preds.iter().map(|(a, l)| (*a, l.step())).collect();
            // The shortest links say the most; a handful is plenty.
            preds.sort_by(|x, y| x.1.total_cmp(&y.1).then(x.0.cmp(&y.0)));
            for (p, step) in preds.into_iter().take(4) {
                let Some((pe, ploc, _)) = self.locate(p, depth - 1, gazetteer, cache) else {
                    continue;
                };
                if !pe.consistent {
                    continue;
                }
                let step = step.max(0.0);
                discs.push(Disc {
                    center: pe.loc,
                    radius_km: pe.radius_km + rtt_radius_km(step),
                });
                let expected = rtt_radius_km(step) * TYPICAL_SPEED_FRACTION;
                rings.push(Ring {
                    center: ploc,
                    expected_km: expected,
                    sigma_km: (0.3 * expected).max(75.0)
                        + great_circle_km(ploc, pe.loc).min(pe.radius_km),
                });
            }
        }
        let est = multilaterate(&discs)?;
        if let Some(city) = gazetteer.hub_prior(&est, &discs, &rings) {
            return Some((
                est,
                city.loc,
                Some((city.name.clone(), city.country.clone())),
            ));
        }
        let city = gazetteer
            .nearest(est.loc)
            .map(|(c, _)| (c.name.clone(), c.country.clone()));
        Some((est, est.loc, city))
    }

    /// Clean paths of one vantage toward other destinations, for naming a silent hop
    /// that sits on a shared stretch of path.
    fn vantage_clean_paths(&self, vid: u32) -> impl Iterator<Item = &CleanPath> + '_ {
        let lo = (vid, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let hi = (vid, IpAddr::V6(Ipv6Addr::from(u128::MAX)));
        self.pairs
            .range(lo..=hi)
            .flat_map(|(_, p)| p.clean.values().map(|o| &o.path))
    }

    /// Builds the report: one record per (vantage, destination, episode), grouped into
    /// incidents. `now` (Unix seconds) hides rounds that started after it, so a report
    /// for a past instant can be reproduced.
    pub fn report(&self, annot: &Annotator, gazetteer: &Gazetteer, now: f64) -> DiversionReport {
        // Adversary hops seen answering right before another adversary hop, to recognise
        // an ingress that stays silent on some paths.
        let mut adv_pred: HashMap<IpAddr, BTreeSet<IpAddr>> = HashMap::new();
        for pair in self.pairs.values() {
            for obs in pair.diverted.values().filter(|o| o.start <= now) {
                for w in obs.hops.windows(2) {
                    if let (Some(a), Some(b)) = (w[0].addr, w[1].addr)
                        && w[0].adversary.is_some()
                        && w[1].adversary.is_some()
                        && w[0].ttl + 1 == w[1].ttl
                    {
                        adv_pred.entry(b).or_default().insert(a);
                    }
                }
            }
        }

        let mut records = Vec::new();
        let mut cache = LocateCache::new();
        for (&(vid, dst), pair) in &self.pairs {
            let latest_round = pair
                .starts
                .iter()
                .filter(|(_, s)| **s <= now)
                .map(|(r, _)| *r)
                .next_back();
            let mut events: Vec<(u64, bool)> = pair
                .clean
                .keys()
                .map(|r| (*r, false))
                .chain(pair.diverted.keys().map(|r| (*r, true)))
                .filter(|(r, _)| pair.starts.get(r).is_some_and(|s| *s <= now))
                .collect();
            events.sort_unstable();
            let mut episodes: Vec<Vec<u64>> = Vec::new();
            let mut open = false;
            for (round, diverted) in events {
                if diverted {
                    if !open {
                        episodes.push(Vec::new());
                        open = true;
                    }
                    if let Some(e) = episodes.last_mut() {
                        e.push(round);
                    }
                } else {
                    open = false;
                }
            }
            for rounds in episodes {
                if let Some(rec) = self.episode_record(
                    vid,
                    dst,
                    pair,
                    &rounds,
                    latest_round,
                    annot,
                    gazetteer,
                    &adv_pred,
                    &mut cache,
                ) {
                    records.push(rec);
                }
            }
        }
        let incidents = group_incidents(&mut records);
        DiversionReport {
            diversions: records,
            incidents,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn episode_record(
        &self,
        vid: u32,
        dst: IpAddr,
        pair: &PairState,
        rounds: &[u64],
        latest_round: Option<u64>,
        annot: &Annotator,
        gazetteer: &Gazetteer,
        adv_pred: &HashMap<IpAddr, BTreeSet<IpAddr>>,
        cache: &mut LocateCache,
    ) -> Option<DiversionRecord> {
        let first_round = *rounds.first()?;
        let last_round = *rounds.last()?;
        let normal = Self::normal_path(pair, first_round);
        let obs: Vec<&DivertedObs> = rounds.iter().filter_map(|r| pair.diverted.get(r)).collect();
        let first = obs.first()?;

        // The ingress: the first adversary hop, preferring rounds where it sits closest
        // to the start of the path (a silent ingress shows up one hop later).
        let mut best: Option<(&DivertedObs, Pick)> = None;
        for o in &obs {
            let pick = find_handoff(
                &o.hops,
                o.ingress,
                normal.as_ref().map(|(p, _)| p.as_slice()),
                || self.vantage_clean_paths(vid),
                |a| self.adversary_of(annot, a).is_some(),
            );
            let better = match &best {
                None => true,
                Some((bo, bp)) => {
                    let (t, bt) = (o.hops[o.ingress].ttl, bo.hops[bo.ingress].ttl);
                    t < bt || (t == bt && pick.quality > bp.quality)
                }
            };
            if better {
                best = Some((o, pick));
            }
        }
        let (rep, mut pick) = best?;
        let ing_hop = &rep.hops[rep.ingress];
        let mut ingress_addr = ing_hop.addr?;
        let mut adversary_asn = ing_hop.adversary?;
        let mut inferred = false;
        // The ingress answered nowhere on this path but another path shows which
        // adversary router precedes it: that one is the real ingress, and the hop that
        // answered before the silence is the hand-off.
        let silent_before = rep.ingress > 0
            && rep.hops[rep.ingress - 1].addr.is_none()
            && rep.hops[rep.ingress - 1].ttl + 1 == ing_hop.ttl;
        if silent_before
            && let Some(preds) = adv_pred.get(&ingress_addr)
            && let Some(p) = preds.iter().next()
        {
            ingress_addr = *p;
            adversary_asn = self.adversary_of(annot, *p).unwrap_or(adversary_asn);
            inferred = true;
            if let Some(h) = rep.hops[..rep.ingress - 1]
                .iter()
                .rev()
                .find(|h| h.addr.is_some())
            {
                pick = Pick {
                    addr: h.addr,
                    ttl: Some(h.ttl),
                    rtt: h.rtt,
                    quality: Quality::Answered,
                };
            }
        }

        // The adversary's router may answer from its port on an exchange LAN or from
        // unannounced space: no origin AS, so not recognisable by prefix. When the path
        // leaves the learned normal route at such a hop and only such hops (or silent
        // ones) follow until the first recognisable adversary hop, that departure hop is
        // the adversary's side of the peering: the real ingress. (The lab, like many real
        // deployments, has no PeeringDB data, hence unannounced space qualifies too.)
        if !inferred && let Some((normal_path, _)) = &normal {
            let unowned = |a: IpAddr| annot.ixp(a).is_some() || annot.asn(a).is_none();
            let departure = rep.hops[..rep.ingress].iter().position(|h| {
                h.addr
                    .is_some_and(|a| !normal_path.iter().any(|(_, x)| *x == Some(a)))
            });
            if let Some(d) = departure
                && rep.hops[d..rep.ingress]
                    .iter()
                    .all(|h| h.addr.is_none_or(unowned))
                && let Some(pa) = rep.hops[d].addr
            {
                ingress_addr = pa;
            }
        }
        let on_ixp = annot.ixp(ingress_addr).map(str::to_owned);

        let located = self.locate(ingress_addr, 2, gazetteer, cache);
        let est = located
            .as_ref()
            .map(|(e, loc, _)| Estimate { loc: *loc, ..*e });
        let city = located.and_then(|(_, _, c)| c);

        let vinfo = self.vantages.get(vid as usize);
        let rtt_ingress = rep
            .hops
            .iter()
            .find(|h| h.addr == Some(ingress_addr))
            .and_then(|h| h.rtt);
        let home = annot.as_country(adversary_asn);
        let ingress_abroad = match (vinfo.and_then(|v| v.loc), rtt_ingress, home) {
            (Some(vloc), Some(rtt), Some(cc)) => gazetteer
                .nearest_in_country(vloc, cc)
                .map(|(_, km)| crate::geo::rtt_radius_km(rtt) < km),
            _ => None,
        };
        let after = &rep.hops[rep.ingress..];
        let max_rtt_jump_ms = after
            .windows(2)
            .filter_map(|w| Some(w[1].rtt? - w[0].rtt?))
            .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))));
        let normal_as_path = normal
            .as_ref()
            .map(|(p, _)| dedup_asns(p.iter().map(|(_, a)| a.and_then(|a| annot.asn(a)))))
            .unwrap_or_default();
        let normal_rtt_dst = normal.as_ref().and_then(|(_, r)| *r);
        let evidence = Evidence {
            as_path: dedup_asns(rep.hops.iter().map(|h| h.asn)),
            normal_as_path,
            rtt_handoff_ms: pick.rtt,
            rtt_ingress_ms: rtt_ingress,
            rtt_dst_ms: first.dst_rtt,
            normal_rtt_dst_ms: normal_rtt_dst,
            detour_ms: first
                .dst_rtt
                .zip(normal_rtt_dst)
                .map(|(a, b)| round_ms(a - b)),
            max_rtt_jump_ms: max_rtt_jump_ms.map(round_ms),
            ingress_abroad,
            adversary_hops: rep.hops.iter().filter(|h| h.adversary.is_some()).count(),
            normal_path: normal
                .as_ref()
                .map(|(p, _)| {
                    p.iter()
                        .map(|&(ttl, addr)| PathHop {
                            ttl,
                            addr,
                            asn: addr.and_then(|a| annot.asn(a)),
                            rtt_ms: addr
                                .and_then(|a| self.rtts.get(&a)?.get(&vid).copied())
                                .map(round_ms),
                            adversary: addr.is_some_and(|a| self.adversary_of(annot, a).is_some()),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            diverted_path: rep
                .hops
                .iter()
                .map(|h| PathHop {
                    ttl: h.ttl,
                    addr: h.addr,
                    asn: h.asn,
                    rtt_ms: h.rtt.map(round_ms),
                    adversary: h.adversary.is_some(),
                })
                .collect(),
        };
        let last = obs.last()?;
        Some(DiversionRecord {
            vantage: vinfo.map(|v| v.name.clone())?,
            target: dst,
            adversary_asn,
            adversary_name: annot.as_info(adversary_asn).map(|i| i.name.clone()),
            handoff: HandoffRef {
                addr: pick.addr,
                asn: pick.addr.and_then(|a| annot.asn(a)),
                as_name: pick
                    .addr
                    .and_then(|a| annot.asn(a))
                    .and_then(|a| annot.as_info(a))
                    .map(|i| i.name.clone()),
                ttl: pick.ttl,
                method: pick.quality.method(),
            },
            ingress: IngressRef {
                addr: ingress_addr,
                asn: annot.asn(ingress_addr).unwrap_or(adversary_asn),
                as_name: annot.as_info(adversary_asn).map(|i| i.name.clone()),
                loc: est.map(|e| e.loc),
                radius_km: est.map(|e| (e.radius_km * 10.0).round() / 10.0),
                city: city.as_ref().map(|(name, _)| name.clone()),
                city_country: city.map(|(_, cc)| cc),
                constraints: est.map_or(0, |e| e.constraints),
                inferred,
                ixp: on_ixp,
            },
            first_seen: first.start,
            last_seen: last.start,
            rounds: rounds.len() as u32,
            first_round,
            last_round,
            active: latest_round == Some(last_round),
            incident: 0,
            evidence,
        })
    }
}

/// Microsecond resolution is all an RTT difference carries.
fn round_ms(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Groups records that share adversary and ingress and overlap in time.
fn group_incidents(records: &mut [DiversionRecord]) -> Vec<Incident> {
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by(|a, b| {
        let (x, y) = (&records[*a], &records[*b]);
        (x.adversary_asn, x.ingress.addr)
            .cmp(&(y.adversary_asn, y.ingress.addr))
            .then(x.first_seen.total_cmp(&y.first_seen))
            .then_with(|| x.vantage.cmp(&y.vantage))
            .then(x.target.cmp(&y.target))
    });
    let mut incidents: Vec<Incident> = Vec::new();
    for i in order {
        let r = &records[i];
        let joins = incidents.last().is_some_and(|inc| {
            inc.adversary_asn == r.adversary_asn
                && inc.ingress == r.ingress.addr
                && r.first_seen <= inc.last_seen
        });
        if !joins {
            incidents.push(Incident {
                id: incidents.len() + 1,
                adversary_asn: r.adversary_asn,
                ingress: r.ingress.addr,
                ingress_loc: r.ingress.loc,
                ingress_city: r.ingress.city.clone(),
                handoffs: Vec::new(),
                vantages: Vec::new(),
                targets: Vec::new(),
                first_seen: r.first_seen,
                last_seen: r.last_seen,
                records: 0,
            });
        }
        if let Some(inc) = incidents.last_mut() {
            inc.last_seen = inc.last_seen.max(r.last_seen);
            inc.first_seen = inc.first_seen.min(r.first_seen);
            if let Some(h) = r.handoff.addr
                && !inc.handoffs.contains(&h)
            {
                inc.handoffs.push(h);
            }
            if !inc.vantages.contains(&r.vantage) {
                inc.vantages.push(r.vantage.clone());
            }
            if !inc.targets.contains(&r.target) {
                inc.targets.push(r.target);
            }
            inc.records += 1;
            // Keep the best-constrained position as the incident's.
            if r.ingress.loc.is_some() && inc.ingress_loc.is_none() {
                inc.ingress_loc = r.ingress.loc;
                inc.ingress_city = r.ingress.city.clone();
            }
            records[i].incident = inc.id;
        }
    }
    records.sort_by(|a, b| {
        a.first_seen
            .total_cmp(&b.first_seen)
            .then(a.vantage.cmp(&b.vantage))
            .then(a.target.cmp(&b.target))
    });
    incidents
}

/// One-shot convenience: ingest `traces` (any order) and report as of `now`.
pub fn detect(
    traces: &[Trace],
    vantages: &[VantageInfo],
    adversary: &Adversary,
    annot: &Annotator,
    gazetteer: &Gazetteer,
    now: f64,
) -> DiversionReport {
    let mut d = Detector::new(adversary.clone());
    for v in vantages {
        d.set_vantage(v.clone());
    }
    for t in traces {
        d.ingest(t, annot);
    }
    d.report(annot, gazetteer, now)
}

#[cfg(test)]
mod link_tests {
    use super::LinkObs;

    #[test]
    fn a_late_near_end_in_one_round_does_not_shrink_the_step() {
        let mut l = LinkObs::default();
        // Vantage 0: 0.4 → 4.8 ms normally; one round the near end came back at 3.3 ms.
        l.observe(0, 0.4, 4.8);
        l.observe(0, 3.3, 4.85);
        l.observe(0, 0.45, 4.9);
        assert!((l.step() - 4.4).abs() < 1e-5, "{}", l.step());
        // Another vantage nearer the link bounds it tighter: the smallest step wins.
        l.observe(1, 7.6, 7.9);
        assert!((l.step() - 0.3).abs() < 1e-5);
        // Only a handful of vantages are kept.
        for v in 2..40 {
            l.observe(v, 1.0, 100.0);
        }
        assert_eq!(usize::from(l.len), super::LINK_VANTAGES);
    }
}
