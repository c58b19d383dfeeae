//! What each fuzz target does with its input: the parsers tracemesh runs on bytes from
//! the network and from files, each followed by what the real caller does next with
//! the result. A target returns normally on any input; a panic, an abort or a hang is
//! the bug AFL looks for. `cargo test -p tracemesh-fuzz` replays every seed ([`seeds`])
//! and every saved crash (`fuzz/regressions/TARGET/`) through these same functions, so a
//! fixed crash stays fixed.

use std::net::Ipv6Addr;
use std::sync::OnceLock;

use prost::Message as _;
use tracemesh::ca::{Ca, Role, role_of_cert_der};
use tracemesh::campaign;
use tracemesh::store::keys;
use tracemesh_agent::probe::packet;
use tracemesh_agent::session::spool::{self, Kind};
use tracemesh_proto::token::EnrolToken;
use tracemesh_proto::v1;

/// A raw-socket reply: IPv4 as delivered with its header, or (first byte odd) IPv6
/// without it, with hop limit and next header from the next two bytes, as `recvmsg`
/// gives them.
pub fn reply(data: &[u8]) {
    // The other bytes an agent takes from the network: a peer agent's mesh datagram.
    let _ = tracemesh_agent::mesh::Stamp::decode(data);
    match data.split_first() {
        Some((sel, rest)) if sel & 1 == 1 && rest.len() >= 2 => {
            let from = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
            let _ = packet::parse_v6(from, rest[0], rest[1], &rest[2..]);
        }
        Some((_, rest)) => {
            let _ = packet::parse_v4(rest);
            let _ = packet::parse_v4_with_id(rest);
        }
        None => {}
    }
}

/// A spool batch file as the agent reads it back after a restart, then each entry's
/// payload decoded as the session does before re-sending it.
pub fn spool(data: &[u8]) {
    if let Ok(records) = spool::parse_batch(data) {
        for r in records {
            match r.kind {
                Kind::Trace => {
                    let _ = v1::TraceRecord::decode(&*r.payload);
                }
                Kind::Alias => {
                    let _ = v1::AliasResult::decode(&*r.payload);
                }
                Kind::Mesh => {
                    let _ = v1::MeshSample::decode(&*r.payload);
                }
                Kind::Mda => {
                    let _ = v1::MdaResult::decode(&*r.payload);
                }
            }
        }
    }
}

/// The importers (`tracemesh import`): RIPE Atlas JSON, scamper JSON and warts from
/// files nobody vouches for. The first byte picks the format.
pub fn import(data: &[u8]) {
    let Some((sel, rest)) = data.split_first() else {
        return;
    };
    let _ = tracemesh::formats::read_items::<String>(import_format(*sel), rest, &mut |_| Ok(()));
}

fn import_format(sel: u8) -> &'static str {
    match sel % 3 {
        0 => "atlas",
        1 => "scamper-json",
        _ => "warts",
    }
}

/// A lab scenario file (TOML): parsed, validated and routed.
pub fn scenario(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tracemesh_lab::scenario::World::parse(text);
    }
}

/// One CA for the whole run: signing is what the handlers do with a CSR.
fn ca() -> &'static Ca {
    static CA: OnceLock<(tempfile::TempDir, Ca)> = OnceLock::new();
    let (_, ca) = CA.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory for the fuzz CA");
        let ca = Ca::load_or_create(dir.path()).expect("fuzz CA");
        (dir, ca)
    });
    ca
}

/// A gRPC request body (first byte: which message), decoded as tonic does and handled as
/// far as the coordinator goes without a store or a socket: enrolment tokens and CSRs,
/// campaign specs, identity requests, uploaded traces' store keys, and the client
/// certificate a caller presents.
pub fn grpc(data: &[u8]) {
    let Some((sel, body)) = data.split_first() else {
        return;
    };
    match sel % 6 {
        0 => {
            let Ok(m) = v1::AgentMessage::decode(body) else {
                return;
            };
            if let Some(v1::agent_message::Msg::TraceBatch(b)) = m.msg {
                for r in b.results {
                    // What the session and the store derive from an upload.
                    let _ = keys::trace_key(&r.campaign_id, r.round, "fuzz-agent", &r.dst);
                    let _ = keys::result_key("fuzz-agent", &r.result_id);
                    let start = r.start * 1e9;
                    let ns = if start.is_finite() { start as i64 } else { 0 };
                    let _ = keys::bucket(ns);
                }
            }
        }
        1 => {
            let Ok(req) = v1::EnrolRequest::decode(body) else {
                return;
            };
            if let Ok(token) = EnrolToken::decode(&req.token) {
                let _ = ca().sign_agent_csr(&token.name, &req.csr_pem);
            }
        }
        2 => {
            if let Ok(req) = v1::CreateCampaignRequest::decode(body)
                && let Some(spec) = req.spec
            {
                let _ = campaign::build("c1", &spec, 1_795_400_000_000_000_000);
            }
        }
        3 => {
            if let Ok(req) = v1::CreateIdentityRequest::decode(body)
                && let Some(role) = Role::parse(&req.role)
            {
                let _ = ca().sign_client_csr(role, &req.name, &req.csr_pem);
            }
        }
        4 => {
            let _ = role_of_cert_der(body);
        }
        _ => {
            // Index postings as they are read back from the store.
            let _ = keys::parse_postings(body);
        }
    }
}

