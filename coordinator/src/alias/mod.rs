//! Alias resolution on the coordinator, pure: merging the agents' per-run alias groups
//! into alias sets across vantages and rounds (`merge`), and choosing which addresses
//! near a suspected border to resolve next (`auto.rs`).
//!
//! Merging is a union-find over addresses. A Mercator group (probed address answered
//! from another) always links its addresses: the answering address does not depend on
//! any counter. An IP-ID group links a pair of addresses only if the evidence agrees:
//! no run saw either address's counter as unusable (zero, constant, a copy of the
//! probe's, or not monotonic), and no other run that sampled both usably kept them
//! apart. An address whose counter is unusable thus stays alone unless Mercator links it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use tracemesh_proto::union_find::UnionFind;
use tracemesh_proto::v1;

pub mod auto;

/// Samples an address needs in a run for that run's silence about a pair to count as
/// disagreement (the agent's own `min_samples`).
const MIN_SAMPLES: usize = 3;

/// Unusable reasons that say the counter itself cannot show aliases (rather than that
/// too few replies came, or that the address is IPv6).
fn counter_unusable(reason: &str) -> bool {
    matches!(
        reason,
        "zero" | "constant" | "echoes_probe" | "not_monotonic"
    )
}

fn method_of(g: &v1::AliasGroup) -> v1::AliasMethod {
    v1::AliasMethod::try_from(g.method).unwrap_or(v1::AliasMethod::Unspecified)
}

/// Orders addresses numerically when they parse, textually otherwise.
fn addr_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// A set's addresses and the (run, group) pairs that linked them.
type Component<'a> = (BTreeSet<&'a str>, BTreeSet<(usize, usize)>);

/// Addresses that answered Mercator probes: each is the address a router sources its
/// ICMP errors from, its own rather than a neighbour-numbered port.
pub fn router_sources(results: &[v1::AliasResult]) -> Vec<std::net::IpAddr> {
    let mut out: std::collections::BTreeSet<std::net::IpAddr> = Default::default();
    for r in results {
        for a in &r.addrs {
            if let Some(ip) = a.mercator_from.as_deref().and_then(|f| f.parse().ok()) {
                out.insert(ip);
            }
        }
    }
    out.into_iter().collect()
}

/// The best echo round trip (ms) each vantage measured to each address, from the IP-ID
/// samples of `results`: a router's fast path, for positioning it.
pub fn echo_rtts(results: &[v1::AliasResult]) -> Vec<(String, std::net::IpAddr, f64)> {
    let mut best: std::collections::BTreeMap<(String, std::net::IpAddr), f64> =
        std::collections::BTreeMap::new();
    for r in results {
        for a in &r.addrs {
            let Ok(ip) = a.addr.parse::<std::net::IpAddr>() else {
                continue;
            };
            for s in &a.samples {
                if s.rx_us < s.tx_us {
                    continue;
                }
                let ms = (s.rx_us - s.tx_us) as f64 / 1000.0;
                let e = best.entry((r.vantage.clone(), ip)).or_insert(ms);
                *e = e.min(ms);
            }
        }
    }
    best.into_iter().map(|((v, a), ms)| (v, a, ms)).collect()
}

