//! `tracemesh aliases [--campaign C] [--json]`: alias sets merged by the coordinator over
//! every stored alias result (`QueryAliases`).

use serde_json::{Value, json};
use tonic::transport::Channel;
use tracemesh_proto::time::{Precision, format_rfc3339};
use tracemesh_proto::v1;
use tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient;

use super::args::AliasesArgs;
use super::client::status;
use super::json::print_json;

/// One alias set as `--json` prints it.
pub fn set_json(s: &v1::AliasSet) -> Value {
    json!({
        "addrs": s.addrs,
        "evidence": s.evidence.iter().map(|e| json!({
            "method": e.method,
            "vantage": e.vantage,
            "samples": e.samples,
            "velocity": e.velocity,
            "campaign_id": e.campaign_id,
            "round": e.round,
        })).collect::<Vec<_>>(),
        "first_seen": s.first_seen,
        "last_seen": s.last_seen,
    })
}

/// The text form: one line per set, then its evidence.
pub fn set_text(s: &v1::AliasSet) -> String {
    let mut out = format!(
        "{}  (seen {} .. {})",
        s.addrs.join(" "),
        format_rfc3339(s.first_seen, Precision::Seconds),
        format_rfc3339(s.last_seen, Precision::Seconds)
    );
    for e in &s.evidence {
        out.push_str(&format!(
            "\n    {:<8} from {:<12} campaign {} round {}: {} {}",
            e.method,
            e.vantage,
            e.campaign_id,
            e.round,
            e.samples,
            if e.method == "ipid" {
                "samples"
            } else {
                "answers"
            }
        ));
        if let Some(v) = e.velocity {
            out.push_str(&format!(", {v:.1} ids/s"));
        }
    }
    out
}

pub async fn run(c: &mut ConsumerServiceClient<Channel>, a: AliasesArgs) -> anyhow::Result<()> {
    let resp = c
        .query_aliases(v1::QueryAliasesRequest {
            campaign_id: a.campaign,
            include_results: false,
        })
        .await
        .map_err(|s| status("aliases", s))?
        .into_inner();
    if a.json {
        print_json(&json!({
            "aliases": resp.aliases.iter().map(set_json).collect::<Vec<_>>()
        }))?;
    } else if resp.aliases.is_empty() {
        println!("no aliases known");
    } else {
        for s in &resp.aliases {
            println!("{}", set_text(s));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_text_carry_addresses_and_evidence() {
        let s = v1::AliasSet {
            addrs: vec!["10.0.0.2".into(), "10.9.0.2".into()],
            evidence: vec![v1::AliasSetEvidence {
                method: "ipid".into(),
                vantage: "tor".into(),
                samples: 16,
                velocity: Some(50.0),
                campaign_id: "c1".into(),
                round: 0,
            }],
            first_seen: 1_800_000_000.0,
            last_seen: 1_800_000_060.0,
        };
        let v = set_json(&s);
        assert_eq!(v["addrs"][1], "10.9.0.2");
        assert_eq!(v["evidence"][0]["method"], "ipid");
        assert_eq!(v["evidence"][0]["samples"], 16);
        assert_eq!(v["evidence"][0]["velocity"], 50.0);
        assert_eq!(v["first_seen"], 1_800_000_000.0);
        let t = set_text(&s);
        assert!(t.starts_with("10.0.0.2 10.9.0.2"), "{t}");
        assert!(t.contains("50.0 ids/s"), "{t}");
    }
}