/// Starting inputs for each target, made by the real encoders (so they follow the
/// formats as they change): `(target, name, bytes)`. `fuzz/run.sh` writes them out as
/// AFL's input corpus; the tests replay them.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use std::net::{IpAddr, Ipv4Addr};
    use tracemesh_agent::probe::model::Proto;
    let mut out = Vec::new();

    // Replies: each probe kind quoted in a time-exceeded message, and an echo reply.
    let src = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let dst = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    for proto in [Proto::Icmp, Proto::Udp, Proto::Tcp] {
        let spec = packet::ProbeSpec {
            proto,
            src,
            dst,
            ttl: 3,
            flow: packet::Flow::from_cookie(0x1234, proto),
            probe_id: 7,
        };
        let mut probe = Vec::new();
        if packet::build_probe(&spec, &mut probe).is_err() {
            continue;
        }
        let quoted = &probe[..probe.len().min(28)];
        let mut reply = vec![0u8];
        // IPv4 header from the router 203.0.113.1, TTL 61, protocol ICMP.
        let total = (20 + 8 + quoted.len()) as u16;
        reply.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0,
            0,
            61,
            1,
            0,
            0,
        ]);
        reply.extend_from_slice(&[203, 0, 113, 1, 192, 0, 2, 1]);
        // ICMP time exceeded, code 0; checksum left for the parser to ignore or check.
        reply.extend_from_slice(&[11, 0, 0, 0, 0, 0, 0, 0]);
        reply.extend_from_slice(quoted);
        out.push(("reply", format!("time-exceeded-{proto:?}"), reply));
    }
    let mut echo = vec![0u8, 0x45, 0, 0, 28, 0, 1, 0, 0, 60, 1, 0, 0];
    echo.extend_from_slice(&[198, 51, 100, 7, 192, 0, 2, 1]);
    echo.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 7]);
    out.push(("reply", "echo-reply".into(), echo));
    // IPv6: hop limit 60, ICMPv6 time exceeded quoting an IPv6 UDP header.
    let mut v6 = vec![1u8, 60, packet::IPPROTO_ICMPV6, 3, 0, 0, 0, 0, 0, 0, 0];
    v6.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, packet::IPPROTO_UDP, 1]);
    v6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    v6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
    v6.extend_from_slice(&[0x92, 0x34, 0x82, 0x9b, 0, 8, 0, 0]);
    out.push(("reply", "v6-time-exceeded".into(), v6));

    // A spool batch written by the real spool, one trace and one alias result.
    let trace = v1::TraceRecord {
        result_id: "c1/0/198.51.100.7".into(),
        campaign_id: "c1".into(),
        dst: "198.51.100.7".into(),
        hops: vec![v1::Hop {
            ttl: 1,
            addr: Some("192.0.2.254".into()),
            rtt_ms: Some(0.4),
            probes: 1,
            ..Default::default()
        }],
        start: 1_795_400_000.5,
        ..Default::default()
    };
    let alias = v1::AliasResult {
        result_id: "c2/0/alias".into(),
        campaign_id: "c2".into(),
        ..Default::default()
    };
    // Imported files: the same trace written by our own exporters in each format the
    // importers read.
    for sel in 0u8..3 {
        let mut bytes = vec![sel];
        if let Ok(mut enc) = tracemesh::formats::Encoder::new(import_format(sel), &mut bytes)
            && enc.write(&trace).is_ok()
            && enc.finish().is_ok()
        {
            out.push(("import", import_format(sel).into(), bytes));
        }
    }

    if let Ok(dir) = tempfile::tempdir()
        && let Ok((mut s, _, _)) = spool::Spool::open(dir.path())
    {
        let records = [
            spool::Record {
                id: trace.result_id.clone(),
                kind: Kind::Trace,
                payload: trace.encode_to_vec(),
            },
            spool::Record {
                id: alias.result_id.clone(),
                kind: Kind::Alias,
                payload: alias.encode_to_vec(),
            },
        ];
        if s.push(&records).is_ok() {
            for e in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(bytes) = std::fs::read(e.path()) {
                    out.push(("spool", "batch".into(), bytes));
                }
            }
        }
    }

    // Scenarios: the smallest of the project's own.
    for (name, text) in [
        (
            "diamond-v2",
            include_str!("../../tests/lab/scenarios/diamond-v2.toml"),
        ),
        (
            "tiny-diversion",
            include_str!("../../scenarios/tiny-diversion.toml"),
        ),
    ] {
        out.push(("scenario", name.into(), text.as_bytes().to_vec()));
    }

    // gRPC bodies, one per selector.
    let with = |sel: u8, body: Vec<u8>| {
        let mut v = vec![sel];
        v.extend(body);
        v
    };
    let batch = v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::TraceBatch(v1::TraceBatch {
            results: vec![trace.clone()],
        })),
    };
    out.push(("grpc", "trace-batch".into(), with(0, batch.encode_to_vec())));
    let token = EnrolToken {
        coordinator: "127.0.0.1:7443".into(),
        name: "fra-1".into(),
        secret: "c2VjcmV0".into(),
        ca_pem: ca().cert_pem().to_string(),
        expires_at: 1_795_400_000,
    };
    let csr = "-----BEGIN CERTIFICATE REQUEST-----\nMIGVMD0CAQAwADBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABA==\n-----END CERTIFICATE REQUEST-----\n";
    let enrol = v1::EnrolRequest {
        token: token.encode(),
        csr_pem: csr.into(),
        agent_version: "0".into(),
        hostname: "h".into(),
    };
    out.push(("grpc", "enrol".into(), with(1, enrol.encode_to_vec())));
    let campaign = v1::CreateCampaignRequest {
        spec: Some(v1::CampaignSpec {
            targets: vec!["198.51.100.0/30".into()],
            agents: vec!["all".into(), "country:DE".into()],
            method: Some(v1::ProbeMethod {
                proto: v1::ProbeProtocol::Udp as i32,
                attempts: 2,
                max_ttl: 16,
                ..Default::default()
            }),
            every_s: 60,
            rounds: 3,
            ..Default::default()
        }),
    };
    out.push(("grpc", "campaign".into(), with(2, campaign.encode_to_vec())));
    let identity = v1::CreateIdentityRequest {
        name: "dash".into(),
        role: "reader".into(),
        csr_pem: csr.into(),
    };
    out.push(("grpc", "identity".into(), with(3, identity.encode_to_vec())));
    if let Ok(issued) = ca().issue_client(Role::Reader, "dash")
        && let Some(der) = tracemesh::ca::pem_first_der(&issued.cert_pem)
    {
        out.push(("grpc", "client-cert".into(), with(4, der)));
    }
    let mut postings = Vec::new();
    keys::push_posting(&mut postings, 1_795_400_000_000_000_000, b"c1\0k");
    out.push(("grpc", "postings".into(), with(5, postings)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    type Target = fn(&[u8]);

    fn replay(dir: &str, target: Target) -> usize {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut n = 0;
        for (t, _, bytes) in seeds() {
            if t == dir {
                target(&bytes);
                n += 1;
            }
        }
        for sub in ["regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(sub).join(dir)) else {
                continue;
            };
            for e in entries.flatten() {
                let bytes = std::fs::read(e.path()).expect("readable input");
                target(&bytes);
                n += 1;
            }
        }
        n
    }

    #[test]
    fn every_seed_and_saved_crash_runs_clean() {
        let targets: [(&str, Target); 5] = [
            ("reply", reply),
            ("spool", spool),
            ("scenario", scenario),
            ("grpc", grpc),
            ("import", import),
        ];
        for (name, t) in targets {
            let n = replay(name, t);
            assert!(n >= 1, "{n} seeds for {name}");
        }
    }

    /// Seeds that the parsers reject would start AFL off in the error paths only.
    #[test]
    fn seeds_are_accepted_by_their_parsers() {
        for (target, name, bytes) in seeds() {
            let ok = match target {
                "reply" if bytes[0] & 1 == 1 => {
                    packet::parse_v6(Ipv6Addr::LOCALHOST, bytes[1], bytes[2], &bytes[3..]).is_ok()
                }
                "reply" => packet::parse_v4(&bytes[1..]).is_ok(),
                "spool" => spool::parse_batch(&bytes).is_ok_and(|r| r.len() == 2),
                "scenario" => {
                    tracemesh_lab::scenario::World::parse(std::str::from_utf8(&bytes).unwrap_or(""))
                        .is_ok()
                }
                "import" => {
                    let mut traces = 0;
                    let r = tracemesh::formats::read_items::<String>(
                        import_format(bytes[0]),
                        &bytes[1..],
                        &mut |i| {
                            if matches!(i, tracemesh::formats::Item::Trace(_)) {
                                traces += 1;
                            }
                            Ok(())
                        },
                    );
                    r.is_ok() && traces == 1
                }
                "grpc" => match bytes[0] {
                    0 => v1::AgentMessage::decode(&bytes[1..]).is_ok(),
                    1 => v1::EnrolRequest::decode(&bytes[1..])
                        .is_ok_and(|r| EnrolToken::decode(&r.token).is_ok()),
                    2 => v1::CreateCampaignRequest::decode(&bytes[1..]).is_ok_and(|r| {
                        campaign::build("c1", &r.spec.unwrap_or_default(), 0).is_ok()
                    }),
                    3 => v1::CreateIdentityRequest::decode(&bytes[1..]).is_ok(),
                    4 => role_of_cert_der(&bytes[1..]).is_ok(),
                    _ => keys::parse_postings(&bytes[1..]).is_some(),
                },
                _ => false,
            };
            assert!(ok, "seed {target}/{name} is rejected");
        }
    }
}
