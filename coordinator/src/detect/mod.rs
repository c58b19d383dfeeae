//! Diversion detection and triangulation: pure logic over traces, vantage metadata and
//! an [`Annotator`]; no I/O and no clock (the caller passes `now`).
//!
//! Per (vantage, destination) the detector keeps its clean rounds as runs of one path
//! (the recent ones, and those around diverted rounds; older ones only as per-path
//! counts), and the details of every diverted round (`paths.rs`), and per router the
//! RTT bounds that position it (`links.rs`): memory grows with pairs, addresses and
//! diverted rounds, not with the clean history read. Episodes, hand-offs and positions are computed at report
//! time (`episode.rs`, `handoff.rs`, `locate.rs`), which makes the result independent of
//! the order in which rounds arrive and lets a normal path learned *after* an episode
//! still name the hand-off of an episode that was active from the very first round.
//! Records that share an ingress are grouped into incidents (`incident.rs`).

mod border;
mod checkpoint;
mod classify;
mod episode;
mod handoff;
mod incident;
mod links;
mod locate;
mod map_view;
mod paths;
mod types;
mod view;

use std::collections::HashMap;

pub use checkpoint::CheckpointError;
pub use map_view::{LocatedHop, MapView};
pub use types::*;
pub use view::render_text;

use crate::annotate::Annotator;
use crate::geo::Gazetteer;
use classify::FactsCache;
use episode::{Episode, ReportCtx};
use links::Links;
use paths::Pairs;

/// The stateful detector. Feed it traces with [`Detector::ingest`], ask for the current
/// picture with [`Detector::report`].
#[derive(Debug)]
pub struct Detector {
    adversary: Adversary,
    vantages: Vec<VantageInfo>,
    vantage_ids: HashMap<String, u32>,
    pairs: Pairs,
    links: Links,
    facts: FactsCache,
    /// Alias groups: addresses known to belong to one router (alias resolution).
    aliases: Vec<Vec<std::net::IpAddr>>,
    /// Addresses seen sourcing a router's ICMP errors (Mercator's answers): a router's
    /// own address, where border interfaces may be numbered by a neighbour.
    sources: rustc_hash::FxHashSet<std::net::IpAddr>,
}

impl Detector {
    pub fn new(adversary: Adversary) -> Self {
        Detector {
            adversary,
            vantages: Vec::new(),
            vantage_ids: HashMap::new(),
            pairs: Pairs::new(),
            links: Links::default(),
            facts: FactsCache::default(),
            aliases: Vec::new(),
            sources: Default::default(),
        }
    }

    /// Replaces the alias groups (each: the addresses of one router, as alias
    /// resolution found them). They decide whose router an address at a border is
    /// before the neighbour rules do, and name the ingress's `router`.
    pub fn set_aliases(&mut self, groups: impl IntoIterator<Item = Vec<std::net::IpAddr>>) {
        self.aliases = groups.into_iter().filter(|g| g.len() > 1).collect();
    }

