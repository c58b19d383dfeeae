//! Hop annotation: IP → origin AS (longest-prefix match), AS name and country, IXP LAN.
//!
//! Loaders for the usual public sources live in submodules; the [`Annotator`] is the
//! in-memory index the detector queries for every hop, so lookups borrow rather than
//! allocate.

mod error;
mod input;
pub mod ixp;
pub mod mrt;
pub mod names;
pub mod pfx2as;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

pub use error::AnnotateError;
pub use input::open_decompressed;
pub use ixp::{
    Facility, IxpLan, exchange_cities, load_facilities, load_peeringdb, parse_facilities,
    parse_peeringdb,
};
pub use mrt::{MrtLoad, load_mrt_file, read_mrt_rib};
pub use names::{
    AsInfo, load_as2org, load_asnames, parse_as2org, parse_asnames, split_name_country,
};
pub use pfx2as::{
    Origin, PrefixLineError, load_prefix_file, parse_origin, parse_prefix_line, read_prefix_table,
};

/// What is known about one address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Annotation<'a> {
    /// The most specific announced prefix covering the address.
    pub prefix: Option<IpNet>,
    pub origin: Option<&'a Origin>,
    /// The primary origin AS (first listed for MOAS prefixes).
    pub asn: Option<u32>,
    pub as_name: Option<&'a str>,
    pub country: Option<&'a str>,
    /// Name of the exchange when the address is on an IXP peering LAN.
    pub ixp: Option<&'a str>,
}

/// Source of [`Annotator::generation`] values: process-wide, so two annotators never
/// share one after either has been changed.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Default)]
pub struct Annotator {
    /// Changes whenever the index does, so a consumer caching per-address answers (the
    /// detector) knows when its cache went stale, e.g. after a reload.
    generation: u64,
    v4: PrefixMap<Ipv4Net, Origin>,
    v6: PrefixMap<Ipv6Net, Origin>,
    names: HashMap<u32, AsInfo>,
    ixp4: PrefixMap<Ipv4Net, u32>,
    ixp6: PrefixMap<Ipv6Net, u32>,
    ixp_names: Vec<String>,
}

impl Annotator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Identifies the current contents: any change gives a value never seen before.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn changed(&mut self) {
        self.generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds or replaces the origin of a prefix (later sources win, so a fresher table
    /// can be layered over an older one).
    pub fn insert_prefix(&mut self, prefix: IpNet, origin: Origin) {
        self.changed();
        match prefix.trunc() {
            IpNet::V4(p) => {
                self.v4.insert(p, origin);
            }
            IpNet::V6(p) => {
                self.v6.insert(p, origin);
            }
        }
    }

    pub fn extend_prefixes(&mut self, entries: impl IntoIterator<Item = (IpNet, Origin)>) {
        for (p, o) in entries {
            self.insert_prefix(p, o);
        }
    }

    pub fn set_as_info(&mut self, asn: u32, info: AsInfo) {
        self.changed();
        self.names.insert(asn, info);
    }

    pub fn extend_as_info(&mut self, infos: impl IntoIterator<Item = (u32, AsInfo)>) {
        self.changed();
        self.names.extend(infos);
    }

    pub fn add_ixp_lan(&mut self, lan: &IxpLan) {
        self.changed();
        let idx = match self.ixp_names.iter().position(|n| *n == lan.ix_name) {
            Some(i) => i,
            None => {
                self.ixp_names.push(lan.ix_name.clone());
                self.ixp_names.len() - 1
            }
        } as u32;
        match lan.prefix {
            IpNet::V4(p) => {
                self.ixp4.insert(p, idx);
            }
            IpNet::V6(p) => {
                self.ixp6.insert(p, idx);
            }
        }
    }

    /// Loads a pfx2as / ipasn text table (gzip, bzip2 or plain) into the index.
    pub fn load_prefix_file(&mut self, path: &Path) -> Result<u64, AnnotateError> {
        let name = error::display_name(path);
        read_prefix_table(open_decompressed(path)?, &name, |n, o| {
            self.insert_prefix(n, o)
        })
    }

    pub fn load_asnames(&mut self, path: &Path) -> Result<usize, AnnotateError> {
        let names = load_asnames(path)?;
        let n = names.len();
        self.changed();
        self.names.extend(names);
        Ok(n)
    }

    pub fn prefix_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn as_info(&self, asn: u32) -> Option<&AsInfo> {
        self.names.get(&asn)
    }

    pub fn as_country(&self, asn: u32) -> Option<&str> {
        self.names.get(&asn).and_then(|i| i.country.as_deref())
    }

    /// Longest-prefix match only: the hot path for hop-by-hop AS paths. Special-purpose
    /// addresses (private, shared CGNAT space, loopback, link-local, ULA, multicast) get
    /// no origin even when a table lists one: real RIBs do leak such prefixes (the 2015
    /// pyasn table maps 100.123.0.0/16 to a Belarusian AS), and attributing a carrier's
    /// internal hop to whoever leaked the prefix would invent AS crossings.
    pub fn origin(&self, addr: IpAddr) -> Option<(IpNet, &Origin)> {
        if is_special_purpose(addr) {
            return None;
        }
        match addr {
            IpAddr::V4(a) => self
                .v4
                .get_lpm(&Ipv4Net::from(a))
                .map(|(p, o)| (IpNet::V4(p), o)),
            IpAddr::V6(a) => self
                .v6
                .get_lpm(&Ipv6Net::from(a))
                .map(|(p, o)| (IpNet::V6(p), o)),
        }
    }

    pub fn asn(&self, addr: IpAddr) -> Option<u32> {
        self.origin(addr).map(|(_, o)| o.primary())
    }

    pub fn ixp(&self, addr: IpAddr) -> Option<&str> {
        let idx = match addr {
            IpAddr::V4(a) => self.ixp4.get_lpm(&Ipv4Net::from(a)).map(|(_, i)| *i),
            IpAddr::V6(a) => self.ixp6.get_lpm(&Ipv6Net::from(a)).map(|(_, i)| *i),
        }?;
        self.ixp_names.get(idx as usize).map(String::as_str)
    }

    pub fn annotate(&self, addr: IpAddr) -> Annotation<'_> {
        let found = self.origin(addr);
        let asn = found.map(|(_, o)| o.primary());
        let info = asn.and_then(|a| self.names.get(&a));
        Annotation {
            prefix: found.map(|(p, _)| p),
            origin: found.map(|(_, o)| o),
            asn,
            as_name: info.map(|i| i.name.as_str()),
            country: info.and_then(|i| i.country.as_deref()),
            ixp: self.ixp(addr),
        }
    }
}

