//! Campaign decisions as pure functions of the spec, the agent's metadata and `now`:
//! validating a spec, expanding targets, which vantages a selector picks, a campaign's
//! state, and whether an agent still needs to hear of it.

use std::net::IpAddr;
use std::str::FromStr;

use tracemesh_proto::schedule;
use tracemesh_proto::v1::{self, CampaignState};

use crate::store::AgentMeta;

/// Round 0 starts this long after creation unless the operator says otherwise, so that
/// every connected agent has the instruction before the first instant.
pub const DEFAULT_START_LEAD_NS: i64 = 5_000_000_000;
/// A campaign probes at most this many addresses (a /16), to keep a typo from becoming
/// a scan of the Internet.
pub const MAX_TARGETS: usize = 65_536;
/// An alias campaign probes every address of it many times, all from each vantage.
pub const MAX_ALIAS_TARGETS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CampaignError {
    #[error("invalid agent selector {0:?}: expected all, name:X, country:CC, asn:N or tag:T")]
    BadSelector(String),
    #[error("invalid target {0:?}: expected an IP address or a CIDR prefix")]
    BadTarget(String),
    #[error("too many targets: {0} addresses (at most {MAX_TARGETS})")]
    TooManyTargets(usize),
    #[error("invalid campaign: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    All,
    Name(String),
    Country(String),
    Asn(u32),
    Tag(String),
}

impl FromStr for Selector {
    type Err = CampaignError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CampaignError::BadSelector(s.to_string());
        if s == "all" {
            return Ok(Selector::All);
        }
        let (kind, value) = s.split_once(':').ok_or_else(bad)?;
        if value.is_empty() {
            return Err(bad());
        }
        Ok(match kind {
            "name" => Selector::Name(value.to_string()),
            "country" => Selector::Country(value.to_ascii_uppercase()),
            "asn" => Selector::Asn(value.trim_start_matches("AS").parse().map_err(|_| bad())?),
            "tag" => Selector::Tag(value.to_string()),
            _ => return Err(bad()),
        })
    }
}

impl Selector {
    pub fn matches(&self, meta: &AgentMeta) -> bool {
        match self {
            Selector::All => true,
            Selector::Name(n) => meta.name == *n,
            Selector::Country(c) => meta.country.eq_ignore_ascii_case(c),
            Selector::Asn(a) => meta.asn == Some(*a),
            Selector::Tag(t) => meta.tags.iter().any(|x| x == t),
        }
    }
}

/// Selectors are OR-ed: an agent takes part if any selects it.
pub fn selects(selectors: &[String], meta: &AgentMeta) -> bool {
    selectors
        .iter()
        .filter_map(|s| s.parse::<Selector>().ok())
        .any(|s| s.matches(meta))
}

/// Addresses and prefixes → addresses, deduplicated, in the given order. Prefixes expand
/// to every address in them (for IPv4 /31 and /32 included; network and broadcast
/// addresses are probed too: they are routable destinations for traceroute purposes).
pub fn expand_targets(targets: &[String]) -> Result<Vec<String>, CampaignError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for t in targets {
        let t = t.trim();
        if let Ok(ip) = t.parse::<IpAddr>() {
            if seen.insert(ip) {
                out.push(ip.to_string());
            }
            continue;
        }
        let net: ipnet::IpNet = t
            .parse()
            .map_err(|_| CampaignError::BadTarget(t.to_string()))?;
        let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
        if host_bits > 16 || out.len() + (1usize << host_bits) > MAX_TARGETS {
            let n = if host_bits >= 63 {
                usize::MAX
            } else {
                1usize << host_bits
            };
            return Err(CampaignError::TooManyTargets(out.len().saturating_add(n)));
        }
        for ip in net.hosts_inclusive() {
            if seen.insert(ip) {
                out.push(ip.to_string());
            }
        }
    }
    if out.len() > MAX_TARGETS {
        return Err(CampaignError::TooManyTargets(out.len()));
    }
    Ok(out)
}

trait HostsInclusive {
    fn hosts_inclusive(&self) -> Box<dyn Iterator<Item = IpAddr>>;
}

