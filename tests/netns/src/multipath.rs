//! Load-balanced test networks: routers in namespaces joined by veth links, where a
//! router with several next hops toward the sink has a Linux multipath route hashing on
//! the five-tuple (`fib_multipath_hash_policy=1`, IPv4 and IPv6), so each flow keeps one
//! branch and different source ports spread over all of them. Diamonds of any width and
//! a nested one; the same address plan as [`crate::Chain`] for destinations (the sink
//! answers for `10.201.0.0/16` and `fd00:201::/64`).
//!
//! Routers answer Time Exceeded from the interface the probe came in on
//! (`icmp_errors_use_inbound_ifaddr`, what IPv6 does anyway and many routers do), so the
//! router joining a diamond's branches shows one interface per branch, and
//! [`Multipath::truth`] knows which. Replies go back over each router's first
//! predecessor.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{NetError, in_netns, ip, sweep_stale, sysctl};

/// A directed graph toward the sink: node 0 is the source, the last node the sink.
#[derive(Debug, Clone)]
pub struct Topology {
    pub name: String,
    pub nodes: usize,
    /// (from, to), away from the source; link `i` is `edges[i]`.
    pub edges: Vec<(usize, usize)>,
}

impl Topology {
    /// A network of the given links; the highest-numbered node is the sink.
    fn from_edges(name: &str, edges: Vec<(usize, usize)>) -> Topology {
        let nodes = edges.iter().map(|&(a, b)| a.max(b) + 1).max().unwrap_or(1);
        Topology {
            name: name.into(),
            nodes,
            edges,
        }
    }

    /// `source — a — {b1..bw} — c — sink`: one diamond of `width` branches.
    pub fn diamond(width: usize) -> Topology {
        assert!((1..=64).contains(&width));
        let (a, c, sink) = (1, 2 + width, 3 + width);
        let mut edges = vec![(0, a)];
        for b in 2..2 + width {
            edges.push((a, b));
            edges.push((b, c));
        }
        edges.push((c, sink));
        Topology::from_edges(&format!("diamond{width}"), edges)
    }

    /// A diamond inside one branch of another: `a` splits to `p` and `q`; `p` splits
    /// again to `p1`, `p2`, which join at `pj`; `q` goes on through `q1`, `q2`; all join
    /// at `c`. Lengths are equal, so the outer diamond is hops 2–5 and the inner 3–4.
    pub fn nested() -> Topology {
        // 0 src, 1 a, 2 p, 3 q, 4 p1, 5 p2, 6 q1, 7 pj, 8 q2, 9 c, 10 sink
        let edges = vec![
            (0, 1),
            (1, 2),
            (1, 3),
            (2, 4),
            (2, 5),
            (3, 6),
            (4, 7),
            (5, 7),
            (6, 8),
            (7, 9),
            (8, 9),
            (9, 10),
        ];
        Topology::from_edges("nested", edges)
    }

    /// Load balancing of unequal width: `a` splits to `b1` and `b2`; `b1` splits again
    /// three ways (`c1`..`c3`), `b2` goes on to `c4` alone; all four join at `d`. At TTL 3
    /// `c4` takes half the flows and `c1`..`c3` a sixth each, so the hop-level count
    /// (`n_k` flows over the whole hop) leaves `b1`'s successors short: the width-asymmetry
    /// test's node control is what finds them.
    pub fn asymmetric() -> Topology {
        // 0 src, 1 a, 2 b1, 3 b2, 4 c1, 5 c2, 6 c3, 7 c4, 8 d, 9 sink
        let edges = vec![
            (0, 1),
            (1, 2),
            (1, 3),
            (2, 4),
            (2, 5),
            (2, 6),
            (3, 7),
            (4, 8),
            (5, 8),
            (6, 8),
            (7, 8),
            (8, 9),
        ];
        Topology::from_edges("asymmetric", edges)
    }

    /// Branches of unequal length: `a` splits to `p` and `q`; `p` reaches the sink
    /// directly, `q` through `q1`. At TTL 3 some flows reach the destination and others
    /// a router: a tracer that stops at the destination's first answer there misses
    /// `q1` and the longer branch whenever its first flow takes `p`.
    pub fn uneven() -> Topology {
        // 0 src, 1 a, 2 p, 3 q, 4 q1, 5 sink
        let edges = vec![(0, 1), (1, 2), (1, 3), (2, 5), (3, 4), (4, 5)];
        Topology::from_edges("uneven", edges)
    }

    /// Every interface (by TTL) and link a complete multipath trace to `dst` finds.
    /// Routers answer from the interface a probe came in on. The destination answers
    /// from its own address over IPv4; Linux sources ICMPv6 errors for an address it only
    /// routes locally (no interface has it) from the inbound interface, as for routers.
    pub fn truth(&self, dst: IpAddr) -> Truth {
        self.truth_with(dst, dst.is_ipv4())
    }