/// Addresses that never identify a network's public interface.
pub fn is_special_purpose(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn peeringdb_facilities_parse_with_or_without_positions() {
        let dump = br#"{"data": [
            {"id": 1, "name": "Equinix FR5", "city": "Frankfurt", "country": "DE",
             "latitude": 50.1187, "longitude": 8.7369},
            {"id": 2, "name": "Somewhere", "city": "Nowhere", "country": "ZZ",
             "latitude": null, "longitude": null}]}"#;
        let f = parse_facilities(dump, "fac.json").unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].latitude, Some(50.1187));
        assert_eq!(f[1].latitude, None);
        let e = parse_facilities(b"[1, 2]", "fac.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fac.json"), "{e}");
    }

    #[test]
    fn longest_prefix_wins_and_names_join() {
        let mut a = Annotator::new();
        a.insert_prefix(net("202.97.0.0/16"), Origin::Single(4134));
        a.insert_prefix(net("202.97.10.0/24"), Origin::Single(4809));
        a.insert_prefix(
            net("2001:db8::/32"),
            Origin::Multiple(vec![64500, 64501].into()),
        );
        a.set_as_info(4809, split_name_country("CHINATELECOM-CORE-WAN-CN2, CN"));
        let x = a.annotate("202.97.10.1".parse().unwrap());
        assert_eq!(x.asn, Some(4809));
        assert_eq!(x.prefix, Some(net("202.97.10.0/24")));
        assert_eq!(x.country, Some("CN"));
        assert_eq!(x.as_name, Some("CHINATELECOM-CORE-WAN-CN2"));
        assert_eq!(a.asn("202.97.11.1".parse().unwrap()), Some(4134));
        assert_eq!(a.asn("203.0.113.1".parse().unwrap()), None);
        a.insert_prefix(net("100.64.0.0/10"), Origin::Single(6697));
        assert_eq!(
            a.asn("100.123.0.49".parse().unwrap()),
            None,
            "CGNAT space has no owner"
        );
        let v6 = a.annotate("2001:db8::1".parse().unwrap());
        assert_eq!(v6.asn, Some(64500));
        assert!(v6.origin.unwrap().contains(64501));
    }

    #[test]
    fn ixp_lan_is_reported() {
        let mut a = Annotator::new();
        a.add_ixp_lan(&IxpLan {
            prefix: net("206.223.119.0/24"),
            ix_name: "Equinix Ashburn".into(),
            country: Some("US".into()),
            city: None,
        });
        assert_eq!(
            a.ixp("206.223.119.7".parse().unwrap()),
            Some("Equinix Ashburn")
        );
        assert_eq!(a.ixp("206.223.120.7".parse().unwrap()), None);
    }
}