/// Alias sets over every result given (any vantages, campaigns and rounds), sorted by
/// their first address; each set's evidence lists the runs' groups that linked it.
pub fn merge(results: &[v1::AliasResult]) -> Vec<v1::AliasSet> {
    let mut bad: BTreeSet<&str> = BTreeSet::new();
    // Per run: addresses sampled usably, and the IP-ID pairs it grouped.
    let mut usable: Vec<BTreeSet<&str>> = Vec::with_capacity(results.len());
    let mut paired: Vec<BTreeSet<(&str, &str)>> = Vec::with_capacity(results.len());
    for r in results {
        let mut u = BTreeSet::new();
        for a in &r.addrs {
            match a.unusable.as_deref() {
                Some(reason) if counter_unusable(reason) => {
                    bad.insert(a.addr.as_str());
                }
                None if a.samples.len() >= MIN_SAMPLES => {
                    u.insert(a.addr.as_str());
                }
                _ => {}
            }
        }
        usable.push(u);
        let mut p = BTreeSet::new();
        for g in r
            .groups
            .iter()
            .filter(|g| method_of(g) == v1::AliasMethod::Ipid)
        {
            for (i, a) in g.addrs.iter().enumerate() {
                for b in &g.addrs[i + 1..] {
                    p.insert(pair(a, b));
                }
            }
        }
        paired.push(p);
    }

    // Links, each with the (run, group) that made it.
    let mut links: Vec<(&str, &str, usize, usize)> = Vec::new();
    for (ri, r) in results.iter().enumerate() {
        for (gi, g) in r.groups.iter().enumerate() {
            match method_of(g) {
                v1::AliasMethod::Ipid => {
                    let addrs: Vec<&str> = g
                        .addrs
                        .iter()
                        .map(String::as_str)
                        .filter(|a| !bad.contains(a))
                        .collect();
                    for (i, &a) in addrs.iter().enumerate() {
                        for &b in &addrs[i + 1..] {
                            let p = pair(a, b);
                            let disputed = (0..results.len()).any(|j| {
                                j != ri
                                    && usable[j].contains(a)
                                    && usable[j].contains(b)
                                    && !paired[j].contains(&p)
                            });
                            if !disputed {
                                links.push((a, b, ri, gi));
                            }
                        }
                    }
                }
                // Mercator (or anything else that names answering addresses).
                _ => {
                    if let Some((first, rest)) = g.addrs.split_first() {
                        for b in rest {
                            links.push((first, b, ri, gi));
                        }
                    }
                }
            }
        }
    }

    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut names: Vec<&str> = Vec::new();
    for &(a, b, _, _) in &links {
        for x in [a, b] {
            index.entry(x).or_insert_with(|| {
                names.push(x);
                names.len() - 1
            });
        }
    }
    let mut dsu = UnionFind::new(names.len());
    for &(a, b, _, _) in &links {
        dsu.union(index[a], index[b]);
    }
    // Component root → its addresses and the (run, group) pairs behind it.
    let mut comps: BTreeMap<usize, Component<'_>> = BTreeMap::new();
    for &(a, b, ri, gi) in &links {
        let root = dsu.find(index[a]);
        let c = comps.entry(root).or_default();
        c.0.insert(a);
        c.0.insert(b);
        c.1.insert((ri, gi));
    }
    let mut sets: Vec<v1::AliasSet> = comps
        .into_values()
        .map(|(addrs, support)| {
            let mut addrs: Vec<&str> = addrs.into_iter().collect();
            addrs.sort_by(|a, b| addr_order(a, b));
            let mut first_seen = f64::INFINITY;
            let mut last_seen = f64::NEG_INFINITY;
            let evidence = support
                .into_iter()
                .map(|(ri, gi)| {
                    let r = &results[ri];
                    first_seen = first_seen.min(r.start);
                    last_seen = last_seen.max(r.start);
                    evidence_of(r, &r.groups[gi])
                })
                .collect();
            v1::AliasSet {
                addrs: addrs.into_iter().map(String::from).collect(),
                evidence,
                first_seen,
                last_seen,
            }
        })
        .collect();
    sets.sort_by(|a, b| addr_order(&a.addrs[0], &b.addrs[0]));
    sets
}

fn evidence_of(r: &v1::AliasResult, g: &v1::AliasGroup) -> v1::AliasSetEvidence {
    let ev = g.evidence.clone().unwrap_or_default();
    let (method, samples, velocity) = match method_of(g) {
        v1::AliasMethod::Ipid => {
            let v: Vec<f64> = ev.velocity_per_s.values().copied().collect();
            let mean = (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
            ("ipid", ev.samples.values().sum::<u32>(), mean)
        }
        _ => ("mercator", ev.answers.len() as u32, None),
    };
    v1::AliasSetEvidence {
        method: method.into(),
        vantage: r.vantage.clone(),
        samples,
        velocity,
        campaign_id: r.campaign_id.clone(),
        round: r.round,
    }
}

fn pair<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if addr_order(a, b).is_le() {
        (a, b)
    } else {
        (b, a)
    }
}

#[cfg(test)]
mod tests;
