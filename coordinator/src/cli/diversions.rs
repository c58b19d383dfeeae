//! `tracemesh diversions`: stored traces and vantage metadata from the coordinator, fed to
//! the detector (`tracemesh::detect`), reported as scenarios/FORMAT.md prescribes.

use std::net::IpAddr;

use anyhow::{Context as _, anyhow, bail};
use tonic::transport::Channel;
use tracemesh::annotate::Annotator;
use tracemesh::detect::{self, Adversary, Trace, TraceHop, VantageInfo};
use tracemesh::geo::{Gazetteer, GeoPoint};
use tracemesh_proto::v1;
use tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient;

use super::{DiversionsArgs, status};

pub fn annotator(a: &DiversionsArgs) -> anyhow::Result<Annotator> {
    if a.adversary.is_empty() && a.adversary_countries.is_empty() {
        bail!("name the adversary: --adversary ASN and/or --adversary-country CC");
    }
    let mut annot = Annotator::new();
    for p in &a.pfx2as {
        annot
            .load_prefix_file(p)
            .with_context(|| format!("loading prefix table {}", p.display()))?;
    }
    if let Some(p) = &a.asnames {
        annot
            .load_asnames(p)
            .with_context(|| format!("loading AS names {}", p.display()))?;
    }
    Ok(annot)
}

/// A stored trace as the detector takes it; `None` for records it cannot use (a
/// destination that is not an address, a TTL beyond 255).
pub fn to_detector_trace(t: &v1::TraceRecord) -> Option<Trace> {
    let hops = t
        .hops
        .iter()
        .map(|h| {
            Some(TraceHop {
                ttl: u8::try_from(h.ttl).ok()?,
                addr: h.addr.as_deref().and_then(|a| a.parse::<IpAddr>().ok()),
                rtt_ms: h.rtt_ms,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Trace {
        round: u64::from(t.round),
        vantage: t.vantage.clone(),
        dst: t.dst.parse().ok()?,
        start: t.start,
        hops,
    })
}

pub fn to_vantage_meta(m: &tracemesh::store::AgentMeta) -> VantageInfo {
    VantageInfo {
        name: m.name.clone(),
        loc: m.loc.map(|(lat, lon)| GeoPoint::new(lat, lon)),
        country: (!m.country.is_empty()).then(|| m.country.clone()),
        asn: m.asn,
    }
}

pub fn to_vantage(a: &v1::AgentInfo) -> Option<VantageInfo> {
    let m = a.metadata.as_ref()?;
    Some(VantageInfo {
        name: m.name.clone(),
        loc: m.lat.zip(m.lon).map(|(lat, lon)| GeoPoint::new(lat, lon)),
        country: (!m.country.is_empty()).then(|| m.country.clone()),
        asn: m.asn,
    })
}

pub async fn run(
    c: &mut ConsumerServiceClient<Channel>,
    a: DiversionsArgs,
    annot: &Annotator,
) -> anyhow::Result<()> {
    let vantages: Vec<VantageInfo> = c
        .list_agents(v1::ListAgentsRequest {})
        .await
        .map_err(|s| status("diversions", s))?
        .into_inner()
        .agents
        .iter()
        .filter_map(to_vantage)
        .collect();
    let mut stream = c
        .query_traces(v1::QueryTracesRequest {
            campaign_id: a.campaign.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| status("diversions", s))?
        .into_inner();
    let mut traces = Vec::new();
    let mut skipped = 0usize;
    while let Some(t) = stream
        .message()
        .await
        .map_err(|s| status("diversions", s))?
    {
        match to_detector_trace(&t) {
            Some(t) => traces.push(t),
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(skipped, "traces the detector cannot use were skipped");
    }
    let adversary = Adversary::from_asns(a.adversary.iter().copied()).with_countries(
        a.adversary_countries
            .iter()
            .map(|c| c.to_ascii_uppercase())
            .collect::<Vec<_>>(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| anyhow!("system clock before 1970: {e}"))?
        .as_secs_f64();
    let report = detect::detect(
        &traces,
        &vantages,
        &adversary,
        annot,
        &Gazetteer::builtin(),
        now,
    );
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for d in &report.diversions {
            println!(
                "{} -> {}: AS{} from round {} to {} ({} rounds)",
                d.vantage, d.target, d.adversary_asn, d.first_round, d.last_round, d.rounds
            );
        }
        if report.diversions.is_empty() {
            println!("no diversions in {} traces", traces.len());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_convert_for_the_detector() {
        let t = v1::TraceRecord {
            round: 4,
            vantage: "ottawa".into(),
            dst: "211.192.1.10".into(),
            start: 12.5,
            hops: vec![
                v1::Hop {
                    ttl: 1,
                    addr: Some("24.114.255.1".into()),
                    rtt_ms: Some(0.4),
                    ..Default::default()
                },
                v1::Hop {
                    ttl: 2,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let d = to_detector_trace(&t).unwrap();
        assert_eq!((d.round, d.vantage.as_str(), d.start), (4, "ottawa", 12.5));
        assert_eq!(d.hops[0].addr, Some("24.114.255.1".parse().unwrap()));
        assert_eq!(d.hops[1].addr, None);
        let mut bad = t.clone();
        bad.dst = "not-an-ip".into();
        assert!(to_detector_trace(&bad).is_none());
        let mut bad = t;
        bad.hops[0].ttl = 300;
        assert!(to_detector_trace(&bad).is_none());
    }

    #[test]
    fn vantages_carry_location_country_and_asn() {
        let a = v1::AgentInfo {
            metadata: Some(v1::AgentMetadata {
                name: "ottawa".into(),
                country: "CA".into(),
                lat: Some(45.4),
                lon: Some(-75.7),
                asn: Some(812),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = to_vantage(&a).unwrap();
        assert_eq!(v.loc, Some(GeoPoint::new(45.4, -75.7)));
        assert_eq!(v.country.as_deref(), Some("CA"));
        assert_eq!(v.asn, Some(812));
    }
}
