//! The `tracemesh.v1` protocol between agents, the coordinator and consumers.
//!
//! - [`v1`]: generated prost messages and tonic clients/servers (`AgentService`,
//!   `ConsumerService`).
//! - [`token`]: the enrolment token format (what `tracemesh token create` prints).
//! - [`clock`] and [`schedule`]: the arithmetic both ends must agree on (NTP-style offset,
//!   round start instants), as pure functions.
//! - [`time`]: RFC 3339 timestamps, formatted and parsed the same way everywhere.
//! - [`union_find`]: grouping alias evidence into routers, on either end.

pub mod clock;
pub mod metrics;
pub mod progress;
pub mod schedule;
pub mod time;
pub mod token;
pub mod union_find;

/// Generated code for package `tracemesh.v1`.
#[allow(clippy::all, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("tracemesh.v1");
}

/// Encoded `FileDescriptorSet` of every tracemesh.v1 file (with imports), for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tracemesh_descriptor.bin"));

/// The DNS name every coordinator server certificate carries, whatever address it is
/// reached at. Clients verify the server against the pinned CA under this name, so the
/// coordinator can move or sit behind NAT without reissuing agent configuration.
pub const COORDINATOR_TLS_NAME: &str = "tracemesh-coordinator";

/// The stable result id an agent should give a campaign result: unique per
/// (campaign, round, destination) for one agent, and identical on every re-upload.
pub fn result_id(campaign_id: &str, round: u32, dst: &str) -> String {
    format!("{campaign_id}/{round}/{dst}")
}

/// The stable id of a mesh sample: the direction from `src` toward the agent that
/// reports it, in one round of a campaign.
pub fn mesh_result_id(campaign_id: &str, round: u32, src: &str) -> String {
    format!("{campaign_id}/{round}/mesh/{src}")
}

/// The stable id of an agent's multipath trace to `dst` in one round of a campaign.
pub fn mda_result_id(campaign_id: &str, round: u32, dst: &str) -> String {
    format!("{campaign_id}/{round}/mda/{dst}")
}

/// The stable id of an agent's alias-resolution result for one round of a campaign (an
/// alias campaign yields one result per round per agent).
pub fn alias_result_id(campaign_id: &str, round: u32) -> String {
    format!("{campaign_id}/{round}/alias")
}

impl v1::AliasMethod {
    /// The lowercase name used in JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            v1::AliasMethod::Unspecified => "unspecified",
            v1::AliasMethod::Mercator => "mercator",
            v1::AliasMethod::Ipid => "ipid",
            v1::AliasMethod::Both => "both",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "mercator" => Some(v1::AliasMethod::Mercator),
            "ipid" => Some(v1::AliasMethod::Ipid),
            "both" => Some(v1::AliasMethod::Both),
            _ => None,
        }
    }
}

impl v1::ProbeProtocol {
    /// The lowercase name used in JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            v1::ProbeProtocol::Unspecified => "unspecified",
            v1::ProbeProtocol::Icmp => "icmp",
            v1::ProbeProtocol::Udp => "udp",
            v1::ProbeProtocol::Tcp => "tcp",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "icmp" => Some(v1::ProbeProtocol::Icmp),
            "udp" => Some(v1::ProbeProtocol::Udp),
            "tcp" => Some(v1::ProbeProtocol::Tcp),
            _ => None,
        }
    }
}

impl v1::StopReason {
    /// The snake_case name the agent's JSON uses.
    pub fn name(self) -> &'static str {
        match self {
            v1::StopReason::Unspecified => "unspecified",
            v1::StopReason::Completed => "completed",
            v1::StopReason::Unreachable => "unreachable",
            v1::StopReason::GapLimit => "gap_limit",
            v1::StopReason::Loop => "loop",
            v1::StopReason::MaxTtl => "max_ttl",
            v1::StopReason::Denied => "denied",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "completed" => Some(v1::StopReason::Completed),
            "unreachable" => Some(v1::StopReason::Unreachable),
            "gap_limit" => Some(v1::StopReason::GapLimit),
            "loop" => Some(v1::StopReason::Loop),
            "max_ttl" => Some(v1::StopReason::MaxTtl),
            "denied" => Some(v1::StopReason::Denied),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn descriptor_set_names_both_services() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<String> = fds
            .file
            .iter()
            .flat_map(|f| f.service.iter().map(|s| s.name().to_string()))
            .collect();
        assert!(services.contains(&"AgentService".to_string()));
        assert!(services.contains(&"ConsumerService".to_string()));
    }

    #[test]
    fn enum_names_round_trip() {
        for p in [
            v1::ProbeProtocol::Icmp,
            v1::ProbeProtocol::Udp,
            v1::ProbeProtocol::Tcp,
        ] {
            assert_eq!(v1::ProbeProtocol::from_name(p.name()), Some(p));
        }
        assert_eq!(v1::ProbeProtocol::from_name("sctp"), None);
        for r in [
            v1::StopReason::Completed,
            v1::StopReason::Unreachable,
            v1::StopReason::GapLimit,
            v1::StopReason::Loop,
            v1::StopReason::MaxTtl,
            v1::StopReason::Denied,
        ] {
            assert_eq!(v1::StopReason::from_name(r.name()), Some(r));
        }
    }

    #[test]
    fn optional_hop_fields_survive_encoding() {
        let hop = v1::Hop {
            ttl: 3,
            addr: None,
            rtt_ms: Some(0.0),
            quoted_ttl: Some(1),
            mpls: vec![v1::MplsLabel {
                label: 16004,
                tc: 0,
                s: true,
                ttl: 1,
            }],
            ..Default::default()
        };
        let back = v1::Hop::decode(hop.encode_to_vec().as_slice()).unwrap();
        // proto3 `optional` keeps "absent" distinct from zero, which hop semantics need.
        assert_eq!(back.addr, None);
        assert_eq!(back.rtt_ms, Some(0.0));
        assert_eq!(back, hop);
    }
}
