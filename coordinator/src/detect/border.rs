//! Which router behind an address is the adversary's, where the prefix table misleads:
//! at AS borders. A border link is numbered from one side's prefix, so one of its two
//! routers answers with an address the table gives to the other AS (bdrmapIT's
//! "third-party" and off-by-one addresses). Read naively, that moves the ingress one hop
//! into the adversary's backbone, or makes a neighbour's router look like the
//! adversary's. Two rules, both from what every path shows around an address:
//!
//! - **Adversary-numbered port on a neighbour's router** (`neighbour_port`): an
//!   adversary-space address with no adversary-space hop right before or after it,
//!   wherever it is seen, on a stable path (in at least 90% of the rounds, and at least
//!   [`STABLE_ROUNDS`], of some pair). A re-used cross-connect or a neighbour's end of a
//!   private interconnect the adversary numbered: a path through it alone does not
//!   enter the adversary. (A diversion that lasts the whole observation and shows just
//!   one adversary address would be taken for this; alias resolution settles it.)
//! - **Alias groups** come first when alias resolution has run: a router whose addresses
//!   are mostly in adversary space is the adversary's, whatever address it answered
//!   from; one whose addresses are mostly elsewhere is not, even with an
//!   adversary-space port.
//! - **Neighbour-numbered ingress** (see `episode.rs`): the hop right before the first
//!   adversary-space hop is the adversary's router when it is new to the vantage (on
//!   none of its clean paths with a non-adversary hop after it), the hop before it is
//!   on a known path (the hand-off), and wherever it is seen the next hop is in
//!   adversary space ([`Borders::always_before_adversary`]).

use std::net::IpAddr;

use rustc_hash::{FxHashMap, FxHashSet};

use super::paths::{DivertedObs, Pairs};

/// Rounds of one pair an address must appear in before it counts as part of a stable
/// path, not an episode.
const STABLE_ROUNDS: usize = 4;
/// Share of a pair's rounds that makes a path stable.
const STABLE_SHARE: f64 = 0.9;

/// What every diverted round shows around adversary-space addresses, as of one report.
#[derive(Debug, Default)]
pub(super) struct Borders {
    /// Adversary-space addresses that are ports on neighbours' routers.
    neighbour_ports: FxHashSet<IpAddr>,
    /// Per non-adversary address seen right before an adversary-space hop (next TTL):
    /// how often its next hop was adversary space, and how often something else.
    next_hop: FxHashMap<IpAddr, (u32, u32)>,
    /// Per address in an alias group: the group's owner by majority of its addresses,
    /// `Some(asn)` for an adversary AS, `None` for a neighbour's router.
    alias_owner: FxHashMap<IpAddr, Option<u32>>,
    /// Each grouped address's group.
    groups: FxHashMap<IpAddr, usize>,
    group_addrs: Vec<Vec<IpAddr>>,
}

/// Whether the hop next to `hops[i]` (one TTL away, `step` = -1 or +1) is in adversary
/// space; `None` where that TTL did not answer or is not in the trace.
fn neighbour_is_adversary(hops: &[super::paths::Hop], i: usize, before: bool) -> Option<bool> {
    let j = if before { i.checked_sub(1)? } else { i + 1 };
    let (h, n) = (&hops[i], hops.get(j)?);
    let adjacent = if before {
        n.ttl + 1 == h.ttl
    } else {
        h.ttl + 1 == n.ttl
    };
    (adjacent && n.addr.is_some()).then_some(n.adversary.is_some())
}

