//! `tracemesh mesh [--campaign C] [--src A] [--dst B] [--follow] [--json]`: the one-way
//! delays agents measured between each other (`QueryMesh`, then `SubscribeMesh`).

use serde_json::{Value, json};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use tracemesh_proto::time::{Precision, format_rfc3339};
use tracemesh_proto::v1;
use tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient;

use super::args::MeshArgs;
use super::client::status;

fn ms(ns: Option<i64>) -> Value {
    ns.map_or(Value::Null, |v| {
        json!((v as f64 / 1e6 * 1000.0).round() / 1000.0)
    })
}

/// One sample as `--json` prints it (docs/formats.md).
pub fn sample_json(m: &v1::MeshSample) -> Value {
    let loss = if m.sent == 0 {
        1.0
    } else {
        1.0 - f64::from(m.received.min(m.sent)) / f64::from(m.sent)
    };
    json!({
        "campaign_id": m.campaign_id,
        "round": m.round,
        "at": format_rfc3339(m.at_ns as f64 / 1e9, Precision::Millis),
        "src": m.src,
        "dst": m.dst,
        "src_addr": m.src_addr,
        "dst_addr": m.dst_addr,
        "owd_ms": ms(m.owd_min_ns),
        "owd_median_ms": ms(m.owd_median_ns),
        "loss": (loss * 1e4).round() / 1e4,
        "sent": m.sent,
        "received": m.received,
        "clock_error_ms": ms(Some(m.clock_error_ns)),
        // The two traceroutes of that round: src toward dst, and dst toward src (result
        // ids of `tracemesh traces --json`, from the vantage named beside each).
        "trace_ids": {
            "forward": {"vantage": m.src, "id": tracemesh_proto::result_id(&m.campaign_id, m.round, &m.dst_addr)},
            "reverse": {"vantage": m.dst, "id": tracemesh_proto::result_id(&m.campaign_id, m.round, &m.src_addr)},
        },
    })
}

fn sample_text(m: &v1::MeshSample) -> String {
    let f = |ns: Option<i64>| ns.map_or("-".to_string(), |v| format!("{:.3}", v as f64 / 1e6));
    format!(
        "{} r{:<4} {:>14} -> {:<14} owd {:>9} ms  median {:>9} ms  loss {}/{}  clock ±{:.3} ms",
        m.campaign_id,
        m.round,
        m.src,
        m.dst,
        f(m.owd_min_ns),
        f(m.owd_median_ns),
        m.sent.saturating_sub(m.received),
        m.sent,
        m.clock_error_ns as f64 / 1e6
    )
}

fn print(m: &v1::MeshSample, as_json: bool) {
    if as_json {
        println!("{}", sample_json(m));
    } else {
        println!("{}", sample_text(m));
    }
}

pub async fn run(c: &mut ConsumerServiceClient<Channel>, a: MeshArgs) -> anyhow::Result<()> {
    // Subscribe first when following, so nothing stored between the query and the
    // subscription is missed (a sample seen twice is printed once).
    let mut follow = if a.follow {
        Some(
            c.subscribe_mesh(v1::SubscribeMeshRequest {
                campaign_id: a.campaign.clone(),
            })
            .await
            .map_err(|s| status("mesh --follow", s))?
            .into_inner(),
        )
    } else {
        None
    };
    let mut stream = c
        .query_mesh(v1::QueryMeshRequest {
            campaign_id: a.campaign.clone(),
            src: a.src.clone(),
            dst: a.dst.clone(),
            since_ns: None,
            until_ns: None,
        })
        .await
        .map_err(|s| status("mesh", s))?
        .into_inner();
    let mut seen = std::collections::HashSet::new();
    while let Some(m) = stream.next().await {
        let m = m.map_err(|s| status("mesh", s))?;
        seen.insert((m.campaign_id.clone(), m.round, m.src.clone(), m.dst.clone()));
        print(&m, a.json);
    }
    if let Some(f) = follow.as_mut() {
        while let Some(m) = f.next().await {
            let m = m.map_err(|s| status("mesh --follow", s))?;
            let wanted = a.src.as_ref().is_none_or(|s| *s == m.src)
                && a.dst.as_ref().is_none_or(|d| *d == m.dst);
            if wanted && seen.insert((m.campaign_id.clone(), m.round, m.src.clone(), m.dst.clone()))
            {
                print(&m, a.json);
            }
        }
    }
    Ok(())
}
