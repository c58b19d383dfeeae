//! Inputs and outputs of the detector, in the shapes the coordinator stores and the
//! `tracemesh diversions --json` contract (scenarios/FORMAT.md) prescribes; every field
//! of that output is described in docs/formats.md.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::annotate::Annotator;
use crate::geo::{Gazetteer, GeoPoint};

/// The reference data detection reads: the annotation index, and the gazetteer (with
/// exchange cities when PeeringDB was loaded).
#[derive(Debug)]
pub struct Tables {
    pub annot: Annotator,
    pub gazetteer: Gazetteer,
}

/// One hop of a traceroute; unknown fields (icmp type, mpls, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceHop {
    pub ttl: u8,
    #[serde(default)]
    pub addr: Option<IpAddr>,
    #[serde(default)]
    pub rtt_ms: Option<f64>,
}

/// One traceroute of one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub round: u64,
    pub vantage: String,
    pub dst: IpAddr,
    /// Unix seconds at which the round's probing started.
    pub start: f64,
    #[serde(default)]
    pub hops: Vec<TraceHop>,
}

impl Trace {
    /// A stored record as the detector takes it; `None` for records it cannot use (a
    /// destination that is not an address, a TTL beyond 255). An unparseable hop address
    /// counts as a silent hop.
    pub fn from_record(t: &tracemesh_proto::v1::TraceRecord) -> Option<Trace> {
        let hops = t
            .hops
            .iter()
            .map(|h| {
                Some(TraceHop {
                    ttl: u8::try_from(h.ttl).ok()?,
                    addr: h.addr.as_deref().and_then(|a| a.parse::<IpAddr>().ok()),
                    rtt_ms: h.rtt_ms,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Trace {
            round: u64::from(t.round),
            vantage: t.vantage.clone(),
            dst: t.dst.parse().ok()?,
            start: t.start,
            hops,
        })
    }
}

/// A multipath trace (MDA, `campaign create --mda`) of one round: every interface it
/// found per TTL, each an equal-cost branch of the pair's path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MdaTrace {
    pub round: u64,
    pub vantage: String,
    pub dst: IpAddr,
    pub start: f64,
    /// (TTL, interfaces found there).
    pub hops: Vec<(u8, Vec<IpAddr>)>,
}

impl MdaTrace {
    /// A stored multipath trace as the detector takes it; `None` when its destination
    /// is not an address. Interfaces that are not addresses or TTLs beyond 255 are left
    /// out.
    pub fn from_record(r: &tracemesh_proto::v1::MdaResult) -> Option<MdaTrace> {
        Some(MdaTrace {
            round: u64::from(r.round),
            vantage: r.vantage.clone(),
            dst: r.dst.parse().ok()?,
            start: r.start,
            hops: r
                .hops
                .iter()
                .filter_map(|h| {
                    let ttl = u8::try_from(h.ttl).ok()?;
                    let addrs = h
                        .interfaces
                        .iter()
                        .filter_map(|i| i.addr.parse().ok())
                        .collect();
                    Some((ttl, addrs))
                })
                .collect(),
        })
    }
}

/// What an agent declared at enrolment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VantageInfo {
    pub name: String,
    #[serde(default)]
    pub loc: Option<GeoPoint>,
    #[serde(default)]
    pub country: Option<String>,
    #[serde(default)]
    pub asn: Option<u32>,
}

/// Whose networks count as the adversary's: AS numbers and/or registration countries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adversary {
    #[serde(default)]
    pub asns: BTreeSet<u32>,
    /// ISO 3166 alpha-2, upper case.
    #[serde(default)]
    pub countries: BTreeSet<String>,
}

impl Adversary {
    pub fn from_asns(asns: impl IntoIterator<Item = u32>) -> Self {
        Adversary {
            asns: asns.into_iter().collect(),
            countries: BTreeSet::new(),
        }
    }

    pub fn with_countries<S: AsRef<str>>(mut self, cc: impl IntoIterator<Item = S>) -> Self {
        self.countries.extend(
            cc.into_iter()
                .map(|c| c.as_ref().trim().to_ascii_uppercase()),
        );
        self
    }

    pub fn is_empty(&self) -> bool {
        self.asns.is_empty() && self.countries.is_empty()
    }