impl Borders {
    /// Gathers the evidence from every diverted round started by `now`, and the alias
    /// groups' owners (`adversary_of` gives an address's adversary AS, if any).
    pub(super) fn build(
        pairs: &Pairs,
        now: f64,
        aliases: &[Vec<IpAddr>],
        sources: &FxHashSet<IpAddr>,
        adversary_of: impl Fn(IpAddr) -> Option<Option<u32>>,
    ) -> Borders {
        let mut b = Borders::default();
        for (gi, g) in aliases.iter().enumerate() {
            // The router's own source address (the one its errors come from, as
            // Mercator saw it) decides; interface addresses on borders are often
            // numbered by the neighbour. Without one, the majority of the addresses
            // whose origin is known (exchange LANs and unannounced space say nothing);
            // a tie decides nothing.
            let own: Vec<&IpAddr> = g.iter().filter(|a| sources.contains(a)).collect();
            let counted: Vec<&IpAddr> = if own.is_empty() {
                g.iter().collect()
            } else {
                own
            };
            let (mut adv, mut other) = (FxHashMap::<u32, usize>::default(), 0usize);
            for a in counted {
                match adversary_of(*a) {
                    Some(Some(asn)) => *adv.entry(asn).or_default() += 1,
                    Some(None) => other += 1,
                    None => {}
                }
            }
            let n_adv: usize = adv.values().sum();
            let owner = if n_adv > other {
                adv.into_iter()
                    .max_by_key(|(_, n)| *n)
                    .map(|(asn, _)| Some(asn))
            } else if other > n_adv {
                Some(None)
            } else {
                None
            };
            for a in g {
                b.groups.insert(*a, gi);
                if let Some(o) = owner {
                    b.alias_owner.insert(*a, o);
                }
            }
            b.group_addrs.push(g.clone());
        }
        // Per adversary-space address: isolated everywhere so far, and stable somewhere.
        let mut isolated: FxHashMap<IpAddr, bool> = FxHashMap::default();
        let mut stable: FxHashSet<IpAddr> = FxHashSet::default();
        for pair in pairs.values() {
            let rounds = pair.rounds_by(now);
            let mut present: FxHashMap<IpAddr, usize> = FxHashMap::default();
            for obs in pair.diverted_by(now) {
                let mut this_round: Vec<IpAddr> = Vec::new();
                for (i, h) in obs.hops.iter().enumerate() {
                    let Some(a) = h.addr else { continue };
                    if h.adversary.is_some() {
                        let alone = neighbour_is_adversary(&obs.hops, i, true) != Some(true)
                            && neighbour_is_adversary(&obs.hops, i, false) != Some(true);
                        let e = isolated.entry(a).or_insert(true);
                        *e &= alone;
                        // Rounds, not hops: a looping path shows an address twice.
                        if !this_round.contains(&a) {
                            this_round.push(a);
                            *present.entry(a).or_default() += 1;
                        }
                    } else if let Some(next_adv) = neighbour_is_adversary(&obs.hops, i, false) {
                        let e = b.next_hop.entry(a).or_default();
                        if next_adv {
                            e.0 += 1;
                        } else {
                            e.1 += 1;
                        }
                    }
                }
            }
            for (a, n) in present {
                if n >= STABLE_ROUNDS && n as f64 >= STABLE_SHARE * rounds as f64 {
                    stable.insert(a);
                }
            }
        }
        b.neighbour_ports = isolated
            .into_iter()
            .filter(|(a, alone)| *alone && stable.contains(a))
            .map(|(a, _)| a)
            .collect();
        b
    }

    /// An adversary-space address that is a port on a neighbour's router.
    pub(super) fn is_neighbour_port(&self, a: IpAddr) -> bool {
        match self.alias_owner.get(&a) {
            Some(owner) => owner.is_none(),
            None => self.neighbour_ports.contains(&a),
        }
    }

    /// Whether any alias group names an adversary router (most reports: none).
    pub(super) fn any_alias_adversary(&self) -> bool {
        self.alias_owner.values().any(Option::is_some)
    }

    /// The adversary AS whose router answers from `a`, by its alias group.
    pub(super) fn alias_adversary(&self, a: IpAddr) -> Option<u32> {
        self.alias_owner.get(&a).copied().flatten()
    }

    /// Every address of the router behind `a` (its alias group), or `a` alone.
    pub(super) fn router_of(&self, a: IpAddr) -> Vec<IpAddr> {
        self.groups
            .get(&a)
            .and_then(|g| self.group_addrs.get(*g))
            .cloned()
            .unwrap_or_else(|| vec![a])
    }

    /// The first hop of the round on a router of the adversary's: adversary space and
    /// not a neighbour's port, or any address whose alias group is the adversary's.
    /// `None`: the round does not enter the adversary.
    pub(super) fn ingress_of(&self, obs: &DivertedObs) -> Option<usize> {
        obs.hops.iter().position(|h| match h.addr {
            Some(a) if self.alias_adversary(a).is_some() => true,
            Some(a) => h.adversary.is_some() && !self.is_neighbour_port(a),
            None => false,
        })
    }

