//! The deployment inventory: which agents to bring up, where, on what provider.
//!
//! ```toml
//! coordinator = "203.0.113.10:7443"
//! [[agent]]
//! name = "toronto-1"
//! country = "CA"
//! city = "Toronto"
//! loc = [43.65, -79.38]
//! asn = 812
//! tags = ["canada"]
//! provider = "generic"
//! ```
//!
//! Everything is checked here, before a single token is minted, so a typo costs nothing
//! and the operator gets one line naming the agent and the field.

use std::collections::HashSet;

use serde::Deserialize;

use crate::ca::valid_name;

/// Why an inventory is refused; always one line, starting with its origin (usually the
/// file name) and, for TOML errors, the line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InventoryError {
    /// Not TOML, or not in the shape of an inventory.
    #[error("{origin}{}: {message}{}", at_line(.line), excerpt_of(.excerpt))]
    Toml {
        origin: String,
        line: Option<usize>,
        message: String,
        /// The start of the offending line, since toml's message may not name the key.
        excerpt: Option<String>,
    },
    #[error("{origin}: {problem}")]
    Invalid {
        origin: String,
        problem: InventoryProblem,
    },
}

fn at_line(line: &Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

fn excerpt_of(excerpt: &Option<String>) -> String {
    excerpt
        .as_ref()
        .map(|e| format!(" (in `{e}`)"))
        .unwrap_or_default()
}

/// What is wrong with a well-formed inventory.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InventoryProblem {
    #[error("coordinator {address:?}: {problem}")]
    Coordinator {
        address: String,
        problem: HostPortError,
    },
    #[error("no [[agent]] entries")]
    NoAgents,
    #[error("agent {name:?}: {problem}")]
    Agent { name: String, problem: AgentProblem },
    #[error("agent {0:?} is listed twice")]
    Duplicate(String),
}

/// What is wrong with one `[[agent]]`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgentProblem {
    #[error("name must be 1-64 characters from [A-Za-z0-9._-]")]
    Name,
    #[error("country {0:?} is not an ISO 3166 alpha-2 code (e.g. \"CA\")")]
    Country(String),
    #[error("loc [{lat}, {lon}] is not [latitude, longitude] in degrees")]
    Loc { lat: f64, lon: f64 },
    #[error("city contains control characters")]
    City,
    #[error("tag {0:?} must be non-empty without spaces")]
    Tag(String),
    #[error("{what} {value} is outside 1..=1000000")]
    Rate { what: &'static str, value: u32 },
    #[error("mesh_listen {0:?} must be IP:PORT or \"off\"")]
    MeshListen(String),
}

/// What is wrong with a HOST:PORT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    #[error("expected HOST:PORT, e.g. \"203.0.113.10:7443\"")]
    Shape,
    #[error("port {0:?} is not 1-65535")]
    Port(String),
    #[error("host {0:?} is not a DNS name or IP address (IPv6 goes in brackets)")]
    Host(String),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// host:port every agent dials (the coordinator's public address).
    pub coordinator: String,
    /// The agents, in the order their files are written.
    #[serde(default, rename = "agent")]
    pub agents: Vec<AgentSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    pub name: String,
    pub country: Option<String>,
    pub city: Option<String>,
    /// [latitude, longitude] in degrees.
    pub loc: Option<[f64; 2]>,
    pub asn: Option<u32>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub provider: Provider,
    /// Global probe rate cap for this agent (the agent's default when absent).
    pub rate: Option<u32>,
    /// Per-destination probe rate cap.
    pub per_dst_rate: Option<u32>,
    /// Ranges to lift from the agent's deny-list (private, documentation, ...), e.g. to
    /// trace inside a VPC.
    #[serde(default)]
    pub allow: Vec<ipnet::IpNet>,
    /// Where the agent listens for other agents (mesh campaigns, UDP): default
    /// `0.0.0.0:7444`; `"off"` for none.
    pub mesh_listen: Option<String>,
    /// The address other agents dial when it is not the VM's own (a cloud NAT's public
    /// address); default: the address the coordinator sees the agent come from.
    pub mesh_advertise: Option<String>,
}

