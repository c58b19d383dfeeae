//! Whose network each hop is in, and whether a round is a diversion: a path that enters
//! an adversary AS when neither end belongs there.

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use super::paths::Hop;
use super::{Adversary, Trace, VantageInfo};
use crate::annotate::Annotator;

/// What the annotator says about an address, as the detector needs it per hop: asked
/// once per address rather than once per hop (three longest-prefix matches each).
#[derive(Debug, Clone, Copy)]
pub(super) struct AddrFacts {
    pub asn: Option<u32>,
    pub adversary: Option<u32>,
}

/// Per-address facts, valid for one annotator generation.
#[derive(Debug, Default)]
pub(super) struct FactsCache {
    by_addr: FxHashMap<IpAddr, AddrFacts>,
    generation: u64,
}

impl FactsCache {
    /// Forgets everything learned from an annotator other than `annot`.
    pub(super) fn follow(&mut self, annot: &Annotator) {
        if self.generation != annot.generation() {
            self.by_addr.clear();
            self.generation = annot.generation();
        }
    }

    pub(super) fn get(
        &mut self,
        adversary: &Adversary,
        annot: &Annotator,
        addr: IpAddr,
    ) -> AddrFacts {
        if let Some(f) = self.by_addr.get(&addr) {
            return *f;
        }
        let f = AddrFacts {
            asn: annot.asn(addr),
            adversary: adversary_of(adversary, annot, addr),
        };
        self.by_addr.insert(addr, f);
        f
    }
}

/// The adversary AS an address belongs to, by any origin of its prefix or by the
/// registration country of its primary origin. IXP LAN addresses belong to nobody:
/// their prefix says nothing about which member's router answered.
pub(super) fn adversary_of(adversary: &Adversary, annot: &Annotator, addr: IpAddr) -> Option<u32> {
    if annot.ixp(addr).is_some() {
        return None;
    }
    let (_, origin) = annot.origin(addr)?;
    if let Some(a) = origin.asns().iter().find(|a| adversary.asns.contains(a)) {
        return Some(*a);
    }
    origin
        .asns()
        .iter()
        .find(|a| adversary.has_country(annot.as_country(**a)))
        .copied()
}

fn vantage_belongs(adversary: &Adversary, annot: &Annotator, v: &VantageInfo) -> bool {
    v.asn
        .is_some_and(|a| adversary.asns.contains(&a) || adversary.has_country(annot.as_country(a)))
        || adversary.has_country(v.country.as_deref())
}

/// The trace's hops before the destination, annotated, sorted by TTL, one per TTL.
pub(super) fn annotated_hops(
    trace: &Trace,
    adversary: &Adversary,
    annot: &Annotator,
    facts: &mut FactsCache,
) -> Vec<Hop> {
    let mut hops: Vec<Hop> = Vec::with_capacity(trace.hops.len());
    for h in trace.hops.iter().filter(|h| h.addr != Some(trace.dst)) {
        let f = h.addr.map(|a| facts.get(adversary, annot, a));
        hops.push(Hop {
            ttl: h.ttl,
            addr: h.addr,
            rtt: h.rtt_ms.filter(|r| r.is_finite() && *r >= 0.0),
            asn: f.and_then(|f| f.asn),
            adversary: f.and_then(|f| f.adversary),
        });
    }
    if !hops.is_sorted_by_key(|h| h.ttl) {
        hops.sort_by_key(|h| h.ttl);
    }
    hops.dedup_by_key(|h| h.ttl);
    hops
}

/// The destination's own best RTT in the trace.
pub(super) fn dst_rtt(trace: &Trace) -> Option<f64> {
    trace
        .hops
        .iter()
        .filter(|h| h.addr == Some(trace.dst))
        .filter_map(|h| h.rtt_ms)
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.min(r))))
}

/// The index of the ingress hop when the round is a diversion: the path enters an
/// adversary AS and neither the destination (`dst`) nor the vantage belongs to it.
pub(super) fn diversion_ingress(
    hops: &[Hop],
    dst: AddrFacts,
    vantage: &VantageInfo,
    adversary: &Adversary,
    annot: &Annotator,
) -> Option<usize> {
    let ingress = hops.iter().position(|h| h.adversary.is_some())?;
    if dst.adversary.is_some() {
        return None;
    }
    // Traffic to or from the adversary's own country legitimately rides its national
    // carriers (a Korean user reaching a Chinese university crosses China Telecom by
    // design), so an end registered in the entered AS's country also counts as
    // belonging to it.
    let home = hops[ingress].adversary.and_then(|a| annot.as_country(a));
    let dst_country = dst.asn.and_then(|a| annot.as_country(a));
    let same_country =
        |cc: Option<&str>| matches!((cc, home), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b));
    let domestic = same_country(dst_country) || same_country(vantage.country.as_deref());
    (!domestic && !vantage_belongs(adversary, annot, vantage)).then_some(ingress)
}

/// Whether crossing the adversary is no diversion for the pair whatever the path: the
/// destination is in adversary space, the vantage belongs to the adversary, or either end
/// is registered in an adversary AS's country. The pair-level form of the test
/// [`diversion_ingress`] applies per round, for rounds that entered through a router
/// only alias resolution showed to be the adversary's.
pub(super) fn pair_exempt(
    adversary: &Adversary,
    annot: &Annotator,
    dst: IpAddr,
    vantage: &VantageInfo,
) -> bool {
    if adversary_of(adversary, annot, dst).is_some() || vantage_belongs(adversary, annot, vantage) {
        return true;
    }
    let home: Vec<&str> = adversary
        .asns
        .iter()
        .filter_map(|a| annot.as_country(*a))
        .collect();
    let is_home =
        |cc: Option<&str>| cc.is_some_and(|c| home.iter().any(|h| h.eq_ignore_ascii_case(c)));
    is_home(annot.asn(dst).and_then(|a| annot.as_country(a))) || is_home(vantage.country.as_deref())
}
