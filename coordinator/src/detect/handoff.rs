//! Naming the hand-off router: the last router of the normal route before a diverted
//! path leaves it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::paths::Hop;

/// How trustworthy a hand-off is; higher is better, used to pick among rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Quality {
    /// Only the last answering hop before a silent stretch: the true hand-off may be
    /// hidden in the silence.
    Gap,
    OtherPair,
    NoHistory,
    Filled,
    Answered,
}

impl Quality {
    pub(crate) fn method(self) -> &'static str {
        match self {
            Quality::Gap => "last-answering-before-silence",
            Quality::OtherPair => "other-pair",
            Quality::NoHistory => "no-history",
            Quality::Filled => "filled-from-normal-path",
            Quality::Answered => "answered",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pick {
    pub addr: Option<IpAddr>,
    pub ttl: Option<u8>,
    pub rtt: Option<f64>,
    pub quality: Quality,
}

fn pick(h: &Hop, quality: Quality) -> Pick {
    Pick {
        addr: h.addr,
        ttl: Some(h.ttl),
        rtt: h.rtt,
        quality,
    }
}

/// `hops` is the diverted path (sorted by TTL, destination excluded), `ingress` the
/// index of its first adversary hop, `normal` the learned normal path if any.
///
/// With a normal path, alignment is by address rather than TTL so that hops hidden by
/// MPLS tunnels (which shift every later TTL) do not break it; TTL arithmetic is only
/// used, relative to the last matching hop, to name a hop that is silent right now.
pub(crate) fn find_handoff<'a, I>(
    hops: &[Hop],
    ingress: usize,
    normal: Option<&[(u8, Option<IpAddr>)]>,
    other_paths: impl FnOnce() -> I,
    is_adversary: impl Fn(IpAddr) -> bool,
) -> Pick
where
    I: Iterator<Item = (&'a Arc<Vec<(u8, Option<IpAddr>)>>, u64)>,
{
    let none = Pick {
        addr: None,
        ttl: None,
        rtt: None,
        quality: Quality::Gap,
    };
    let Some(ing) = hops.get(ingress) else {
        return none;
    };
    let before = &hops[..ingress];
    if let Some(normal) = normal {
        let mut anchor: Option<(&Hop, u8)> = None;
        let mut depart_ttl = ing.ttl;
        for h in before {
            let Some(a) = h.addr else { continue };
            match normal.iter().find(|(_, x)| *x == Some(a)) {
                Some((nt, _)) => anchor = Some((h, *nt)),
                None => {
                    depart_ttl = h.ttl;
                    break;
                }
            }
        }
        if let Some((ah, nt)) = anchor {
            if ah.ttl.saturating_add(1) >= depart_ttl {
                return pick(ah, Quality::Answered);
            }
            let want = i32::from(depart_ttl) - 1 + i32::from(nt) - i32::from(ah.ttl);
            if let Some(addr) = normal
                .iter()
                .find(|(t, a)| i32::from(*t) == want && a.is_some())
                .and_then(|(_, a)| *a)
                .filter(|a| !is_adversary(*a))
            {
                return Pick {
                    addr: Some(addr),
                    ttl: Some(depart_ttl - 1),
                    rtt: None,
                    quality: Quality::Filled,
                };
            }
            return pick(ah, Quality::Gap);
        }
    }
    let Some(last) = before
        .iter()
        .rev()
        .find(|h| h.addr.is_some() && h.adversary.is_none())
    else {
        // Nothing answered before an ingress at TTL 2: the hand-off is the vantage's
        // own first router (rate-limited by a vantage's burst of first hops, typically),
        // which every other path of the vantage crosses at TTL 1 too.
        if ing.ttl == 2
            && let Some(addr) = most_common(
                other_paths().filter_map(|(p, n)| Some((at_ttl(p, 1)?, n))),
                &is_adversary,
            )
        {
            return Pick {
                addr: Some(addr),
                ttl: Some(1),
                rtt: None,
                quality: Quality::OtherPair,
            };
        }
        return none;
    };
    if last.ttl.saturating_add(1) >= ing.ttl {
        return pick(last, Quality::NoHistory);
    }
    // Silence between the last answering hop and the ingress: other destinations of the
    // same vantage often share this stretch and may show who sits in the silence.
    let (Some(anchor), want_delta) = (last.addr, ing.ttl - 1 - last.ttl) else {
        return pick(last, Quality::Gap);
    };
    let seen = other_paths().filter_map(|(p, n)| {
        let (t0, _) = p.iter().find(|(_, a)| *a == Some(anchor))?;
        Some((at_ttl(p, t0.saturating_add(want_delta))?, n))
    });
    match most_common(seen, &is_adversary) {
        Some(addr) => Pick {
            addr: Some(addr),
            ttl: Some(ing.ttl - 1),
            rtt: None,
            quality: Quality::OtherPair,
        },
        None => pick(last, Quality::Gap),
    }
}

/// The address answering at `ttl` on a path, if any.
fn at_ttl(p: &[(u8, Option<IpAddr>)], ttl: u8) -> Option<IpAddr> {
    p.iter().find(|(t, a)| *t == ttl && a.is_some())?.1
}

/// The non-adversary address seen most often (ties: the lowest), for naming a silent
/// hop from other paths; each address comes with the rounds that showed it.
fn most_common(
    seen: impl Iterator<Item = (IpAddr, u64)>,
    is_adversary: &impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    let mut counts: HashMap<IpAddr, u64> = HashMap::new();
    for (a, n) in seen.filter(|(a, _)| !is_adversary(*a)) {
        *counts.entry(a).or_default() += n;
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(a, _)| a)
}
