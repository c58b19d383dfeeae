//! The campaigns an agent holds and which round fires next: pure, driven by the caller's
//! corrected clock. The agent keeps this on disk, so neither a coordinator outage nor an
//! agent restart loses a round whose time has not yet come.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tracemesh_proto::schedule::{next_round, round_start_ns};

use crate::probe::Proto;
use crate::probe::alias::Method;

/// An alias campaign's parameters: its targets are router addresses to resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldAlias {
    pub method: Method,
    /// IP-ID rounds (echo probes per address).
    pub rounds: u32,
}

/// A mesh campaign's peers (other agents' mesh endpoints) and its trains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldMesh {
    pub peers: Vec<HeldPeer>,
    pub train: u16,
    pub spacing_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldPeer {
    pub name: String,
    pub addr: std::net::SocketAddr,
}

/// A campaign's multipath rounds (`campaign create --mda`): every `every`-th round, each
/// target is also traced with MDA-Lite, after the round's Paris traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldMda {
    /// At least 1.
    pub every: u32,
    /// 95 or 99.
    pub confidence: u8,
    /// Probes per destination at most.
    pub budget: u32,
}

impl HeldMda {
    /// Rounds 0, N, 2N, ...: round 0 among them, so the branches are known from the start.
    pub fn is_mda_round(&self, round: u32) -> bool {
        round.is_multiple_of(self.every.max(1))
    }
}

/// A round may still fire this late (ns); later than that, it is skipped as missed, since
/// a snapshot taken at another instant than the other vantages' would mislead.
pub const LATE_GRACE_NS: i64 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldCampaign {
    pub id: String,
    pub targets: Vec<String>,
    pub proto: Proto,
    pub attempts: u8,
    pub max_ttl: u8,
    pub wait_ms: u32,
    pub every_s: u32,
    pub rounds: u32,
    pub start_at_ns: i64,
    /// The first round not yet fired.
    pub next_round: u32,
    /// Set for an alias campaign (absent in state files of older agents).
    #[serde(default)]
    pub alias: Option<HeldAlias>,
    /// Set for a mesh campaign: the peers measured each round (their addresses are also
    /// among the targets, so they are traced too).
    #[serde(default)]
    pub mesh: Option<HeldMesh>,
    /// Set when some rounds also run multipath traces (absent in older state files).
    #[serde(default)]
    pub mda: Option<HeldMda>,
}

impl HeldCampaign {
    /// The multipath parameters if `round` is an MDA round.
    pub fn mda_round(&self, round: u32) -> Option<HeldMda> {
        self.mda.filter(|m| m.is_mda_round(round))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due<'a> {
    pub campaign: &'a HeldCampaign,
    pub round: u32,
    /// Coordinator-clock start instant, unix ns.
    pub start_ns: i64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub campaigns: BTreeMap<String, HeldCampaign>,
}

impl Held {
    /// Adds or refreshes a campaign; rounds already fired stay fired.
    pub fn upsert(&mut self, mut c: HeldCampaign) {
        if let Some(old) = self.campaigns.get(&c.id) {
            c.next_round = c.next_round.max(old.next_round);
        }
        if c.next_round < c.rounds {
            self.campaigns.insert(c.id.clone(), c);
        }
    }

    pub fn cancel(&mut self, id: &str) -> bool {
        self.campaigns.remove(id).is_some()
    }

    pub fn ids(&self) -> Vec<String> {
        self.campaigns.keys().cloned().collect()
    }

    /// The earliest round still to fire at or after `now_ns` − grace, across campaigns.
    pub fn next_due(&self, now_ns: i64) -> Option<Due<'_>> {
        self.campaigns
            .values()
            .filter_map(|c| {
                let k = next_round(c.start_at_ns, c.every_s, c.rounds, now_ns - LATE_GRACE_NS)?;
                let k = k.max(c.next_round);
                (k < c.rounds).then(|| Due {
                    campaign: c,
                    round: k,
                    start_ns: round_start_ns(c.start_at_ns, c.every_s, k),
                })
            })
            .min_by_key(|d| (d.start_ns, d.campaign.id.clone()))
    }

