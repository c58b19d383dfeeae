//! The data a traceroute produces, shaped exactly as DESIGN.md's `tracemesh-agent trace`
//! contract: one [`TraceResult`] per target, serialised as one JSON line.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Probe method. Every method is Paris-style: fields that ECMP hashes on stay constant
/// for the whole trace, so all probes of one trace follow one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Icmp,
    Udp,
    Tcp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Icmp => "icmp",
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

impl std::str::FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "icmp" => Ok(Proto::Icmp),
            "udp" => Ok(Proto::Udp),
            "tcp" => Ok(Proto::Tcp),
            other => Err(format!(
                "unknown probe method {other:?} (expected icmp, udp or tcp)"
            )),
        }
    }
}

/// Why a trace ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The destination itself answered (echo reply, port unreachable, SYN-ACK or RST).
    Completed,
    /// An ICMP destination-unreachable other than port-unreachable.
    Unreachable,
    /// `gap_limit` consecutive hops gave no answer.
    GapLimit,
    /// An address answered at two non-adjacent hops.
    Loop,
    /// `max_ttl` reached without an answer from the destination.
    MaxTtl,
    /// The target lies in the deny-list and was not probed.
    Denied,
}

/// One MPLS label stack entry from an RFC 4950 ICMP extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MplsLabel {
    pub label: u32,
    /// Traffic class (formerly EXP).
    pub tc: u8,
    /// Bottom-of-stack flag.
    pub s: bool,
    pub ttl: u8,
}

/// One hop: the first answer to any attempt at this TTL, or `addr: None` if none came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    pub ttl: u8,
    pub addr: Option<IpAddr>,
    pub rtt_ms: Option<f64>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// TTL (hop limit) of the reply packet as it reached us.
    pub reply_ttl: Option<u8>,
    /// TTL of our probe as quoted by the replying router (1 unless something rewrote it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quoted_ttl: Option<u8>,
    /// TCP flags of a reply from the destination to a TCP probe ("SA" or "R", "RA").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    #[serde(default)]
    pub mpls: Vec<MplsLabel>,
    /// How many probes were sent at this TTL.
    #[serde(default)]
    pub probes: u8,
}

/// A finished traceroute toward one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceResult {
    pub dst: IpAddr,
    pub src: Option<IpAddr>,
    pub proto: Proto,
    pub stop_reason: StopReason,
    /// Unix seconds (with fractions) when the first probe left.
    pub start: f64,
    pub hops: Vec<Hop>,
    pub probes_sent: u32,
}