    /// As [`Topology::truth`], saying whether the destination answers as `dst` (TCP
    /// resets always do).
    pub fn truth_with(&self, dst: IpAddr, dst_answers_as_itself: bool) -> Truth {
        let v6 = dst.is_ipv6();
        let sink = self.nodes - 1;
        let iface = |l: usize| -> IpAddr {
            if self.edges[l].1 == sink && dst_answers_as_itself {
                dst
            } else {
                link_addr(l, true, v6)
            }
        };
        let mut t = Truth::default();
        // Links probes arrive over at each TTL, breadth first.
        let mut frontier: BTreeSet<usize> = self.succ(0).into_iter().collect();
        for ttl in 1u8.. {
            if frontier.is_empty() {
                break;
            }
            let mut next = BTreeSet::new();
            for &l in &frontier {
                t.interfaces.insert((ttl, iface(l)));
                for m in self.succ(self.edges[l].1) {
                    t.links.insert((iface(l), iface(m)));
                    next.insert(m);
                }
            }
            frontier = next;
        }
        t
    }

    fn succ(&self, n: usize) -> Vec<usize> {
        self.edges
            .iter()
            .enumerate()
            .filter(|(_, e)| e.0 == n)
            .map(|(i, _)| i)
            .collect()
    }

    /// The link toward the source each node routes back over (its first predecessor).
    fn back_link(&self, n: usize) -> Option<usize> {
        self.edges.iter().position(|e| e.1 == n)
    }
}

/// Addresses of link `i`: its left (source-side) end `.1`, right end `.2`.
pub fn link_v4(link: usize, right: bool) -> Ipv4Addr {
    Ipv4Addr::new(10, 210, link as u8, if right { 2 } else { 1 })
}

pub fn link_v6(link: usize, right: bool) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        0x210,
        link as u16,
        0,
        0,
        0,
        0,
        if right { 2 } else { 1 },
    )
}

fn link_addr(link: usize, right: bool, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(link_v6(link, right))
    } else {
        IpAddr::V4(link_v4(link, right))
    }
}

/// What a tracer should find: interfaces per TTL and links between consecutive TTLs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truth {
    pub interfaces: BTreeSet<(u8, IpAddr)>,
    pub links: BTreeSet<(IpAddr, IpAddr)>,
}

#[derive(Debug)]
pub struct Multipath {
    pub topo: Topology,
    pub source: String,
    pub sink: String,
    created: Vec<String>,
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

impl Multipath {
    pub fn build(topo: Topology, tag: &str) -> Result<Multipath, NetError> {
        sweep_stale();
        let k = INSTANCE.fetch_add(1, Ordering::Relaxed) % 100;
        let base = format!("{}{}-{tag}{k}", crate::PREFIX, std::process::id());
        let names: Vec<String> = (0..topo.nodes).map(|n| format!("{base}-n{n}")).collect();
        let mut mp = Multipath {
            source: names[0].clone(),
            sink: names[topo.nodes - 1].clone(),
            topo,
            created: Vec::new(),
        };
        // On error the partly built network drops here and is cleaned up.
        mp.create(&names, k)?;
        Ok(mp)
    }

