//! One episode (a run of consecutive diverted rounds of one pair) becomes one
//! [`DiversionRecord`]: which round names the ingress best, who handed the traffic
//! over, where the ingress is, and the evidence.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use super::border::Borders;
use super::classify::{self, adversary_of};
use super::handoff::{Pick, Quality, find_handoff};
use super::links::Links;
use super::locate::Locator;
use super::paths::Hop;
use super::paths::{DivertedObs, PairState, Pairs, PathHops, Seg, vantage_clean_paths};
use super::{
    Adversary, Detector, DiversionRecord, Evidence, HandoffRef, IngressRef, PathHop, VantageInfo,
};
use crate::annotate::Annotator;
use crate::geo::{Estimate, Gazetteer};

/// What every episode of one report shares: the detector's state, the tables, and the
/// positions computed so far.
#[derive(Debug)]
pub(super) struct ReportCtx<'a> {
    adversary: &'a Adversary,
    vantages: &'a [VantageInfo],
    pairs: &'a Pairs,
    links: &'a Links,
    annot: &'a Annotator,
    /// Adversary hops seen answering right before another adversary hop, to recognise
    /// an ingress that stays silent on some paths.
    adv_pred: HashMap<IpAddr, BTreeSet<IpAddr>>,
    /// Where addresses mislead about whose router answered (border numbering).
    borders: Borders,
    /// Some alias group names an adversary router (else no clean path can enter).
    alias_adversaries: bool,
    locator: Locator<'a>,
    gazetteer: &'a Gazetteer,
}

/// One run of consecutive diverted rounds of one (vantage, destination) pair.
#[derive(Debug)]
pub(super) struct Episode<'a> {
    pub vid: u32,
    pub dst: IpAddr,
    /// Either end belongs to the adversary (or its country): entering it is no
    /// diversion.
    pub exempt: bool,
    pub pair: &'a PairState,
    /// The episode's rounds, in order, as diverted rounds and runs of clean ones (never
    /// empty for a real episode).
    pub rounds: &'a [Seg],
    /// The pair's latest round so far: the episode is active if it ends there.
    pub latest_round: Option<u64>,
}

/// The learned normal path and that round's RTT to the destination.
type Normal = Option<(PathHops, Option<f64>)>;

/// The ingress router as finally named, with the hand-off before it.
#[derive(Debug)]
struct Ingress {
    addr: IpAddr,
    adversary_asn: u32,
    /// The ingress never answered on this path and was taken from other paths.
    inferred: bool,
    /// Which rule named it (see [`IngressRef::owner_rule`]).
    owner_rule: &'static str,
    handoff: Pick,
}

impl<'a> ReportCtx<'a> {
    /// `now` hides diverted rounds that started after it.
    pub(super) fn new(
        det: &'a Detector,
        annot: &'a Annotator,
        gazetteer: &'a Gazetteer,
        now: f64,
    ) -> Self {
        let borders = Borders::build(&det.pairs, now, &det.aliases, &det.sources, |a| {
            // Unannounced and exchange-LAN addresses say nothing about an owner.
            (annot.ixp(a).is_none() && annot.asn(a).is_some())
                .then(|| adversary_of(&det.adversary, annot, a))
        });
        ReportCtx {
            adversary: &det.adversary,
            vantages: &det.vantages,
            pairs: &det.pairs,
            links: &det.links,
            annot,
            adv_pred: adversary_predecessors(&det.pairs, now),
            alias_adversaries: borders.any_alias_adversary(),
            borders,
            locator: Locator::new(&det.links, &det.vantages, gazetteer),
            gazetteer,
        }
    }

    /// Whether either end of the pair belongs to the adversary or its country, so that
    /// crossing it is no diversion (see [`classify::pair_exempt`]).
    pub(super) fn exempt(&self, vid: u32, dst: IpAddr) -> bool {
        self.vantages
            .get(vid as usize)
            .is_some_and(|v| classify::pair_exempt(self.adversary, self.annot, dst, v))
    }

    /// Whether a path crosses a router whose alias group is the adversary's.
    pub(super) fn path_enters(&self, p: &PathHops) -> bool {
        self.alias_adversaries
            && p.iter()
                .any(|(_, a)| a.is_some_and(|a| self.borders.alias_adversary(a).is_some()))
    }

    /// A round stored as clean, as the detector keeps a diverted one: hops annotated,
    /// RTTs from the vantage's best to each hop.
    fn diverted_view_of_clean(
        &self,
        vid: u32,
        path: &PathHops,
        dst_rtt: Option<f64>,
        start: f64,
    ) -> DivertedObs {
        let annot = self.annot;
        DivertedObs {
            start,
            hops: path
                .iter()
                .map(|&(ttl, addr)| Hop {
                    ttl,
                    addr,
                    rtt: addr.and_then(|a| self.links.best_rtt(a, vid)),
                    asn: addr.and_then(|a| annot.asn(a)),
                    adversary: addr.and_then(|a| adversary_of(self.adversary, annot, a)),
                })
                .collect(),
            ingress: 0,
            dst_rtt,
        }
    }

