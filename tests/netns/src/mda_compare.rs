//! Multipath side by side: scamper's `tracelb` and `tracemesh-agent trace --mda` toward
//! one destination, each read back as interfaces (by TTL), links and probes sent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{NetError, in_netns};

/// Interfaces (TTL, address) and links one trace lacks.
pub type Missing = (Vec<(u8, IpAddr)>, Vec<(IpAddr, IpAddr)>);

/// What one multipath trace found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub interfaces: BTreeSet<(u8, IpAddr)>,
    pub links: BTreeSet<(IpAddr, IpAddr)>,
    pub probes: u64,
    pub wall: Duration,
}

impl Found {
    /// What `other` found that this did not.
    pub fn missing_from(&self, other: &Found) -> Missing {
        (
            other
                .interfaces
                .difference(&self.interfaces)
                .copied()
                .collect(),
            other.links.difference(&self.links).copied().collect(),
        )
    }
}

fn output(
    ns: &str,
    prog: &str,
    args: &[String],
    env: &[(&str, String)],
) -> Result<(String, Duration), NetError> {
    let cmdline = format!("{prog} {}", args.join(" "));
    let t0 = Instant::now();
    let out = in_netns(ns, prog)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetError::Spawn {
            cmd: cmdline.clone(),
            source,
        })?;
    let wall = t0.elapsed();
    if !out.status.success() {
        return Err(NetError::Command {
            cmd: cmdline,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), wall))
}

/// `scamper -I "tracelb -P METHOD -c CONF DST"`. `method` as scamper names it
/// (udp-sport, udp-dport, icmp-echo, tcp-sport).
pub fn tracelb(ns: &str, dst: IpAddr, method: &str, confidence: u8) -> Result<Found, NetError> {
    let cmd = format!("tracelb -P {method} -c {confidence} {dst}");
    let (stdout, wall) = output(
        ns,
        "scamper",
        &["-O".into(), "json".into(), "-I".into(), cmd],
        &[],
    )?;
    let mut found = parse_tracelb(&stdout);
    found.wall = wall;
    Ok(found)
}

/// Reads scamper's tracelb JSON (one `"type":"tracelb"` object): each node lists the
/// probe sets of its links, each set the addresses reached at one TTL with the probes
/// (TTL, flow id) that reached them. Consecutive sets are joined where a flow reached
/// both addresses (or one side has a single address).
pub fn parse_tracelb(json_lines: &str) -> Found {
    let mut found = Found::default();
    for line in json_lines.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["type"] != "tracelb" {
            continue;
        }
        found.probes += v["probec"].as_u64().unwrap_or(0);
        let first = v["firsthop"].as_u64().unwrap_or(1) as u8;
        let mut seen_in_links: BTreeSet<IpAddr> = BTreeSet::new();
        let mut roots: Vec<(IpAddr, Option<u8>)> = Vec::new();
        for node in v["nodes"].as_array().into_iter().flatten() {
            let Some(from) = node["addr"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
                continue;
            };
            // scamper writes a node's links as one flat list of probe sets; a set
            // whose TTL is the smallest of the node's starts a new link.
            let sets: Vec<Vec<(IpAddr, u8, BTreeSet<u64>)>> = node["links"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|set| {
                    set.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|hop| {
                            let addr = hop["addr"].as_str()?.parse().ok()?;
                            let probes = hop["probes"].as_array()?;
                            let ttl = probes.iter().find_map(|p| p["ttl"].as_u64())? as u8;
                            let flows =
                                probes.iter().filter_map(|p| p["flowid"].as_u64()).collect();
                            Some((addr, ttl, flows))
                        })
                        .collect()
                })
                .collect();
            let first_ttl = sets.iter().flatten().map(|e| e.1).min();
            let mut prev: Vec<(IpAddr, u8, BTreeSet<u64>)> = Vec::new();
            for cur in sets {
                let Some(ttl) = cur.first().map(|e| e.1) else {
                    continue;
                };
                let starts = Some(ttl) == first_ttl || prev.is_empty();
                if starts {
                    prev = vec![(from, ttl.saturating_sub(1), BTreeSet::new())];
                }
                for (addr, t, _) in &cur {
                    found.interfaces.insert((*t, *addr));
                    seen_in_links.insert(*addr);
                }
                for (a, _, fa) in &prev {
                    for (b, _, fb) in &cur {
                        if starts || prev.len() == 1 || cur.len() == 1 || !fa.is_disjoint(fb) {
                            found.links.insert((*a, *b));
                        }
                    }
                }
                prev = cur;
            }
            roots.push((from, first_ttl.map(|t| t.saturating_sub(1))));
        }
        // Nodes never reached through a link (the first hop) get their TTL from their
        // links' first probe set, or the trace's first hop.
        for (addr, ttl) in roots {
            if !seen_in_links.contains(&addr) {
                found.interfaces.insert((ttl.unwrap_or(first), addr));
            }
        }
    }
    found
}

