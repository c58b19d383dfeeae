//! A hostile agent for the soak (`tests/soak/soak.sh`): enrols with a real token, then
//! keeps opening sessions and uploading garbage — empty messages, traces with invalid
//! addresses, NaN times and thousands of hops, other vantages' names, batches over the
//! limit, floods — reconnecting whenever the coordinator ends a session, until killed.
//! Half its junk claims invented campaigns (refused: never issued to it), half the
//! campaigns the coordinator did push to it (checked, and stored under its own name when
//! valid-looking). It prints one line per minute: sessions, messages sent, results
//! refused, how sessions ended.
//!
//! `cargo run --example garbage_agent -- TOKEN`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracemesh::server::client;
use tracemesh_proto::token::EnrolToken;
use tracemesh_proto::v1::agent_service_client::AgentServiceClient;
use tracemesh_proto::v1::{self, agent_message::Msg as Up};

fn garbage(i: u64, issued: &[String]) -> v1::AgentMessage {
    let campaign = match issued {
        [] => format!("junk-{}", i % 7),
        // Every kind of junk (`i % 6` below) in turn under both.
        _ if (i / 6).is_multiple_of(2) => format!("junk-{}", i % 7),
        c => c[(i / 12) as usize % c.len()].clone(),
    };
    let rec = |dst: String, start: f64, hops: usize| v1::TraceRecord {
        result_id: format!("{campaign}/{}/{dst}", i % 5),
        campaign_id: campaign.clone(),
        round: (i % 5) as u32,
        // Never honoured: the coordinator takes the vantage from the certificate.
        vantage: "someone-else".into(),
        dst,
        start,
        hops: (0..hops)
            .map(|t| v1::Hop {
                ttl: t as u32,
                addr: Some("not-an-address".into()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let msg = match i % 6 {
        0 => None,
        1 => Some(Up::TraceBatch(v1::TraceBatch {
            results: vec![rec("999.1.2.3".into(), f64::NAN, 3)],
        })),
        2 => Some(Up::TraceBatch(v1::TraceBatch {
            results: vec![rec(String::new(), -1e300, 0)],
        })),
        3 => Some(Up::TraceBatch(v1::TraceBatch {
            results: vec![rec("10.0.0.1".into(), 1e18, 5000)],
        })),
        4 => Some(Up::TraceBatch(v1::TraceBatch {
            results: (0..2_000)
                .map(|j| rec(format!("10.66.{}.{}", j / 250, j % 250), 1.0, 1))
                .collect(),
        })),
        _ => Some(Up::AliasBatch(v1::AliasBatch {
            results: vec![v1::AliasResult {
                result_id: format!("junk/{i}/alias"),
                campaign_id: String::new(),
                ..Default::default()
            }],
        })),
    };
    v1::AgentMessage { msg }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let token = std::env::args()
        .nth(1)
        .context("usage: garbage_agent TOKEN")?;
    let t = EnrolToken::decode(&token)?;
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)?
        .pem()?;
    let anon = client::connect(&t.coordinator, &t.ca_pem, None).await?;
    let resp = AgentServiceClient::new(anon)
        .enrol(v1::EnrolRequest {
            token: token.clone(),
            csr_pem: csr,
            agent_version: "garbage/0".into(),
            hostname: "garbage".into(),
        })
        .await?
        .into_inner();
    let key_pem = key.serialize_pem();
    let (mut sessions, mut sent, mut i, mut refused) = (0u64, 0u64, 0u64, 0u64);
    // Campaigns pushed to it, across sessions.
    let issued = std::sync::Mutex::new(Vec::<String>::new());
    let mut endings: BTreeMap<String, u64> = BTreeMap::new();
    let mut report = Instant::now();
    loop {
        if report.elapsed() >= Duration::from_secs(60) {
            println!(
                "garbage_agent: {sessions} sessions, {sent} messages, {refused} results refused, endings {endings:?}"
            );
            report = Instant::now();
        }
        // The coordinator restarts during the soak: keep dialling.
        let ch = match client::connect(
            &resp.coordinator,
            &resp.ca_pem,
            Some((&resp.cert_chain_pem, &key_pem)),
        )
        .await
        {
            Ok(ch) => ch,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let (tx, out) = mpsc::channel(8);
        let _ = tx
            .send(v1::AgentMessage {
                msg: Some(Up::Hello(v1::Hello::default())),
            })
            .await;
        sessions += 1;
        let mut rx = match AgentServiceClient::new(ch)
            .session(ReceiverStream::new(out))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => {
                *endings.entry(format!("{:?}", s.code())).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let send = async {
            loop {
                i += 1;
                let m = garbage(i, &issued.lock().unwrap_or_else(|p| p.into_inner()));
                if tx.send(m).await.is_err() {
                    return;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let recv = async {
            loop {
                match rx.message().await {
                    Ok(Some(m)) => match m.msg {
                        Some(v1::coordinator_message::Msg::Campaign(c)) => {
                            let mut held = issued.lock().unwrap_or_else(|p| p.into_inner());
                            if !held.contains(&c.id) {
                                held.push(c.id);
                            }
                        }
                        Some(v1::coordinator_message::Msg::Ack(a)) => {
                            refused += a.refused.iter().map(|r| u64::from(r.results)).sum::<u64>();
                        }
                        _ => {}
                    },
                    Ok(None) => return "closed".to_string(),
                    Err(s) => return format!("{:?}", s.code()),
                }
            }
        };
        let ended = tokio::select! {
            _ = send => "send failed".to_string(),
            e = recv => e,
        };
        *endings.entry(ended).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