    /// A non-adversary address whose next hop, in every diverted round that shows one,
    /// is adversary space.
    pub(super) fn always_before_adversary(&self, a: IpAddr) -> bool {
        self.next_hop
            .get(&a)
            .is_some_and(|(adv, other)| *adv > 0 && *other == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::paths::{Hop, PairState};

    fn hop(ttl: u8, addr: &str, adv: bool) -> Hop {
        Hop {
            ttl,
            addr: Some(addr.parse().unwrap()),
            rtt: Some(f64::from(ttl)),
            asn: Some(if adv { 4134 } else { 1 }),
            adversary: adv.then_some(4134),
        }
    }

    fn pair_with(rounds: u64, hops: impl Fn(u64) -> (Vec<Hop>, Option<usize>)) -> PairState {
        let mut p = PairState::default();
        for r in 0..rounds {
            let (h, ing) = hops(r);
            p.record(r, r as f64 * 10.0, h, ing, None);
        }
        p
    }

    #[test]
    fn an_isolated_adversary_port_on_a_stable_path_is_a_neighbours() {
        let mut pairs = Pairs::new();
        // Every round: 10.0.0.1 -> 202.97.56.130 (adversary space) -> 10.0.0.3.
        pairs.insert(
            (0, "192.0.2.1".parse().unwrap()),
            pair_with(10, |_| {
                (
                    vec![
                        hop(1, "10.0.0.1", false),
                        hop(2, "202.97.56.130", true),
                        hop(3, "10.0.0.3", false),
                    ],
                    Some(1),
                )
            }),
        );
        // An episode of another pair: two adversary hops in a row, 4 of 10 rounds.
        pairs.insert(
            (1, "192.0.2.2".parse().unwrap()),
            pair_with(10, |r| {
                if (3..7).contains(&r) {
                    (
                        vec![
                            hop(1, "10.1.0.1", false),
                            hop(2, "10.1.0.9", false),
                            hop(3, "202.97.10.5", true),
                            hop(4, "202.97.33.1", true),
                            hop(5, "10.0.0.3", false),
                        ],
                        Some(2),
                    )
                } else {
                    (
                        vec![hop(1, "10.1.0.1", false), hop(2, "10.0.0.3", false)],
                        None,
                    )
                }
            }),
        );
        let b = Borders::build(&pairs, 1e9, &[], &FxHashSet::default(), |_| None);
        assert!(b.is_neighbour_port("202.97.56.130".parse().unwrap()));
        assert!(!b.is_neighbour_port("202.97.10.5".parse().unwrap()));
        assert!(b.always_before_adversary("10.1.0.9".parse().unwrap()));
        assert!(!b.always_before_adversary("10.1.0.1".parse().unwrap()));
        let (_, p) = pairs.iter().next().unwrap();
        let obs = p.diverted_by(1e9).next().unwrap();
        assert_eq!(b.ingress_of(obs), None, "the port alone does not enter");
    }

    #[test]
    fn an_isolated_adversary_hop_in_an_episode_still_enters() {
        let mut pairs = Pairs::new();
        // One visible adversary router (its neighbours answer from their own space),
        // but only in 5 of 12 rounds: an episode, not a stable path.
        pairs.insert(
            (0, "192.0.2.1".parse().unwrap()),
            pair_with(12, |r| {
                if (4..9).contains(&r) {
                    (
                        vec![
                            hop(1, "10.0.0.1", false),
                            hop(2, "62.115.140.70", false),
                            hop(3, "87.226.1.1", true),
                            hop(4, "10.0.0.3", false),
                        ],
                        Some(2),
                    )
                } else {
                    (
                        vec![hop(1, "10.0.0.1", false), hop(2, "10.0.0.3", false)],
                        None,
                    )
                }
            }),
        );
        let b = Borders::build(&pairs, 1e9, &[], &FxHashSet::default(), |_| None);
        assert!(!b.is_neighbour_port("87.226.1.1".parse().unwrap()));
        let (_, p) = pairs.iter().next().unwrap();
        assert_eq!(b.ingress_of(p.diverted_by(1e9).next().unwrap()), Some(2));
    }
}
