//! The drawing of a multipath trace for `tracemesh-agent trace --mda --text`: per TTL
//! the interfaces found (with how many flows reached each), and under each hop the
//! links from the previous hop's interfaces, so a diamond reads top to bottom.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::IpAddr;

use super::mda::MdaResult;

pub fn write_mda_text(out: &mut impl Write, r: &MdaResult) -> io::Result<()> {
    let src = r.src.map_or_else(|| "?".to_string(), |s| s.to_string());
    let stop = serde_json::to_value(r.stop_reason)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default();
    writeln!(
        out,
        "mda to {} from {src} ({}, {} %): {stop}, {} probes, {} flows{}",
        r.dst,
        r.proto.as_str(),
        r.confidence,
        r.probes_sent,
        r.flows,
        if r.meshed { ", meshed" } else { "" }
    )?;
    let mut links: BTreeMap<(u8, IpAddr), Vec<IpAddr>> = BTreeMap::new();
    for l in &r.links {
        links.entry((l.ttl, l.from)).or_default().push(l.to);
    }
    for h in &r.hops {
        let mut line = format!("{:3} ", h.ttl);
        if h.interfaces.is_empty() {
            line.push_str(" *");
        }
        for i in &h.interfaces {
            line.push_str(&format!(" {} ({}, {:.3} ms)", i.addr, i.flows, i.rtt_ms));
        }
        if h.stars > 0 && !h.interfaces.is_empty() {
            line.push_str(&format!(" * ({})", h.stars));
        }
        writeln!(out, "{line}")?;
        let width = h.interfaces.len();
        for i in &h.interfaces {
            let Some(next) = links.get(&(h.ttl, i.addr)) else {
                continue;
            };
            // A single path needs no arrows; draw only where the path splits or merges.
            let split = next.len() > 1;
            let merge = width > 1;
            if split || merge {
                let to: Vec<String> = next.iter().map(ToString::to_string).collect();
                writeln!(out, "      {} -> {}", i.addr, to.join(", "))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::mda::{MdaHop, MdaInterface, MdaLink, MdaStop};
    use crate::probe::model::Proto;

    fn iface(a: &str, flows: u32) -> MdaInterface {
        MdaInterface {
            addr: a.parse().unwrap(),
            flows,
            rtt_ms: 1.0,
            icmp_type: Some(11),
            icmp_code: Some(0),
            reply_ttl: 63,
        }
    }

    #[test]
    fn a_diamond_is_drawn_with_its_links() {
        let link = |ttl, f: &str, t: &str| MdaLink {
            ttl,
            from: f.parse().unwrap(),
            to: t.parse().unwrap(),
        };
        let r = MdaResult {
            kind: "mda".into(),
            dst: "10.9.9.9".parse().unwrap(),
            src: Some("10.0.0.1".parse().unwrap()),
            proto: Proto::Udp,
            confidence: 95,
            stop_reason: MdaStop::Completed,
            start: 0.0,
            probes_sent: 40,
            flows: 11,
            meshed: false,
            hops: vec![
                MdaHop {
                    ttl: 1,
                    interfaces: vec![iface("10.0.1.1", 11)],
                    stars: 0,
                    probes: 11,
                },
                MdaHop {
                    ttl: 2,
                    interfaces: vec![iface("10.0.2.1", 5), iface("10.0.2.2", 6)],
                    stars: 0,
                    probes: 11,
                },
                MdaHop {
                    ttl: 3,
                    interfaces: vec![iface("10.9.9.9", 11)],
                    stars: 0,
                    probes: 11,
                },
            ],
            links: vec![
                link(1, "10.0.1.1", "10.0.2.1"),
                link(1, "10.0.1.1", "10.0.2.2"),
                link(2, "10.0.2.1", "10.9.9.9"),
                link(2, "10.0.2.2", "10.9.9.9"),
            ],
        };
        let mut out = Vec::new();
        write_mda_text(&mut out, &r).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("mda to 10.9.9.9 from 10.0.0.1 (udp, 95 %): completed, 40 probes")
        );
        assert!(text.contains("10.0.1.1 -> 10.0.2.1, 10.0.2.2"), "{text}");
        assert!(text.contains("10.0.2.2 -> 10.9.9.9"), "{text}");
        assert!(
            text.contains("  2  10.0.2.1 (5, 1.000 ms) 10.0.2.2 (6, 1.000 ms)"),
            "{text}"
        );
    }
}