    fn create(&mut self, names: &[String], k: u32) -> Result<(), NetError> {
        let topo = self.topo.clone();
        for ns in names {
            ip(&["netns", "add", ns])?;
            self.created.push(ns.clone());
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            for (key, value) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                ("net.ipv4.icmp_ratelimit", "0"),
                ("net.ipv4.icmp_msgs_per_sec", "1000000"),
                ("net.ipv4.icmp_msgs_burst", "1000000"),
                ("net.ipv6.icmp.ratelimit", "0"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
                ("net.ipv4.fib_multipath_hash_policy", "1"),
                ("net.ipv4.icmp_errors_use_inbound_ifaddr", "1"),
                ("net.ipv6.fib_multipath_hash_policy", "1"),
            ] {
                sysctl(ns, key, value)?;
            }
        }
        for (n, ns) in names.iter().enumerate() {
            // A fixed hash seed per router makes which flow takes which branch
            // reproducible; one seed for all would polarise the hashing (the flows a
            // router sends to its first branch would all take the first branch of the
            // next split too), which real routers avoid with seeds of their own. Kernels
            // before 6.11 lack the setting and pick a random seed.
            let seed = (20_181_031 + 7_919 * n as u64).to_string();
            let _ = sysctl(ns, "net.ipv4.fib_multipath_hash_seed", &seed);
        }
        let pid = std::process::id() % 100_000;
        for (i, &(l, r)) in topo.edges.iter().enumerate() {
            let (ld, rd) = (format!("m{pid}x{k}a{i}"), format!("m{pid}x{k}b{i}"));
            ip(&[
                "link", "add", &ld, "netns", &names[l], "type", "veth", "peer", "name", &rd,
                "netns", &names[r],
            ])?;
            for (ns, dev, right) in [(&names[l], &ld, false), (&names[r], &rd, true)] {
                let a4 = format!("{}/24", link_v4(i, right));
                let a6 = format!("{}/64", link_v6(i, right));
                ip(&["-n", ns, "addr", "add", &a4, "dev", dev])?;
                ip(&["-n", ns, "-6", "addr", "add", &a6, "dev", dev, "nodad"])?;
                ip(&["-n", ns, "link", "set", dev, "up"])?;
            }
        }
        let sink = topo.nodes - 1;
        for (n, ns) in names.iter().enumerate() {
            let pid = std::process::id() % 100_000;
            // Forward: toward the sink's prefixes over every successor link.
            let succ = topo.succ(n);
            if n != sink && !succ.is_empty() {
                for v6 in [false, true] {
                    let fam = if v6 { "-6" } else { "-4" };
                    let prefix = if v6 { "fd00:201::/64" } else { "10.201.0.0/16" };
                    let mut args: Vec<String> = ["-n", ns, fam, "route", "add", prefix]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                    if succ.len() == 1 {
                        args.extend(["via".into(), link_addr(succ[0], true, v6).to_string()]);
                    } else {
                        for &l in &succ {
                            args.extend([
                                "nexthop".into(),
                                "via".into(),
                                link_addr(l, true, v6).to_string(),
                                "dev".into(),
                                format!("m{pid}x{k}a{l}"),
                            ]);
                        }
                    }
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    ip(&args)?;
                }
            }
            // Back: toward the source over the first predecessor's link, unless
            // connected to it.
            if let Some(b) = topo.back_link(n)
                && b != 0
            {
                for v6 in [false, true] {
                    let fam = if v6 { "-6" } else { "-4" };
                    let src = link_addr(0, false, v6).to_string();
                    let via = link_addr(b, false, v6).to_string();
                    ip(&["-n", ns, fam, "route", "add", &src, "via", &via])?;
                }
            }
        }
        ip(&[
            "-n",
            &names[sink],
            "route",
            "add",
            "local",
            "10.201.0.0/16",
            "dev",
            "lo",
        ])?;
        ip(&[
            "-n",
            &names[sink],
            "-6",
            "route",
            "add",
            "local",
            "fd00:201::/64",
            "dev",
            "lo",
        ])?;
        Ok(())
    }

    /// The source's own address.
    pub fn source_addr(v6: bool) -> IpAddr {
        link_addr(0, false, v6)
    }

    /// The `i`-th destination behind the sink.
    pub fn destination(i: usize, v6: bool) -> IpAddr {
        crate::addr::destination(i, v6)
    }

    /// Every interface (by TTL) and link a complete multipath trace to `dst` finds.
    pub fn truth(&self, dst: IpAddr) -> Truth {
        self.topo.truth(dst)
    }

    /// See [`Topology::truth_with`].
    pub fn truth_with(&self, dst: IpAddr, dst_answers_as_itself: bool) -> Truth {
        self.topo.truth_with(dst, dst_answers_as_itself)
    }

    /// A command that runs `prog` inside the source namespace.
    pub fn in_source(&self, prog: &str) -> std::process::Command {
        in_netns(&self.source, prog)
    }
}

impl Drop for Multipath {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_truth_of_a_diamond_and_the_nested_one() {
        let dst: IpAddr = "10.201.0.1".parse().unwrap();
        let t = Topology::diamond(4).truth(dst);
        // a, 4 branches, c's 4 inbound interfaces, the destination.
        assert_eq!(t.interfaces.len(), 10);
        assert_eq!(t.links.len(), 4 + 4 + 4);
        assert!(t.interfaces.contains(&(1, "10.210.0.2".parse().unwrap())));
        assert!(t.interfaces.contains(&(4, dst)));
        let t = Topology::nested().truth(dst);
        let per_ttl: Vec<usize> = (1..=6)
            .map(|ttl| t.interfaces.iter().filter(|i| i.0 == ttl).count())
            .collect();
        // c answers from its inbound interfaces from pj and q2; pj from p1's and p2's.
        assert_eq!(per_ttl, [1, 2, 3, 3, 2, 1]);
        assert_eq!(t.links.len(), 2 + 3 + 3 + 3 + 2);
    }

    #[test]
    fn the_truth_of_branches_of_unequal_length() {
        let dst: IpAddr = "10.201.0.1".parse().unwrap();
        let t = Topology::uneven().truth(dst);
        // a; p and q; the destination (through p) and q1; the destination again.
        let at = |ttl: u8| -> Vec<IpAddr> {
            t.interfaces
                .iter()
                .filter(|i| i.0 == ttl)
                .map(|i| i.1)
                .collect()
        };
        assert_eq!(at(3), vec![dst, "10.210.4.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(at(4), vec![dst]);
        assert!(t.links.contains(&("10.210.4.2".parse().unwrap(), dst)));
        assert_eq!(t.links.len(), 2 + 2 + 1);
        // Over IPv6 the destination answers from each way in: two addresses.
        let t6 = Topology::uneven().truth("fd00:201::1".parse().unwrap());
        assert_eq!(t6.interfaces.len(), 6);
    }
}
