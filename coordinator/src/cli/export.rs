//! `tracemesh export`: stored traces from a running coordinator (`QueryTraces`) into a
//! file in one of the field's formats, written as they stream in.

use std::fs::File;
use std::io::{BufWriter, Write};

use anyhow::{Context as _, bail};
use tonic::transport::Channel;
use tracemesh::formats::{self, atlas};
use tracemesh::store::AgentMeta;
use tracemesh_proto::v1;
use tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient;

use super::args::ExportArgs;
use super::client::status;

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
    let mut enc = formats::Encoder::new(&a.format, &mut out)?;
    let mut progress =
        tracemesh_proto::progress::Progress::new(format!("export {}", a.format), None);
    while let Some(t) = stream.message().await.map_err(|s| status("export", s))? {
        enc.write(&t)?;
        if !vantages.contains(&t.vantage) {
            vantages.insert(t.vantage.clone());
        }
        n += 1;
        progress.set(n, "traces");
    }
    progress.finish();
    enc.finish()?;
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
    let mut progress = tracemesh_proto::progress::Progress::new("export parquet", None);
    while let Some(t) = stream.message().await.map_err(|s| status("export", s))? {
        w.write(t)?;
        n += 1;
        progress.set(n, "traces");
    }
    progress.finish();
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
