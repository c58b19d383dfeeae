//! `tracemesh agents`: enrolled agents and whether they are connected.

use tonic::transport::Channel;
use tracemesh_proto::v1;
use tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient;

use super::client::status;
use super::json::{self, print_json};

pub async fn list(c: &mut ConsumerServiceClient<Channel>, as_json: bool) -> anyhow::Result<()> {
    let list = c
        .list_agents(v1::ListAgentsRequest {})
        .await
        .map_err(|s| status("agents", s))?
        .into_inner()
        .agents;
    if as_json {
        return print_json(&serde_json::json!({
            "agents": list.iter().map(json::agent).collect::<Vec<_>>()
        }));
    }
    println!(
        "{:<20} {:<3} {:>8} {:<10} {:>12}",
        "NAME", "CC", "ASN", "CONNECTED", "OFFSET_MS"
    );
    for a in &list {
        let m = a.metadata.clone().unwrap_or_default();
        println!(
            "{:<20} {:<3} {:>8} {:<10} {:>12}",
            m.name,
            m.country,
            m.asn.map(|n| n.to_string()).unwrap_or_default(),
            if a.connected { "yes" } else { "no" },
            a.clock_offset_ns
                .map(|n| format!("{:.3}", n as f64 / 1e6))
                .unwrap_or_default()
        );
    }
    Ok(())
}
