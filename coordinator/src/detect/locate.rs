//! Positioning an answering address from RTT constraints only, for one report.

use std::collections::HashMap;
use std::net::IpAddr;

use super::VantageInfo;
use super::links::Links;
use crate::geo::{
    Disc, Estimate, Gazetteer, GeoPoint, Ring, TYPICAL_SPEED_FRACTION, great_circle_km,
    multilaterate, rtt_radius_km,
};

/// A located address: the feasible region, the preferred point in it, its city (name,
/// country).
pub(super) type Located = Option<(Estimate, GeoPoint, Option<(String, String)>)>;

/// Beyond this uncertainty a predecessor's preferred point is a guess (it was seen only
/// from vantages a continent or more away), so it adds no ring. Measured on the lab's
/// stored runs: Beltelecom's Frankfurt ingress in `ecmp-belarus-2013` went from 1,302 km
/// off (pulled toward islands nearer the US hops' guessed points) to 472 km; no other
/// scenario moved. 1,500 km cut rings that carry real direction (china-telecom-2010:
/// 49 km -> 586 km).
const RING_PRED_MAX_RADIUS_KM: f64 = 3000.0;

/// A disc per vantage that has an RTT to `addr`: its best one, in vantage order. The
/// estimate depends on the order of its discs; the hash map's order depends on how it
/// was filled, which a detector loaded from a checkpoint fills differently.
pub(super) fn vantage_discs(links: &Links, vantages: &[VantageInfo], addr: IpAddr) -> Vec<Disc> {
    let mut rtts: Vec<(u32, f64)> = links.best_rtts(addr).collect();
    rtts.sort_unstable_by_key(|r| r.0);
    rtts.into_iter()
        .filter_map(|(vid, rtt)| {
            let loc = vantages.get(vid as usize)?.loc?;
            Some(Disc::from_rtt(loc, rtt))
        })
        .collect()
}

/// Locates addresses for one report. Positions are shared by every record through the
/// same routers, so each (address, depth) is computed once.
#[derive(Debug)]
pub(super) struct Locator<'a> {
    links: &'a Links,
    vantages: &'a [VantageInfo],
    gazetteer: &'a Gazetteer,
    cache: HashMap<(IpAddr, u8), Located>,
}

impl<'a> Locator<'a> {
    pub(super) fn new(
        links: &'a Links,
        vantages: &'a [VantageInfo],
        gazetteer: &'a Gazetteer,
    ) -> Self {
        Locator {
            links,
            vantages,
            gazetteer,
            cache: HashMap::new(),
        }
    }

    /// Position of `addr`: a disc per vantage (its best RTT), and for each hop seen
    /// answering right before it (up to `depth` links back) a disc around that hop's own
    /// estimate grown by the RTT step between the two, plus a soft ring at the step's
    /// typical distance. When the hard constraints leave a wide region, the likeliest
    /// metro inside it is preferred (see [`Gazetteer::hub_prior`]); the returned
    /// estimate keeps the region's centroid and radius, the second value is the
    /// preferred point and its city.
    pub(super) fn locate(&mut self, addr: IpAddr, depth: u8) -> Located {
        if let Some(hit) = self.cache.get(&(addr, depth)) {
            return hit.clone();
        }
        let out = self.locate_uncached(addr, depth);
        self.cache.insert((addr, depth), out.clone());
        out
    }

    fn locate_uncached(&mut self, addr: IpAddr, depth: u8) -> Located {
        let mut discs = vantage_discs(self.links, self.vantages, addr);
        let mut rings = Vec::new();
        if depth > 0 {
            let mut preds: Vec<(IpAddr, f64)> = self.links.predecessors(addr).collect();
            // The shortest links say the most; a handful is plenty.
            preds.sort_by(|x, y| x.1.total_cmp(&y.1).then(x.0.cmp(&y.0)));
            for (p, step) in preds.into_iter().take(4) {
                let Some((pe, ploc, _)) = self.locate(p, depth - 1) else {
                    continue;
                };
                if !pe.consistent {
                    continue;
                }
                let step = step.max(0.0);
                discs.push(Disc {
                    center: pe.loc,
                    radius_km: pe.radius_km + rtt_radius_km(step),
                });
                // A ring says which way to look only when the predecessor's own
                // position is known: one seen only from far vantages has a preferred
                // point that is a guess thousands of km wide, and its ring would pull
                // the choice toward wherever that guess fell.
                if pe.radius_km > RING_PRED_MAX_RADIUS_KM {
                    continue;
                }
                let expected = rtt_radius_km(step) * TYPICAL_SPEED_FRACTION;
                rings.push(Ring {
                    center: ploc,
                    expected_km: expected,
                    sigma_km: (0.3 * expected).max(75.0)
                        + great_circle_km(ploc, pe.loc).min(pe.radius_km),
                });
            }
        }
        let est = multilaterate(&discs)?;
        if let Some(city) = self.gazetteer.hub_prior(&est, &discs, &rings) {
            return Some((
                est,
                city.loc,
                Some((city.name.clone(), city.country.clone())),
            ));
        }
        let city = self
            .gazetteer
            .nearest(est.loc)
            .map(|(c, _)| (c.name.clone(), c.country.clone()));
        Some((est, est.loc, city))
    }
}
