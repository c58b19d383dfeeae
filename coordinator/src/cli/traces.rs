//! `tracemesh traces`: stored traces, as JSON lines or one line of path each.

use std::io::Write as _;

use anyhow::{anyhow, bail};
use tonic::transport::Channel;
use tracemesh_proto::v1;
use tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient;

use super::annot;
use super::args::TracesArgs;
use super::client::status;
use super::json;

pub async fn list(c: &mut ConsumerServiceClient<Channel>, a: TracesArgs) -> anyhow::Result<()> {
    if a.campaign.is_none() && a.vantage.is_none() && a.target.is_none() && a.since.is_none() {
        bail!("say which traces: --campaign, --vantage, --target or --since");
    }
    if let Some(t) = &a.target {
        t.parse::<std::net::IpAddr>()
            .map_err(|_| anyhow!("invalid --target {t:?}: expected an IP address"))?;
    }
    let annot = if a.annotation.is_empty() {
        None
    } else {
        Some(a.annotation.load()?.annot)
    };
    let mut stream = c
        .query_traces(v1::QueryTracesRequest {
            campaign_id: a.campaign,
            vantage: a.vantage,
            dst: a.target,
            since_ns: a.since,
            until_ns: a.until,
            limit: a.limit,
        })
        .await
        .map_err(|s| status("traces", s))?
        .into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(t) = stream.message().await.map_err(|s| status("traces", s))? {
        if a.json {
            let mut v = json::trace(&t);
            if let (Some(annot), Some(hops)) = (&annot, v["hops"].as_array_mut()) {
                for h in hops {
                    annot::annotate_hop(annot, h);
                }
            }
            serde_json::to_writer(&mut out, &v)?;
            writeln!(out)?;
        } else {
            let path: Vec<String> = t
                .hops
                .iter()
                .map(|h| {
                    let addr = h.addr.clone().unwrap_or_else(|| "*".into());
                    let asn = annot
                        .as_ref()
                        .and_then(|an| an.asn(h.addr.as_deref()?.parse().ok()?));
                    match asn {
                        Some(n) => format!("{addr}[AS{n}]"),
                        None => addr,
                    }
                })
                .collect();
            writeln!(
                out,
                "{} r{} {} -> {}: {}",
                t.campaign_id,
                t.round,
                t.vantage,
                t.dst,
                path.join(" ")
            )?;
        }
    }
    Ok(())
}
