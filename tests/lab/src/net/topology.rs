//! A lab's namespaces: the control namespace with the coordinator's bridge, and one
//! namespace per vantage whose only way out to the emulated internet is its TUN device.

use std::fs::File;

use super::{CONTROL_NET, COORDINATOR_ADDR, NetError, ip, open_tun_in};
use crate::scenario::World;

/// The namespaces of a lab, deleted on drop (also when building fails halfway).
#[derive(Debug)]
pub struct Topology {
    pub control: String,
    /// One per scenario vantage, in scenario order.
    pub vantages: Vec<String>,
    /// Each vantage's end of its control link (to the coordinator's bridge), in its
    /// namespace: what the soak takes down and up.
    pub control_links: Vec<String>,
    pub tuns: Vec<File>,
    created: Vec<String>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

fn sysctl(ns: &str, kv: &str) -> Result<(), NetError> {
    Ok(ip(&["netns", "exec", ns, "sysctl", "-q", "-w", kv])?)
}

impl Topology {
    pub fn build(world: &World) -> Result<Topology, NetError> {
        let control_net: ipnet::IpNet = CONTROL_NET.parse().map_err(|_| NetError::Collision {
            addr: CONTROL_NET.into(),
            net: CONTROL_NET,
        })?;
        for a in world.s.ases.iter().flat_map(|a| a.prefixes.iter()) {
            if control_net.contains(&a.network()) || a.contains(&control_net.network()) {
                return Err(NetError::Collision {
                    addr: a.to_string(),
                    net: CONTROL_NET,
                });
            }
        }
        tracemesh_testnet::sweep_stale_with("tml");
        let base = format!("tml{}", std::process::id());
        let mut topo = Topology {
            control: format!("{base}-ctl"),
            vantages: Vec::new(),
            control_links: Vec::new(),
            tuns: Vec::new(),
            created: Vec::new(),
        };
        ip(&["netns", "add", &topo.control])?;
        topo.created.push(topo.control.clone());
        let ctl = topo.control.clone();
        ip(&["-n", &ctl, "link", "set", "lo", "up"])?;
        ip(&["-n", &ctl, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &ctl,
            "addr",
            "add",
            &format!("{COORDINATOR_ADDR}/16"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &ctl, "link", "set", "br0", "up"])?;
        let pid = std::process::id() % 100_000;
        for (i, v) in world.s.vantages.iter().enumerate() {
            let ns = format!("{base}-v{i}");
            ip(&["netns", "add", &ns])?;
            topo.created.push(ns.clone());
            topo.vantages.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            for kv in [
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                // Agents trace each other (mesh): a vantage's kernel answers like a
                // host of the emulated internet, without its own ICMP rate limit.
                "net.ipv4.icmp_ratelimit=0",
                "net.ipv6.icmp.ratelimit=0",
            ] {
                sysctl(&ns, kv)?;
            }
            // Control link: the vantage's end in its namespace, the other on the bridge.
            let (a, b) = (format!("c{pid}v{i}"), format!("b{pid}v{i}"));
            ip(&[
                "link", "add", &a, "netns", &ns, "type", "veth", "peer", "name", &b, "netns", &ctl,
            ])?;
            let caddr = format!("198.18.{}.{}/16", 1 + i / 250, 2 + i % 250);
            ip(&["-n", &ns, "addr", "add", &caddr, "dev", &a])?;
            ip(&["-n", &ns, "link", "set", &a, "up"])?;
            topo.control_links.push(a.clone());
            ip(&["-n", &ctl, "link", "set", &b, "master", "br0"])?;
            ip(&["-n", &ctl, "link", "set", &b, "up"])?;
            // The emulated internet: everything else goes into the TUN.
            let tun = open_tun_in(&ns, "tun0")?;
            topo.tuns.push(tun);
            ip(&["-n", &ns, "link", "set", "tun0", "up"])?;
            for a in [Some(v.addr), v.addr6].into_iter().flatten() {
                let (family, host) = if a.is_ipv6() {
                    ("-6", "128")
                } else {
                    ("-4", "32")
                };
                let cidr = format!("{a}/{host}");
                let mut add = vec!["-n", ns.as_str(), family, "addr", "add", cidr.as_str()];
                add.extend(["dev", "tun0"]);
                if a.is_ipv6() {
                    add.push("nodad");
                }
                ip(&add)?;
                let src = a.to_string();
                ip(&[
                    "-n", &ns, family, "route", "add", "default", "dev", "tun0", "src", &src,
                ])?;
            }
        }
        Ok(topo)
    }
}
