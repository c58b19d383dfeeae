//! Ranges the agent never probes unless its local configuration allows them: private,
//! loopback, link-local, multicast, documentation and reserved space. An agent follows
//! instructions from a coordinator; this list is what it refuses on its own authority.

use std::net::IpAddr;

use ipnet::IpNet;
use thiserror::Error;

/// (range, why) pairs. Sources: RFC 6890 special-purpose registries.
const DEFAULT_DENY: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\""),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("2001:2::/48", "benchmarking (RFC 5180)"),
    ("2001:db8::/32", "documentation"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{addr} is in the deny-list ({range}: {why}); allow it explicitly with --allow {range}")]
pub struct Denied {
    pub addr: IpAddr,
    pub range: IpNet,
    pub why: &'static str,
}

#[derive(Debug, Clone)]
pub struct DenyList {
    deny: Vec<(IpNet, &'static str)>,
    allow: Vec<IpNet>,
}

impl Default for DenyList {
    fn default() -> Self {
        let deny = DEFAULT_DENY
            .iter()
            .map(|(r, why)| (r.parse().expect("built-in ranges parse"), *why))
            .collect();
        DenyList {
            deny,
            allow: Vec::new(),
        }
    }
}

impl DenyList {
    /// The default list with `allow` ranges lifted.
    pub fn with_allowed(allow: impl IntoIterator<Item = IpNet>) -> Self {
        let mut d = DenyList::default();
        d.allow.extend(allow);
        d
    }

    pub fn check(&self, addr: IpAddr) -> Result<(), Denied> {
        if self.allow.iter().any(|a| a.contains(&addr)) {
            return Ok(());
        }
        match self.deny.iter().find(|(r, _)| r.contains(&addr)) {
            Some(&(range, why)) => Err(Denied { addr, range, why }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_denies_special_ranges_and_passes_public_ones() {
        let d = DenyList::default();
        for a in [
            "10.1.2.3",
            "127.0.0.1",
            "192.168.1.1",
            "224.0.0.5",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "fd00::5",
            "2001:db8::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(d.check(ip(a)).is_err(), "{a} should be denied");
        }
        for a in ["8.8.8.8", "202.97.10.5", "2001:4860::8888", "4.69.0.2"] {
            assert!(d.check(ip(a)).is_ok(), "{a} should pass");
        }
    }

    #[test]
    fn allow_lifts_exactly_its_range() {
        let d = DenyList::with_allowed(["10.9.0.0/16".parse().unwrap()]);
        assert!(d.check(ip("10.9.3.4")).is_ok());
        let e = d.check(ip("10.10.0.1")).unwrap_err();
        assert_eq!(e.range, "10.0.0.0/8".parse::<IpNet>().unwrap());
        assert!(e.to_string().contains("--allow 10.0.0.0/8"));
    }
}
