//! What the detector keeps about routers to position them later: each vantage's best RTT
//! to every answering address, and the RTT step across each short stretch of path.

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use super::paths::Hop;

mod snap;
pub(super) use snap::LinksSnap;

/// Largest TTL distance between two answering hops still treated as one stretch of
/// path for positioning.
const MAX_LINK_GAP: u8 = 3;

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

/// RTT knowledge per address, accumulated over every ingested trace.
#[derive(Debug, Default)]
pub(super) struct Links {
    /// Minimum RTT per (hop address, vantage): congestion only ever adds delay, so the
    /// minimum is the tightest distance bound.
    rtts: FxHashMap<IpAddr, FxHashMap<u32, f64>>,
    /// For each address, the hops seen answering shortly before it (at most
    /// `MAX_LINK_GAP` TTLs): a stretch of path whose length the RTT step bounds.
    preds: FxHashMap<IpAddr, FxHashMap<IpAddr, LinkObs>>,
}

impl Links {
    /// Takes in the answering hops of one trace of vantage `vid` (sorted by TTL).
    pub(super) fn observe(&mut self, vid: u32, hops: &[Hop]) {
        for h in hops {
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
        for h in hops {
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
    }

    /// A round trip to `addr` measured some other way (an echo to the router, answered
    /// on its fast path): it only ever tightens the vantage's bound.
    pub(super) fn observe_rtt(&mut self, vid: u32, addr: IpAddr, rtt: f64) {
        if !(rtt.is_finite() && rtt >= 0.0) {
            return;
        }
        let e = self.rtts.entry(addr).or_default().entry(vid).or_insert(rtt);
        if rtt < *e {
            *e = rtt;
        }
    }

    /// Addresses with RTT minima, and links between answering hops.
    pub(super) fn sizes(&self) -> (usize, usize) {
        (self.rtts.len(), self.preds.values().map(|m| m.len()).sum())
    }

    /// Vantage `vid`'s best RTT to `addr`.
    pub(super) fn best_rtt(&self, addr: IpAddr, vid: u32) -> Option<f64> {
        self.rtts.get(&addr)?.get(&vid).copied()
    }

    /// Every vantage's best RTT to `addr`, as (vantage id, ms).
    pub(super) fn best_rtts(&self, addr: IpAddr) -> impl Iterator<Item = (u32, f64)> + '_ {
        self.rtts
            .get(&addr)
            .into_iter()
            .flatten()
            .map(|(vid, rtt)| (*vid, *rtt))
    }

    /// The hops seen answering shortly before `addr`, with the RTT step from each to it.
    pub(super) fn predecessors(&self, addr: IpAddr) -> impl Iterator<Item = (IpAddr, f64)> + '_ {
        self.preds
            .get(&addr)
            .into_iter()
            .flatten()
            .map(|(a, l)| (*a, l.step()))
    }
}

#[cfg(test)]
mod tests {
    use super::{LINK_VANTAGES, LinkObs};

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
        assert_eq!(usize::from(l.len), LINK_VANTAGES);
    }
}
