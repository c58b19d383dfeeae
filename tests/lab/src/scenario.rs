//! Scenario formats v1 and v2 (`shared/scenarios/FORMAT.md`): parsing and validation.
//! The routing semantics the oracle (`scenario.py`) defines — minimum-cost paths with
//! name tie-breaks, ECMP branches, events, hops and their RTT ranges — are in
//! [`route`](self::route).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario {path}: {message}")]
    Toml { path: String, message: String },
    #[error("scenario is invalid: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid(msg.into())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub version: u32,
    pub name: String,
    pub summary: String,
    pub duration_s: f64,
    pub round_s: f64,
    #[serde(default = "default_protocols")]
    pub protocols: Vec<String>,
    #[serde(default)]
    pub adversary_asns: Vec<u32>,
    #[serde(default, rename = "as")]
    pub ases: Vec<As>,
    #[serde(default, rename = "router")]
    pub routers: Vec<Router>,
    #[serde(default, rename = "link")]
    pub links: Vec<Link>,
    #[serde(default, rename = "vantage")]
    pub vantages: Vec<Vantage>,
    #[serde(default, rename = "target")]
    pub targets: Vec<Target>,
    #[serde(default, rename = "event")]
    pub events: Vec<Event>,
    /// Version 2: every vantage also traces every other vantage's `addr`.
    pub mesh: Option<bool>,
}