    pub fn has_country(&self, cc: Option<&str>) -> bool {
        cc.is_some_and(|c| self.countries.iter().any(|x| x.eq_ignore_ascii_case(c)))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HandoffRef {
    pub addr: Option<IpAddr>,
    pub asn: Option<u32>,
    pub as_name: Option<String>,
    pub ttl: Option<u8>,
    /// How the hand-off was found: `answered` (seen leaving the learned normal path),
    /// `filled-from-normal-path` (silent now, named by the learned path at that TTL),
    /// `no-history` (last non-adversary hop before the ingress), `other-pair` (taken
    /// from another destination's path of the same vantage),
    /// `last-answering-before-silence` (the true hand-off may hide in the silence).
    pub method: &'static str,
    /// Why the router behind `addr` counts as the hand-off's AS's, not the adversary's:
    /// `origin` (the prefix table says so; its next hop is the adversary's router).
    pub owner_rule: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngressRef {
    pub addr: IpAddr,
    /// Origin AS of `addr`; the adversary AS when `addr` has none (exchange LAN or
    /// unannounced space). With a neighbour-numbered port (`owner_rule`
    /// `neighbour-numbered-port`) this is the neighbour's AS, as the prefix table says.
    pub asn: u32,
    /// Which rule decided that the router behind `addr` is the adversary's: `origin`
    /// (its address is in adversary space), `neighbour-numbered-port` (it answered from
    /// its end of a border link numbered by the hand-off's AS; see `detect/border.rs`),
    /// `unowned-departure` (an exchange-LAN or unannounced address where the path left
    /// its normal route), `hidden-by-silence` (silent here, named by other paths).
    pub owner_rule: &'static str,
    /// Every address known to belong to the same router (alias resolution); `addr`
    /// alone until aliases are known.
    pub router: Vec<IpAddr>,
    /// Name of the adversary AS.
    pub as_name: Option<String>,
    /// Where the ingress probably is, from RTT constraints only (never from
    /// configuration): when they leave a wide region, the likeliest metro inside it (a
    /// hub city, see `Gazetteer::hub_prior`); otherwise the region's centroid.
    pub loc: Option<GeoPoint>,
    /// Radius of a disc around the region's centroid (not around a hub `loc`) that holds
    /// the whole feasible region, km, to 0.1 km.
    pub radius_km: Option<f64>,
    /// The hub city chosen as `loc`, or else the gazetteer city nearest the centroid.
    pub city: Option<String>,
    pub city_country: Option<String>,
    /// Number of RTT constraints (discs) behind the region.
    pub constraints: usize,
    /// True when the ingress itself never answered and was inferred from other paths.
    pub inferred: bool,
    /// The exchange when the ingress answered from an IXP peering LAN address.
    pub ixp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// Origin ASes along the diverted path, consecutive duplicates removed.
    pub as_path: Vec<u32>,
    pub normal_as_path: Vec<u32>,
    pub rtt_handoff_ms: Option<f64>,
    pub rtt_ingress_ms: Option<f64>,
    pub rtt_dst_ms: Option<f64>,
    pub normal_rtt_dst_ms: Option<f64>,
    /// Extra round-trip time of the diverted path over the normal one.
    pub detour_ms: Option<f64>,
    /// Largest RTT step between consecutive answering hops after the ingress.
    pub max_rtt_jump_ms: Option<f64>,
    /// The ingress answered faster than light could reach the adversary's home country
    /// from this vantage: it is a point of presence abroad.
    pub ingress_abroad: Option<bool>,
    pub adversary_hops: usize,
    /// The learned normal path this episode departed from (RTTs: this vantage's best
    /// to each hop), and the diverted path of the round that names the ingress. The
    /// destination itself is not listed; see `rtt_dst_ms` / `normal_rtt_dst_ms`.
    pub normal_path: Vec<PathHop>,
    pub diverted_path: Vec<PathHop>,
}

/// One hop of a path shown as evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathHop {
    pub ttl: u8,
    pub addr: Option<IpAddr>,
    pub asn: Option<u32>,
    pub rtt_ms: Option<f64>,
    /// In an adversary's network.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub adversary: bool,
}

/// One record of `{"diversions": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiversionRecord {
    pub vantage: String,
    pub target: IpAddr,
    pub adversary_asn: u32,
    pub adversary_name: Option<String>,
    pub handoff: HandoffRef,
    pub ingress: IngressRef,
    pub first_seen: f64,
    pub last_seen: f64,
    pub rounds: u32,
    pub first_round: u64,
    pub last_round: u64,
    /// Still diverted in the pair's latest observed round.
    pub active: bool,
    pub incident: usize,
    pub evidence: Evidence,
}

/// Records grouped across vantages and destinations by adversary and ingress PoP.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    pub id: usize,
    pub adversary_asn: u32,
    pub ingress: IpAddr,
    pub ingress_loc: Option<GeoPoint>,
    pub ingress_city: Option<String>,
    pub handoffs: Vec<IpAddr>,
    pub vantages: Vec<String>,
    pub targets: Vec<IpAddr>,
    pub first_seen: f64,
    pub last_seen: f64,
    pub records: usize,
    /// Seen by more than one vantage. One agent alone (possibly lying, or one broken
    /// vantage) can make an uncorroborated incident appear; never a corroborated one.
    pub corroborated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DiversionReport {
    pub diversions: Vec<DiversionRecord>,
    pub incidents: Vec<Incident>,
}