/// `tracemesh-agent trace --mda DST --proto PROTO --confidence CONF` plus `extra`;
/// `cookie` pins the agent's flows (`TRACEMESH_COOKIE`).
pub fn agent_mda(
    ns: &str,
    agent_bin: &str,
    dst: IpAddr,
    proto: &str,
    confidence: u8,
    cookie: Option<u16>,
    extra: &[&str],
) -> Result<Found, NetError> {
    let mut args: Vec<String> = [
        "trace",
        "--mda",
        "--proto",
        proto,
        "--confidence",
        &confidence.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(dst.to_string());
    let env: Vec<(&str, String)> = cookie
        .map(|c| ("TRACEMESH_COOKIE", c.to_string()))
        .into_iter()
        .collect();
    let (stdout, wall) = output(ns, agent_bin, &args, &env)?;
    let mut found = parse_agent_mda(&stdout);
    found.wall = wall;
    Ok(found)
}

/// Reads `trace --mda` JSON lines.
pub fn parse_agent_mda(json_lines: &str) -> Found {
    let mut found = Found::default();
    let ip = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<IpAddr>().ok());
    for line in json_lines.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["type"] != "mda" {
            continue;
        }
        found.probes += v["probes_sent"].as_u64().unwrap_or(0);
        for h in v["hops"].as_array().into_iter().flatten() {
            let Some(ttl) = h["ttl"].as_u64() else {
                continue;
            };
            for i in h["interfaces"].as_array().into_iter().flatten() {
                if let Some(a) = ip(&i["addr"]) {
                    found.interfaces.insert((ttl as u8, a));
                }
            }
        }
        for l in v["links"].as_array().into_iter().flatten() {
            if let (Some(a), Some(b)) = (ip(&l["from"]), ip(&l["to"])) {
                found.links.insert((a, b));
            }
        }
    }
    found
}

/// Interfaces per TTL, for reports: "1 4 4 1".
pub fn widths(f: &Found) -> String {
    let mut per: BTreeMap<u8, usize> = BTreeMap::new();
    for (t, _) in &f.interfaces {
        *per.entry(*t).or_default() += 1;
    }
    per.values()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scampers_tracelb_json_is_read_into_interfaces_and_links() {
        // Shaped like scamper 20211212's output for a 2-wide diamond (probes trimmed).
        let json = r#"{"type":"tracelb","firsthop":1,"probec":17,"nodes":[
{"addr":"10.0.0.1","q_ttl":1,"linkc":1,"links":[[{"addr":"10.0.1.1","probes":[{"ttl":2,"flowid":1},{"ttl":2,"flowid":3}]},{"addr":"10.0.1.2","probes":[{"ttl":2,"flowid":2}]}],[{"addr":"10.0.2.1","probes":[{"ttl":3,"flowid":1}]},{"addr":"10.0.2.2","probes":[{"ttl":3,"flowid":2}]}]]},
{"addr":"10.0.2.1","q_ttl":1,"linkc":1,"links":[[{"addr":"10.9.9.9","probes":[{"ttl":4,"flowid":1}]}]]},
{"addr":"10.0.2.2","q_ttl":1,"linkc":1,"links":[[{"addr":"10.9.9.9","probes":[{"ttl":4,"flowid":2}]}]]}]}"#
            .replace('\n', "");
        let f = parse_tracelb(&json);
        assert_eq!(f.probes, 17);
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        assert!(f.interfaces.contains(&(1, ip("10.0.0.1"))));
        assert!(
            f.interfaces.contains(&(3, ip("10.0.2.2"))),
            "{:?}",
            f.interfaces
        );
        assert!(f.interfaces.contains(&(4, ip("10.9.9.9"))));
        assert_eq!(f.interfaces.len(), 6);
        assert!(f.links.contains(&(ip("10.0.1.1"), ip("10.0.2.1"))));
        assert!(!f.links.contains(&(ip("10.0.1.1"), ip("10.0.2.2"))));
        assert_eq!(f.links.len(), 6, "{:?}", f.links);
        assert_eq!(widths(&f), "1 2 2 1");
    }
}