fn default_protocols() -> Vec<String> {
    vec!["icmp".into()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct As {
    pub asn: u32,
    pub name: String,
    pub country: String,
    #[serde(default)]
    pub prefixes: Vec<IpNet>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Router {
    pub name: String,
    pub asn: u32,
    pub addr: IpAddr,
    pub addr6: Option<IpAddr>,
    pub loc: [f64; 2],
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default = "yes")]
    pub respond: bool,
    #[serde(default)]
    pub mpls: Vec<u32>,
    /// Version 2: `"loopback"` (errors from `addr`) or `"incoming"` (from the interface
    /// the probe came in on).
    pub reply_from: Option<ReplyFrom>,
    /// Version 2: the slow path's time to generate an ICMP error, drawn per reply.
    pub icmp_delay_ms: Option<[f64; 2]>,
    /// Version 2: ICMP errors per second (token bucket, burst = rate).
    pub icmp_rate: Option<f64>,
    /// Version 2: an MPLS LSR without TTL propagation: never a hop, never answers.
    pub hidden: Option<bool>,
    /// Version 2: splits flows over equal-cost next hops.
    pub ecmp: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyFrom {
    Loopback,
    Incoming,
}

impl Router {
    pub fn is_hidden(&self) -> bool {
        self.hidden == Some(true)
    }

    pub fn is_ecmp(&self) -> bool {
        self.ecmp == Some(true)
    }

    /// The ICMP slow path's bounds, ms.
    pub fn icmp_delay(&self) -> [f64; 2] {
        self.icmp_delay_ms.unwrap_or([0.0, 0.0])
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub a: String,
    pub b: String,
    pub delay_ms: Option<f64>,
    /// Version 2: interface addresses of `a`'s and `b`'s ends.
    pub addr_a: Option<IpAddr>,
    pub addr_b: Option<IpAddr>,
    pub addr6_a: Option<IpAddr>,
    pub addr6_b: Option<IpAddr>,
    /// Version 2: routing metric (default: the delay).
    pub cost: Option<f64>,
    /// Version 2: extra wait per crossing, uniform in [0, jitter_ms].
    pub jitter_ms: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vantage {
    pub name: String,
    pub router: String,
    pub addr: IpAddr,
    pub addr6: Option<IpAddr>,
    pub loc: Option<[f64; 2]>,
    pub city: Option<String>,
    pub country: Option<String>,
    pub asn: Option<u32>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub access_delay_ms: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub name: String,
    pub prefix: IpNet,
    pub router: String,
    #[serde(default)]
    pub probe: Vec<IpAddr>,
    pub access_delay_ms: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub kind: EventKind,
    pub start_s: f64,
    pub end_s: f64,
    #[serde(default)]
    pub from: Vec<String>,
    #[serde(default)]
    pub to: Vec<String>,
    pub at: Option<String>,
    #[serde(default)]
    pub via: Vec<String>,
    #[serde(default)]
    pub routers: Vec<String>,
    pub adversary_asn: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Diversion,
    Reroute,
    Silence,
}

pub const DEFAULT_ACCESS_MS: f64 = 0.2;

/// Great-circle distance in km, as the oracle computes it.
pub fn km(a: [f64; 2], b: [f64; 2]) -> f64 {
    let (la1, lo1, la2, lo2) = (
        a[0].to_radians(),
        a[1].to_radians(),
        b[0].to_radians(),
        b[1].to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.min(1.0).sqrt().asin()
}

/// A link as routing sees it.
#[derive(Debug, Clone)]
pub struct Wire {
    pub a: usize,
    pub b: usize,
    /// One-way delay, ms.
    pub delay: f64,
    /// Routing cost in integer units of 1e-9 (the oracle's), so equal-cost paths tie
    /// exactly and the name sequence decides.
    pub units: i64,
    /// Greatest extra wait per crossing, ms.
    pub jitter: f64,
    /// Index into the scenario's `links`.
    pub link: usize,
}

/// Either end of a traced pair: FORMAT.md's *endpoints*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ep {
    Vantage(usize),
    Target(usize),
}

/// The largest delay or cost of one link, ms: 1,000 s (sums over any scenario's paths stay
/// far inside i64 units of 1e-9).
const MAX_LINK_MS: f64 = 1_000_000.0;

/// A scenario with names resolved to indices and least costs computed, ready to route.
#[derive(Debug)]
pub struct World {
    pub s: Scenario,
    router_ix: HashMap<String, usize>,
    vantage_ix: HashMap<String, usize>,
    target_ix: HashMap<String, usize>,
    pub(crate) wires: Vec<Wire>,
    /// Per router: (neighbour, wire) with the cheapest wire to each neighbour, in
    /// neighbour-name order (the tie-break).
    pub(crate) nb: Vec<Vec<(usize, usize)>>,
    /// `dist[d][r]`: least cost from router r to router d (`i64::MAX`: no way).
    pub(crate) dist: Vec<Vec<i64>>,
    /// Probe addresses of every target (defaults filled in).
    pub probes: Vec<Vec<IpAddr>>,
    /// Every address a router answers for (`addr`, `addr6`, its interfaces).
    addr_router: HashMap<IpAddr, usize>,
}

/// The keys only a version-2 file may use, where they are set.
fn v2_keys(s: &Scenario) -> Vec<String> {
    let mut keys = Vec::new();
    if s.mesh.is_some() {
        keys.push("mesh".to_string());
    }
    for r in &s.routers {
        for (k, set) in [
            ("reply_from", r.reply_from.is_some()),
            ("icmp_delay_ms", r.icmp_delay_ms.is_some()),
            ("icmp_rate", r.icmp_rate.is_some()),
            ("hidden", r.hidden.is_some()),
            ("ecmp", r.ecmp.is_some()),
        ] {
            if set {
                keys.push(format!("router {}: {k}", r.name));
            }
        }
    }
    for l in &s.links {
        for (k, set) in [
            ("addr_a", l.addr_a.is_some()),
            ("addr_b", l.addr_b.is_some()),
            ("addr6_a", l.addr6_a.is_some()),
            ("addr6_b", l.addr6_b.is_some()),
            ("cost", l.cost.is_some()),
            ("jitter_ms", l.jitter_ms.is_some()),
        ] {
            if set {
                keys.push(format!("link {}-{}: {k}", l.a, l.b));
            }
        }
    }
    keys
}

impl World {
    pub fn load(path: &Path) -> Result<World, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        World::parse(&text).map_err(|e| match e {
            ScenarioError::Toml { message, .. } => ScenarioError::Toml {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<World, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Toml {
            path: "<text>".into(),
            message: e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_string()
                + &e.span()
                    .map(|sp| format!(" (at byte {})", sp.start))
                    .unwrap_or_default(),
        })?;
        World::new(s)
    }

    pub fn new(s: Scenario) -> Result<World, ScenarioError> {
        if s.version != 1 && s.version != 2 {
            return Err(invalid(format!(
                "version must be 1 or 2, not {}",
                s.version
            )));
        }
        if s.version == 1
            && let Some(k) = v2_keys(&s).first()
        {
            return Err(invalid(format!(
                "{k} is a version-2 key (version-2 keys: set version = 2)"
            )));
        }
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(invalid(format!("name {:?} must match [a-z0-9-]+", s.name)));
        }
        if !(s.duration_s > 0.0 && s.round_s > 0.0) {
            return Err(invalid("duration_s and round_s must be positive"));
        }
        for p in &s.protocols {
            if !matches!(p.as_str(), "icmp" | "udp" | "tcp") {
                return Err(invalid(format!("unknown protocol {p:?}")));
            }
        }
        let asns: HashMap<u32, &As> = s.ases.iter().map(|a| (a.asn, a)).collect();
        let mut router_ix = HashMap::new();
        for (i, r) in s.routers.iter().enumerate() {
            if router_ix.insert(r.name.clone(), i).is_some() {
                return Err(invalid(format!("duplicate router {}", r.name)));
            }
            if !asns.contains_key(&r.asn) {
                return Err(invalid(format!(
                    "router {}: AS{} not declared",
                    r.name, r.asn
                )));
            }
            if let Some(origin) = origin(&s.ases, r.addr)
                && origin != r.asn
            {
                return Err(invalid(format!(
                    "router {}: {} is originated by AS{origin}, not AS{}",
                    r.name, r.addr, r.asn
                )));
            }
            let [lo, hi] = r.icmp_delay();
            if !(0.0 <= lo && lo <= hi && hi.is_finite()) {
                return Err(invalid(format!(
                    "router {}: icmp_delay_ms must be [lo, hi] with 0 <= lo <= hi",
                    r.name
                )));
            }
            if r.icmp_rate.is_some_and(|x| !(x > 0.0 && x.is_finite())) {
                return Err(invalid(format!(
                    "router {}: icmp_rate must be a positive number",
                    r.name
                )));
            }
        }
        // Addresses: a router's or vantage's own, then interface addresses, each held by
        // one router (one port may serve several links: an exchange LAN).
        let mut addr_router: HashMap<IpAddr, usize> = HashMap::new();
        let mut used: HashMap<IpAddr, String> = HashMap::new();
        for (i, r) in s.routers.iter().enumerate() {
            for a in [Some(r.addr), r.addr6].into_iter().flatten() {
                used.insert(a, format!("{}'s address", r.name));
                addr_router.insert(a, i);
            }
        }
        for v in &s.vantages {
            for a in [Some(v.addr), v.addr6].into_iter().flatten() {
                used.insert(a, format!("vantage {}'s address", v.name));
            }
        }
        let mut wires = Vec::new();
        let mut nb: Vec<Vec<(usize, usize)>> = vec![Vec::new(); s.routers.len()];
        for (li, l) in s.links.iter().enumerate() {
            let w = format!("link {}-{}", l.a, l.b);
            let a = *router_ix
                .get(&l.a)
                .ok_or_else(|| invalid(format!("{w}: unknown router {}", l.a)))?;
            let b = *router_ix
                .get(&l.b)
                .ok_or_else(|| invalid(format!("{w}: unknown router {}", l.b)))?;
            let delay = l
                .delay_ms
                .unwrap_or_else(|| km(s.routers[a].loc, s.routers[b].loc) * 1.5 / 200.0 + 0.05);
            if !(delay >= 0.0 && delay.is_finite()) {
                return Err(invalid(format!("{w}: bad delay {delay}")));
            }
            let cost = l.cost.unwrap_or(delay);
            // Costs add up along paths in integer units of 1e-9: a bound per link keeps
            // any sum far from i64's limit (found by fuzzing the scenario parser).
            if cost > MAX_LINK_MS || delay > MAX_LINK_MS {
                return Err(invalid(format!(
                    "{w}: delay_ms and cost must be at most {MAX_LINK_MS} ms"
                )));
            }
            let units = (cost * 1e9).round();
            if s.version == 2 && !(units > 0.0 && units.is_finite()) {
                return Err(invalid(format!(
                    "{w}: cost must be positive (set cost where delay_ms is 0)"
                )));
            }
            let jitter = l.jitter_ms.unwrap_or(0.0);
            if !(jitter >= 0.0 && jitter.is_finite()) {
                return Err(invalid(format!("{w}: jitter_ms must be >= 0")));
            }
            for (k, addr, owner, six) in [
                ("addr_a", l.addr_a, a, false),
                ("addr_b", l.addr_b, b, false),
                ("addr6_a", l.addr6_a, a, true),
                ("addr6_b", l.addr6_b, b, true),
            ] {
                let Some(ip) = addr else { continue };
                if six && !ip.is_ipv6() {
                    return Err(invalid(format!("{w}: {k} must be IPv6")));
                }
                if let Some(holder) = used.get(&ip)
                    && addr_router.get(&ip) != Some(&owner)
                {
                    return Err(invalid(format!("{w}: {k} {ip} is also {holder}")));
                }
                used.insert(ip, format!("{w} {k}"));
                addr_router.insert(ip, owner);
            }
            let wi = wires.len();
            wires.push(Wire {
                a,
                b,
                delay,
                units: units as i64,
                jitter,
                link: li,
            });
            for (x, y) in [(a, b), (b, a)] {
                match nb[x].iter_mut().find(|(n, _)| *n == y) {
                    Some(slot) => {
                        if wires[wi].units < wires[slot.1].units {
                            slot.1 = wi;
                        }
                    }
                    None => nb[x].push((y, wi)),
                }
            }
        }
        for list in &mut nb {
            list.sort_by(|x, y| s.routers[x.0].name.cmp(&s.routers[y.0].name));
        }
        let mut vantage_ix = HashMap::new();
        for (i, v) in s.vantages.iter().enumerate() {
            if vantage_ix.insert(v.name.clone(), i).is_some() {
                return Err(invalid(format!("duplicate vantage {}", v.name)));
            }
            if !router_ix.contains_key(&v.router) {
                return Err(invalid(format!(
                    "vantage {}: unknown router {}",
                    v.name, v.router
                )));
            }
        }
        let mut target_ix = HashMap::new();
        let mut probes = Vec::new();
        for (i, t) in s.targets.iter().enumerate() {
            if target_ix.insert(t.name.clone(), i).is_some() {
                return Err(invalid(format!("duplicate target {}", t.name)));
            }
            if s.version == 2 && vantage_ix.contains_key(&t.name) {
                return Err(invalid(format!(
                    "a vantage and a target share the name {}",
                    t.name
                )));
            }
            if !router_ix.contains_key(&t.router) {
                return Err(invalid(format!(
                    "target {}: unknown router {}",
                    t.name, t.router
                )));
            }
            let p = if t.probe.is_empty() {
                vec![first_host(t.prefix)]
            } else {
                t.probe.clone()
            };
            for a in &p {
                if !t.prefix.contains(a) {
                    return Err(invalid(format!(
                        "target {}: probe {a} outside {}",
                        t.name, t.prefix
                    )));
                }
            }
            probes.push(p);
        }
        for e in &s.events {
            let check = |n: &String| {
                router_ix
                    .contains_key(n)
                    .then_some(())
                    .ok_or_else(|| invalid(format!("event: unknown router {n}")))
            };
            if let Some(at) = &e.at {
                check(at)?;
            }
            for r in e.via.iter().chain(&e.routers) {
                check(r)?;
            }
            // Version 2: `from` and `to` may name any endpoint.
            let any = s.version == 2;
            for v in &e.from {
                if v != "*" && !vantage_ix.contains_key(v) && !(any && target_ix.contains_key(v)) {
                    let what = if any { "endpoint" } else { "vantage" };
                    return Err(invalid(format!("event: unknown {what} {v}")));
                }
            }
            for t in &e.to {
                if t != "*" && !target_ix.contains_key(t) && !(any && vantage_ix.contains_key(t)) {
                    let what = if any { "endpoint" } else { "target" };
                    return Err(invalid(format!("event: unknown {what} {t}")));
                }
            }
            if e.kind != EventKind::Silence {
                let at =
                    e.at.as_ref()
                        .ok_or_else(|| invalid("diversion/reroute event without `at`"))?;
                if e.via.is_empty() {
                    return Err(invalid("diversion/reroute event without `via`"));
                }
                let chain: Vec<usize> = std::iter::once(at)
                    .chain(&e.via)
                    .map(|n| router_ix[n])
                    .collect();
                for w in chain.windows(2) {
                    if !nb[w[0]].iter().any(|(n, _)| *n == w[1]) {
                        return Err(invalid(format!(
                            "event: {} and {} are not linked",
                            s.routers[w[0]].name, s.routers[w[1]].name
                        )));
                    }
                }
            }
            if e.kind == EventKind::Diversion {
                let asn = e
                    .adversary_asn
                    .ok_or_else(|| invalid("diversion without adversary_asn"))?;
                if s.routers[router_ix[&e.via[0]]].asn != asn {
                    return Err(invalid("diversion: via[0] must belong to adversary_asn"));
                }
            }
        }
        let dist = route::least_costs(&wires, &nb);
        let w = World {
            s,
            router_ix,
            vantage_ix,
            target_ix,
            wires,
            nb,
            dist,
            probes,
            addr_router,
        };
        if w.is_v2() {
            w.check_v2()?;
        }
        Ok(w)
    }

    pub fn is_v2(&self) -> bool {
        self.s.version == 2
    }

    pub fn mesh(&self) -> bool {
        self.s.mesh == Some(true)
    }

    pub fn router(&self, name: &str) -> Option<usize> {
        self.router_ix.get(name).copied()
    }

    pub fn vantage(&self, name: &str) -> Option<usize> {
        self.vantage_ix.get(name).copied()
    }

    pub fn target(&self, name: &str) -> Option<usize> {
        self.target_ix.get(name).copied()
    }

    /// The endpoint of that name (a vantage or a target).
    pub fn endpoint(&self, name: &str) -> Option<Ep> {
        self.vantage(name)
            .map(Ep::Vantage)
            .or_else(|| self.target(name).map(Ep::Target))
    }

    /// The target whose prefix holds `addr` (the longest, if nested).
    pub fn target_of(&self, addr: IpAddr) -> Option<usize> {
        self.s
            .targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.prefix.contains(&addr))
            .max_by_key(|(_, t)| t.prefix.prefix_len())
            .map(|(i, _)| i)
    }

    pub fn vantage_by_addr(&self, addr: IpAddr) -> Option<usize> {
        self.s
            .vantages
            .iter()
            .position(|v| v.addr == addr || v.addr6 == Some(addr))
    }

    /// The router that holds `addr` (its own address or an interface's).
    pub fn router_by_addr(&self, addr: IpAddr) -> Option<usize> {
        self.addr_router.get(&addr).copied()
    }

    /// Every (start_s, end_s) edge, like the oracle's `edges()`.
    pub fn edges(&self) -> Vec<f64> {
        let mut ts = vec![0.0];
        for e in &self.s.events {
            ts.push(e.start_s);
            ts.push(e.end_s);
        }
        ts.retain(|t| *t < self.s.duration_s);
        ts.sort_by(f64::total_cmp);
        ts.dedup();
        ts
    }

    /// AS number → (name, country), for the coordinator's tables.
    pub fn as_table(&self) -> BTreeMap<u32, (&str, &str)> {
        self.s
            .ases
            .iter()
            .map(|a| (a.asn, (a.name.as_str(), a.country.as_str())))
            .collect()
    }
}

fn origin(ases: &[As], addr: IpAddr) -> Option<u32> {
    ases.iter()
        .flat_map(|a| a.prefixes.iter().map(move |p| (p, a.asn)))
        .filter(|(p, _)| p.contains(&addr))
        .max_by_key(|(p, _)| p.prefix_len())
        .map(|(_, asn)| asn)
}

/// The first host address of a prefix (network address + 1, like Python's `hosts()`).
fn first_host(p: IpNet) -> IpAddr {
    match p {
        IpNet::V4(n) if n.prefix_len() >= 31 => IpAddr::V4(n.network()),
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + 1).into()),
        IpNet::V6(n) if n.prefix_len() >= 127 => IpAddr::V6(n.network()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + 1).into()),
    }
}

pub mod route;

#[cfg(test)]
pub(crate) mod tests;
