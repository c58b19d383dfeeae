//! The map view of a [`DiversionReport`]: what the HTML report (`crate::report`) and the
//! live view draw. The report's records as they are, plus what a map needs and the
//! records do not carry: every vantage with its position, a position for each hop of the
//! evidence paths and each hand-off (from RTT constraints only, like the ingress's, but
//! cheaper: see [`Detector::map_view`]), and AS labels. Pure: built from the detector's
//! state, the report and `now`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use super::{Adversary, Detector, DiversionRecord, DiversionReport, Incident, VantageInfo};
use crate::annotate::Annotator;
use crate::geo::{Gazetteer, GeoPoint, multilaterate};

/// Where a hop probably is: the preferred point, the feasible region's radius (km,
/// around its centroid), its city.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocatedHop {
    pub loc: GeoPoint,
    pub radius_km: f64,
    pub city: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MapView<'a> {
    /// Unix seconds the report is as of.
    pub generated: f64,
    /// Traces the detector read.
    pub traces: usize,
    pub adversary: &'a Adversary,
    pub vantages: &'a [VantageInfo],
    /// "AS4134 CHINANET (CN)" for every AS on an evidence path.
    pub as_labels: BTreeMap<u32, String>,
    /// Positions of the evidence paths' hops and the hand-offs that could be located.
    pub located: BTreeMap<IpAddr, LocatedHop>,
    pub incidents: &'a [Incident],
    pub diversions: &'a [DiversionRecord],
}

/// Discs per hop: the tightest few decide the region; the looser discs of more vantages
/// rarely cut it further but multiply the work (a 50-vantage mesh: 260 hops took 2 s of
/// CPU with every disc and the ingress's link recursion, against a 50 ms report).
const MAX_DISCS: usize = 8;

impl Detector {
    /// The map view of `report` (made by this detector's [`Detector::report`]).
    pub fn map_view<'a>(
        &'a self,
        report: &'a DiversionReport,
        annot: &Annotator,
        gazetteer: &Gazetteer,
        traces: usize,
        now: f64,
    ) -> MapView<'a> {
        let mut located = BTreeMap::new();
        let mut as_labels = BTreeMap::new();
        for r in &report.diversions {
            let ev = &r.evidence;
            let hops = ev.normal_path.iter().chain(&ev.diverted_path);
            for h in hops.clone() {
                if let Some(asn) = h.asn {
                    as_labels
                        .entry(asn)
                        .or_insert_with(|| super::view::as_label(annot, asn));
                }
            }
            as_labels
                .entry(r.adversary_asn)
                .or_insert_with(|| super::view::as_label(annot, r.adversary_asn));
            let addrs = hops.filter_map(|h| h.addr).chain(r.handoff.addr);
            for a in addrs {
                if located.contains_key(&a) {
                    continue;
                }
                if let Some(hop) = self.locate_hop(a, gazetteer) {
                    located.insert(a, hop);
                }
            }
        }
        MapView {
            generated: now,
            traces,
            adversary: &self.adversary,
            vantages: &self.vantages,
            as_labels,
            located,
            incidents: &report.incidents,
            diversions: &report.diversions,
        }
    }

    /// Where a hop probably is: the region its tightest vantage discs leave, at the
    /// likeliest metro inside it when it is wide (the ingress's hub prior), else its
    /// centroid. Vantage discs only: the ingress's position (the report's, with the
    /// links before it) is the one that matters and is drawn from the record.
    fn locate_hop(&self, addr: IpAddr, gazetteer: &Gazetteer) -> Option<LocatedHop> {
        let mut discs = super::locate::vantage_discs(&self.links, &self.vantages, addr);
        discs.sort_by(|a, b| a.radius_km.total_cmp(&b.radius_km));
        discs.truncate(MAX_DISCS);
        let est = multilaterate(&discs)?;
        let (loc, city) = match gazetteer.hub_prior(&est, &discs, &[]) {
            Some(c) => (c.loc, Some(format!("{}, {}", c.name, c.country))),
            None => (
                est.loc,
                gazetteer
                    .nearest(est.loc)
                    .map(|(c, _)| format!("{}, {}", c.name, c.country)),
            ),
        };
        Some(LocatedHop {
            loc,
            radius_km: (est.radius_km * 10.0).round() / 10.0,
            city,
        })
    }
}
