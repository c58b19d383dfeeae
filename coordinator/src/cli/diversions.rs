//! `tracemesh diversions`: stored traces and vantage metadata from the coordinator, fed to
//! the detector (`tracemesh::detect`), reported as scenarios/FORMAT.md prescribes.

use anyhow::{anyhow, bail};
use serde_json::Value;
use tonic::transport::Channel;
use tracemesh::detect::{self, Adversary, Detector, MdaTrace, Tables, Trace, VantageInfo};
use tracemesh::geo::GeoPoint;
use tracemesh_proto::v1;
use tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient;

use super::args::DiversionsArgs;
use super::client::status;

pub fn annotation(a: &DiversionsArgs) -> anyhow::Result<Tables> {
    if a.adversary.is_empty() && a.adversary_countries.is_empty() {
        bail!("name the adversary: --adversary ASN and/or --adversary-country CC");
    }
    if !a.annotation.has_origins() {
        bail!("give a --pfx2as table or --mrt dump: without one no hop has an AS");
    }
    a.annotation.load()
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

/// The detector fed with every stored trace (of `a.campaign`), the vantages and what
/// alias resolution knows; and the number of traces it read. `report` uses it too.
pub async fn detector(
    c: &mut ConsumerServiceClient<Channel>,
    a: &DiversionsArgs,
    annot: &tracemesh::annotate::Annotator,
) -> anyhow::Result<(Detector, usize)> {
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
    let adversary =
        Adversary::from_asns(a.adversary.iter().copied()).with_countries(&a.adversary_countries);
    // Traces go to the detector as they stream in: a long history never has to fit in
    // memory as records.
    let mut det = Detector::new(adversary);
    for v in &vantages {
        det.set_vantage(v.clone());
    }
    // Alias resolution's groups decide whose router a border address is.
    // A coordinator older than alias resolution has none to give.
    let req = v1::QueryAliasesRequest {
        include_results: true,
        ..Default::default()
    };
    let (aliases, results) = match c.query_aliases(req).await {
        Ok(r) => {
            let r = r.into_inner();
            (r.aliases, r.results)
        }
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            tracing::warn!(
                "the coordinator predates alias resolution; borders judged without aliases"
            );
            (Vec::new(), Vec::new())
        }
        Err(s) => return Err(status("diversions", s)),
    };
    det.set_aliases(
        aliases
            .iter()
            .map(|set| set.addrs.iter().filter_map(|a| a.parse().ok()).collect()),
    );
    det.set_router_sources(tracemesh::alias::router_sources(&results));
    // Echoes to routers answer on their fast path: tighter position bounds.
    for (v, a, ms) in tracemesh::alias::echo_rtts(&results) {
        det.observe_echo(&v, a, ms);
    }
    // Multipath traces (campaigns with --mda): every branch of a pair's load balancers
    // is normal. A coordinator older than them has none to give.
    match c
        .query_mda(v1::QueryMdaRequest {
            campaign_id: a.campaign.clone(),
            ..Default::default()
        })
        .await
    {
        Ok(r) => {
            let mut s = r.into_inner();
            while let Some(r) = s.message().await.map_err(|s| status("diversions", s))? {
                if let Some(m) = MdaTrace::from_record(&r) {
                    det.ingest_mda(&m, annot);
                }
            }
        }
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            tracing::warn!("the coordinator predates multipath campaigns");
        }
        Err(s) => return Err(status("diversions", s)),
    }
    let (mut n, mut skipped) = (0usize, 0usize);
    let mut progress = tracemesh_proto::progress::Progress::new("traces", None);
    while let Some(t) = stream
        .message()
        .await
        .map_err(|s| status("diversions", s))?
    {
        match Trace::from_record(&t) {
            Some(t) => {
                det.ingest(&t, annot);
                n += 1;
            }
            None => skipped += 1,
        }
        progress.set((n + skipped) as u64, "read into the detector");
    }
    if let Some(dir) = &a.archive {
        // Retention moved the older traces there; the order does not matter to the
        // detector, and a trace in both (a sweep cut short) is the same round twice.
        tracemesh::archive::read(dir, &mut |t| {
            if a.campaign.as_ref().is_some_and(|c| *c != t.campaign_id) {
                return;
            }
            match Trace::from_record(&t) {
                Some(t) => {
                    det.ingest(&t, annot);
                    n += 1;
                }
                None => skipped += 1,
            }
            progress.set((n + skipped) as u64, "read into the detector (archive)");
        })
        .map_err(|e| anyhow!("{e}"))?;
    }
    progress.finish();
    if skipped > 0 {
        tracing::warn!(skipped, "traces the detector cannot use were skipped");
    }
    Ok((det, n))
}

