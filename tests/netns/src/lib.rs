//! Real test networks in Linux network namespaces, for tests that send real packets.
//!
//! [`Chain`] builds `source — r1 — … — rN — sink`: one namespace per node, veth links,
//! IPv4 and IPv6 on every link, forwarding and *no* ICMP rate limits in the routers, and
//! a sink that answers for whole prefixes (local routes on `lo`), so thousands of
//! destinations cost nothing. Nothing routes out of the namespaces: probes sent inside
//! cannot leave the machine. Every namespace is deleted when the `Chain` drops, also on
//! panic; names carry the creating process id so parallel tests never collide, and
//! leftovers of dead processes are swept at the next build.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output, Stdio};

use thiserror::Error;

pub mod compare;
pub mod mda_compare;
pub mod multipath;

#[derive(Debug, Error)]
pub enum NetError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("cannot run `{cmd}`: {source} (is iproute2 installed, and are we root?)")]
    Spawn { cmd: String, source: std::io::Error },
}

/// Runs `ip` with `args`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<(), NetError> {
    run("ip", args).map(|_| ())
}

fn run(prog: &str, args: &[&str]) -> Result<Output, NetError> {
    let cmd = format!("{prog} {}", args.join(" "));
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(NetError::Command {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Whether this process may build namespaces (root with iproute2).
pub fn available() -> bool {
    Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && std::fs::metadata("/proc/self/ns/net").is_ok()
        && is_root()
}

/// For tests marked `#[ignore = "needs root and network namespaces"]`: once asked to run,
/// a missing prerequisite is a failure that says what is missing, never a silent pass.
pub fn require() {
    assert!(
        is_root(),
        "this test needs root: building network namespaces does (run `cargo test -- --ignored` as root)"
    );
    assert!(
        available(),
        "this test needs network namespaces: `ip netns list` must work (apt-get install iproute2) and /proc/self/ns/net exist"
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

const PREFIX: &str = "tmnet";

/// Deletes namespaces left behind by test processes that no longer exist.
pub fn sweep_stale() {
    sweep_stale_with(PREFIX);
}

/// Deletes namespaces named `{prefix}{pid}-...` whose process `pid` no longer exists.
pub fn sweep_stale_with(prefix: &str) {
    let Ok(out) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A chain of namespaces: `source`, `routers[..]`, `sink`.
#[derive(Debug)]
pub struct Chain {
    pub source: String,
    pub routers: Vec<String>,
    pub sink: String,
    created: Vec<String>,
}

/// Addressing of a chain with `n` routers. Link `i` joins node `i` and node `i + 1`
/// (node 0 is the source, node n + 1 the sink); its left end is `.1`, its right `.2`.
pub mod addr {
    use super::*;

    pub fn link_v4(link: usize, right: bool) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, link as u8, if right { 2 } else { 1 })
    }

    pub fn link_v6(link: usize, right: bool) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            0x200,
            link as u16,
            0,
            0,
            0,
            0,
            if right { 2 } else { 1 },
        )
    }

    /// The address router `k` (1-based) answers Time Exceeded from: its interface
    /// toward the source, which is the right end of link `k - 1`.
    pub fn router(k: usize, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(link_v6(k - 1, true))
        } else {
            IpAddr::V4(link_v4(k - 1, true))
        }
    }

    /// The source's own address.
    pub fn source(v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(link_v6(0, false))
        } else {
            IpAddr::V4(link_v4(0, false))
        }
    }

    /// The sink answers for all of 10.201.0.0/16 and fd00:201::/64.
    pub const SINK_V4: &str = "10.201.0.0/16";
    pub const SINK_V6: &str = "fd00:201::/64";

    /// The `i`-th destination behind the sink (0-based, up to 65,000).
    pub fn destination(i: usize, v6: bool) -> IpAddr {
        let i = i + 1;
        if v6 {
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0x201,
                0,
                0,
                0,
                0,
                (i >> 16) as u16,
                i as u16,
            ))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 201, (i >> 8) as u8, i as u8))
        }
    }
}

impl Chain {
    /// Builds a chain of `n` routers (1..=200). `tag` tells concurrent chains of one process
    /// apart.
    pub fn build(n: usize, tag: &str) -> Result<Chain, NetError> {
        assert!((1..=200).contains(&n), "chain length {n} out of range");
        sweep_stale();
        let base = format!("{PREFIX}{}-{tag}", std::process::id());
        let mut chain = Chain {
            source: format!("{base}-src"),
            routers: (1..=n).map(|k| format!("{base}-r{k}")).collect(),
            sink: format!("{base}-dst"),
            created: Vec::new(),
        };
        // On error, the partly built chain drops here and cleans up what exists.
        chain.create(n)?;
        Ok(chain)
    }

    fn nodes(&self) -> Vec<String> {
        let mut v = vec![self.source.clone()];
        v.extend(self.routers.iter().cloned());
        v.push(self.sink.clone());
        v
    }

