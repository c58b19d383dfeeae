#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Real multipath traces through Linux multipath routes in network namespaces (diamonds
//! of width 2, 4, 8, a nested one, branches of unequal length and of unequal width; IPv4
//! and IPv6): `trace --mda` finds every interface
//! and link of the topology and everything scamper's tracelb finds at confidence 95 %.
//!
//! The kernel's hash seed and our engine cookie are pinned, so which flow takes which
//! branch is the same on every run: MDA's 5 % chance to miss a branch cannot make this
//! test flaky, it would fail every time.

use std::net::IpAddr;

use tracemesh_testnet::compare::require_scamper;
use tracemesh_testnet::mda_compare::{self, Found};
use tracemesh_testnet::multipath::{Multipath, Topology};
use tracemesh_testnet::require;

const AGENT: &str = env!("CARGO_BIN_EXE_tracemesh-agent");
/// Pins the flows' source ports (`TRACEMESH_COOKIE`).
const COOKIE: u16 = 4242;

fn ours(net: &Multipath, dst: IpAddr, proto: &str, confidence: u8) -> Found {
    let mut args = vec!["--allow", "10.0.0.0/8", "--allow", "fc00::/7"];
    args.extend(["--wait-ms", "500"]);
    mda_compare::agent_mda(
        &net.source,
        AGENT,
        dst,
        proto,
        confidence,
        Some(COOKIE),
        &args,
    )
    .expect("agent runs")
}

fn topologies() -> Vec<Topology> {
    vec![
        Topology::diamond(2),
        Topology::diamond(4),
        Topology::diamond(8),
        Topology::nested(),
        // A branch one hop longer than the other: the destination answers at TTL 3 on
        // one, a router on the other (tracelb stops at the destination's answer).
        Topology::uneven(),
        // Branches of unequal width: the width-asymmetry test's node control.
        Topology::asymmetric(),
    ]
}

#[test]
#[ignore = "needs root, network namespaces and scamper"]
fn mda_finds_every_diamond_and_all_tracelb_finds() {
    require();
    require_scamper();
    for topo in topologies() {
        let name = topo.name.clone();
        let net = Multipath::build(topo, "mda").expect("build the multipath network");
        for v6 in [false, true] {
            let dst = Multipath::destination(0, v6);
            let what = format!("{name} over IPv{}", if v6 { 6 } else { 4 });
            let truth = net.truth(dst);
            let o = ours(&net, dst, "udp", 95);
            assert_eq!(o.interfaces, truth.interfaces, "{what}: interfaces");
            assert_eq!(o.links, truth.links, "{what}: links");
            let t = mda_compare::tracelb(&net.source, dst, "udp-sport", 95).expect("scamper runs");
            // Only what the network has: tracelb now and then reports a link that is not
            // there, joined across an interface it missed.
            let (mi, ml) = o.missing_from(&t);
            let mi: Vec<_> = mi
                .into_iter()
                .filter(|i| truth.interfaces.contains(i))
                .collect();
            let ml: Vec<_> = ml.into_iter().filter(|l| truth.links.contains(l)).collect();
            assert!(
                mi.is_empty() && ml.is_empty(),
                "{what}: tracelb found interfaces {mi:?} and links {ml:?} we did not"
            );
            eprintln!(
                "{what}: ours {} interfaces, {} links, {} probes; tracelb {} interfaces, {} links, {} probes",
                o.interfaces.len(),
                o.links.len(),
                o.probes,
                t.interfaces.len(),
                t.links.len(),
                t.probes
            );
        }
    }
}

#[test]
#[ignore = "needs root and network namespaces"]
fn tcp_and_icmp_flows_and_many_destinations_at_once() {
    require();
    let net = Multipath::build(Topology::diamond(4), "mdatcp").expect("build");
    for v6 in [false, true] {
        let dst = Multipath::destination(1, v6);
        // TCP varies the source port as UDP does: Linux hashes it alike. The destination
        // resets from its own address.
        let o = ours(&net, dst, "tcp", 95);
        let truth_self = net.truth_with(dst, true);
        // (ICMP echo replies also come from the destination's own address.)
        assert_eq!(o.interfaces, truth_self.interfaces, "tcp v6={v6}");
        assert_eq!(o.links, truth_self.links, "tcp v6={v6}");
        // Linux does not hash ICMP echo's checksum: one branch, and no phantom links;
        // the echo reply comes from the destination itself.
        let o = ours(&net, dst, "icmp", 95);
        assert!(
            o.interfaces.is_subset(&truth_self.interfaces),
            "icmp v6={v6}"
        );
        assert!(o.links.is_subset(&truth_self.links), "icmp v6={v6}");
        assert!(
            o.interfaces.contains(&(4, dst)),
            "icmp v6={v6}: reaches {dst}"
        );
    }
    // Twenty destinations in one run, under one global rate cap.
    let dsts: Vec<String> = (0..20)
        .map(|i| Multipath::destination(i, i % 2 == 1).to_string())
        .collect();
    let mut cmd = net.in_source(AGENT);
    cmd.env("TRACEMESH_COOKIE", COOKIE.to_string())
        .args(["trace", "--mda", "--proto", "udp", "--rate", "2000"])
        .args(["--allow", "10.0.0.0/8", "--allow", "fc00::/7"])
        .args(&dsts);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20);
    for v in &lines {
        let dst: IpAddr = v["dst"].as_str().unwrap().parse().unwrap();
        let found = mda_compare::parse_agent_mda(&serde_json::to_string(v).unwrap());
        let truth = net.truth(dst);
        assert!(found.interfaces.is_subset(&truth.interfaces), "{dst}");
        assert_eq!(v["stop_reason"], "completed", "{dst}");
    }
}
