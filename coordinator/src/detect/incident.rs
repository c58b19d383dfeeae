//! Grouping records into incidents: one adversary PoP taking traffic from several
//! vantages toward several destinations is one event.

use super::{DiversionRecord, Incident};

/// Groups records that share adversary and ingress and overlap in time, numbering each
/// record's incident, and sorts the records by first sighting, vantage, target.
pub(super) fn group_incidents(records: &mut [DiversionRecord]) -> Vec<Incident> {
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by(|a, b| {
        let (x, y) = (&records[*a], &records[*b]);
        (x.adversary_asn, x.ingress.addr)
            .cmp(&(y.adversary_asn, y.ingress.addr))
            .then(x.first_seen.total_cmp(&y.first_seen))
            .then_with(|| x.vantage.cmp(&y.vantage))
            .then(x.target.cmp(&y.target))
    });
    let mut incidents: Vec<Incident> = Vec::new();
    for i in order {
        let r = &records[i];
        let joins = incidents.last().is_some_and(|inc| {
            inc.adversary_asn == r.adversary_asn
                && inc.ingress == r.ingress.addr
                && r.first_seen <= inc.last_seen
        });
        if !joins {
            incidents.push(Incident {
                id: incidents.len() + 1,
                adversary_asn: r.adversary_asn,
                ingress: r.ingress.addr,
                ingress_loc: r.ingress.loc,
                ingress_city: r.ingress.city.clone(),
                handoffs: Vec::new(),
                vantages: Vec::new(),
                targets: Vec::new(),
                first_seen: r.first_seen,
                last_seen: r.last_seen,
                records: 0,
                corroborated: false,
            });
        }
        if let Some(inc) = incidents.last_mut() {
            inc.last_seen = inc.last_seen.max(r.last_seen);
            inc.first_seen = inc.first_seen.min(r.first_seen);
            if let Some(h) = r.handoff.addr
                && !inc.handoffs.contains(&h)
            {
                inc.handoffs.push(h);
            }
            if !inc.vantages.contains(&r.vantage) {
                inc.vantages.push(r.vantage.clone());
                inc.corroborated = inc.vantages.len() > 1;
            }
            if !inc.targets.contains(&r.target) {
                inc.targets.push(r.target);
            }
            inc.records += 1;
            // The incident's position is that of its first record that has one.
            if r.ingress.loc.is_some() && inc.ingress_loc.is_none() {
                inc.ingress_loc = r.ingress.loc;
                inc.ingress_city = r.ingress.city.clone();
            }
            records[i].incident = inc.id;
        }
    }
    records.sort_by(|a, b| {
        a.first_seen
            .total_cmp(&b.first_seen)
            .then(a.vantage.cmp(&b.vantage))
            .then(a.target.cmp(&b.target))
    });
    incidents
}