/// Provider family. The user-data is the same for all of them (cloud-init is the common
/// ground); the family names the guide in `deploy/README.md` and is recorded in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    #[default]
    Generic,
    Aws,
    Gcp,
    Azure,
    Digitalocean,
    Hetzner,
    Vultr,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Generic => "generic",
            Provider::Aws => "aws",
            Provider::Gcp => "gcp",
            Provider::Azure => "azure",
            Provider::Digitalocean => "digitalocean",
            Provider::Hetzner => "hetzner",
            Provider::Vultr => "vultr",
        }
    }
}

impl Inventory {
    /// Parses and validates an inventory; `origin` (usually the file name) prefixes errors.
    pub fn parse(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
        let inv: Inventory = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let message = e.message().lines().next().unwrap_or("invalid TOML").trim();
            // toml's message may not name the key ("invalid length 1"); the line does.
            let excerpt = line
                .and_then(|l| text.lines().nth(l - 1))
                .map(|t| t.trim().chars().take(60).collect::<String>())
                .filter(|t| !t.is_empty());
            InventoryError::Toml {
                origin: origin.to_owned(),
                line,
                message: message.to_owned(),
                excerpt,
            }
        })?;
        inv.validate().map_err(|problem| InventoryError::Invalid {
            origin: origin.to_owned(),
            problem,
        })?;
        Ok(inv)
    }

    fn validate(&self) -> Result<(), InventoryProblem> {
        check_host_port(&self.coordinator).map_err(|problem| InventoryProblem::Coordinator {
            address: self.coordinator.clone(),
            problem,
        })?;
        if self.agents.is_empty() {
            return Err(InventoryProblem::NoAgents);
        }
        let mut seen = HashSet::new();
        for a in &self.agents {
            a.validate().map_err(|problem| InventoryProblem::Agent {
                name: a.name.clone(),
                problem,
            })?;
            if !seen.insert(a.name.as_str()) {
                return Err(InventoryProblem::Duplicate(a.name.clone()));
            }
        }
        Ok(())
    }
}

impl AgentSpec {
    fn validate(&self) -> Result<(), AgentProblem> {
        if !valid_name(&self.name) {
            return Err(AgentProblem::Name);
        }
        if let Some(c) = &self.country
            && !(c.len() == 2 && c.chars().all(|c| c.is_ascii_alphabetic()))
        {
            return Err(AgentProblem::Country(c.clone()));
        }
        if let Some([lat, lon]) = self.loc
            && !((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon))
        {
            return Err(AgentProblem::Loc { lat, lon });
        }
        if let Some(city) = &self.city
            && city.chars().any(char::is_control)
        {
            return Err(AgentProblem::City);
        }
        for t in &self.tags {
            if t.is_empty() || t.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(AgentProblem::Tag(t.clone()));
            }
        }
        if let Some(m) = &self.mesh_listen
            && m != "off"
            && m.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(AgentProblem::MeshListen(m.clone()));
        }
        for (what, v) in [("rate", self.rate), ("per_dst_rate", self.per_dst_rate)] {
            if let Some(value) = v
                && !(1..=1_000_000).contains(&value)
            {
                return Err(AgentProblem::Rate { what, value });
            }
        }
        Ok(())
    }
}

