//! End to end against the real binary on loopback: `tracemesh serve` in a child process,
//! the CLI as child processes, and a test agent speaking the generated gRPC client over
//! real mutual TLS.

// Helpers outside #[test] functions panic on purpose: a panic is how a test reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;
use tracemesh::server::client;
use tracemesh_proto::token::EnrolToken;
use tracemesh_proto::v1::agent_service_client::AgentServiceClient;
use tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient;
use tracemesh_proto::v1::{self, agent_message::Msg as Up, coordinator_message::Msg as Down};

const BIN: &str = env!("CARGO_BIN_EXE_tracemesh");

struct Coordinator {
    data: PathBuf,
    child: Child,
    addr: String,
}

impl Coordinator {
    fn start(data: &Path) -> Coordinator {
        Self::start_with(data, &[])
    }

    fn start_with(data: &Path, extra: &[&str]) -> Coordinator {
        let addr_file = data.join("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        let child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .env_remove("TRACEMESH_DATA")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tracemesh serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file)
                && !a.trim().is_empty()
            {
                break a.trim().to_string();
            }
            assert!(Instant::now() < deadline, "coordinator did not come up");
            std::thread::sleep(Duration::from_millis(50));
        };
        Coordinator {
            data: data.to_path_buf(),
            child,
            addr,
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--data")
            .arg(&self.data)
            .env_remove("TRACEMESH_DATA")
            .output()
            .expect("run tracemesh")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "tracemesh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    fn token(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "--name", name];
        args.extend_from_slice(extra);
        let t = self.ok(&args);
        assert_eq!(t.lines().count(), 1, "token alone on stdout: {t:?}");
        t.trim().to_string()
    }

    /// A campaign for `agents` (a selector), running for the next ten minutes; its id.
    /// Agents may upload only results of campaigns issued to them.
    fn campaign(&self, agents: &str) -> String {
        let out = self.ok(&[
            "campaign",
            "create",
            "--targets",
            "192.0.2.10",
            "--agents",
            agents,
            "--every",
            "60s",
            "--rounds",
            "10",
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["id"].as_str().unwrap().to_string()
    }

    async fn admin(&self) -> ConsumerServiceClient<Channel> {
        let bundle = std::fs::read_to_string(self.data.join("admin.pem")).unwrap();
        client::connect_admin(&self.addr, &bundle).await.unwrap()
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an agent keeps after enrolment.
struct AgentId {
    name: String,
    addr: String,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (csr, key.serialize_pem())
}

async fn enrol(token: &str) -> Result<AgentId, tonic::Status> {
    let t = EnrolToken::decode(token).expect("token decodes");
    let ch = client::connect(&t.coordinator, &t.ca_pem, None)
        .await
        .unwrap();
    let (csr, key_pem) = csr();
    let resp = AgentServiceClient::new(ch)
        .enrol(v1::EnrolRequest {
            token: token.to_string(),
            csr_pem: csr,
            agent_version: "test-agent/0".into(),
            hostname: "test-vm".into(),
        })
        .await?
        .into_inner();
    assert_eq!(resp.agent_name, t.name);
    assert_eq!(resp.ca_pem.trim(), t.ca_pem.trim());
    Ok(AgentId {
        name: resp.agent_name,
        addr: resp.coordinator,
        ca_pem: resp.ca_pem,
        cert_pem: resp.cert_chain_pem,
        key_pem,
    })
}

async fn agent_channel(id: &AgentId) -> Channel {
    client::connect(&id.addr, &id.ca_pem, Some((&id.cert_pem, &id.key_pem)))
        .await
        .unwrap()
}

struct Session {
    tx: mpsc::Sender<v1::AgentMessage>,
    rx: tonic::Streaming<v1::CoordinatorMessage>,
}

impl Session {
    async fn open(id: &AgentId, held: &[&str]) -> Session {
        let (tx, out) = mpsc::channel(16);
        tx.send(up(Up::Hello(v1::Hello {
            agent_version: "test-agent/0".into(),
            state: Some(v1::AgentState {
                campaign_ids: held.iter().map(|s| s.to_string()).collect(),
                spooled_results: 0,
            }),
            mesh_addr: String::new(),
        })))
        .await
        .unwrap();
        let rx = AgentServiceClient::new(agent_channel(id).await)
            .session(ReceiverStream::new(out))
            .await
            .unwrap()
            .into_inner();
        let mut s = Session { tx, rx };
        match s.next().await {
            Down::Welcome(w) => assert_eq!(w.agent_name, id.name),
            other => panic!("expected Welcome, got {other:?}"),
        }
        s
    }

    async fn send(&self, m: Up) {
        self.tx.send(up(m)).await.unwrap();
    }

    /// The next Ack, past the campaign instructions the session is pushed.
    async fn ack(&mut self) -> v1::Ack {
        loop {
            match self.next().await {
                Down::Ack(a) => return a,
                Down::Campaign(_) => continue,
                other => panic!("expected Ack, got {other:?}"),
            }
        }
    }

    async fn next(&mut self) -> Down {
        tokio::time::timeout(Duration::from_secs(15), self.rx.message())
            .await
            .expect("coordinator message in time")
            .expect("stream ok")
            .expect("stream open")
            .msg
            .expect("message set")
    }
}

fn up(m: Up) -> v1::AgentMessage {
    v1::AgentMessage { msg: Some(m) }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn record(campaign: &str, round: u32, dst: &str) -> v1::TraceRecord {
    v1::TraceRecord {
        result_id: tracemesh_proto::result_id(campaign, round, dst),
        campaign_id: campaign.into(),
        round,
        // An agent cannot claim another vantage: the coordinator overwrites this.
        vantage: "someone-else".into(),
        dst: dst.into(),
        src: Some("10.9.0.2".into()),
        proto: v1::ProbeProtocol::Icmp as i32,
        stop_reason: v1::StopReason::Completed as i32,
        start: 1_795_400_000.25,
        probes_sent: 4,
        hops: vec![
            v1::Hop {
                ttl: 1,
                addr: Some("10.9.0.1".into()),
                rtt_ms: Some(0.31),
                icmp_type: Some(11),
                icmp_code: Some(0),
                reply_ttl: Some(64),
                quoted_ttl: Some(1),
                mpls: vec![v1::MplsLabel {
                    label: 24001,
                    tc: 0,
                    s: true,
                    ttl: 1,
                }],
                probes: 1,
                ..Default::default()
            },
            v1::Hop {
                ttl: 2,
                probes: 2,
                ..Default::default()
            },
            v1::Hop {
                ttl: 3,
                addr: Some(dst.into()),
                rtt_ms: Some(12.5),
                icmp_type: Some(0),
                icmp_code: Some(0),
                reply_ttl: Some(61),
                probes: 1,
                ..Default::default()
            },
        ],
        received_at_ns: 0,
    }
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrol_session_campaign_ingest_query_and_survive_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let mut coord = Coordinator::start(dir.path());

    let t0 = Instant::now();
    let token = coord.token(
        "tor-1",
        &[
            "--country",
            "CA",
            "--city",
            "Toronto",
            "--loc",
            "43.7,-79.4",
            "--asn",
            "812",
            "--tag",
            "core",
        ],
    );
    let mut id = enrol(&token).await.unwrap();
    let mut s = Session::open(&id, &[]).await;
    let enrol_ms = t0.elapsed().as_millis();

    // NTP-style exchange: the echo carries our t1 and the coordinator's t2 <= t3.
    let t1 = now_ns();
    s.send(Up::ClockSample(v1::ClockSample { t1_ns: t1 })).await;
    match s.next().await {
        Down::ClockEcho(e) => {
            assert_eq!(e.t1_ns, t1);
            assert!(e.t2_ns <= e.t3_ns);
            let est = tracemesh_proto::clock::estimate(e.t1_ns, e.t2_ns, e.t3_ns, now_ns());
            // Same host, same clock: the offset is within the round trip.
            assert!(est.offset_ns.abs() <= est.rtt_ns.max(1_000_000), "{est:?}");
            s.send(Up::Heartbeat(v1::Heartbeat {
                sent_at_ns: now_ns(),
                clock_offset_ns: est.offset_ns,
                clock_rtt_ns: est.rtt_ns.max(1),
                spooled_results: 0,
            }))
            .await;
        }
        other => panic!("expected ClockEcho, got {other:?}"),
    }

    let created = coord.ok(&[
        "campaign",
        "create",
        "--targets",
        "192.0.2.10",
        "198.51.100.0/31",
        "--agents",
        "name:tor-1",
        "--proto",
        "udp",
        "--every",
        "10s",
        "--rounds",
        "3",
        "--json",
    ]);
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let cid = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["target_count"], 3);
    let instr = match s.next().await {
        Down::Campaign(c) => c,
        other => panic!("expected a campaign instruction, got {other:?}"),
    };
    assert_eq!(instr.id, cid);
    assert_eq!(
        instr.targets,
        ["192.0.2.10", "198.51.100.0", "198.51.100.1"]
    );
    assert_eq!((instr.every_s, instr.rounds), (10, 3));
    assert_eq!(instr.method.unwrap().proto, v1::ProbeProtocol::Udp as i32);
    assert!(instr.start_at_ns > now_ns(), "round 0 is in the future");

    // Upload the same result twice (as after a lost ack): acked both times, stored once.
    let rec = record(&cid, 0, "192.0.2.10");
    for _ in 0..2 {
        s.send(Up::TraceBatch(v1::TraceBatch {
            results: vec![rec.clone()],
        }))
        .await;
        match s.next().await {
            Down::Ack(a) => assert_eq!(a.result_ids, vec![rec.result_id.clone()]),
            other => panic!("expected Ack, got {other:?}"),
        }
    }

    let out = coord.ok(&["traces", "--campaign", &cid, "--json"]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    let t = &lines[0];
    assert_eq!(t["vantage"], "tor-1");
    assert_eq!(t["round"], 0);
    assert_eq!(t["dst"], "192.0.2.10");
    assert_eq!(t["start"], 1_795_400_000.25);
    assert_eq!(t["proto"], "icmp");
    assert_eq!(t["stop_reason"], "completed");
    assert_eq!(t["hops"][0]["addr"], "10.9.0.1");
    assert_eq!(t["hops"][0]["mpls"][0]["label"], 24001);
    assert_eq!(t["hops"][0]["quoted_ttl"], 1);
    assert_eq!(t["hops"][1]["addr"], serde_json::Value::Null);
    assert_eq!(t["hops"][2]["reply_ttl"], 61);
    assert_eq!(
        coord.ok(&[
            "traces",
            "--campaign",
            &cid,
            "--vantage",
            "nobody",
            "--json"
        ]),
        ""
    );
    assert_eq!(
        json_lines(&coord.ok(&[
            "traces",
            "--vantage",
            "tor-1",
            "--target",
            "192.0.2.10",
            "--json"
        ]))
        .len(),
        1
    );

    let agents: serde_json::Value = serde_json::from_str(&coord.ok(&["agents", "--json"])).unwrap();
    let a = &agents["agents"][0];
    assert_eq!(a["name"], "tor-1");
    assert_eq!(a["connected"], true);
    assert_eq!(a["country"], "CA");
    assert_eq!(a["asn"], 812);
    assert_eq!(a["loc"], serde_json::json!([43.7, -79.4]));
    assert!(a["clock_offset_ms"].is_number(), "{a}");

    let shown: serde_json::Value =
        serde_json::from_str(&coord.ok(&["campaign", "show", &cid, "--json"])).unwrap();
    assert_eq!(shown["pushed_to"], serde_json::json!(["tor-1"]));
    assert_eq!(shown["traces_stored"], 1);

    // Crash the coordinator outright; everything acked must still be there.
    drop(s);
    coord.kill9();
    let coord = Coordinator::start(dir.path());
    let lines = json_lines(&coord.ok(&["traces", "--campaign", &cid, "--json"]));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["hops"].as_array().unwrap().len(), 3);
    let agents: serde_json::Value = serde_json::from_str(&coord.ok(&["agents", "--json"])).unwrap();
    assert_eq!(agents["agents"][0]["name"], "tor-1");
    assert_eq!(agents["agents"][0]["connected"], false);

    // The agent reconnects with the certificate it already has (same CA after restart),
    // still holds the campaign, so it is not re-sent; a re-upload is still a duplicate.
    // (Port 0 gave the restarted server a new port; a deployment listens on a fixed one.)
    id.addr = coord.addr.clone();
    let mut s = Session::open(&id, &[&cid]).await;
    s.send(Up::TraceBatch(v1::TraceBatch {
        results: vec![rec.clone()],
    }))
    .await;
    match s.next().await {
        Down::Ack(a) => assert_eq!(a.result_ids, vec![rec.result_id.clone()]),
        other => panic!("expected Ack, got {other:?}"),
    }
    assert_eq!(
        json_lines(&coord.ok(&["traces", "--campaign", &cid, "--json"])).len(),
        1
    );

    // Cancelling reaches the connected agent.
    coord.ok(&["campaign", "cancel", &cid]);
    match s.next().await {
        Down::CancelCampaign(c) => assert_eq!(c.campaign_id, cid),
        other => panic!("expected CancelCampaign, got {other:?}"),
    }
    eprintln!("token create + enrol + session open took {enrol_ms} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_agent_gets_pending_campaign_and_stale_one_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(dir.path());
    let token = coord.token("par-1", &["--country", "FR"]);
    let created = coord.ok(&[
        "campaign",
        "create",
        "--targets",
        "203.0.113.7",
        "--agents",
        "country:FR",
        "--every",
        "5s",
        "--rounds",
        "2",
        "--json",
    ]);
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert!(created["mda"].is_null(), "no multipath rounds: {created}");
    let cid = created["id"].as_str().unwrap().to_string();
    // A campaign for someone else must not reach this agent.
    coord.ok(&[
        "campaign",
        "create",
        "--targets",
        "203.0.113.8",
        "--agents",
        "country:DE",
    ]);
    let id = enrol(&token).await.unwrap();
    // The agent claims to hold a campaign the coordinator never issued.
    let mut s = Session::open(&id, &["c999"]).await;
    let mut got_cancel = false;
    let mut got_campaign = None;
    for _ in 0..2 {
        match s.next().await {
            Down::CancelCampaign(c) => {
                assert_eq!(c.campaign_id, "c999");
                got_cancel = true;
            }
            Down::Campaign(c) => got_campaign = Some(c.id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got_cancel);
    assert_eq!(got_campaign, Some(cid));
    // Nothing else is pending for this agent.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), s.rx.message())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_one_time_expiring_and_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(dir.path());
    let token = coord.token("ams-1", &[]);
    enrol(&token).await.unwrap();
    let again = enrol(&token).await.err().expect("reused token refused");
    assert_eq!(again.code(), Code::PermissionDenied);
    assert!(again.message().contains("already used"), "{again:?}");

    let short = coord.token("ams-2", &["--ttl", "1s"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = enrol(&short).await.err().expect("expired token refused");
    assert_eq!(expired.code(), Code::PermissionDenied);
    assert!(expired.message().contains("expired"), "{expired:?}");

    // A token with a forged secret but the right CA and address.
    let mut forged = EnrolToken::decode(&coord.token("ams-3", &[])).unwrap();
    forged.secret = "guessed".into();
    let unknown = enrol(&forged.encode())
        .await
        .err()
        .expect("forged token refused");
    assert_eq!(unknown.code(), Code::Unauthenticated);

    // A token naming a different agent than the one it was issued for.
    let mut renamed = EnrolToken::decode(&coord.token("ams-4", &[])).unwrap();
    renamed.name = "admin".into();
    let err = enrol(&renamed.encode())
        .await
        .err()
        .expect("renamed token refused");
    assert_eq!(err.code(), Code::PermissionDenied);

    // Re-enrolling a name supersedes the earlier certificate.
    let first = enrol(&coord.token("ams-5", &[])).await.unwrap();
    let _ok = Session::open(&first, &[]).await;
    let second = enrol(&coord.token("ams-5", &[])).await.unwrap();
    let _ok = Session::open(&second, &[]).await;
    let (_tx, out) = mpsc::channel::<v1::AgentMessage>(1);
    let err = AgentServiceClient::new(agent_channel(&first).await)
        .session(ReceiverStream::new(out))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("superseded"), "{err:?}");

    let t = EnrolToken::decode(&token).unwrap();
    let ch = client::connect(&t.coordinator, &t.ca_pem, None)
        .await
        .unwrap();
    let garbage = AgentServiceClient::new(ch)
        .enrol(v1::EnrolRequest {
            token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument);

    // The token pins the CA: a client trusting another CA cannot even complete TLS.
    let other = tempfile::tempdir().unwrap();
    let other_ca = tracemesh::ca::Ca::load_or_create(other.path()).unwrap();
    assert!(
        client::connect(&t.coordinator, other_ca.cert_pem(), None)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(dir.path());
    let id = enrol(&coord.token("nyc-1", &[])).await.unwrap();

    let as_agent = ConsumerServiceClient::new(agent_channel(&id).await);
    for code in [
        as_agent
            .clone()
            .list_agents(v1::ListAgentsRequest {})
            .await
            .unwrap_err()
            .code(),
        as_agent
            .clone()
            .create_token(v1::CreateTokenRequest {
                metadata: Some(v1::AgentMetadata {
                    name: "sneaky".into(),
                    ..Default::default()
                }),
                ttl_s: 0,
            })
            .await
            .unwrap_err()
            .code(),
        as_agent
            .clone()
            .query_traces(v1::QueryTracesRequest::default())
            .await
            .unwrap_err()
            .code(),
    ] {
        assert_eq!(code, Code::PermissionDenied);
    }

    let t = EnrolToken::decode(&coord.token("nyc-2", &[])).unwrap();
    let anon = client::connect(&t.coordinator, &t.ca_pem, None)
        .await
        .unwrap();
    let err = ConsumerServiceClient::new(anon.clone())
        .list_campaigns(v1::ListCampaignsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let (_tx, out) = mpsc::channel::<v1::AgentMessage>(1);
    let err = AgentServiceClient::new(anon)
        .session(ReceiverStream::new(out))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // The admin identity may not pose as an agent either.
    let bundle = std::fs::read_to_string(dir.path().join("admin.pem")).unwrap();
    let (cert, ca, key) = tracemesh::ca::split_identity_bundle(&bundle).unwrap();
    let admin_ch = client::connect(&coord.addr, &ca, Some((&cert, &key)))
        .await
        .unwrap();
    let (_tx, out) = mpsc::channel::<v1::AgentMessage>(1);
    let err = AgentServiceClient::new(admin_ch.clone())
        .session(ReceiverStream::new(out))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Reflection lists our services (so grpcurl works without .proto files).
    use tonic_reflection::pb::v1 as refl;
    let mut reflection =
        refl::server_reflection_client::ServerReflectionClient::new(admin_ch.clone());
    let mut replies = reflection
        .server_reflection_info(futures::stream::iter([refl::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                refl::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        }]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(refl::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["tracemesh.v1.AgentService", "tracemesh.v1.ConsumerService"] {
        assert!(names.iter().any(|n| n == want), "{names:?}");
    }

    // Health is served (and needs no role).
    let mut health = tonic_health::pb::health_client::HealthClient::new(admin_ch);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tracemesh.v1.ConsumerService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_new_traces_once() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(dir.path());
    let id = enrol(&coord.token("sea-1", &[])).await.unwrap();
    let (c42, c7) = (coord.campaign("name:sea-1"), coord.campaign("name:sea-1"));
    let mut s = Session::open(&id, &[]).await;
    let mut sub = coord
        .admin()
        .await
        .subscribe_traces(v1::SubscribeTracesRequest {
            campaign_id: Some(c42.clone()),
            vantage: None,
        })
        .await
        .unwrap()
        .into_inner();
    let a = record(&c42, 0, "192.0.2.1");
    let b = record(&c42, 1, "192.0.2.1");
    let other = record(&c7, 0, "192.0.2.1");
    for batch in [vec![a.clone()], vec![a.clone(), other], vec![b.clone()]] {
        s.send(Up::TraceBatch(v1::TraceBatch { results: batch }))
            .await;
        assert!(s.ack().await.refused.is_empty());
    }
    let mut seen = Vec::new();
    for _ in 0..2 {
        let t = tokio::time::timeout(Duration::from_secs(10), sub.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(t.vantage, "sea-1");
        seen.push(t.result_id);
    }
    assert_eq!(seen, vec![a.result_id, b.result_id]);
    // The duplicate of `a` was not re-announced, and c7 is filtered out.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.message())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_does_not_hurt_the_server() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(dir.path());
    let mut junk = Vec::new();
    for i in 0..4096u32 {
        junk.push((i.wrapping_mul(2_654_435_761) >> 24) as u8);
    }
    for payload in [
        junk.as_slice(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".as_slice(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
        // A TLS ClientHello header that promises more than it sends.
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01][..],
    ] {
        let mut c = tokio::net::TcpStream::connect(&coord.addr).await.unwrap();
        let _ = c.write_all(payload).await;
        let _ = c.shutdown().await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
    }
    // Hold a silent connection open while a real client works alongside it.
    let _idle = tokio::net::TcpStream::connect(&coord.addr).await.unwrap();
    let agents: serde_json::Value = serde_json::from_str(&coord.ok(&["agents", "--json"])).unwrap();
    assert_eq!(agents["agents"], serde_json::json!([]));
}

#[test]
fn bad_cli_input_is_one_line_and_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(dir.path());
    let cases: &[&[&str]] = &[
        &["campaign", "create", "--targets", "not-an-address"],
        &["campaign", "create", "--targets", "10.0.0.0/8"],
        &[
            "campaign",
            "create",
            "--targets",
            "192.0.2.1",
            "--agents",
            "city:Paris",
        ],
        &[
            "campaign",
            "create",
            "--targets",
            "192.0.2.1",
            "--every",
            "fast",
        ],
        &[
            "campaign",
            "create",
            "--targets",
            "192.0.2.1",
            "--rounds",
            "3",
        ],
        &[
            "campaign",
            "create",
            "--targets",
            "192.0.2.1",
            "--proto",
            "sctp",
        ],
        &[
            "campaign",
            "create",
            "--targets",
            "192.0.2.1",
            "--start-at",
            "2001-01-01T00:00:00Z",
        ],
        &[
            "campaign",
            "create",
            "--targets",
            "@/nonexistent/targets.txt",
        ],
        &["campaign", "show", "c404"],
        &["token", "create", "--name", "a b"],
        &["token", "create", "--name", "x", "--loc", "200,0"],
        &["token", "create", "--name", "x", "--country", "Canada"],
        &["traces", "--json"],
        &["traces", "--target", "nope", "--json"],
        &["frobnicate"],
    ];
    for args in cases {
        let out = coord.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(stderr.starts_with("error"), "{args:?}: {stderr:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // Without a coordinator in the data dir.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["agents", "--data"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
    // --help works everywhere.
    for args in [
        &["--help"][..],
        &["campaign", "create", "--help"],
        &["traces", "--help"],
        &["token", "create", "--help"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_promptly_with_a_session_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut coord = Coordinator::start(dir.path());
    let id = enrol(&coord.token("lax-1", &[])).await.unwrap();
    let _s = Session::open(&id, &[]).await;
    let t = Instant::now();
    let st = Command::new("kill")
        .args(["-TERM", &coord.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = loop {
        if let Some(s) = coord.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "server did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(!dir.path().join("coordinator.addr").exists());
    eprintln!("graceful shutdown took {} ms", t.elapsed().as_millis());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_ingest_is_acked_stored_and_streamed_back() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(dir.path());
    let id = enrol(&coord.token("fra-1", &[])).await.unwrap();
    let bulk = coord.campaign("name:fra-1");
    let mut s = Session::open(&id, &[]).await;
    const BATCHES: u32 = 20;
    const PER_BATCH: u32 = 100;
    let t = Instant::now();
    for b in 0..BATCHES {
        let results: Vec<_> = (0..PER_BATCH)
            .map(|i| {
                let n = b * PER_BATCH + i;
                record(&bulk, n / 250, &format!("10.{}.{}.1", n / 250, n % 250))
            })
            .collect();
        s.send(Up::TraceBatch(v1::TraceBatch { results })).await;
        assert_eq!(s.ack().await.result_ids.len(), PER_BATCH as usize);
    }
    let ingest = t.elapsed();
    let t = Instant::now();
    let out = coord.ok(&["traces", "--campaign", &bulk, "--json"]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), (BATCHES * PER_BATCH) as usize);
    // Ordered by round, then destination within the round's key order.
    let rounds: Vec<u64> = lines.iter().map(|l| l["round"].as_u64().unwrap()).collect();
    assert!(rounds.windows(2).all(|w| w[0] <= w[1]));
    let limited = coord.ok(&["traces", "--campaign", &bulk, "--limit", "7", "--json"]);
    assert_eq!(limited.lines().count(), 7);
    eprintln!(
        "ingested {} traces in {} ms ({:.0}/s, acked per batch of {PER_BATCH}); queried back in {} ms",
        BATCHES * PER_BATCH,
        ingest.as_millis(),
        f64::from(BATCHES * PER_BATCH) / ingest.as_secs_f64(),
        t.elapsed().as_millis()
    );
}

const DIV_DST: &str = "211.192.1.10";

/// Ottawa → Korea: three clean rounds via Telia, then three through China Telecom
/// (AS4134), with rounds starting at `t0` (the detector reports as of now, so keep `t0`
/// in the recent past).
fn diversion_scenario(campaign: &str, t0: f64) -> Vec<v1::TraceRecord> {
    let path = |round: u32, hops: &[(&str, f64)]| {
        let mut r = record(campaign, round, DIV_DST);
        r.start = t0 + f64::from(round) * 10.0;
        r.hops = hops
            .iter()
            .enumerate()
            .map(|(i, (a, rtt))| v1::Hop {
                ttl: i as u32 + 1,
                addr: Some(a.to_string()),
                rtt_ms: Some(*rtt),
                icmp_type: Some(if *a == DIV_DST { 0 } else { 11 }),
                icmp_code: Some(0),
                probes: 1,
                ..Default::default()
            })
            .collect();
        r
    };
    let normal = [
        ("24.114.255.1", 0.4),
        ("24.114.255.2", 5.7),
        ("62.115.10.1", 13.0),
        ("211.192.255.1", 150.0),
        (DIV_DST, 150.4),
    ];
    let diverted = [
        ("24.114.255.1", 0.4),
        ("24.114.255.2", 5.7),
        ("202.97.10.1", 5.8),
        ("202.97.10.5", 66.0),
        ("202.97.33.1", 190.0),
        ("211.192.255.1", 200.0),
        (DIV_DST, 200.4),
    ];
    let mut results: Vec<_> = (0..3).map(|r| path(r, &normal)).collect();
    results.extend((3..6).map(|r| path(r, &diverted)));
    results
}

const DIV_PFX2AS: &str =
    "24.114.0.0/16\t812\n62.115.0.0/16\t1299\n211.192.0.0/13\t4766\n202.97.0.0/16\t4134\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diversions_are_found_in_stored_traces() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(dir.path());
    let pfx2as = dir.path().join("pfx2as.txt");
    std::fs::write(&pfx2as, DIV_PFX2AS).unwrap();
    let id = enrol(&coord.token(
        "ottawa",
        &["--country", "CA", "--loc", "45.42,-75.70", "--asn", "812"],
    ))
    .await
    .unwrap();
    let div = coord.campaign("name:ottawa");
    let mut s = Session::open(&id, &[]).await;
    let t0 = (now_ns() / 1_000_000_000 - 600) as f64;
    let results = diversion_scenario(&div, t0);
    s.send(Up::TraceBatch(v1::TraceBatch { results })).await;
    let a = s.ack().await;
    assert!(a.result_ids.len() == 6 && a.refused.is_empty(), "{a:?}");

    let out = coord.ok(&[
        "diversions",
        "--campaign",
        &div,
        "--adversary",
        "AS4134",
        "--pfx2as",
        pfx2as.to_str().unwrap(),
        "--json",
    ]);
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ds = rep["diversions"].as_array().unwrap();
    assert_eq!(ds.len(), 1, "{rep:#}");
    let d = &ds[0];
    assert_eq!(d["vantage"], "ottawa");
    assert_eq!(d["target"], DIV_DST);
    assert_eq!(d["adversary_asn"], 4134);
    assert_eq!(d["rounds"], 3);
    assert_eq!(d["first_seen"], t0 + 30.0);
    assert_eq!(d["ingress"]["addr"], "202.97.10.1");
    assert_eq!(d["handoff"]["addr"], "24.114.255.2");

    // The human view draws both paths and names the AS from the names file.
    let names = dir.path().join("asnames.json");
    std::fs::write(
        &names,
        r#"{"812": "ROGERS, CA", "1299": "TELIANET, SE", "4766": "KT, KR", "4134": "CHINANET-BACKBONE, CN"}"#,
    )
    .unwrap();
    let view = coord.ok(&[
        "diversions",
        "--campaign",
        &div,
        "--adversary",
        "4134",
        "--pfx2as",
        pfx2as.to_str().unwrap(),
        "--asnames",
        names.to_str().unwrap(),
    ]);
    assert!(
        view.contains("Incident 1: AS4134 CHINANET-BACKBONE (CN) takes traffic in at 202.97.10.1"),
        "{view}"
    );
    let handoff_row = view.lines().find(|l| l.contains("<- hand-off")).unwrap();
    assert_eq!(handoff_row.matches("24.114.255.2").count(), 2, "{view}");
    assert!(
        view.contains("detour: the destination answers in 200.4 ms instead of 150.4 ms"),
        "{view}"
    );

    // Stored hops come back annotated when tables are given.
    let traces = coord.ok(&[
        "traces",
        "--campaign",
        &div,
        "--json",
        "--pfx2as",
        pfx2as.to_str().unwrap(),
        "--asnames",
        names.to_str().unwrap(),
    ]);
    let last = json_lines(&traces).pop().unwrap();
    let ingress = &last["hops"][2];
    assert_eq!(ingress["addr"], "202.97.10.1");
    assert_eq!(ingress["asn"], 4134);
    assert_eq!(ingress["as_name"], "CHINANET-BACKBONE");
    assert_eq!(ingress["as_country"], "CN");
    assert_eq!(ingress["asn_rule"], "origin");

    // A campaign without diversions, and a missing table, are reported as such.
    let none = coord.ok(&[
        "diversions",
        "--campaign",
        "nothing",
        "--adversary",
        "4134",
        "--pfx2as",
        pfx2as.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&none).unwrap()["diversions"],
        serde_json::json!([])
    );
    let missing = coord.cli(&[
        "diversions",
        "--adversary",
        "4134",
        "--pfx2as",
        "/nonexistent/pfx2as",
        "--json",
    ]);
    assert!(!missing.status.success());
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
}

/// Enrols "ottawa", subscribes to diversion alerts, uploads the diversion scenario (rounds
/// ten minutes ago) and waits for its ack; returns the subscription and when the upload
/// was sent.
async fn upload_diversion_while_subscribed(
    coord: &Coordinator,
) -> (tonic::Streaming<v1::Diversion>, Instant, String) {
    // Every agent's, so a second vantage may upload for it too.
    let div = coord.campaign("all");
    let id = enrol(&coord.token(
        "ottawa",
        &["--country", "CA", "--loc", "45.42,-75.70", "--asn", "812"],
    ))
    .await
    .unwrap();
    let sub = coord
        .admin()
        .await
        .subscribe_diversions(v1::SubscribeDiversionsRequest { vantage: None })
        .await
        .unwrap()
        .into_inner();
    let mut s = Session::open(&id, &[]).await;
    let t0 = (now_ns() / 1_000_000_000 - 600) as f64;
    let sent = Instant::now();
    s.send(Up::TraceBatch(v1::TraceBatch {
        results: diversion_scenario(&div, t0),
    }))
    .await;
    assert!(s.ack().await.refused.is_empty());
    (sub, sent, div)
}

/// `serve` re-reads its tables on SIGHUP: a diversion invisible with a table that does
/// not know the adversary's prefix is announced once the fixed table is loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotation_reload_on_sighup_reruns_detection() {
    let dir = tempfile::tempdir().unwrap();
    let pfx2as = dir.path().join("pfx2as.txt");
    let without_adversary: String = DIV_PFX2AS
        .lines()
        .filter(|l| !l.contains("4134"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&pfx2as, &without_adversary).unwrap();
    let coord = Coordinator::start_with(
        dir.path(),
        &["--adversary", "4134", "--pfx2as", pfx2as.to_str().unwrap()],
    );
    let (mut sub, _, _) = upload_diversion_while_subscribed(&coord).await;
    // The live detector batches arrivals for 0.5 s; give it several times that.
    let quiet = tokio::time::timeout(Duration::from_secs(3), sub.message()).await;
    assert!(
        quiet.is_err(),
        "nothing to announce without the adversary's prefix: {quiet:?}"
    );

    std::fs::write(&pfx2as, DIV_PFX2AS).unwrap();
    let hup = || {
        let st = Command::new("kill")
            .args(["-HUP", &coord.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };
    hup();
    let d = tokio::time::timeout(Duration::from_secs(15), sub.message())
        .await
        .expect("diversion announced after the reload")
        .unwrap()
        .unwrap();
    assert_eq!(d.vantage, "ottawa");
    assert_eq!(d.ingress.unwrap().addr, "202.97.10.1");
    assert_eq!(d.handoff.unwrap().addr, "24.114.255.2");

    // A reload that fails keeps the server and the tables in use.
    std::fs::remove_file(&pfx2as).unwrap();
    hup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    coord.ok(&["agents", "--json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_detection_streams_diversions_to_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let pfx2as = dir.path().join("pfx2as.txt");
    std::fs::write(&pfx2as, DIV_PFX2AS).unwrap();
    let coord = Coordinator::start_with(
        dir.path(),
        &["--adversary", "4134", "--pfx2as", pfx2as.to_str().unwrap()],
    );
    let (mut sub, t, div) = upload_diversion_while_subscribed(&coord).await;
    let d = tokio::time::timeout(Duration::from_secs(15), sub.message())
        .await
        .expect("diversion announced in time")
        .unwrap()
        .unwrap();
    eprintln!(
        "diversion announced {} ms after upload",
        t.elapsed().as_millis()
    );
    assert_eq!(d.vantage, "ottawa");
    assert_eq!(d.target, DIV_DST);
    assert_eq!(d.adversary_asn, 4134);
    assert_eq!(d.rounds, 3);
    assert_eq!(d.ingress.unwrap().addr, "202.97.10.1");
    assert_eq!(d.handoff.unwrap().addr, "24.114.255.2");
    // One agent alone: the stream says so, as `diversions` does.
    assert!(!d.corroborated, "one vantage only: {}", d.vantage);

    // A second vantage sees the same diversion: its record comes corroborated, and the
    // first one is announced again, corroborated now.
    let id = enrol(&coord.token(
        "toronto",
        &["--country", "CA", "--loc", "43.65,-79.38", "--asn", "812"],
    ))
    .await
    .unwrap();
    let mut s = Session::open(&id, &[]).await;
    s.send(Up::TraceBatch(v1::TraceBatch {
        results: diversion_scenario(&div, (now_ns() / 1_000_000_000 - 600) as f64),
    }))
    .await;
    assert!(s.ack().await.refused.is_empty());
    let mut seen = HashMap::new();
    while seen.len() < 2 {
        let d = tokio::time::timeout(Duration::from_secs(15), sub.message())
            .await
            .expect("corroborated records announced in time")
            .unwrap()
            .unwrap();
        seen.insert(d.vantage.clone(), d);
    }
    for v in ["ottawa", "toronto"] {
        assert!(seen[v].corroborated, "{v}: {:?}", seen[v]);
        assert_eq!(seen[v].ingress.as_ref().unwrap().addr, "202.97.10.1");
    }
}

/// `campaign create --mda`: the agent's instruction carries the MDA rounds; multipath
/// traces uploaded (twice: a lost ack) are acknowledged each time, stored once, and read
/// back by `tracemesh mda`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mda_campaign_results_are_acked_stored_once_and_queried() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(dir.path());
    let id = enrol(&coord.token("tor-1", &[])).await.unwrap();
    let mut s = Session::open(&id, &[]).await;
    let created = coord.ok(&[
        "campaign",
        "create",
        "--targets",
        "192.0.2.10",
        "--agents",
        "name:tor-1",
        "--every",
        "10s",
        "--rounds",
        "6",
        "--mda",
        "--mda-every",
        "3",
        "--confidence",
        "99",
        "--json",
    ]);
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(
        created["mda"],
        serde_json::json!({"every": 3, "confidence": 99, "budget": 0})
    );
    let cid = created["id"].as_str().unwrap().to_string();
    let instr = match s.next().await {
        Down::Campaign(c) => c,
        other => panic!("expected Campaign, got {other:?}"),
    };
    assert_eq!(
        instr.mda,
        Some(v1::MdaSpec {
            every: 3,
            confidence: 99,
            budget: 0
        })
    );
    let result = |round: u32| v1::MdaResult {
        result_id: tracemesh_proto::mda_result_id(&cid, round, "192.0.2.10"),
        campaign_id: cid.clone(),
        round,
        // What the agent claims is overwritten by its certificate's name.
        vantage: "someone-else".into(),
        dst: "192.0.2.10".into(),
        proto: v1::ProbeProtocol::Icmp as i32,
        confidence: 99,
        stop_reason: "completed".into(),
        probes_sent: 42,
        hops: vec![v1::MdaHop {
            ttl: 2,
            interfaces: vec![
                v1::MdaInterface {
                    addr: "10.0.1.1".into(),
                    flows: 4,
                    ..Default::default()
                },
                v1::MdaInterface {
                    addr: "10.0.2.1".into(),
                    flows: 5,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        links: vec![v1::MdaLink {
            ttl: 1,
            from: "10.0.0.1".into(),
            to: "10.0.2.1".into(),
        }],
        ..Default::default()
    };
    for _ in 0..2 {
        s.send(Up::MdaBatch(v1::MdaBatch {
            results: vec![result(0), result(3)],
        }))
        .await;
        match s.next().await {
            Down::Ack(a) => assert_eq!(
                a.result_ids,
                [
                    format!("{cid}/0/mda/192.0.2.10"),
                    format!("{cid}/3/mda/192.0.2.10")
                ]
            ),
            other => panic!("expected Ack, got {other:?}"),
        }
    }
    let lines = json_lines(&coord.ok(&["mda", "--campaign", &cid, "--json"]));
    assert_eq!(lines.len(), 2, "stored once each: {lines:?}");
    assert_eq!(lines[0]["round"], 0);
    assert_eq!(lines[1]["round"], 3);
    assert_eq!(lines[0]["vantage"], "tor-1");
    assert_eq!(lines[0]["type"], "mda");
    assert_eq!(lines[0]["proto"], "icmp");
    assert_eq!(lines[0]["hops"][0]["interfaces"][1]["addr"], "10.0.2.1");
    assert_eq!(lines[0]["links"][0]["to"], "10.0.2.1");
    let text = coord.ok(&["mda", "--campaign", &cid]);
    assert!(text.contains("10.0.1.1 | 10.0.2.1"), "{text}");
    let none = coord.ok(&["mda", "--campaign", &cid, "--vantage", "nobody", "--json"]);
    assert!(none.trim().is_empty());
    // Bad input: one line, non-zero.
    let bad = coord.cli(&[
        "campaign",
        "create",
        "--targets",
        "192.0.2.1",
        "--mda",
        "--confidence",
        "97",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("expected 95 or 99"), "{err}");
}

/// Live detection and `tracemesh diversions` take a pair's multipath traces as known
/// branches: clean rounds all took 10.5.0.1 at TTL 2, the diverted ones take 10.6.0.1
/// (unannounced, like the hand-off 10.7.0.1), which only the multipath trace of round 0
/// showed. Without it the unseen branch would be named the ingress (detect_logic.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_and_cli_detection_take_multipath_branches_as_normal() {
    let dir = tempfile::tempdir().unwrap();
    let pfx2as = dir.path().join("pfx2as.txt");
    std::fs::write(&pfx2as, DIV_PFX2AS).unwrap();
    let coord = Coordinator::start_with(
        dir.path(),
        &["--adversary", "4134", "--pfx2as", pfx2as.to_str().unwrap()],
    );
    let id = enrol(&coord.token(
        "ottawa",
        &["--country", "CA", "--loc", "45.42,-75.70", "--asn", "812"],
    ))
    .await
    .unwrap();
    // Agents may upload only results of campaigns issued to them.
    let div = coord.campaign("name:ottawa");
    let mut sub = coord
        .admin()
        .await
        .subscribe_diversions(v1::SubscribeDiversionsRequest { vantage: None })
        .await
        .unwrap()
        .into_inner();
    let mut s = Session::open(&id, &[]).await;
    let t0 = (now_ns() / 1_000_000_000 - 600) as f64;
    let iface = |a: &str| v1::MdaInterface {
        addr: a.into(),
        flows: 8,
        ..Default::default()
    };
    let mda = v1::MdaResult {
        result_id: tracemesh_proto::mda_result_id(&div, 0, DIV_DST),
        campaign_id: div.clone(),
        dst: DIV_DST.into(),
        start: t0 + 1.0,
        hops: [
            (1, vec!["24.114.255.1"]),
            (2, vec!["10.5.0.1", "10.6.0.1"]),
            (3, vec!["10.7.0.1"]),
            (4, vec!["62.115.10.1"]),
        ]
        .into_iter()
        .map(|(ttl, addrs)| v1::MdaHop {
            ttl,
            interfaces: addrs.into_iter().map(iface).collect(),
            ..Default::default()
        })
        .collect(),
        ..Default::default()
    };
    s.send(Up::MdaBatch(v1::MdaBatch { results: vec![mda] }))
        .await;
    assert_eq!(s.ack().await.result_ids.len(), 1);
    let path = |round: u32, hops: &[(&str, f64)]| {
        let mut r = record(&div, round, DIV_DST);
        r.start = t0 + f64::from(round) * 10.0;
        r.hops = hops
            .iter()
            .enumerate()
            .map(|(i, (a, rtt))| v1::Hop {
                ttl: i as u32 + 1,
                addr: Some(a.to_string()),
                rtt_ms: Some(*rtt),
                probes: 1,
                ..Default::default()
            })
            .collect();
        r
    };
    let mut results: Vec<_> = (0..3)
        .map(|r| {
            path(
                r,
                &[
                    ("24.114.255.1", 0.4),
                    ("10.5.0.1", 2.0),
                    ("10.7.0.1", 5.7),
                    ("62.115.10.1", 13.0),
                    ("211.192.255.1", 150.0),
                    (DIV_DST, 150.4),
                ],
            )
        })
        .collect();
    results.extend((3..6).map(|r| {
        path(
            r,
            &[
                ("24.114.255.1", 0.4),
                ("10.6.0.1", 2.0),
                ("10.7.0.1", 5.7),
                ("202.97.10.1", 5.8),
                ("202.97.10.5", 66.0),
                ("211.192.255.1", 200.0),
                (DIV_DST, 200.4),
            ],
        )
    }));
    s.send(Up::TraceBatch(v1::TraceBatch { results })).await;
    assert_eq!(s.ack().await.result_ids.len(), 6);
    let d = tokio::time::timeout(Duration::from_secs(15), sub.message())
        .await
        .expect("diversion announced in time")
        .unwrap()
        .unwrap();
    assert_eq!((d.vantage.as_str(), d.rounds), ("ottawa", 3));
    assert_eq!(d.ingress.unwrap().addr, "202.97.10.1");
    assert_eq!(d.handoff.unwrap().addr, "10.7.0.1");
    let out = coord.ok(&[
        "diversions",
        "--adversary",
        "AS4134",
        "--pfx2as",
        pfx2as.to_str().unwrap(),
        "--json",
    ]);
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ds = rep["diversions"].as_array().unwrap();
    assert_eq!(ds.len(), 1, "{rep}");
    assert_eq!(ds[0]["ingress"]["addr"], "202.97.10.1", "{rep}");
    assert_eq!(ds[0]["handoff"]["addr"], "10.7.0.1", "{rep}");
}
