//! Which addresses near a suspected border to resolve next, pure: the suspects (each
//! with the vantage that saw it), when each address was last probed, and `now` in; the
//! addresses per vantage to put in one alias campaign out.
//!
//! An address is probed again only an hour after its last probing, and at most
//! [`MAX_PER_MINUTE`] addresses are scheduled in any minute: an alias run sends each
//! address about ten probes (two Mercator, eight echo), so this keeps a vantage's alias
//! traffic to about one probe per second, far below any agent's rate cap (the agents
//! enforce their own caps on top).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;

use crate::detect::DiversionRecord;

/// Seconds before an address is worth probing again.
pub const REPROBE_AFTER_S: f64 = 3600.0;
/// Addresses scheduled per sliding minute, over every vantage.
pub const MAX_PER_MINUTE: usize = 6;

/// The addresses around a diversion's border: the hand-off, the ingress, and the
/// answering hops just before and just after the ingress on the diverted path.
pub fn border_suspects(d: &DiversionRecord) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut add = |a: IpAddr| {
        if !out.contains(&a) {
            out.push(a);
        }
    };
    add(d.ingress.addr);
    if let Some(h) = d.handoff.addr {
        add(h);
    }
    let path = &d.evidence.diverted_path;
    if let Some(i) = path.iter().position(|h| h.addr == Some(d.ingress.addr)) {
        if let Some(a) = path[..i].iter().rev().find_map(|h| h.addr) {
            add(a);
        }
        if let Some(a) = path[i + 1..].iter().find_map(|h| h.addr) {
            add(a);
        }
    }
    out
}

/// The memory the planner keeps between calls.
#[derive(Debug, Default, Clone)]
pub struct AutoAlias {
    last_probed: HashMap<IpAddr, f64>,
    /// (when, addresses) of recent plans, for the per-minute budget.
    recent: VecDeque<(f64, usize)>,
}

impl AutoAlias {
    /// Notes that `addr` was probed at `at` (unix s), e.g. from a stored alias result.
    pub fn probed(&mut self, addr: IpAddr, at: f64) {
        let t = self.last_probed.entry(addr).or_insert(at);
        *t = t.max(at);
    }