impl HostsInclusive for ipnet::IpNet {
    fn hosts_inclusive(&self) -> Box<dyn Iterator<Item = IpAddr>> {
        match self.trunc() {
            ipnet::IpNet::V4(n) => {
                let lo = u32::from(n.network());
                let hi = u32::from(n.broadcast());
                Box::new((lo..=hi).map(|a| IpAddr::V4(a.into())))
            }
            ipnet::IpNet::V6(n) => {
                let lo = u128::from(n.network());
                let hi = u128::from(n.broadcast());
                Box::new((lo..=hi).map(|a| IpAddr::V6(a.into())))
            }
        }
    }
}

/// Checks a spec and builds the campaign record: targets expanded, start resolved.
pub fn build(
    id: &str,
    spec: &v1::CampaignSpec,
    now_ns: i64,
) -> Result<v1::Campaign, CampaignError> {
    let invalid = |m: &str| CampaignError::Invalid(m.to_string());
    if spec.targets.is_empty() && spec.mesh.is_none() {
        return Err(invalid("no targets"));
    }
    if spec.agents.is_empty() {
        return Err(invalid("no agent selector (use \"all\" for every agent)"));
    }
    for s in &spec.agents {
        s.parse::<Selector>()?;
    }
    if let Some(mesh) = &spec.mesh {
        if spec.alias.is_some() {
            return Err(invalid("a campaign is either an alias or a mesh campaign"));
        }
        for sel in &mesh.peers {
            sel.parse::<Selector>()?;
        }
        if mesh.train == 1 || mesh.train > 1000 {
            return Err(invalid("mesh trains have 2 to 1000 datagrams"));
        }
        if mesh.spacing_ms > 1000 {
            return Err(invalid("mesh train spacing is at most 1000 ms"));
        }
    }
    if let Some(mda) = &spec.mda {
        if spec.alias.is_some() {
            return Err(invalid("an alias campaign traces nothing: no --mda"));
        }
        if !matches!(mda.confidence, 0 | 95 | 99) {
            return Err(invalid("MDA confidence must be 95 or 99"));
        }
        if mda.budget > 65_534 {
            return Err(invalid("MDA budget is at most 65534 probes per target"));
        }
    }
    if let Some(alias) = &spec.alias {
        // The targets are router addresses; the trace method does not apply.
        if v1::AliasMethod::try_from(alias.method).is_err() {
            return Err(invalid("alias method must be mercator, ipid or both"));
        }
        if alias.rounds > 1000 {
            return Err(invalid("alias rounds must be at most 1000"));
        }
        if let Some(t) = spec
            .targets
            .iter()
            .find(|t| t.trim().parse::<IpAddr>().is_err())
        {
            return Err(invalid(&format!(
                "alias targets must be addresses (got {:?})",
                t.trim()
            )));
        }
        if spec.targets.len() > MAX_ALIAS_TARGETS {
            return Err(invalid(&format!(
                "an alias campaign resolves at most {MAX_ALIAS_TARGETS} addresses"
            )));
        }
    } else {
        let method = spec
            .method
            .as_ref()
            .ok_or_else(|| invalid("no probe method"))?;
        match v1::ProbeProtocol::try_from(method.proto) {
            Ok(v1::ProbeProtocol::Icmp | v1::ProbeProtocol::Udp | v1::ProbeProtocol::Tcp) => {}
            _ => return Err(invalid("probe protocol must be icmp, udp or tcp")),
        }
        if !(1..=16).contains(&method.attempts) {
            return Err(invalid("attempts must be between 1 and 16"));
        }
        if !(1..=255).contains(&method.max_ttl) {
            return Err(invalid("max_ttl must be between 1 and 255"));
        }
    }
    if spec.rounds == 0 {
        return Err(invalid("rounds must be at least 1"));
    }
    if spec.rounds > 1 && spec.every_s == 0 {
        return Err(invalid(
            "a campaign of several rounds needs an interval (every) of at least 1 s",
        ));
    }
    let start_at_ns = if spec.start_at_ns == 0 {
        now_ns.saturating_add(DEFAULT_START_LEAD_NS)
    } else {
        spec.start_at_ns
    };
    if schedule::last_round_start_ns(start_at_ns, spec.every_s, spec.rounds) < now_ns {
        return Err(invalid(
            "every round of this campaign would start in the past",
        ));
    }
    let expanded_targets = expand_targets(&spec.targets)?;
    let mut c = v1::Campaign {
        id: id.to_string(),
        spec: Some(spec.clone()),
        expanded_targets,
        created_at_ns: now_ns,
        start_at_ns,
        ..Default::default()
    };
    c.state = state(&c, now_ns) as i32;
    Ok(c)
}

