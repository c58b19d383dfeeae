//! Scenario format v1 (`shared/scenarios/FORMAT.md`): parsing, validation, and the
//! routing semantics the oracle (`scenario.py`) defines — minimum-delay paths with
//! lexicographic tie-breaks, events that divert, re-route or silence, RTTs per hop.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
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

/// A scenario with names resolved to indices, ready to route.
#[derive(Debug)]
pub struct World {
    pub s: Scenario,
    router_ix: HashMap<String, usize>,
    vantage_ix: HashMap<String, usize>,
    target_ix: HashMap<String, usize>,
    /// Per router: (neighbour, delay ms), sorted by neighbour name.
    adj: Vec<Vec<(usize, f64)>>,
    /// Probe addresses of every target (defaults filled in).
    pub probes: Vec<Vec<IpAddr>>,
    /// Normal paths, computed once: (from router, to router) → routers.
    cache: std::sync::Mutex<HashMap<(usize, usize), Vec<usize>>>,
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
        if s.version != 1 {
            return Err(invalid(format!("version must be 1, not {}", s.version)));
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
        }
        let mut adj: Vec<Vec<(usize, f64)>> = vec![Vec::new(); s.routers.len()];
        for l in &s.links {
            let a = *router_ix
                .get(&l.a)
                .ok_or_else(|| invalid(format!("link {}-{}: unknown router {}", l.a, l.b, l.a)))?;
            let b = *router_ix
                .get(&l.b)
                .ok_or_else(|| invalid(format!("link {}-{}: unknown router {}", l.a, l.b, l.b)))?;
            let d = l
                .delay_ms
                .unwrap_or_else(|| km(s.routers[a].loc, s.routers[b].loc) * 1.5 / 200.0 + 0.05);
            if !(d >= 0.0 && d.is_finite()) {
                return Err(invalid(format!("link {}-{}: bad delay {d}", l.a, l.b)));
            }
            adj[a].push((b, d));
            adj[b].push((a, d));
        }
        for list in &mut adj {
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
            for v in &e.from {
                if v != "*" && !vantage_ix.contains_key(v) {
                    return Err(invalid(format!("event: unknown vantage {v}")));
                }
            }
            for t in &e.to {
                if t != "*" && !target_ix.contains_key(t) {
                    return Err(invalid(format!("event: unknown target {t}")));
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
                    if !adj[w[0]].iter().any(|(n, _)| *n == w[1]) {
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
        Ok(World {
            s,
            router_ix,
            vantage_ix,
            target_ix,
            adj,
            probes,
            cache: std::sync::Mutex::new(HashMap::new()),
        })
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

    /// Minimum-delay path; ties broken by the lexicographically smaller name sequence.
    pub fn shortest(&self, src: usize, dst: usize) -> Option<Vec<usize>> {
        if let Ok(c) = self.cache.lock()
            && let Some(p) = c.get(&(src, dst))
        {
            return Some(p.clone());
        }
        let p = self.dijkstra(src, dst)?;
        if let Ok(mut c) = self.cache.lock() {
            c.insert((src, dst), p.clone());
        }
        Some(p)
    }

    fn dijkstra(&self, src: usize, dst: usize) -> Option<Vec<usize>> {
        // Distances in integer units of 1e-9 ms, as the oracle rounds to 9 decimals, so
        // equal-delay paths tie exactly and the name sequence decides.
        type Key = (i64, Vec<String>);
        let unit = |d: f64| (d * 1e9).round() as i64;
        let names = |p: &[usize]| -> Vec<String> {
            p.iter().map(|&i| self.s.routers[i].name.clone()).collect()
        };
        let mut best: HashMap<usize, Key> = HashMap::new();
        // (distance, names of the path, the path): ordered as the oracle's tuples.
        type Entry = Reverse<(i64, Vec<String>, Vec<usize>)>;
        let mut heap: BinaryHeap<Entry> = BinaryHeap::new();
        best.insert(src, (0, names(&[src])));
        heap.push(Reverse((0, names(&[src]), vec![src])));
        while let Some(Reverse((dist, pnames, path))) = heap.pop() {
            let node = *path.last()?;
            if best.get(&node) != Some(&(dist, pnames.clone())) {
                continue;
            }
            if node == dst {
                return Some(path);
            }
            for &(next, w) in &self.adj[node] {
                if path.contains(&next) {
                    continue;
                }
                let mut np = path.clone();
                np.push(next);
                let cand: Key = (dist + unit(w), names(&np));
                if best.get(&next).is_none_or(|b| cand < *b) {
                    best.insert(next, cand.clone());
                    heap.push(Reverse((cand.0, cand.1, np)));
                }
            }
        }
        None
    }

    pub fn link_delay(&self, a: usize, b: usize) -> f64 {
        self.adj[a]
            .iter()
            .filter(|(n, _)| *n == b)
            .map(|(_, d)| *d)
            .fold(f64::INFINITY, f64::min)
    }

    fn matches(e: &Event, vantage: &str, target: &str) -> bool {
        (e.from.iter().any(|f| f == "*" || f == vantage))
            && (e.to.iter().any(|t| t == "*" || t == target))
    }

    /// Computes every vantage-to-target path, at the start and at every event edge, on
    /// `threads` threads, so that answering a probe never waits for a route: a route is
    /// a Dijkstra with name tie-breaks (about half a millisecond on 300 routers), and the
    /// 5,000 pairs of a 50 × 100 scenario, met at the first round's start, made that
    /// round's answers late by seconds. Paths toward vantages and routers (rarely
    /// probed) are still computed on first use.
    pub fn warm_routes(&self, threads: usize) {
        let mut times = vec![0.0];
        times.extend(self.edges());
        let vantages: Vec<usize> = (0..self.s.vantages.len()).collect();
        let per = vantages.len().div_ceil(threads.max(1)).max(1);
        std::thread::scope(|scope| {
            for chunk in vantages.chunks(per) {
                let times = &times;
                scope.spawn(move || {
                    for &v in chunk {
                        for tg in 0..self.s.targets.len() {
                            for &t in times {
                                let _ = self.path(v, tg, t);
                            }
                        }
                    }
                });
            }
        });
    }

    /// Routers from the vantage's first hop to the target's last router at `t` seconds
    /// after campaign start, and the diversion/reroute event in force, if any.
    pub fn path(&self, v: usize, tg: usize, t: f64) -> Option<(Vec<usize>, Option<usize>)> {
        let vant = &self.s.vantages[v];
        let targ = &self.s.targets[tg];
        let from = self.router_ix[&vant.router];
        let to = self.router_ix[&targ.router];
        let normal = self.shortest(from, to)?;
        for (ei, e) in self.s.events.iter().enumerate() {
            if e.kind == EventKind::Silence || !(e.start_s <= t && t < e.end_s) {
                continue;
            }
            if !Self::matches(e, &vant.name, &targ.name) {
                continue;
            }
            let Some(at) = e.at.as_ref().map(|a| self.router_ix[a]) else {
                continue;
            };
            let Some(pos) = normal.iter().position(|&r| r == at) else {
                continue;
            };
            let mut p: Vec<usize> = normal[..=pos].to_vec();
            p.extend(e.via.iter().map(|n| self.router_ix[n]));
            let last = *p.last()?;
            let tail = self.shortest(last, to)?;
            p.extend_from_slice(&tail[1..]);
            return Some((p, Some(ei)));
        }
        Some((normal, None))
    }

    /// Whether a router answers at `t`.
    pub fn silent(&self, r: usize, t: f64) -> bool {
        let router = &self.s.routers[r];
        !router.respond
            || self.s.events.iter().any(|e| {
                e.kind == EventKind::Silence
                    && e.start_s <= t
                    && t < e.end_s
                    && e.routers.contains(&router.name)
            })
    }

    /// One-way delay from the vantage to hop k (1-based) along `path`: the vantage's
    /// access delay plus the first k − 1 links.
    pub fn one_way_to_hop(&self, v: usize, path: &[usize], k: usize) -> f64 {
        let mut d = self.s.vantages[v]
            .access_delay_ms
            .unwrap_or(DEFAULT_ACCESS_MS);
        for w in path[..k.min(path.len())].windows(2) {
            d += self.link_delay(w[0], w[1]);
        }
        d
    }

    /// Expected hops: (ttl, addr or None if silent, RTT ms), the destination last (addr
    /// None there: its address is whichever was probed).
    pub fn hops(&self, v: usize, tg: usize, t: f64) -> Option<Vec<(usize, Option<IpAddr>, f64)>> {
        let (path, _) = self.path(v, tg, t)?;
        let mut out = Vec::new();
        for k in 1..=path.len() {
            let r = path[k - 1];
            let addr = (!self.silent(r, t)).then_some(self.s.routers[r].addr);
            out.push((k, addr, 2.0 * self.one_way_to_hop(v, &path, k)));
        }
        let dest = self.one_way_to_hop(v, &path, path.len())
            + self.s.targets[tg]
                .access_delay_ms
                .unwrap_or(DEFAULT_ACCESS_MS);
        out.push((path.len() + 1, None, 2.0 * dest));
        Some(out)
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

#[cfg(test)]
pub(crate) mod tests;
