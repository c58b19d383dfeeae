//! Roles, revocation and quotas against the real binary on loopback: `tracemesh serve` in
//! a child process, identities made with the CLI (`tracemesh identity create`), clients
//! speaking the generated gRPC stubs over real mutual TLS, a real sled store across
//! restarts.

// Helpers outside #[test] functions panic on purpose: a panic is how a test reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;
use tracemesh::server::client;
use tracemesh_proto::token::EnrolToken;
use tracemesh_proto::v1::admin_service_client::AdminServiceClient;
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
    fn start(data: &Path, extra: &[&str]) -> Coordinator {
        let addr_file = data.join("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        let child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .env_remove("TRACEMESH_DATA")
            .env(
                "RUST_LOG",
                std::env::var("TM_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
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

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "tracemesh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    fn token(&self, name: &str) -> String {
        self.ok(&["token", "create", "--name", name])
            .trim()
            .to_string()
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

    /// `tracemesh identity create`; returns the bundle's path.
    fn identity(&self, role: &str, name: &str) -> PathBuf {
        let out = self.data.join("ids");
        let printed = self.ok(&[
            "identity",
            "create",
            "--role",
            role,
            "--name",
            name,
            "--out",
            out.to_str().unwrap(),
        ]);
        let path = PathBuf::from(printed.trim());
        assert_eq!(path, out.join(format!("{name}.pem")));
        path
    }

    async fn channel_for(&self, bundle: &Path) -> Channel {
        let pem = std::fs::read_to_string(bundle).unwrap();
        let (cert, ca, key) = tracemesh::ca::split_identity_bundle(&pem).unwrap();
        client::connect(&self.addr, &ca, Some((&cert, &key)))
            .await
            .unwrap()
    }

    async fn admin(&self) -> Channel {
        self.channel_for(&self.data.join("admin.pem")).await
    }

    fn stop(&mut self) {
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

struct AgentId {
    addr: String,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

async fn enrol(token: &str) -> AgentId {
    let t = EnrolToken::decode(token).expect("token decodes");
    let ch = client::connect(&t.coordinator, &t.ca_pem, None)
        .await
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let resp = AgentServiceClient::new(ch)
        .enrol(v1::EnrolRequest {
            token: token.to_string(),
            csr_pem: csr,
            agent_version: "test-agent/0".into(),
            hostname: "test-vm".into(),
        })
        .await
        .unwrap()
        .into_inner();
    AgentId {
        addr: resp.coordinator,
        ca_pem: resp.ca_pem,
        cert_pem: resp.cert_chain_pem,
        key_pem: key.serialize_pem(),
    }
}

struct Session {
    tx: mpsc::Sender<v1::AgentMessage>,
    rx: tonic::Streaming<v1::CoordinatorMessage>,
}

fn up(m: Up) -> v1::AgentMessage {
    v1::AgentMessage { msg: Some(m) }
}

impl Session {
    async fn try_open(id: &AgentId, addr: &str) -> Result<Session, tonic::Status> {
        let (tx, out) = mpsc::channel(16);
        tx.send(up(Up::Hello(v1::Hello {
            agent_version: "test-agent/0".into(),
            state: Some(v1::AgentState::default()),
            mesh_addr: String::new(),
        })))
        .await
        .unwrap();
        let ch = client::connect(addr, &id.ca_pem, Some((&id.cert_pem, &id.key_pem)))
            .await
            .unwrap();
        let mut rx = AgentServiceClient::new(ch)
            .session(ReceiverStream::new(out))
            .await?
            .into_inner();
        // The first message is Welcome, or the refusal.
        match rx.message().await? {
            Some(v1::CoordinatorMessage {
                msg: Some(Down::Welcome(_)),
            }) => Ok(Session { tx, rx }),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    async fn send(&self, m: Up) {
        self.tx.send(up(m)).await.unwrap();
    }

    /// The next message, or the status the stream ended with.
    async fn next(&mut self) -> Result<Down, tonic::Status> {
        let m = tokio::time::timeout(Duration::from_secs(15), self.rx.message())
            .await
            .expect("coordinator message in time")?;
        Ok(m.expect("stream open").msg.expect("message set"))
    }

    /// Sends a batch and returns the Ack's ids, or the status that ended the session.
    async fn upload(&mut self, results: Vec<v1::TraceRecord>) -> Result<usize, tonic::Status> {
        self.upload_acked(Up::TraceBatch(v1::TraceBatch { results }))
            .await
            .map(|a| a.result_ids.len())
    }

    /// Sends an upload and returns its Ack, or the status that ended the session.
    async fn upload_acked(&mut self, m: Up) -> Result<v1::Ack, tonic::Status> {
        self.send(m).await;
        loop {
            match self.next().await? {
                Down::Ack(a) => return Ok(a),
                // Campaign pushes and the like may come first.
                _ => continue,
            }
        }
    }
}

fn record(campaign: &str, round: u32, dst: &str) -> v1::TraceRecord {
    v1::TraceRecord {
        result_id: tracemesh_proto::result_id(campaign, round, dst),
        campaign_id: campaign.into(),
        round,
        dst: dst.into(),
        src: Some("10.9.0.2".into()),
        proto: v1::ProbeProtocol::Icmp as i32,
        stop_reason: v1::StopReason::Completed as i32,
        start: 1_795_400_000.25,
        probes_sent: 1,
        hops: vec![v1::Hop {
            ttl: 1,
            addr: Some(dst.into()),
            rtt_ms: Some(0.5),
            icmp_type: Some(0),
            icmp_code: Some(0),
            probes: 1,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn batch(campaign: &str, from: u32, n: u32) -> Vec<v1::TraceRecord> {
    (from..from + n)
        .map(|i| {
            record(
                campaign,
                0,
                &format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
            )
        })
        .collect()
}

fn spec(targets: &[&str]) -> v1::CampaignSpec {
    v1::CampaignSpec {
        targets: targets.iter().map(|s| s.to_string()).collect(),
        agents: vec!["all".into()],
        method: Some(v1::ProbeMethod {
            proto: v1::ProbeProtocol::Icmp as i32,
            attempts: 1,
            max_ttl: 8,
            ..Default::default()
        }),
        every_s: 60,
        rounds: 10,
        ..Default::default()
    }
}

/// A running coordinator with a reader identity, and the reader's and admin's channels.
struct Fixture {
    coord: Coordinator,
    _dir: tempfile::TempDir,
    reader: Channel,
    admin: Channel,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(dir.path(), &[]);
    let bundle = coord.identity("reader", "dashboard");
    let reader = coord.channel_for(&bundle).await;
    let admin = coord.admin().await;
    Fixture {
        coord,
        _dir: dir,
        reader,
        admin,
    }
}

fn denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>) {
    let e = r.expect_err("a reader must be refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("reader"), "says why: {}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_key_is_local_private_and_listed() {
    let f = fixture().await;
    let path = f.coord.data.join("ids/dashboard.pem");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let pem = std::fs::read_to_string(&path).unwrap();
    let (cert, _, key) = tracemesh::ca::split_identity_bundle(&pem).unwrap();
    assert!(key.contains("PRIVATE KEY"));
    let der = tracemesh::ca::pem_first_der(&cert).unwrap();
    assert_eq!(
        tracemesh::ca::role_of_cert_der(&der).unwrap(),
        (tracemesh::ca::Role::Reader, "dashboard".to_string())
    );
    // The coordinator never saw the key: nothing in its data directory holds it.
    let key_line = key.lines().nth(1).unwrap();
    for e in walk(&f.coord.data.join("db")) {
        let bytes = std::fs::read(&e).unwrap();
        assert!(
            !bytes
                .windows(key_line.len())
                .any(|w| w == key_line.as_bytes()),
            "{}",
            e.display()
        );
    }
    let list: serde_json::Value =
        serde_json::from_str(&f.coord.ok(&["identity", "list", "--json"])).unwrap();
    let ids = list["identities"].as_array().unwrap();
    let roles: Vec<(&str, &str)> = ids
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i["role"].as_str().unwrap()))
        .collect();
    assert!(roles.contains(&("dashboard", "reader")), "{roles:?}");
    assert!(roles.contains(&("admin", "admin")), "{roles:?}");
    assert_eq!(
        tracemesh::ca::cert_fingerprint(&der),
        ids.iter().find(|i| i["name"] == "dashboard").unwrap()["cert_sha256"]
    );
    // A second identity of the same name is refused while the first is live.
    let again = f.coord.cli(&[
        "identity",
        "create",
        "--role",
        "operator",
        "--name",
        "dashboard",
        "--out",
        f.coord.data.join("ids2").to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("AlreadyExists"), "{err}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_can_query_and_subscribe() {
    let f = fixture().await;
    let id = enrol(&f.coord.token("ams-1")).await;
    let mut admin = ConsumerServiceClient::new(f.admin.clone());
    let created = admin
        .create_campaign(v1::CreateCampaignRequest {
            spec: Some(spec(&["192.0.2.1"])),
        })
        .await
        .unwrap()
        .into_inner();
    let mut r = ConsumerServiceClient::new(f.reader.clone());
    let mut traces = r
        .subscribe_traces(v1::SubscribeTracesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let _diversions = r
        .subscribe_diversions(v1::SubscribeDiversionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut s = Session::try_open(&id, &id.addr).await.unwrap();
    assert_eq!(s.upload(batch(&created.id, 0, 3)).await.unwrap(), 3);
    let got = tokio::time::timeout(Duration::from_secs(5), traces.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.vantage, "ams-1");
    let mut q = r
        .query_traces(v1::QueryTracesRequest {
            campaign_id: Some(created.id.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while q.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
    let agents = r
        .list_agents(v1::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 1);
    assert_eq!(
        r.list_campaigns(v1::ListCampaignsRequest {})
            .await
            .unwrap()
            .into_inner()
            .campaigns
            .len(),
        1
    );
    r.get_campaign(v1::GetCampaignRequest {
        id: created.id.clone(),
    })
    .await
    .unwrap();
    r.query_aliases(v1::QueryAliasesRequest::default())
        .await
        .unwrap();
    // And the CLI works with the reader identity for reading.
    let out = Command::new(BIN)
        .args(["--coordinator", &f.coord.addr, "--identity"])
        .arg(f.coord.data.join("ids/dashboard.pem"))
        .args(["traces", "--campaign", &created.id, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_denied_create_token() {
    let f = fixture().await;
    denied(
        ConsumerServiceClient::new(f.reader)
            .create_token(v1::CreateTokenRequest {
                metadata: Some(v1::AgentMetadata {
                    name: "sneaky".into(),
                    ..Default::default()
                }),
                ttl_s: 0,
            })
            .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_denied_create_campaign() {
    let f = fixture().await;
    denied(
        ConsumerServiceClient::new(f.reader)
            .create_campaign(v1::CreateCampaignRequest {
                spec: Some(spec(&["192.0.2.1"])),
            })
            .await,
    );
    // Nothing was created.
    let list = ConsumerServiceClient::new(f.admin)
        .list_campaigns(v1::ListCampaignsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.campaigns.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_denied_cancel_campaign() {
    let f = fixture().await;
    let c = ConsumerServiceClient::new(f.admin.clone())
        .create_campaign(v1::CreateCampaignRequest {
            spec: Some(spec(&["192.0.2.1"])),
        })
        .await
        .unwrap()
        .into_inner();
    denied(
        ConsumerServiceClient::new(f.reader)
            .cancel_campaign(v1::CancelCampaignRequest { id: c.id.clone() })
            .await,
    );
    let after = ConsumerServiceClient::new(f.admin)
        .get_campaign(v1::GetCampaignRequest { id: c.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.cancelled_at_ns, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_denied_create_identity() {
    let f = fixture().await;
    denied(
        AdminServiceClient::new(f.reader)
            .create_identity(v1::CreateIdentityRequest {
                name: "escalate".into(),
                role: "admin".into(),
                csr_pem: String::new(),
            })
            .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_denied_list_identities() {
    let f = fixture().await;
    denied(
        AdminServiceClient::new(f.reader)
            .list_identities(v1::ListIdentitiesRequest {})
            .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_denied_revoke_identity() {
    let f = fixture().await;
    denied(
        AdminServiceClient::new(f.reader.clone())
            .revoke_identity(v1::RevokeRequest {
                name: "admin".into(),
            })
            .await,
    );
    // The admin still works.
    ConsumerServiceClient::new(f.admin)
        .list_agents(v1::ListAgentsRequest {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_denied_revoke_agent() {
    let f = fixture().await;
    let _ = enrol(&f.coord.token("lhr-1")).await;
    denied(
        AdminServiceClient::new(f.reader)
            .revoke_agent(v1::RevokeRequest {
                name: "lhr-1".into(),
            })
            .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_denied_agent_session() {
    let f = fixture().await;
    let (_tx, out) = mpsc::channel::<v1::AgentMessage>(1);
    let e = AgentServiceClient::new(f.reader)
        .session(ReceiverStream::new(out))
        .await
        .expect_err("a reader may not upload");
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_runs_campaigns_within_caps_but_not_identities() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(
        dir.path(),
        &["--operator-campaigns", "2", "--operator-targets", "5"],
    );
    let op = coord.channel_for(&coord.identity("operator", "noc")).await;
    let mut c = ConsumerServiceClient::new(op.clone());
    c.create_token(v1::CreateTokenRequest {
        metadata: Some(v1::AgentMetadata {
            name: "fra-2".into(),
            ..Default::default()
        }),
        ttl_s: 60,
    })
    .await
    .unwrap();
    let first = c
        .create_campaign(v1::CreateCampaignRequest {
            spec: Some(spec(&["192.0.2.0/30"])),
        })
        .await
        .unwrap()
        .into_inner();
    // 4 targets live; 2 more would make 6 > 5.
    let e = c
        .create_campaign(v1::CreateCampaignRequest {
            spec: Some(spec(&["198.51.100.1", "198.51.100.2"])),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("cap 5"), "{}", e.message());
    c.create_campaign(v1::CreateCampaignRequest {
        spec: Some(spec(&["198.51.100.1"])),
    })
    .await
    .unwrap();
    let e = c
        .create_campaign(v1::CreateCampaignRequest {
            spec: Some(spec(&["198.51.100.9"])),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("cap 2"), "{}", e.message());
    // Cancelling frees a slot.
    c.cancel_campaign(v1::CancelCampaignRequest { id: first.id })
        .await
        .unwrap();
    c.create_campaign(v1::CreateCampaignRequest {
        spec: Some(spec(&["198.51.100.9"])),
    })
    .await
    .unwrap();
    // Admins are not capped.
    ConsumerServiceClient::new(coord.admin().await)
        .create_campaign(v1::CreateCampaignRequest {
            spec: Some(spec(&["203.0.113.0/29"])),
        })
        .await
        .unwrap();
    let e = AdminServiceClient::new(op)
        .create_identity(v1::CreateIdentityRequest {
            name: "escalate".into(),
            role: "admin".into(),
            csr_pem: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("operator"), "{}", e.message());
}

/// Waits for a stream's end and returns its status and how long it took.
async fn ended_with<T: std::fmt::Debug>(
    s: &mut tonic::Streaming<T>,
    since: Instant,
) -> (tonic::Status, Duration) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("stream ended in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(st) => return (st, since.elapsed()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_identity_is_cut_off_at_once_and_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut coord = Coordinator::start(dir.path(), &[]);
    let bundle = coord.identity("reader", "leaky");
    let ch = coord.channel_for(&bundle).await;
    let mut r = ConsumerServiceClient::new(ch.clone());
    let mut sub = r
        .subscribe_traces(v1::SubscribeTracesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut div = r
        .subscribe_diversions(v1::SubscribeDiversionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let out = coord.ok(&["identity", "revoke", "leaky", "--json"]);
    let cli_done = t.elapsed();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "leaky");
    let (st, took) = ended_with(&mut sub, t).await;
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    assert!(st.message().contains("revoked"), "{st:?}");
    let (st2, took2) = ended_with(&mut div, t).await;
    assert_eq!(st2.code(), Code::PermissionDenied);
    eprintln!(
        "identity revoke: CLI returned in {} ms; subscriptions ended {} ms and {} ms after the CLI started",
        cli_done.as_millis(),
        took.as_millis(),
        took2.as_millis()
    );
    assert!(
        took < Duration::from_secs(1) + cli_done,
        "ended {took:?} after revoke"
    );
    // New calls on the same connection, and on a new one, are refused.
    let e = r.list_agents(v1::ListAgentsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = ConsumerServiceClient::new(coord.channel_for(&bundle).await)
        .list_campaigns(v1::ListCampaignsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // The list says so; the name can be issued again (a new certificate).
    let list: serde_json::Value =
        serde_json::from_str(&coord.ok(&["identity", "list", "--json"])).unwrap();
    let rec = list["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "leaky")
        .unwrap()
        .clone();
    assert!(rec["revoked_at"].is_number(), "{rec}");

    coord.stop();
    let coord = Coordinator::start(dir.path(), &[]);
    let e = ConsumerServiceClient::new(coord.channel_for(&bundle).await)
        .list_campaigns(v1::ListCampaignsRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "still refused after restart"
    );
    std::fs::remove_file(&bundle).unwrap();
    let fresh = coord.identity("reader", "leaky");
    ConsumerServiceClient::new(coord.channel_for(&fresh).await)
        .list_campaigns(v1::ListCampaignsRequest {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_agent_is_cut_off_at_once_and_after_restart_results_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut coord = Coordinator::start(dir.path(), &[]);
    let id = enrol(&coord.token("lost-1")).await;
    let lost = coord.campaign("name:lost-1");
    let mut s = Session::try_open(&id, &coord.addr).await.unwrap();
    assert_eq!(s.upload(batch(&lost, 0, 5)).await.unwrap(), 5);

    let t = Instant::now();
    let out = coord.ok(&["agent", "revoke", "lost-1", "--json"]);
    let cli_done = t.elapsed();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["was_connected"], true);
    let (st, took) = ended_with(&mut s.rx, t).await;
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    eprintln!(
        "agent revoke: CLI returned in {} ms; session ended {} ms after the CLI started",
        cli_done.as_millis(),
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(1) + cli_done,
        "ended {took:?} after revoke"
    );
    let e = Session::try_open(&id, &coord.addr)
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code(), Code::PermissionDenied);
    // Not connected any more.
    let agents: serde_json::Value = serde_json::from_str(&coord.ok(&["agents", "--json"])).unwrap();
    assert_eq!(agents["agents"][0]["connected"], false);

    coord.stop();
    let coord = Coordinator::start(dir.path(), &[]);
    let e = Session::try_open(&id, &coord.addr)
        .await
        .err()
        .expect("refused");
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "still refused after restart"
    );
    // Its results stay.
    let stored = coord.ok(&["traces", "--campaign", &lost, "--json"]);
    assert_eq!(stored.lines().count(), 5);
    // A fresh token re-enrols the name with a new certificate, which works.
    let again = enrol(&coord.token("lost-1")).await;
    let mut s = Session::try_open(&again, &coord.addr).await.unwrap();
    assert_eq!(s.upload(batch(&lost, 5, 1)).await.unwrap(), 1);
    // Unknown names are a clear error.
    let out = coord.cli(&["agent", "revoke", "nobody"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NotFound"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_quota_and_batch_limit_give_clear_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(
        dir.path(),
        &[
            "--agent-rate",
            "100",
            "--agent-burst",
            "200",
            "--max-batch",
            "1000",
            "--max-message-mib",
            "1",
        ],
    );
    let id = enrol(&coord.token("flood-1")).await;
    let cq = coord.campaign("name:flood-1");
    let mut s = Session::try_open(&id, &coord.addr).await.unwrap();
    let e = s.upload(batch(&cq, 0, 1001)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("exceeds 1000"), "{e:?}");

    // A message over --max-message-mib is refused by the transport, before any decoding.
    let mut s = Session::try_open(&id, &coord.addr).await.unwrap();
    let mut big = record(&cq, 0, "10.0.0.1");
    big.hops[0].tcp_flags = Some("x".repeat(2 << 20));
    eprintln!("big message: {} bytes", prost::Message::encoded_len(&big));
    let e = s.upload(vec![big]).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e:?}"
    );
    eprintln!("oversized message: {:?}: {}", e.code(), e.message());

    let mut s = Session::try_open(&id, &coord.addr).await.unwrap();
    // The burst goes at once; the next 100 are held back about a second.
    assert_eq!(s.upload(batch(&cq, 0, 200)).await.unwrap(), 200);
    let t = Instant::now();
    assert_eq!(s.upload(batch(&cq, 200, 100)).await.unwrap(), 100);
    let paced = t.elapsed();
    assert!(paced >= Duration::from_millis(800), "paced {paced:?}");
    // 600 more would need six seconds, beyond the pacing limit: refused, not stored.
    let e = s.upload(batch(&cq, 300, 600)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("quota"), "{e:?}");
    let stored = coord.ok(&["traces", "--campaign", &cq, "--json"]);
    assert_eq!(stored.lines().count(), 300);

    // Refused uploads (a campaign never issued) are paced by the quota too: the burst
    // goes at once, then a second per 100.
    let id2 = enrol(&coord.token("flood-2")).await;
    let mut s = Session::try_open(&id2, &coord.addr).await.unwrap();
    let t = Instant::now();
    for i in 0..4 {
        let ack = s
            .upload_acked(Up::TraceBatch(v1::TraceBatch {
                results: batch("c-invented", i * 100, 100),
            }))
            .await
            .unwrap();
        assert_eq!(ack.refused.len(), 1);
    }
    let paced = t.elapsed();
    assert!(paced >= Duration::from_millis(1800), "paced {paced:?}");
}

/// `--max-streams 2`: a reader with two streams open is refused a third at once with
/// ResourceExhausted, on the same connection and on a fresh one; an agent's uploads,
/// another identity's subscription and the reader's own open streams carry on; closing
/// a stream gives its slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_over_the_cap_are_refused_clearly_and_stall_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(dir.path(), &["--max-streams", "2"]);
    let bundle = coord.identity("reader", "greedy");
    let id = enrol(&coord.token("ams-1")).await;
    let mut admin = ConsumerServiceClient::new(coord.admin().await);
    let created = admin
        .create_campaign(v1::CreateCampaignRequest {
            spec: Some(spec(&["192.0.2.1"])),
        })
        .await
        .unwrap()
        .into_inner();
    let mut r = ConsumerServiceClient::new(coord.channel_for(&bundle).await);
    let mut first = r
        .subscribe_traces(v1::SubscribeTracesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut second = r
        .subscribe_traces(v1::SubscribeTracesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let over = |e: tonic::Status| {
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(
            e.message().contains("2 open streams") && e.message().contains("--max-streams"),
            "says why: {}",
            e.message()
        );
    };
    // Refused at once (a queued stream would time out here), whichever connection.
    let in_time = Duration::from_secs(5);
    let same = tokio::time::timeout(
        in_time,
        r.query_traces(v1::QueryTracesRequest {
            campaign_id: Some(created.id.clone()),
            ..Default::default()
        }),
    )
    .await
    .expect("a clear answer, not a queued stream");
    over(same.unwrap_err());
    let mut r2 = ConsumerServiceClient::new(coord.channel_for(&bundle).await);
    let fresh = tokio::time::timeout(
        in_time,
        r2.subscribe_diversions(v1::SubscribeDiversionsRequest::default()),
    )
    .await
    .expect("a clear answer");
    over(fresh.unwrap_err());
    // Unary calls still pass beside the streams.
    r.list_agents(v1::ListAgentsRequest {}).await.unwrap();

    // Everyone else carries on: another identity subscribes, an agent's upload is acked,
    // and the trace reaches every open stream.
    let mut watcher = admin
        .subscribe_traces(v1::SubscribeTracesRequest::default())
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut s = Session::try_open(&id, &id.addr).await.unwrap();
    let records: Vec<_> = (0..3)
        .map(|i| record(&created.id, 0, &format!("192.0.2.{}", i + 1)))
        .collect();
    assert_eq!(s.upload(records).await.unwrap(), 3);
    for sub in [&mut first, &mut second, &mut watcher] {
        let got = tokio::time::timeout(in_time, sub.message())
            .await
            .expect("trace in time")
            .unwrap()
            .unwrap();
        assert_eq!(got.vantage, "ams-1");
    }

    // Closing one gives its slot back (once the server has seen the reset).
    drop(second);
    let deadline = Instant::now() + in_time;
    loop {
        match r2
            .subscribe_diversions(v1::SubscribeDiversionsRequest::default())
            .await
        {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("slot not given back: {e:?}"),
        }
    }
}

/// Uploads only for campaigns issued to the agent: an invented campaign and someone
/// else's are acknowledged as refused (so a spool drops them instead of re-sending them
/// forever) and nothing of them is stored; late results of a cancelled campaign are
/// kept; issuance survives a kill -9 right after a campaign is pushed, and a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_only_for_campaigns_issued_to_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mut coord = Coordinator::start(dir.path(), &[]);
    let a1 = enrol(&coord.token("a1")).await;
    let a2 = enrol(&coord.token("a2")).await;
    let c = coord.campaign("name:a1");
    let mut s1 = Session::try_open(&a1, &coord.addr).await.unwrap();
    let mut s2 = Session::try_open(&a2, &coord.addr).await.unwrap();

    let mut mixed = batch(&c, 0, 3);
    mixed.extend(batch("c-invented", 0, 2));
    let ack = s1
        .upload_acked(Up::TraceBatch(v1::TraceBatch { results: mixed }))
        .await
        .unwrap();
    assert_eq!(ack.result_ids.len(), 5, "refused ones are acknowledged too");
    assert_eq!(ack.refused.len(), 1, "{ack:?}");
    let r = &ack.refused[0];
    assert_eq!((r.campaign_id.as_str(), r.results), ("c-invented", 2));
    assert!(r.reason.contains("does not exist"), "{}", r.reason);
    // Someone else's campaign.
    let ack = s2
        .upload_acked(Up::TraceBatch(v1::TraceBatch {
            results: batch(&c, 10, 2),
        }))
        .await
        .unwrap();
    assert_eq!(ack.result_ids.len(), 2);
    assert_eq!(ack.refused.len(), 1);
    assert!(
        ack.refused[0]
            .reason
            .contains("never issued to agent \"a2\""),
        "{}",
        ack.refused[0].reason
    );
    // Alias results and mesh samples are held to the same rule.
    let ack = s2
        .upload_acked(Up::AliasBatch(v1::AliasBatch {
            results: vec![v1::AliasResult {
                result_id: format!("{c}/0/alias"),
                campaign_id: c.clone(),
                ..Default::default()
            }],
        }))
        .await
        .unwrap();
    assert_eq!((ack.result_ids.len(), ack.refused.len()), (1, 1));
    let ack = s2
        .upload_acked(Up::MeshBatch(v1::MeshBatch {
            samples: vec![v1::MeshSample {
                result_id: "c-invented/0/a1".into(),
                campaign_id: "c-invented".into(),
                ..Default::default()
            }],
        }))
        .await
        .unwrap();
    assert_eq!((ack.result_ids.len(), ack.refused.len()), (1, 1));
    let stored = coord.ok(&["traces", "--campaign", &c, "--json"]);
    assert_eq!(stored.lines().count(), 3);
    assert!(stored.lines().all(|l| l.contains("\"vantage\":\"a1\"")));
    let invented = coord.ok(&["traces", "--campaign", "c-invented", "--json"]);
    assert_eq!(invented.lines().count(), 0);

    // Cancelled while results were in flight: they are still the agent's to deliver.
    coord.ok(&["campaign", "cancel", &c]);
    let ack = s1
        .upload_acked(Up::TraceBatch(v1::TraceBatch {
            results: batch(&c, 3, 2),
        }))
        .await
        .unwrap();
    assert!(ack.refused.is_empty(), "{ack:?}");

    // Pushed to a live session and the coordinator killed at once: the issuance was
    // stored before the push, so after the restart the agent's results are taken.
    let d = coord.campaign("name:a1");
    loop {
        match s1.next().await.unwrap() {
            Down::Campaign(i) if i.id == d => break,
            _ => continue,
        }
    }
    coord.stop();
    drop((s1, s2));
    let coord = Coordinator::start(dir.path(), &[]);
    let mut s1 = Session::try_open(&a1, &coord.addr).await.unwrap();
    let mut resend = batch(&c, 0, 3);
    resend.extend(batch(&d, 0, 2));
    let ack = s1
        .upload_acked(Up::TraceBatch(v1::TraceBatch { results: resend }))
        .await
        .unwrap();
    assert_eq!(ack.result_ids.len(), 5);
    assert!(ack.refused.is_empty(), "{ack:?}");
    let mut s2 = Session::try_open(&a2, &coord.addr).await.unwrap();
    let ack = s2
        .upload_acked(Up::TraceBatch(v1::TraceBatch {
            results: batch(&d, 0, 1),
        }))
        .await
        .unwrap();
    assert_eq!(ack.refused.len(), 1, "still not a2's after the restart");
    let stored = coord.ok(&["traces", "--campaign", &c, "--json"]);
    assert_eq!(
        stored.lines().count(),
        5,
        "no duplicates, late results kept"
    );
    let stored = coord.ok(&["traces", "--campaign", &d, "--json"]);
    assert_eq!(stored.lines().count(), 2);
}
