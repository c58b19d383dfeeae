//! The RTT knowledge as plain data for the detector's checkpoint: minima as their bits
//! (exact), maps as lists in their iteration order.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{LINK_VANTAGES, LinkObs, Links};

/// (predecessor, [(vantage, near RTT bits, far RTT bits)]).
type LinkSnap = (IpAddr, Vec<(u32, u32, u32)>);

#[derive(Debug, Default, Serialize, Deserialize)]
pub(in crate::detect) struct LinksSnap {
    /// (address, [(vantage, RTT bits)]).
    rtts: Vec<(IpAddr, Vec<(u32, u64)>)>,
    /// (address, its links).
    preds: Vec<(IpAddr, Vec<LinkSnap>)>,
}

impl Links {
    pub(in crate::detect) fn snapshot(&self) -> LinksSnap {
        let rtts = self
            .rtts
            .iter()
            .map(|(a, m)| (*a, m.iter().map(|(v, r)| (*v, r.to_bits())).collect()))
            .collect();
        let preds = self
            .preds
            .iter()
            .map(|(b, m)| {
                let links = m
                    .iter()
                    .map(|(a, l)| {
                        let seen = l.seen[..usize::from(l.len)]
                            .iter()
                            .map(|(v, ra, rb)| (*v, ra.to_bits(), rb.to_bits()))
                            .collect();
                        (*a, seen)
                    })
                    .collect();
                (*b, links)
            })
            .collect();
        LinksSnap { rtts, preds }
    }

    /// `None` if a link lists more vantages than one holds (a damaged checkpoint).
    pub(in crate::detect) fn restore(s: LinksSnap) -> Option<Links> {
        let mut links = Links::default();
        for (a, m) in s.rtts {
            links.rtts.insert(
                a,
                m.into_iter().map(|(v, r)| (v, f64::from_bits(r))).collect(),
            );
        }
        for (b, m) in s.preds {
            let mut out = rustc_hash::FxHashMap::default();
            for (a, seen) in m {
                if seen.len() > LINK_VANTAGES {
                    return None;
                }
                let mut l = LinkObs::default();
                for (i, (v, ra, rb)) in seen.into_iter().enumerate() {
                    l.seen[i] = (v, f32::from_bits(ra), f32::from_bits(rb));
                    l.len += 1;
                }
                out.insert(a, l);
            }
            links.preds.insert(b, out);
        }
        Some(links)
    }
}
