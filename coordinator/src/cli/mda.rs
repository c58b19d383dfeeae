//! `tracemesh mda [--campaign C] [--vantage V] [--dst D] [--json]`: the multipath traces
//! of campaigns created with `--mda` (`QueryMda`).

use serde_json::{Value, json};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use tracemesh_proto::v1;
use tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient;

use super::args::MdaArgs;
use super::client::status;

/// `--confidence`: the two levels the stopping table has.
pub fn parse_confidence(s: &str) -> Result<u32, String> {
    match s {
        "95" => Ok(95),
        "99" => Ok(99),
        _ => Err(format!("{s:?}: expected 95 or 99")),
    }
}

/// One multipath trace as `--json` prints it: the fields of `tracemesh-agent trace --mda`
/// plus where it came from (docs/formats.md).
pub fn mda_json(r: &v1::MdaResult) -> Value {
    let proto = v1::ProbeProtocol::try_from(r.proto).unwrap_or(v1::ProbeProtocol::Unspecified);
    json!({
        "type": "mda",
        "campaign_id": r.campaign_id,
        "round": r.round,
        "vantage": r.vantage,
        "dst": r.dst,
        "src": r.src,
        "proto": proto.name(),
        "confidence": r.confidence,
        "stop_reason": r.stop_reason,
        "start": r.start,
        "probes_sent": r.probes_sent,
        "flows": r.flows,
        "meshed": r.meshed,
        "hops": r.hops.iter().map(|h| json!({
            "ttl": h.ttl,
            "interfaces": h.interfaces.iter().map(|i| json!({
                "addr": i.addr,
                "flows": i.flows,
                "rtt_ms": i.rtt_ms,
                "icmp_type": i.icmp_type,
                "icmp_code": i.icmp_code,
                "reply_ttl": i.reply_ttl,
            })).collect::<Vec<_>>(),
            "stars": h.stars,
            "probes": h.probes,
        })).collect::<Vec<_>>(),
        "links": r.links.iter().map(|l| json!({"ttl": l.ttl, "from": l.from, "to": l.to}))
            .collect::<Vec<_>>(),
    })
}

/// A header line, then one line per TTL with its interfaces side by side.
fn mda_text(r: &v1::MdaResult) -> String {
    let mut s = format!(
        "{} r{} {} -> {}: {} probes, {} flows, {}{}\n",
        r.campaign_id,
        r.round,
        r.vantage,
        r.dst,
        r.probes_sent,
        r.flows,
        r.stop_reason,
        if r.meshed { ", meshed" } else { "" }
    );
    for h in &r.hops {
        let ifaces: Vec<&str> = h.interfaces.iter().map(|i| i.addr.as_str()).collect();
        let shown = if ifaces.is_empty() {
            "*".to_string()
        } else {
            ifaces.join(" | ")
        };
        s.push_str(&format!("  {:>3}  {shown}\n", h.ttl));
    }
    s
}

pub async fn run(c: &mut ConsumerServiceClient<Channel>, a: MdaArgs) -> anyhow::Result<()> {
    let mut stream = c
        .query_mda(v1::QueryMdaRequest {
            campaign_id: a.campaign.clone(),
            vantage: a.vantage.clone(),
            dst: a.dst.clone(),
        })
        .await
        .map_err(|s| status("mda", s))?
        .into_inner();
    while let Some(r) = stream.next().await {
        let r = r.map_err(|s| status("mda", s))?;
        if a.json {
            println!("{}", mda_json(&r));
        } else {
            print!("{}", mda_text(&r));
        }
    }
    Ok(())
}