pub async fn run(
    c: &mut ConsumerServiceClient<Channel>,
    a: DiversionsArgs,
    loaded: &Tables,
) -> anyhow::Result<()> {
    let annot = &loaded.annot;
    let (det, n) = detector(c, &a, annot).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| anyhow!("system clock before 1970: {e}"))?
        .as_secs_f64();
    let report = det.report(annot, &loaded.gazetteer, now);
    // Pairs of agents that measure each other: which direction, and its one-way delays.
    let mesh = mesh_points(c, a.campaign.clone()).await?;
    let mut doc = serde_json::to_value(&report)?;
    tracemesh::mesh::annotate_json(&mut doc, &mesh);
    let kept = stored_records(c, &a, &doc).await?;
    if let Some(list) = doc.get_mut("diversions").and_then(Value::as_array_mut) {
        list.extend(kept.iter().cloned());
    }
    doc["stored_records"] = kept.len().into();
    if a.json {
        println!("{}", serde_json::to_string(&doc)?);
    } else {
        if report.diversions.is_empty() && !kept.is_empty() {
            println!("no diversions detected in {n} traces");
        } else {
            print!("{}", detect::render_text(&report, annot, n));
        }
        if !kept.is_empty() {
            println!(
                "\nClosed episodes the coordinator kept (their traces since retired by retention):"
            );
            for r in &kept {
                println!("    {}", tracemesh::stored_records::text_line(r));
            }
        }
        let lines = tracemesh::mesh::text_lines(&doc);
        if !lines.is_empty() {
            println!("\nAgents measuring each other (one-way delays, QUIC):");
            for l in lines {
                println!("{l}");
            }
        }
    }
    Ok(())
}

/// The diversion records the coordinator stored as live detection published them that
/// no record detected now overlaps (`stored_records::to_add`): episodes whose traces
/// retention removed. None with `--campaign` (stored records name no campaign), and
/// none from a coordinator that predates them.
async fn stored_records(
    c: &mut ConsumerServiceClient<Channel>,
    a: &DiversionsArgs,
    doc: &Value,
) -> anyhow::Result<Vec<Value>> {
    if a.campaign.is_some() {
        return Ok(Vec::new());
    }
    let mut s = match c
        .query_diversion_records(v1::QueryDiversionRecordsRequest::default())
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(Vec::new()),
        Err(s) => return Err(status("diversions", s)),
    };
    let mut stored = Vec::new();
    while let Some(r) = s.message().await.map_err(|s| status("diversions", s))? {
        stored.push(r.json);
    }
    let detected = doc
        .get("diversions")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let (kept, bad) =
        tracemesh::stored_records::to_add(detected, stored.iter().map(String::as_str));
    if bad > 0 {
        tracing::warn!(bad, "stored diversion records unreadable; skipped");
    }
    Ok(kept)
}

/// Every mesh sample (of the campaign, if one is given); none from a coordinator that
/// predates the mesh.
async fn mesh_points(
    c: &mut ConsumerServiceClient<Channel>,
    campaign_id: Option<String>,
) -> anyhow::Result<Vec<tracemesh::mesh::MeshPoint>> {
    let mut stream = match c
        .query_mesh(v1::QueryMeshRequest {
            campaign_id,
            ..Default::default()
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(Vec::new()),
        Err(s) => return Err(status("diversions", s)),
    };
    let mut out = Vec::new();
    while let Some(m) = stream
        .message()
        .await
        .map_err(|s| status("diversions", s))?
    {
        out.push(tracemesh::mesh::MeshPoint::from_proto(&m));
    }
    Ok(out)
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
        let d = Trace::from_record(&t).unwrap();
        assert_eq!((d.round, d.vantage.as_str(), d.start), (4, "ottawa", 12.5));
        assert_eq!(d.hops[0].addr, Some("24.114.255.1".parse().unwrap()));
        assert_eq!(d.hops[1].addr, None);
        let mut bad = t.clone();
        bad.dst = "not-an-ip".into();
        assert!(Trace::from_record(&bad).is_none());
        let mut bad = t;
        bad.hops[0].ttl = 300;
        assert!(Trace::from_record(&bad).is_none());
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