/// host:port with a non-zero port; the host is a name, an IPv4 address or `[IPv6]`.
fn check_host_port(s: &str) -> Result<(), HostPortError> {
    if s.parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.port() != 0)
    {
        return Ok(());
    }
    let (host, port) = s.rsplit_once(':').ok_or(HostPortError::Shape)?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return Err(HostPortError::Port(port.to_owned())),
    }
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if name_ok {
        Ok(())
    } else {
        Err(HostPortError::Host(host.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inventory the issue requires to be accepted as it stands.
    const ISSUE_EXAMPLE: &str = include_str!("../../../deploy/examples/inventory.toml");

    fn err(text: &str) -> String {
        Inventory::parse(text, "inv.toml").unwrap_err().to_string()
    }

    #[test]
    fn accepts_the_issue_example_as_it_stands() {
        let inv = Inventory::parse(ISSUE_EXAMPLE, "inv.toml").unwrap();
        assert_eq!(inv.coordinator, "203.0.113.10:7443");
        assert_eq!(inv.agents.len(), 1);
        let a = &inv.agents[0];
        assert_eq!(a.name, "toronto-1");
        assert_eq!(a.country.as_deref(), Some("CA"));
        assert_eq!(a.city.as_deref(), Some("Toronto"));
        assert_eq!(a.loc, Some([43.65, -79.38]));
        assert_eq!(a.asn, Some(812));
        assert_eq!(a.tags, vec!["canada".to_string()]);
        assert_eq!(a.provider, Provider::Generic);
    }

    #[test]
    fn minimal_agents_and_other_providers() {
        let inv = Inventory::parse(
            "coordinator = \"coord.example.net:7443\"\n[[agent]]\nname = \"a\"\n[[agent]]\nname = \"b\"\nprovider = \"aws\"\n",
            "x",
        )
        .unwrap();
        assert_eq!(inv.agents[0].provider, Provider::Generic);
        assert_eq!(inv.agents[1].provider, Provider::Aws);
        let inv = Inventory::parse(
            "coordinator = \"h:1\"\n[[agent]]\nname = \"a\"\nallow = [\"10.0.2.0/24\"]\nrate = 50\n",
            "x",
        )
        .unwrap();
        assert_eq!(inv.agents[0].allow, vec!["10.0.2.0/24".parse().unwrap()]);
        assert_eq!(inv.agents[0].rate, Some(50));
        Inventory::parse(
            "coordinator = \"[2001:db8::1]:7443\"\n[[agent]]\nname = \"a\"\n",
            "x",
        )
        .unwrap();
    }

    #[test]
    fn rejects_with_one_line_naming_the_problem() {
        let e = err(&ISSUE_EXAMPLE.replace("city = ", "town = "));
        assert!(e.contains("inv.toml:5") && e.contains("town"), "{e}");
        assert!(!e.contains('\n'), "{e}");

        let e = err(&ISSUE_EXAMPLE.replace("\"generic\"", "\"ovh\""));
        assert!(e.contains("ovh"), "{e}");
        assert!(!e.contains('\n'), "{e}");

        let e = err(&ISSUE_EXAMPLE.replace("203.0.113.10:7443", "203.0.113.10"));
        assert!(e.contains("coordinator") && e.contains("PORT"), "{e}");

        let e = err(&ISSUE_EXAMPLE.replace("\"CA\"", "\"Canada\""));
        assert!(e.contains("toronto-1") && e.contains("country"), "{e}");

        let e = err(&ISSUE_EXAMPLE.replace("-79.38", "-279.38"));
        assert!(e.contains("loc"), "{e}");

        let e = err(&ISSUE_EXAMPLE.replace("toronto-1", "toronto 1"));
        assert!(e.contains("name"), "{e}");

        let e = err(&format!("{ISSUE_EXAMPLE}[[agent]]\nname = \"toronto-1\"\n"));
        assert!(e.contains("twice"), "{e}");

        let e = err("coordinator = \"h:1\"\n");
        assert!(e.contains("no [[agent]]"), "{e}");

        let e = err("[[agent]]\nname = \"a\"\n");
        assert!(e.contains("coordinator"), "{e}");
    }

    #[test]
    fn messages_name_origin_agent_and_field_exactly() {
        assert_eq!(
            err(&ISSUE_EXAMPLE.replace("203.0.113.10:7443", "203.0.113.10")),
            "inv.toml: coordinator \"203.0.113.10\": expected HOST:PORT, e.g. \"203.0.113.10:7443\""
        );
        assert_eq!(
            err(&ISSUE_EXAMPLE.replace("\"CA\"", "\"Canada\"")),
            "inv.toml: agent \"toronto-1\": country \"Canada\" is not an ISO 3166 alpha-2 code (e.g. \"CA\")"
        );
        assert_eq!(
            err(&ISSUE_EXAMPLE.replace("-79.38", "-279.38")),
            "inv.toml: agent \"toronto-1\": loc [43.65, -279.38] is not [latitude, longitude] in degrees"
        );
        assert_eq!(
            err("coordinator = \"h:0\"\n[[agent]]\nname = \"a\"\n"),
            "inv.toml: coordinator \"h:0\": port \"0\" is not 1-65535"
        );
        assert_eq!(
            err("coordinator = \"h:1\"\n[[agent]]\nname = \"a\"\nrate = 0\n"),
            "inv.toml: agent \"a\": rate 0 is outside 1..=1000000"
        );
        let e = err(&ISSUE_EXAMPLE.replace("city = ", "town = "));
        assert!(
            e.starts_with("inv.toml:5: ") && e.ends_with(" (in `town = \"Toronto\"`)"),
            "{e}"
        );
    }
}
