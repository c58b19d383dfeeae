//! `tracemesh campaign create|list|show|cancel`.

use anyhow::{anyhow, bail};
use tonic::transport::Channel;
use tracemesh_proto::v1;
use tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient;

use super::args::CampaignCmd;
use super::client::status;
use super::json::{self, print_json};
use super::parse;

pub async fn run(c: &mut ConsumerServiceClient<Channel>, cmd: CampaignCmd) -> anyhow::Result<()> {
    match cmd {
        CampaignCmd::Create(a) => {
            let targets = parse::expand_at_files(&a.targets).map_err(|e| anyhow!(e))?;
            if targets.is_empty() && !a.mesh {
                bail!("no targets given");
            }
            let agents = parse::expand_at_files(&a.agents).map_err(|e| anyhow!(e))?;
            let proto = v1::ProbeProtocol::from_name(&a.proto)
                .ok_or_else(|| anyhow!("unknown probe method {:?}", a.proto))?;
            if a.rounds > 1 && a.every.is_none() {
                bail!(
                    "--rounds {} needs --every (the interval between rounds)",
                    a.rounds
                );
            }
            let alias = a
                .alias
                .as_deref()
                .map(|m| {
                    v1::AliasMethod::from_name(m)
                        .map(|method| v1::AliasSpec {
                            method: method as i32,
                            rounds: a.alias_rounds,
                        })
                        .ok_or_else(|| anyhow!("unknown alias method {m:?}"))
                })
                .transpose()?;
            let spec = v1::CampaignSpec {
                targets,
                agents,
                method: Some(v1::ProbeMethod {
                    proto: proto as i32,
                    attempts: a.attempts,
                    max_ttl: a.max_ttl,
                    wait_ms: a.wait_ms,
                    flow_id: 0,
                }),
                every_s: a.every.unwrap_or(0),
                rounds: a.rounds,
                start_at_ns: a.start_at.unwrap_or(0),
                alias,
                mesh: a.mesh.then(|| v1::MeshSpec {
                    peers: a.mesh_peers.clone(),
                    train: a.mesh_train,
                    spacing_ms: a.mesh_spacing_ms,
                }),
                mda: a.mda.then_some(v1::MdaSpec {
                    every: a.mda_every,
                    confidence: a.confidence,
                    budget: a.mda_budget,
                }),
            };
            let created = c
                .create_campaign(v1::CreateCampaignRequest { spec: Some(spec) })
                .await
                .map_err(|s| status("campaign create", s))?
                .into_inner();
            if a.json {
                print_json(&json::campaign(&created))?;
            } else {
                println!("{}", created.id);
            }
        }
        CampaignCmd::List { json: as_json } => {
            let list = c
                .list_campaigns(v1::ListCampaignsRequest {})
                .await
                .map_err(|s| status("campaign list", s))?
                .into_inner()
                .campaigns;
            if as_json {
                print_json(&serde_json::json!({
                    "campaigns": list.iter().map(json::campaign).collect::<Vec<_>>()
                }))?;
            } else {
                println!(
                    "{:<10} {:<10} {:>7} {:>6} {:>7} {:>8}",
                    "ID", "STATE", "TARGETS", "ROUNDS", "EVERY", "TRACES"
                );
                for cp in &list {
                    let v = json::campaign(cp);
                    println!(
                        "{:<10} {:<10} {:>7} {:>6} {:>6}s {:>8}",
                        cp.id,
                        v["state"].as_str().unwrap_or(""),
                        cp.expanded_targets.len(),
                        cp.spec.as_ref().map(|s| s.rounds).unwrap_or(0),
                        cp.spec.as_ref().map(|s| s.every_s).unwrap_or(0),
                        cp.traces_stored
                    );
                }
            }
        }
        CampaignCmd::Show { id, json: as_json } => {
            let cp = c
                .get_campaign(v1::GetCampaignRequest { id })
                .await
                .map_err(|s| status("campaign show", s))?
                .into_inner();
            let v = json::campaign(&cp);
            if as_json {
                print_json(&v)?;
            } else {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        CampaignCmd::Cancel { id, json: as_json } => {
            let cp = c
                .cancel_campaign(v1::CancelCampaignRequest { id })
                .await
                .map_err(|s| status("campaign cancel", s))?
                .into_inner();
            if as_json {
                print_json(&json::campaign(&cp))?;
            } else {
                println!("cancelled {}", cp.id);
            }
        }
    }
    Ok(())
}
