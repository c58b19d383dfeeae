//! Per (vantage, destination): what each round saw. Clean rounds keep only their path
//! (interned, so a stable path costs a few bytes per round); diverted rounds keep their
//! hops. From these come the learned normal path and the episodes of a pair.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A hop as the detector keeps it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Hop {
    pub ttl: u8,
    pub addr: Option<IpAddr>,
    pub rtt: Option<f64>,
    pub asn: Option<u32>,
    /// The adversary AS this hop belongs to, if any.
    pub adversary: Option<u32>,
}

/// (TTL, address or silence) along a path.
pub(super) type PathHops = Vec<(u8, Option<IpAddr>)>;
pub(super) type CleanPath = Arc<PathHops>;

#[derive(Debug, Clone)]
struct CleanObs {
    path: CleanPath,
    dst_rtt: Option<f64>,
}

#[derive(Debug, Clone)]
pub(super) struct DivertedObs {
    pub start: f64,
    pub hops: Vec<Hop>,
    /// Index in `hops` of the first adversary hop.
    pub ingress: usize,
    pub dst_rtt: Option<f64>,
}

/// Every pair's rounds, keyed by vantage id first so one vantage's pairs are a
/// contiguous range.
pub(super) type Pairs = BTreeMap<(u32, IpAddr), PairState>;

#[derive(Debug, Default)]
pub(super) struct PairState {
    clean: BTreeMap<u64, CleanObs>,
    diverted: BTreeMap<u64, DivertedObs>,
    /// Start (Unix seconds) of every round seen, clean or diverted.
    starts: BTreeMap<u64, f64>,
}

impl PairState {
    /// Records one round, replacing whatever that round held before. `diverted_at` is
    /// the index of the ingress hop when the round is a diversion.
    pub(super) fn record(
        &mut self,
        round: u64,
        start: f64,
        hops: Vec<Hop>,
        diverted_at: Option<usize>,
        dst_rtt: Option<f64>,
    ) {
        self.starts.insert(round, start);
        self.clean.remove(&round);
        self.diverted.remove(&round);
        match diverted_at {
            Some(ingress) => {
                self.diverted.insert(
                    round,
                    DivertedObs {
                        start,
                        hops,
                        ingress,
                        dst_rtt,
                    },
                );
            }
            None => {
                let path: PathHops = hops.iter().map(|h| (h.ttl, h.addr)).collect();
                // Share storage with the neighbouring round when the path is unchanged.
                let shared = self
                    .clean
                    .range(..round)
                    .next_back()
                    .map(|(_, o)| &o.path)
                    .filter(|p| ***p == path)
                    .cloned();
                self.clean.insert(
                    round,
                    CleanObs {
                        path: shared.unwrap_or_else(|| Arc::new(path)),
                        dst_rtt,
                    },
                );
            }
        }
    }

    fn started_by(&self, round: u64, now: f64) -> bool {
        self.starts.get(&round).is_some_and(|s| *s <= now)
    }

    /// The pair's latest round that started by `now`.
    pub(super) fn latest_round(&self, now: f64) -> Option<u64> {
        self.starts
            .iter()
            .filter(|(_, s)| **s <= now)
            .map(|(r, _)| *r)
            .next_back()
    }

    /// How many rounds of the pair started by `now`.
    pub(super) fn rounds_by(&self, now: f64) -> usize {
        self.starts.values().filter(|s| **s <= now).count()
    }