fn every_and_rounds(c: &v1::Campaign) -> (u32, u32) {
    c.spec
        .as_ref()
        .map(|s| (s.every_s, s.rounds))
        .unwrap_or((0, 0))
}

/// Scheduled before round 0, running until the last round has started plus one interval
/// (the agents' time to finish it), finished after; cancelled overrides.
pub fn state(c: &v1::Campaign, now_ns: i64) -> CampaignState {
    if c.cancelled_at_ns.is_some() {
        return CampaignState::Cancelled;
    }
    if now_ns < c.start_at_ns {
        return CampaignState::Scheduled;
    }
    let (every, rounds) = every_and_rounds(c);
    let grace_ns = i64::from(every.max(30)) * 1_000_000_000;
    let last = schedule::last_round_start_ns(c.start_at_ns, every, rounds);
    if now_ns <= last.saturating_add(grace_ns) {
        CampaignState::Running
    } else {
        CampaignState::Finished
    }
}

/// Does this agent still need the instruction? Only while some round is yet to start.
/// A mesh campaign goes to its agents and to the peers they measure (who must send their
/// trains back), and only to those that had a mesh endpoint when it was created.
pub fn should_push(c: &v1::Campaign, meta: &AgentMeta, now_ns: i64) -> bool {
    let Some(spec) = &c.spec else { return false };
    let selected = if spec.mesh.is_some() {
        c.mesh_peers.iter().any(|p| p.name == meta.name)
    } else {
        selects(&spec.agents, meta)
    };
    c.cancelled_at_ns.is_none()
        && selected
        && schedule::next_round(c.start_at_ns, spec.every_s, spec.rounds, now_ns).is_some()
}

/// The mesh peers of a campaign from the enrolled agents that have a mesh endpoint:
/// those the campaign's selectors pick (`agent`) and those its mesh peer selectors pick
/// (`peer`; without any, the same agents).
pub fn mesh_peers(spec: &v1::CampaignSpec, agents: &[(AgentMeta, String)]) -> Vec<v1::MeshPeer> {
    let Some(mesh) = &spec.mesh else {
        return Vec::new();
    };
    let mut out: Vec<v1::MeshPeer> = agents
        .iter()
        .filter_map(|(meta, addr)| {
            let agent = selects(&spec.agents, meta);
            let peer = if mesh.peers.is_empty() {
                agent
            } else {
                selects(&mesh.peers, meta)
            };
            let sa: std::net::SocketAddr = addr.parse().ok()?;
            (agent || peer).then(|| v1::MeshPeer {
                name: meta.name.clone(),
                addr: sa.ip().to_string(),
                port: u32::from(sa.port()),
                agent,
                peer,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Who `name` measures in a mesh campaign: the peers if it is an agent of it, the agents
/// if it is a peer, never itself.
pub fn mesh_partners<'a>(c: &'a v1::Campaign, name: &str) -> Vec<&'a v1::MeshPeer> {
    let Some(me) = c.mesh_peers.iter().find(|p| p.name == name) else {
        return Vec::new();
    };
    c.mesh_peers
        .iter()
        .filter(|p| p.name != name && ((me.agent && p.peer) || (me.peer && p.agent)))
        .collect()
}

/// The instruction for agent `name`: for a mesh campaign, its partners' addresses join
/// the targets (each end traces the other) and the partners come along for the trains.
pub fn instruction(c: &v1::Campaign, name: &str) -> v1::CampaignInstruction {
    let spec = c.spec.clone().unwrap_or_default();
    let mut targets = c.expanded_targets.clone();
    let mut mesh_peers = Vec::new();
    if spec.mesh.is_some() {
        let partners = mesh_partners(c, name);
        for p in &partners {
            if !targets.contains(&p.addr) {
                targets.push(p.addr.clone());
            }
        }
        mesh_peers = partners.into_iter().cloned().collect();
        // Itself too, so that its samples carry its own mesh address.
        if let Some(me) = c.mesh_peers.iter().find(|p| p.name == name) {
            mesh_peers.push(me.clone());
        }
    }
    v1::CampaignInstruction {
        id: c.id.clone(),
        targets,
        method: spec.method,
        every_s: spec.every_s,
        rounds: spec.rounds,
        start_at_ns: c.start_at_ns,
        alias: spec.alias,
        mesh_peers,
        mesh: spec.mesh,
        mda: spec.mda,
    }
}

#[cfg(test)]
mod tests;
