//! The map view of a [`DiversionReport`]: what the HTML report (`crate::report`) and the
//! live view draw. The report's records as they are, plus what a map needs and the
//! records do not carry: every vantage with its position, a position for each hop of the
//! evidence paths and each hand-off (RTT constraints only, as the ingress is located),
//! and AS labels. Pure: built from the detector's state, the report and `now`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use super::locate::Locator;
use super::{Adversary, Detector, DiversionRecord, DiversionReport, Incident, VantageInfo};
use crate::annotate::Annotator;
use crate::geo::{Gazetteer, GeoPoint};

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

/// Link depth used to locate a hop; the same as for the ingress.
const DEPTH: u8 = 2;

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
        let mut locator = Locator::new(&self.links, &self.vantages, gazetteer);
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
                if let Some((est, loc, city)) = locator.locate(a, DEPTH) {
                    located.insert(
                        a,
                        LocatedHop {
                            loc,
                            radius_km: (est.radius_km * 10.0).round() / 10.0,
                            city: city.map(|(name, cc)| format!("{name}, {cc}")),
                        },
                    );
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
}