    /// Chooses the addresses to resolve now among `suspects` (vantage, address), in
    /// their order (the first are the most telling): each once, not probed in the last
    /// hour, within the per-minute budget; from the vantages that saw them. What it
    /// returns counts as probed from `now` on.
    pub fn plan(
        &mut self,
        suspects: &[(String, IpAddr)],
        now: f64,
    ) -> BTreeMap<String, Vec<IpAddr>> {
        while self.recent.front().is_some_and(|&(t, _)| now - t >= 60.0) {
            self.recent.pop_front();
        }
        let used: usize = self.recent.iter().map(|&(_, n)| n).sum();
        let mut budget = MAX_PER_MINUTE.saturating_sub(used);
        let mut chosen: Vec<IpAddr> = Vec::new();
        let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for (vantage, addr) in suspects {
            let fresh = self
                .last_probed
                .get(addr)
                .is_none_or(|&t| now - t >= REPROBE_AFTER_S);
            if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() {
                continue;
            }
            if !chosen.contains(addr) {
                if !fresh || budget == 0 {
                    continue;
                }
                budget -= 1;
                chosen.push(*addr);
            }
            let v = out.entry(vantage.clone()).or_default();
            if !v.contains(addr) {
                v.push(*addr);
            }
        }
        for a in &chosen {
            self.last_probed.insert(*a, now);
        }
        if !chosen.is_empty() {
            self.recent.push_back((now, chosen.len()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn s(v: &str, a: &str) -> (String, IpAddr) {
        (v.to_string(), ip(a))
    }

    fn record(handoff: Option<&str>, ingress: &str, path: &[Option<&str>]) -> DiversionRecord {
        use crate::detect::{Evidence, HandoffRef, IngressRef, PathHop};
        let hop = |i: usize, a: &Option<&str>| PathHop {
            ttl: i as u8 + 1,
            addr: a.map(ip),
            asn: None,
            rtt_ms: None,
            adversary: false,
        };
        DiversionRecord {
            vantage: "tor".into(),
            target: ip("192.0.2.9"),
            adversary_asn: 4134,
            adversary_name: None,
            handoff: HandoffRef {
                addr: handoff.map(ip),
                asn: None,
                as_name: None,
                ttl: None,
                method: "answered",
                owner_rule: "origin",
            },
            ingress: IngressRef {
                addr: ip(ingress),
                asn: 4134,
                as_name: None,
                loc: None,
                radius_km: None,
                city: None,
                city_country: None,
                constraints: 0,
                inferred: false,
                ixp: None,
                owner_rule: "origin",
                router: vec![ip(ingress)],
            },
            first_seen: 0.0,
            last_seen: 0.0,
            rounds: 1,
            first_round: 0,
            last_round: 0,
            active: true,
            incident: 0,
            evidence: Evidence {
                as_path: vec![],
                normal_as_path: vec![],
                rtt_handoff_ms: None,
                rtt_ingress_ms: None,
                rtt_dst_ms: None,
                normal_rtt_dst_ms: None,
                detour_ms: None,
                max_rtt_jump_ms: None,
                ingress_abroad: None,
                adversary_hops: 1,
                normal_path: vec![],
                diverted_path: path.iter().enumerate().map(|(i, a)| hop(i, a)).collect(),
            },
        }
    }

    #[test]
    fn the_border_is_the_handoff_the_ingress_and_the_answering_hops_around_it() {
        let d = record(
            Some("10.0.0.2"),
            "10.9.0.2",
            &[
                Some("10.0.0.1"),
                Some("10.0.0.2"),
                None,
                Some("10.9.0.2"),
                None,
                Some("10.9.0.7"),
            ],
        );
        assert_eq!(
            border_suspects(&d),
            [ip("10.9.0.2"), ip("10.0.0.2"), ip("10.9.0.7")],
            "the hop before the ingress is the hand-off: listed once; silence skipped"
        );
        // An inferred ingress not on the path: the ingress and hand-off only.
        let d = record(None, "10.9.9.9", &[Some("10.0.0.1")]);
        assert_eq!(border_suspects(&d), [ip("10.9.9.9")]);
    }

    #[test]
    fn each_address_once_from_every_vantage_that_saw_it_then_not_for_an_hour() {
        let mut p = AutoAlias::default();
        let plan = p.plan(
            &[
                s("tor", "10.0.0.2"),
                s("fra", "10.0.0.2"),
                s("tor", "10.9.0.2"),
            ],
            1000.0,
        );
        assert_eq!(
            plan,
            BTreeMap::from([
                ("fra".to_string(), vec![ip("10.0.0.2")]),
                ("tor".to_string(), vec![ip("10.0.0.2"), ip("10.9.0.2")]),
            ])
        );
        // The next report names them again: nothing new to do for an hour.
        assert!(p.plan(&[s("tor", "10.0.0.2")], 1100.0).is_empty());
        assert!(
            p.plan(&[s("tor", "10.0.0.2")], 1000.0 + REPROBE_AFTER_S - 1.0)
                .is_empty()
        );
        assert_eq!(
            p.plan(&[s("tor", "10.0.0.2")], 1000.0 + REPROBE_AFTER_S)
                .len(),
            1
        );
    }

    #[test]
    fn stored_probings_count_and_the_budget_is_a_few_per_minute() {
        let mut p = AutoAlias::default();
        p.probed(ip("10.0.0.1"), 900.0);
        let many: Vec<_> = (1..=20).map(|i| s("tor", &format!("10.0.0.{i}"))).collect();
        let plan = p.plan(&many, 1000.0);
        // 10.0.0.1 was probed 100 s ago; the next six fit the minute's budget.
        let want: Vec<IpAddr> = (2..=7).map(|i| ip(&format!("10.0.0.{i}"))).collect();
        assert_eq!(plan["tor"], want);
        assert!(
            p.plan(&many, 1030.0).is_empty(),
            "budget spent for this minute"
        );
        let next = p.plan(&many, 1060.0);
        assert_eq!(next["tor"].len(), MAX_PER_MINUTE);
        assert_eq!(next["tor"][0], ip("10.0.0.8"));
        assert!(p.plan(&[s("tor", "0.0.0.0")], 5000.0).is_empty());
    }
}
