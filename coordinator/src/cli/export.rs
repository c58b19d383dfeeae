//! `tracemesh export`: stored traces from a running coordinator (`QueryTraces`) into a
//! file in one of the field's formats, written as they stream in.

use std::fs::File;
use std::io::{BufWriter, Write};

use anyhow::{Context as _, bail};
use tonic::transport::Channel;
use tracemesh::formats::{self, atlas, scamper_json, warts};
use tracemesh::store::AgentMeta;
use tracemesh_proto::v1;
use tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient;

use super::args::ExportArgs;
use super::client::status;

/// Atlas numbers measurements: `atlas-N` (an imported one) keeps N, a campaign `cN`
/// becomes N, any other name a stable hash of it.
fn msm_id(campaign: &str) -> u64 {
    let digits = campaign
        .strip_prefix("atlas-")
        .or_else(|| campaign.strip_prefix('c'))
        .and_then(|d| d.parse::<u64>().ok());
    digits.unwrap_or_else(|| u64::from(formats::probe_id_for(campaign)))
}

fn prb_id(vantage: &str) -> u32 {
    vantage
        .strip_prefix("atlas:")
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| formats::probe_id_for(vantage))
}

pub async fn run(c: &mut ConsumerServiceClient<Channel>, a: ExportArgs) -> anyhow::Result<()> {
    if a.format == "parquet" {
        return run_parquet(c, a).await;
    }
    let out: Box<dyn Write> = if a.out.as_os_str() == "-" {
        if a.format == "warts" {
            bail!("warts is binary: give --out a file");
        }
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            File::create(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?,
        )
    };
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let mut stream = query(c, &a).await?;
    let mut n = 0u64;
    let mut vantages = std::collections::BTreeSet::new();
    match a.format.as_str() {
        "warts" => {
            let mut w = warts::Writer::new(&mut out)?;
            while let Some(t) = stream.message().await.map_err(|s| status("export", s))? {
                w.write(&t)?;
                vantages.insert(t.vantage.clone());
                n += 1;
            }
            w.finish()?;
        }
        fmt => {
            let mut cycle: Option<String> = None;
            while let Some(t) = stream.message().await.map_err(|s| status("export", s))? {
                let v = if fmt == "atlas" {
                    atlas::to_value(&t, msm_id(&t.campaign_id), prb_id(&t.vantage))
                } else {
                    if cycle.as_deref() != Some(&t.vantage) {
                        let cs = scamper_json::cycle_start(&t.vantage, t.start.max(0.0) as u64);
                        serde_json::to_writer(&mut out, &cs)?;
                        out.write_all(b"\n")?;
                        cycle = Some(t.vantage.clone());
                    }
                    scamper_json::to_value(&t)
                };
                serde_json::to_writer(&mut out, &v)?;
                out.write_all(b"\n")?;
                vantages.insert(t.vantage.clone());
                n += 1;
            }
        }
    }
    out.flush()?;
    drop(out);
    if a.format == "atlas" && a.out.as_os_str() != "-" {
        // Atlas results name probes by number: the side file says which vantage each
        // number is, with its country, AS and position (`import --atlas-probes` reads it).
        let agents = c
            .list_agents(v1::ListAgentsRequest {})
            .await
            .map_err(|s| status("export", s))?
            .into_inner()
            .agents;
        let objects: Vec<_> = agents
            .iter()
            .filter_map(|ag| ag.metadata.as_ref())
            .map(AgentMeta::from_proto)
            .filter(|m| vantages.contains(&m.name) && !m.name.starts_with("atlas:"))
            .map(|m| atlas::probe_value(&m))
            .collect();
        let path = probes_path(&a.out);
        std::fs::write(
            &path,
            serde_json::to_vec(&serde_json::json!({"objects": objects}))?,
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
    }
    tracing::info!(traces = n, format = %a.format, out = %a.out.display(), "exported");
    eprintln!("exported {n} traces");
    Ok(())
}

async fn query(
    c: &mut ConsumerServiceClient<Channel>,
    a: &ExportArgs,
) -> anyhow::Result<tonic::Streaming<v1::TraceRecord>> {
    Ok(c.query_traces(v1::QueryTracesRequest {
        campaign_id: a.campaign.clone(),
        vantage: a.vantage.clone(),
        dst: None,
        since_ns: a.since,
        until_ns: a.until,
        limit: 0,
    })
    .await
    .map_err(|s| status("export", s))?
    .into_inner())
}

async fn run_parquet(c: &mut ConsumerServiceClient<Channel>, a: ExportArgs) -> anyhow::Result<()> {
    if a.out.as_os_str() == "-" {
        bail!("parquet is written as a directory of files: give --out a directory");
    }
    // Tables first: a typo in a path should not wait on the network.
    let annot = if a.annotation.is_empty() {
        None
    } else {
        Some(a.annotation.load()?.annot)
    };
    let asn = |s: &str| -> Option<u32> { annot.as_ref()?.annotate(s.parse().ok()?).asn };
    let mut stream = query(c, &a).await?;
    let mut w = formats::parquet::Writer::new(&a.out, &asn)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    let mut n = 0u64;
    while let Some(t) = stream.message().await.map_err(|s| status("export", s))? {
        w.write(t)?;
        n += 1;
    }
    let files = w.finish()?;
    eprintln!("exported {n} traces into {} parquet files", files.len());
    Ok(())
}

/// `OUT.probes.json` beside an Atlas export.
pub fn probes_path(out: &std::path::Path) -> std::path::PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".probes.json");
    s.into()
}