    /// Whether a round enters a router of the adversary's (not only a neighbour's
    /// adversary-numbered port).
    pub(super) fn enters(&self, o: &DivertedObs) -> bool {
        self.borders.ingress_of(o).is_some()
    }

    /// The round with its ingress on the first router of the adversary's; `None` when
    /// it enters none.
    fn effective<'o>(&self, o: &'o DivertedObs) -> Option<Cow<'o, DivertedObs>> {
        let i = self.borders.ingress_of(o)?;
        Some(if i == o.ingress {
            Cow::Borrowed(o)
        } else {
            Cow::Owned(DivertedObs {
                ingress: i,
                ..o.clone()
            })
        })
    }

    /// The episode's record; `None` when it has no usable diverted round.
    pub(super) fn record(&mut self, ep: &Episode) -> Option<DiversionRecord> {
        let first_round = ep.rounds.first()?.first;
        let last_round = ep.rounds.last()?.last;
        let n_rounds: u32 = ep.rounds.iter().map(|s| s.n).sum();
        let clean_enters = |p: &PathHops| !ep.exempt && self.path_enters(p);
        let normal = ep
            .pair
            .normal_path(first_round, |o| self.enters(o), clean_enters);
        // For telling where the path left its normal route: every branch a load
        // balancer gave this pair, not only the latest one (a change of branch is not a
        // departure).
        let branches: Normal = normal
            .as_ref()
            .map(|(p, r)| (ep.pair.with_other_branches(p), *r));
        let mut owned: Vec<Cow<DivertedObs>> = Vec::new();
        for seg in ep.rounds {
            if let Some(o) = ep.pair.diverted_seg(seg) {
                owned.extend(self.effective(o));
                continue;
            }
            // Stored clean, but through a router alias resolution gave the adversary.
            let Some((path, ends)) = ep.pair.clean_seg(seg) else {
                continue;
            };
            if !clean_enters(path) {
                continue;
            }
            for (dst_rtt, start) in ends {
                let o = self.diverted_view_of_clean(ep.vid, path, dst_rtt, start);
                owned.extend(self.effective(&o).map(|c| Cow::Owned(c.into_owned())));
            }
        }
        let obs: Vec<&DivertedObs> = owned.iter().map(|o| o.as_ref()).collect();
        let (first, last) = (*obs.first()?, *obs.last()?);
        let (rep, pick) = self.representative(ep.vid, &obs, &branches)?;
        let ingress = self.resolve_ingress(ep.vid, rep, pick, &branches)?;
        let ingress_ref = self.ingress_ref(&ingress);
        let evidence = self.evidence(ep.vid, rep, first, &normal, &ingress);
        let annot = self.annot;
        let handoff = ingress.handoff;
        let handoff_asn = handoff.addr.and_then(|a| annot.asn(a));
        Some(DiversionRecord {
            vantage: self.vantages.get(ep.vid as usize)?.name.clone(),
            target: ep.dst,
            adversary_asn: ingress.adversary_asn,
            adversary_name: annot.as_info(ingress.adversary_asn).map(|i| i.name.clone()),
            handoff: HandoffRef {
                addr: handoff.addr,
                asn: handoff_asn,
                as_name: handoff_asn
                    .and_then(|a| annot.as_info(a))
                    .map(|i| i.name.clone()),
                ttl: handoff.ttl,
                method: handoff.quality.method(),
                owner_rule: "origin",
            },
            ingress: ingress_ref,
            first_seen: first.start,
            last_seen: last.start,
            rounds: n_rounds,
            first_round,
            last_round,
            active: ep.latest_round == Some(last_round),
            incident: 0,
            evidence,
        })
    }

    /// The round that names the ingress best, with its hand-off: the first adversary
    /// hop closest to the start of the path (a silent ingress shows up one hop later),
    /// then the most trustworthy hand-off.
    fn representative<'o>(
        &self,
        vid: u32,
        obs: &[&'o DivertedObs],
        normal: &Normal,
    ) -> Option<(&'o DivertedObs, Pick)> {
        let mut best: Option<(&DivertedObs, Pick)> = None;
        for &o in obs {
            let pick = find_handoff(
                &o.hops,
                o.ingress,
                normal.as_ref().map(|(p, _)| p.as_slice()),
                || vantage_clean_paths(self.pairs, vid),
                |a| self.is_adversary(a),
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
        best
    }

    fn is_adversary(&self, addr: IpAddr) -> bool {
        adversary_of(self.adversary, self.annot, addr).is_some()
    }

    /// Names the ingress: the first adversary hop of `rep`, unless other paths show the
    /// real one hidden in silence before it, or the path left the normal route at an
    /// unrecognisable hop that must be the adversary's side of the peering.
    fn resolve_ingress(
        &self,
        vid: u32,
        rep: &DivertedObs,
        pick: Pick,
        normal: &Normal,
    ) -> Option<Ingress> {
        let ing_hop = &rep.hops[rep.ingress];
        let by_alias = ing_hop.addr.and_then(|a| self.borders.alias_adversary(a));
        let mut ingress = Ingress {
            addr: ing_hop.addr?,
            adversary_asn: ing_hop.adversary.or(by_alias)?,
            inferred: false,
            owner_rule: if ing_hop.adversary.is_none() {
                "alias-group"
            } else {
                "origin"
            },
            handoff: pick,
        };
        if ingress.owner_rule == "alias-group" {
            // Its alias group already says whose router it is.
        } else if let Some(hidden) = self.hidden_ingress(rep, &mut ingress) {
            ingress.addr = hidden;
            ingress.owner_rule = "hidden-by-silence";
        } else if let Some((normal_path, _)) = normal
            && let Some(departure) = self.unowned_departure(rep, normal_path)
        {
            ingress.addr = departure;
            ingress.owner_rule = "unowned-departure";
        } else if let Some((port, handoff)) = self.neighbour_numbered_ingress(vid, rep, normal) {
            ingress.addr = port;
            ingress.owner_rule = "neighbour-numbered-port";
            ingress.handoff = handoff;
        }
        Some(ingress)
    }

    /// The adversary's ingress router answering from its end of the border link, which
    /// the hand-off's AS numbered: the hop right before the first adversary-space hop,
    /// when it is new to the vantage (no clean path shows it followed by a non-adversary
    /// hop), the hop before it is on a known path of the vantage (the hand-off), and
    /// every diverted round shows adversary space right after it. Returns the port and
    /// the hand-off.
    fn neighbour_numbered_ingress(
        &self,
        vid: u32,
        rep: &DivertedObs,
        normal: &Normal,
    ) -> Option<(IpAddr, Pick)> {
        let i = rep.ingress;
        let (h, x) = (rep.hops.get(i.checked_sub(2)?)?, &rep.hops[i - 1]);
        let (ha, xa) = (h.addr?, x.addr?);
        let consecutive = h.ttl + 1 == x.ttl && x.ttl + 1 == rep.hops[i].ttl;
        if !consecutive || x.adversary.is_some() || x.asn.is_none() {
            return None;
        }
        if !self.borders.always_before_adversary(xa) {
            return None;
        }
        let known: Vec<&PathHops> = normal
            .iter()
            .map(|(p, _)| p)
            .chain(vantage_clean_paths(self.pairs, vid).map(|(p, _)| p.as_ref()))
            .collect();
        if !known.iter().any(|p| p.iter().any(|(_, a)| *a == Some(ha))) {
            return None;
        }
        // On a clean path with a non-adversary hop after it, it is the neighbour's own.
        for (p, _) in vantage_clean_paths(self.pairs, vid) {
            if let Some(k) = p.iter().position(|(_, a)| *a == Some(xa))
                && let Some((t, Some(next))) = p.get(k + 1)
                && *t == p[k].0 + 1
                && !self.is_adversary(*next)
            {
                return None;
            }
        }
        Some((
            xa,
            Pick {
                addr: Some(ha),
                ttl: Some(h.ttl),
                rtt: h.rtt,
                quality: Quality::Answered,
            },
        ))
    }

    /// The ingress answered nowhere on this path but another path shows which
    /// adversary router precedes it: that one is the real ingress, and the hop that
    /// answered before the silence is the hand-off. Updates `ingress`'s AS, `inferred`
    /// and hand-off, and returns the real ingress's address.
    fn hidden_ingress(&self, rep: &DivertedObs, ingress: &mut Ingress) -> Option<IpAddr> {
        let ing_hop = &rep.hops[rep.ingress];
        let silent_before = rep.ingress > 0
            && rep.hops[rep.ingress - 1].addr.is_none()
            && rep.hops[rep.ingress - 1].ttl + 1 == ing_hop.ttl;
        if !silent_before {
            return None;
        }
        let p = *self.adv_pred.get(&ingress.addr)?.iter().next()?;
        ingress.adversary_asn =
            adversary_of(self.adversary, self.annot, p).unwrap_or(ingress.adversary_asn);
        ingress.inferred = true;
        if let Some(h) = rep.hops[..rep.ingress - 1]
            .iter()
            .rev()
            .find(|h| h.addr.is_some())
        {
            ingress.handoff = Pick {
                addr: h.addr,
                ttl: Some(h.ttl),
                rtt: h.rtt,
                quality: Quality::Answered,
            };
        }
        Some(p)
    }

    /// The adversary's router may answer from its port on an exchange LAN or from
    /// unannounced space: no origin AS, so not recognisable by prefix. When the path
    /// leaves the learned normal route at such a hop and only such hops (or silent ones)
    /// follow until the first recognisable adversary hop, that departure hop is the
    /// adversary's side of the peering: the real ingress. (The lab, like many real
    /// deployments, has no PeeringDB data, hence unannounced space qualifies too.)
    fn unowned_departure(&self, rep: &DivertedObs, normal_path: &PathHops) -> Option<IpAddr> {
        let annot = self.annot;
        let unowned = |a: IpAddr| annot.ixp(a).is_some() || annot.asn(a).is_none();
        let d = rep.hops[..rep.ingress].iter().position(|h| {
            h.addr
                .is_some_and(|a| !normal_path.iter().any(|(_, x)| *x == Some(a)))
        })?;
        if rep.hops[d..rep.ingress]
            .iter()
            .all(|h| h.addr.is_none_or(unowned))
        {
            rep.hops[d].addr
        } else {
            None
        }
    }

    /// The ingress as reported: its AS, exchange, and estimated position (the preferred
    /// point of the feasible region, the region's radius, and the nearest city).
    fn ingress_ref(&mut self, ingress: &Ingress) -> IngressRef {
        let annot = self.annot;
        let on_ixp = annot.ixp(ingress.addr).map(str::to_owned);
        let located = self.locator.locate(ingress.addr, 2);
        let est = located
            .as_ref()
            .map(|(e, loc, _)| Estimate { loc: *loc, ..*e });
        let city = located.and_then(|(_, _, c)| c);
        IngressRef {
            addr: ingress.addr,
            asn: annot.asn(ingress.addr).unwrap_or(ingress.adversary_asn),
            as_name: annot.as_info(ingress.adversary_asn).map(|i| i.name.clone()),
            loc: est.map(|e| e.loc),
            radius_km: est.map(|e| (e.radius_km * 10.0).round() / 10.0),
            city: city.as_ref().map(|(name, _)| name.clone()),
            city_country: city.map(|(_, cc)| cc),
            constraints: est.map_or(0, |e| e.constraints),
            inferred: ingress.inferred,
            ixp: on_ixp,
            owner_rule: ingress.owner_rule,
            router: self.borders.router_of(ingress.addr),
        }
    }

    /// Why this is a diversion: AS paths, RTTs, the detour, and both paths hop by hop.
    /// `rep` named the ingress; `first` is the episode's first diverted round.
    fn evidence(
        &self,
        vid: u32,
        rep: &DivertedObs,
        first: &DivertedObs,
        normal: &Normal,
        ingress: &Ingress,
    ) -> Evidence {
        let annot = self.annot;
        let rtt_ingress = rep
            .hops
            .iter()
            .find(|h| h.addr == Some(ingress.addr))
            .and_then(|h| h.rtt);
        let home = annot.as_country(ingress.adversary_asn);
        let vloc = self.vantages.get(vid as usize).and_then(|v| v.loc);
        let ingress_abroad = match (vloc, rtt_ingress, home) {
            (Some(vloc), Some(rtt), Some(cc)) => self
                .gazetteer
                .nearest_in_country(vloc, cc)
                .map(|(_, km)| crate::geo::rtt_radius_km(rtt) < km),
            _ => None,
        };
        let max_rtt_jump_ms = rep.hops[rep.ingress..]
            .windows(2)
            .filter_map(|w| Some(w[1].rtt? - w[0].rtt?))
            .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))));
        let normal_rtt_dst = normal.as_ref().and_then(|(_, r)| *r);
        Evidence {
            as_path: dedup_asns(rep.hops.iter().map(|h| h.asn)),
            normal_as_path: normal
                .as_ref()
                .map(|(p, _)| dedup_asns(p.iter().map(|(_, a)| a.and_then(|a| annot.asn(a)))))
                .unwrap_or_default(),
            rtt_handoff_ms: ingress.handoff.rtt,
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
                            rtt_ms: addr.and_then(|a| self.links.best_rtt(a, vid)).map(round_ms),
                            adversary: addr.is_some_and(|a| self.is_adversary(a)),
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
        }
    }
}

/// Adversary hops seen answering right before another adversary hop, over the diverted
/// rounds started by `now`.
fn adversary_predecessors(pairs: &Pairs, now: f64) -> HashMap<IpAddr, BTreeSet<IpAddr>> {
    let mut adv_pred: HashMap<IpAddr, BTreeSet<IpAddr>> = HashMap::new();
    for pair in pairs.values() {
        for obs in pair.diverted_by(now) {
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
    adv_pred
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

/// Microsecond resolution is all an RTT difference carries.
fn round_ms(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