    /// Replaces the addresses known to source routers' ICMP errors (Mercator's
    /// answers): where a group has one, it names the router's owner.
    pub fn set_router_sources(&mut self, addrs: impl IntoIterator<Item = std::net::IpAddr>) {
        self.sources = addrs.into_iter().collect();
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

    /// An echo round trip from `vantage` to a router address (alias resolution's IP-ID
    /// probes): answered on the router's fast path, without the ICMP slow path a
    /// traceroute hop carries, so a tighter bound on where the router is.
    pub fn observe_echo(&mut self, vantage: &str, addr: std::net::IpAddr, rtt_ms: f64) {
        let vid = self.vantage_id(vantage);
        self.links.observe_rtt(vid, addr, rtt_ms);
    }

    /// Ingests one traceroute. Traces may arrive in any order; a repeated (vantage,
    /// destination, round) replaces the earlier one.
    pub fn ingest(&mut self, trace: &Trace, annot: &Annotator) {
        self.facts.follow(annot);
        let vid = self.vantage_id(&trace.vantage);
        let hops = classify::annotated_hops(trace, &self.adversary, annot, &mut self.facts);
        let dst_rtt = classify::dst_rtt(trace);
        self.links.observe(vid, &hops);
        let dst = self.facts.get(&self.adversary, annot, trace.dst);
        let diverted_at = classify::diversion_ingress(
            &hops,
            dst,
            &self.vantages[vid as usize],
            &self.adversary,
            annot,
        );
        if diverted_at.is_some() {
            tracing::debug!(vantage = %trace.vantage, dst = %trace.dst, round = trace.round, "diverted round");
        }
        self.pairs.entry((vid, trace.dst)).or_default().record(
            trace.round,
            trace.start,
            hops,
            diverted_at,
            dst_rtt,
        );
    }

    /// Ingests a multipath trace: every interface it found before the first TTL that
    /// shows adversary space becomes a known branch of the pair's normal route, so a
    /// Paris trace that takes another branch of a load balancer there has not left it.
    /// (Past that TTL a multipath trace taken during a diversion would teach the
    /// diverted route as normal.) Arrival order does not matter.
    pub fn ingest_mda(&mut self, mda: &MdaTrace, annot: &Annotator) {
        self.facts.follow(annot);
        let vid = self.vantage_id(&mda.vantage);
        let mut hops: Vec<&(u8, Vec<std::net::IpAddr>)> = mda.hops.iter().collect();
        hops.sort_by_key(|(ttl, _)| *ttl);
        let mut branches = Vec::new();
        for (ttl, addrs) in hops {
            let addrs: Vec<std::net::IpAddr> =
                addrs.iter().copied().filter(|a| *a != mda.dst).collect();
            if addrs.iter().any(|&a| {
                self.facts
                    .get(&self.adversary, annot, a)
                    .adversary
                    .is_some()
            }) {
                break;
            }
            branches.extend(addrs.into_iter().map(|a| (*ttl, a)));
        }
        self.pairs
            .entry((vid, mda.dst))
            .or_default()
            .learn_branches(branches);
    }

    /// What the detector holds, in counts: it grows with pairs, addresses and diverted
    /// rounds, not with the clean history it has read.
    pub fn state_size(&self) -> StateSize {
        let mut size = StateSize {
            pairs: self.pairs.len(),
            ..StateSize::default()
        };
        for p in self.pairs.values() {
            let (runs, known, diverted, dropped) = p.sizes();
            size.clean_runs += runs;
            size.known_paths += known;
            size.diverted_rounds += diverted;
            size.folded_rounds += dropped;
        }
        (size.addresses, size.links) = self.links.sizes();
        size
    }

    /// Builds the report: one record per (vantage, destination, episode), grouped into
    /// incidents. `now` (Unix seconds) hides rounds that started after it, so a report
    /// for a past instant can be reproduced.
    pub fn report(&self, annot: &Annotator, gazetteer: &Gazetteer, now: f64) -> DiversionReport {
        let mut ctx = ReportCtx::new(self, annot, gazetteer, now);
        let mut records = Vec::new();
        for (&(vid, dst), pair) in &self.pairs {
            let latest_round = pair.latest_round(now);
            let exempt = ctx.exempt(vid, dst);
            let clean_enters = |p: &paths::PathHops| !exempt && ctx.path_enters(p);
            for rounds in pair.episodes(now, |o| ctx.enters(o), clean_enters) {
                let episode = Episode {
                    vid,
                    dst,
                    exempt,
                    pair,
                    rounds: &rounds,
                    latest_round,
                };
                records.extend(ctx.record(&episode));
            }
        }
        let incidents = incident::group_incidents(&mut records);
        DiversionReport {
            diversions: records,
            incidents,
        }
    }
}

/// Counts of what a [`Detector`] holds (see [`Detector::state_size`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateSize {
    pub pairs: usize,
    /// Runs of clean rounds kept in sequence (an episode's normal path and end read them).
    pub clean_runs: usize,
    /// Distinct clean paths kept with their counts.
    pub known_paths: usize,
    pub diverted_rounds: usize,
    /// Clean rounds whose runs were dropped, counted in their paths.
    pub folded_rounds: u64,
    /// Router addresses with RTT minima, and links between them.
    pub addresses: usize,
    pub links: usize,
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