    fn create(&mut self, n: usize) -> Result<(), NetError> {
        let nodes = self.nodes();
        for ns in &nodes {
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
            ] {
                sysctl(ns, key, value)?;
            }
        }
        let pid = std::process::id() % 100_000;
        for link in 0..=n {
            let (left, right) = (&nodes[link], &nodes[link + 1]);
            // Interface names are per namespace, but veth pairs are born in the caller's
            // namespace first, so they must be unique there too (15 bytes at most).
            let l = format!("v{pid}l{link}");
            let r = format!("v{pid}r{link}");
            ip(&[
                "link", "add", &l, "netns", left, "type", "veth", "peer", "name", &r, "netns",
                right,
            ])?;
            for (ns, dev, is_right) in [(left, &l, false), (right, &r, true)] {
                let a4 = format!("{}/24", addr::link_v4(link, is_right));
                let a6 = format!("{}/64", addr::link_v6(link, is_right));
                ip(&["-n", ns, "addr", "add", &a4, "dev", dev])?;
                ip(&["-n", ns, "-6", "addr", "add", &a6, "dev", dev, "nodad"])?;
                ip(&["-n", ns, "link", "set", dev, "up"])?;
            }
        }
        for (k, ns) in nodes.iter().enumerate() {
            // Toward the sink: the next node; toward the source: the previous one.
            if k <= n {
                let next4 = addr::link_v4(k, true).to_string();
                let next6 = addr::link_v6(k, true).to_string();
                ip(&["-n", ns, "route", "add", "default", "via", &next4])?;
                ip(&["-n", ns, "-6", "route", "add", "default", "via", &next6])?;
            }
            if k >= 1 {
                let prev4 = addr::link_v4(k - 1, false).to_string();
                let prev6 = addr::link_v6(k - 1, false).to_string();
                if k <= n {
                    ip(&["-n", ns, "route", "add", "10.200.0.0/16", "via", &prev4])?;
                    ip(&[
                        "-n",
                        ns,
                        "-6",
                        "route",
                        "add",
                        "fd00:200::/32",
                        "via",
                        &prev6,
                    ])?;
                } else {
                    ip(&["-n", ns, "route", "add", "default", "via", &prev4])?;
                    ip(&["-n", ns, "-6", "route", "add", "default", "via", &prev6])?;
                }
            }
        }
        // Real routers have CPUs of their own; here every hop's forwarding would run in
        // the softirq of the sender's core. Receive packet steering spreads it over all
        // cores, so the network, not the prober, stops being the bottleneck first.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(32));
        let mask = format!("{:x}", (1u64 << cpus) - 1);
        for ns in &nodes {
            let script = format!(
                "for q in /sys/class/net/*/queues/rx-*/rps_cpus; do echo {mask} > $q; done"
            );
            run("ip", &["netns", "exec", ns, "sh", "-c", &script])?;
        }
        ip(&[
            "-n",
            &self.sink,
            "route",
            "add",
            "local",
            addr::SINK_V4,
            "dev",
            "lo",
        ])?;
        ip(&[
            "-n",
            &self.sink,
            "-6",
            "route",
            "add",
            "local",
            addr::SINK_V6,
            "dev",
            "lo",
        ])?;
        Ok(())
    }

    /// A command that runs `prog` inside the source namespace.
    pub fn in_source(&self, prog: &str) -> Command {
        in_netns(&self.source, prog)
    }
}

/// A command that runs `prog` inside namespace `ns`.
pub fn in_netns(ns: &str, prog: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(prog);
    c
}

fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), NetError> {
    let setting = format!("{key}={value}");
    run("ip", &["netns", "exec", ns, "sysctl", "-q", "-w", &setting]).map(|_| ())
}

impl Drop for Chain {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends, and with them their peers.
        for ns in self.created.drain(..).rev() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addressing_is_consistent() {
        assert_eq!(addr::router(1, false).to_string(), "10.200.0.2");
        assert_eq!(addr::router(8, true).to_string(), "fd00:200:7::2");
        assert_eq!(addr::destination(0, false).to_string(), "10.201.0.1");
        assert_eq!(addr::destination(1999, false).to_string(), "10.201.7.208");
        assert_eq!(addr::destination(0, true).to_string(), "fd00:201::1");
    }

    #[test]
    #[ignore = "needs root, network namespaces and ping"]
    fn a_chain_is_built_and_removed() {
        require();
        assert!(
            Command::new("ping")
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok(),
            "this test needs ping (apt-get install iputils-ping)"
        );
        let names;
        {
            let chain = Chain::build(2, "unit").expect("chain builds");
            names = [chain.source.clone(), chain.sink.clone()];
            let out = chain
                .in_source("ping")
                .args(["-c", "1", "-W", "2", "10.201.0.9"])
                .output()
                .expect("ping runs");
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let list = run("ip", &["netns", "list"]).unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        for n in names {
            assert!(!list.contains(&n), "{n} left behind");
        }
    }
}