    /// Records that `round` of `id` fired; a campaign with no rounds left is dropped.
    pub fn fired(&mut self, id: &str, round: u32) {
        if let Some(c) = self.campaigns.get_mut(id) {
            c.next_round = c.next_round.max(round + 1);
            if c.next_round >= c.rounds {
                self.campaigns.remove(id);
            }
        }
    }

    /// Drops campaigns whose every round lies beyond the grace in the past.
    pub fn prune(&mut self, now_ns: i64) {
        self.campaigns.retain(|_, c| {
            next_round(c.start_at_ns, c.every_s, c.rounds, now_ns - LATE_GRACE_NS).is_some()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn camp(id: &str, start_s: i64, every_s: u32, rounds: u32) -> HeldCampaign {
        HeldCampaign {
            id: id.into(),
            targets: vec!["192.0.2.1".into()],
            proto: Proto::Icmp,
            attempts: 1,
            max_ttl: 30,
            wait_ms: 1000,
            every_s,
            rounds,
            start_at_ns: start_s * S,
            next_round: 0,
            alias: None,
            mesh: None,
            mda: None,
        }
    }

    #[test]
    fn mda_rounds_are_every_nth_from_round_zero() {
        let mut c = camp("a", 100, 10, 7);
        assert_eq!(c.mda_round(0), None, "no --mda: no MDA round");
        let m = HeldMda {
            every: 3,
            confidence: 99,
            budget: 100,
        };
        c.mda = Some(m);
        let rounds: Vec<u32> = (0..7).filter(|&k| c.mda_round(k).is_some()).collect();
        assert_eq!(rounds, [0, 3, 6]);
        c.mda = Some(HeldMda { every: 0, ..m });
        assert!(
            (0..7).all(|k| c.mda_round(k).is_some()),
            "0 means every round"
        );
    }

    #[test]
    fn fires_every_round_in_order_across_campaigns() {
        let mut h = Held::default();
        h.upsert(camp("a", 100, 10, 3));
        h.upsert(camp("b", 105, 10, 2));
        let mut fired = vec![];
        let mut now = 90 * S;
        while let Some(d) = h.next_due(now) {
            let (id, round, start) = (d.campaign.id.clone(), d.round, d.start_ns);
            fired.push((id.clone(), round, start / S));
            now = start;
            h.fired(&id, round);
        }
        assert_eq!(
            fired,
            [
                ("a".into(), 0, 100),
                ("b".into(), 0, 105),
                ("a".into(), 1, 110),
                ("b".into(), 1, 115),
                ("a".into(), 2, 120)
            ]
        );
        assert!(h.campaigns.is_empty(), "finished campaigns are dropped");
    }

    #[test]
    fn a_slightly_late_round_fires_a_long_missed_one_is_skipped() {
        let mut h = Held::default();
        h.upsert(camp("a", 100, 10, 5));
        // 0.5 s after round 2's start: still within grace.
        let d = h.next_due(120 * S + S / 2).unwrap();
        assert_eq!(d.round, 2);
        // 3 s after round 2's start: it is skipped, round 3 is next.
        let d = h.next_due(123 * S).unwrap();
        assert_eq!(d.round, 3);
        h.prune(200 * S);
        assert!(h.campaigns.is_empty());
    }

    #[test]
    fn refreshing_a_campaign_keeps_fired_rounds_and_cancel_removes_it() {
        let mut h = Held::default();
        h.upsert(camp("a", 100, 10, 3));
        h.fired("a", 0);
        h.upsert(camp("a", 100, 10, 3));
        assert_eq!(h.next_due(0).unwrap().round, 1);
        assert!(h.cancel("a"));
        assert!(!h.cancel("a"));
        assert!(h.next_due(0).is_none());
    }
}