    /// Runs of consecutive diverted rounds (among the rounds started by `now`), each as
    /// its rounds in order. A round that entered adversary space only through addresses
    /// `enters` rejects (a neighbour's adversary-numbered port) counts as clean.
    ///
    /// `clean_enters` says whether a round that looked clean when it arrived does enter
    /// the adversary after all: through a router whose alias group is the adversary's
    /// though none of the addresses it answered from are.
    pub(super) fn episodes(
        &self,
        now: f64,
        enters: impl Fn(&DivertedObs) -> bool,
        clean_enters: impl Fn(&PathHops) -> bool,
    ) -> Vec<Vec<u64>> {
        let mut events: Vec<(u64, bool)> = self
            .clean
            .iter()
            .map(|(r, o)| (*r, clean_enters(&o.path)))
            .chain(self.diverted.iter().map(|(r, o)| (*r, enters(o))))
            .filter(|(r, _)| self.started_by(*r, now))
            .collect();
        events.sort_unstable();
        let mut episodes: Vec<Vec<u64>> = Vec::new();
        let mut open = false;
        let mut last_diverted: Option<&DivertedObs> = None;
        for (round, mut diverted) in events {
            // A round whose adversary hops were all silent (rate-limited, say) but which
            // otherwise followed the diverted route is still diverted: silence is not a
            // path change.
            if !diverted
                && open
                && let (Some(prev), Some(c)) = (last_diverted, self.clean.get(&round))
            {
                diverted = silence_hides_diversion(&c.path, prev);
            }
            if let Some(o) = self.diverted.get(&round) {
                last_diverted = Some(o);
            }
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
        episodes
    }

    /// One diverted round.
    pub(super) fn diverted_round(&self, round: u64) -> Option<&DivertedObs> {
        self.diverted.get(&round)
    }

    /// A round stored as clean: its path, its RTT to the destination and its start.
    pub(super) fn clean_round(&self, round: u64) -> Option<(&PathHops, Option<f64>, f64)> {
        let o = self.clean.get(&round)?;
        Some((o.path.as_ref(), o.dst_rtt, *self.starts.get(&round)?))
    }

    /// Diverted rounds that started by `now`.
    pub(super) fn diverted_by(&self, now: f64) -> impl Iterator<Item = &DivertedObs> {
        self.diverted.values().filter(move |o| o.start <= now)
    }

    /// The learned normal path for a pair as of `round`: the latest clean path before
    /// it (or, failing that, the earliest after it), with silent TTLs filled from older
    /// clean rounds that agree on the hop before. With it, that clean round's RTT to
    /// the destination.
    ///
    /// A pair with no clean round at all takes the nearest round that `enters` rejects
    /// (its only adversary-space addresses are neighbours' ports) as its normal path.
    pub(super) fn normal_path(
        &self,
        round: u64,
        enters: impl Fn(&DivertedObs) -> bool,
        clean_enters: impl Fn(&PathHops) -> bool + Copy,
    ) -> Option<(PathHops, Option<f64>)> {
        let mut it: Box<dyn Iterator<Item = &CleanObs>> = Box::new(
            self.clean
                .range(..round)
                .rev()
                .map(|(_, o)| o)
                .filter(move |o| !clean_enters(&o.path)),
        );
        let mut first = it.next();
        if first.is_none() {
            it = Box::new(
                self.clean
                    .range(round..)
                    .map(|(_, o)| o)
                    .filter(move |o| !clean_enters(&o.path)),
            );
            first = it.next();
        }
        let Some(first) = first else {
            let not_entering = |(_, o): &(&u64, &DivertedObs)| !enters(o);
            let o = self
                .diverted
                .range(..round)
                .rev()
                .find(not_entering)
                .or_else(|| self.diverted.range(round..).find(not_entering))?
                .1;
            return Some((o.hops.iter().map(|h| (h.ttl, h.addr)).collect(), o.dst_rtt));
        };
        let mut path: PathHops = first.path.as_ref().clone();
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
            fill_silent_hops(&mut path, &older.path);
        }
        Some((path, first.dst_rtt))
    }
}

impl PairState {
    /// `path` followed by the hops of the pair's other clean paths (up to 8 distinct
    /// ones) whose addresses it lacks: the union of the pair's equal-cost branches, for
    /// membership tests. Order within `path` is kept, so looking an address up finds its
    /// TTL on `path` first.
    pub(super) fn with_other_branches(&self, path: &PathHops) -> PathHops {
        let mut out = path.clone();
        let mut seen: Vec<&CleanPath> = Vec::new();
        for o in self.clean.values() {
            if seen.len() >= 8 {
                break;
            }
            if seen
                .iter()
                .any(|s| Arc::ptr_eq(s, &o.path) || ***s == *o.path)
            {
                continue;
            }
            seen.push(&o.path);
            for &(t, a) in o.path.iter() {
                if a.is_some() && !out.iter().any(|(_, x)| *x == a) {
                    out.push((t, a));
                }
            }
        }
        out
    }
}

/// Whether a clean-looking `path` is the diverted route of `div` with every adversary
/// hop silent: it answered nowhere `div` did not (TTL by TTL), and was silent wherever
/// `div` showed adversary space.
fn silence_hides_diversion(path: &PathHops, div: &DivertedObs) -> bool {
    let at = |ttl: u8| path.iter().find(|(t, _)| *t == ttl).and_then(|(_, a)| *a);
    let adversary_silent = div
        .hops
        .iter()
        .filter(|h| h.adversary.is_some())
        .all(|h| at(h.ttl).is_none());
    let rest_agrees = path.iter().all(|(t, a)| {
        a.is_none()
            || div
                .hops
                .iter()
                .find(|h| h.ttl == *t)
                .is_some_and(|h| h.addr == *a || h.addr.is_none())
    });
    div.hops.iter().any(|h| h.adversary.is_some()) && adversary_silent && rest_agrees
}

/// Names the silent TTLs of `path` from `older` where `older` agrees on the hop before.
fn fill_silent_hops(path: &mut PathHops, older: &PathHops) {
    for i in 0..path.len() {
        if path[i].1.is_some() {
            continue;
        }
        let ttl = path[i].0;
        let prev = if i == 0 { None } else { path[i - 1].1 };
        let agrees_before = i == 0
            || older
                .iter()
                .any(|(t, a)| *t + 1 == ttl && *a == prev && a.is_some());
        if agrees_before && let Some((_, a)) = older.iter().find(|(t, a)| *t == ttl && a.is_some())
        {
            path[i].1 = *a;
        }
    }
}

/// Clean paths of one vantage toward every destination, for naming a silent hop that
/// sits on a shared stretch of path.
pub(super) fn vantage_clean_paths(pairs: &Pairs, vid: u32) -> impl Iterator<Item = &CleanPath> {
    let lo = (vid, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let hi = (vid, IpAddr::V6(Ipv6Addr::from(u128::MAX)));
    pairs
        .range(lo..=hi)
        .flat_map(|(_, p)| p.clean.values().map(|o| &o.path))
}
