//! Probe packets: building them byte for byte, and parsing whatever comes back.
//!
//! Every probe of one trace shares the fields that ECMP load balancers hash on (Paris
//! traceroute), so the whole trace follows one path:
//! - ICMP echo: type, code and *checksum* stay constant (some routers hash the checksum as
//!   if it were ports); the sequence number carries the probe id and two payload bytes
//!   compensate it.
//! - UDP: the five-tuple stays constant; the UDP checksum carries the probe id (it is in
//!   the first 8 quoted bytes, and nobody hashes it); two payload bytes make it valid.
//! - TCP SYN: ports constant; the sequence number carries the engine cookie and probe id.
//!
//! IPv6 probes also keep the flow label constant. A probe is matched to its trace by the
//! destination quoted in the reply, never by arrival order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use super::checksum::{Sum, compensate, pseudo_v4, pseudo_v6};
use super::model::{MplsLabel, Proto};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Payload bytes after the L4 header of ICMP and UDP probes: two compensation bytes and
/// a recognisable tag, so a capture shows whose probes these are.
const TAG: &[u8; 10] = b"tracemesh!";
const PAYLOAD_LEN: usize = 2 + TAG.len();

/// Constant per engine: distinguishes our probes from anyone else's on the same host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// ICMP identifier, and the top half of TCP sequence numbers.
    pub cookie: u16,
    pub sport: u16,
    pub dport: u16,
    /// IPv6 flow label (20 bits).
    pub flow_label: u32,
    /// The ICMP checksum every echo probe of this flow carries (payload bytes make it so).
    pub icmp_sum: u16,
}

impl Flow {
    /// Derives a flow from a random-ish cookie: source ports in the ephemeral range, the
    /// classic traceroute destination port for UDP and port 80 for TCP.
    pub fn from_cookie(cookie: u16, proto: Proto) -> Flow {
        let sport = 0x8000 | (cookie & 0x7fff);
        let dport = match proto {
            Proto::Udp => 33435,
            Proto::Tcp => 80,
            Proto::Icmp => 0,
        };
        // Any constant checksum works; 0 and 0xffff are avoided because some stacks
        // normalise them.
        let icmp_sum = match !cookie {
            0 | 0xffff => 0x5a5a,
            c => c,
        };
        Flow {
            cookie,
            sport,
            dport,
            flow_label: u32::from(cookie) & 0xfffff,
            icmp_sum,
        }
    }

    /// Flow `id` of a multipath (MDA) trace: what load balancers hash on differs per flow
    /// id and stays constant for one flow id across TTLs. UDP and TCP vary the source
    /// port, ICMP echo the checksum (through the payload), IPv6 also the flow label; the
    /// ICMP identifier and the TCP sequence's top half still carry the cookie.
    pub fn mda(cookie: u16, proto: Proto, id: u16) -> Flow {
        let base = Flow::from_cookie(cookie, proto);
        Flow {
            sport: mda_sport(cookie, id),
            flow_label: (u32::from(cookie) << 4 ^ u32::from(id).wrapping_mul(2_654_435_761))
                & 0xfffff,
            // 0x0100..=0xfeff: never 0 or 0xffff, distinct for every flow id in range.
            icmp_sum: 0x0100 + (id % 0xfe00),
            ..base
        }
    }

    fn icmp_checksum(self) -> u16 {
        self.icmp_sum
    }
}

/// Flow ids an MDA trace may use: source ports stay in the ephemeral upper half.
pub const MDA_MAX_FLOWS: u16 = 0x7000;

/// The source port of MDA flow `id` (`id < MDA_MAX_FLOWS`).
pub fn mda_sport(cookie: u16, id: u16) -> u16 {
    0x8000 | (cookie.wrapping_add(1).wrapping_add(id) & 0x7fff)
}

/// The MDA flow id a source port stands for, if it is one of this cookie's.
pub fn mda_flow_of_sport(cookie: u16, sport: u16) -> Option<u16> {
    if sport & 0x8000 == 0 {
        return None;
    }
    let id = (sport & 0x7fff).wrapping_sub(cookie.wrapping_add(1)) & 0x7fff;
    (id < MDA_MAX_FLOWS).then_some(id)
}

/// The MDA flow id an ICMP echo checksum stands for.
pub fn mda_flow_of_icmp_sum(sum: u16) -> Option<u16> {
    (0x0100..0x0100 + MDA_MAX_FLOWS)
        .contains(&sum)
        .then(|| sum - 0x0100)
}

/// Everything needed to build one probe.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSpec {
    pub proto: Proto,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub flow: Flow,
    /// 1..=0xfffe: identifies (ttl, attempt) within the trace.
    pub probe_id: u16,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("source {src} and destination {dst} are of different address families")]
    FamilyMismatch { src: IpAddr, dst: IpAddr },
    #[error("probe id {0} is out of range 1..=65534")]
    ProbeId(u16),
}

/// Writes a complete IP packet (header included) for `spec` into `buf`, replacing its
/// contents. Raw sockets opened with `IPPROTO_RAW` send it as is.
pub fn build_probe(spec: &ProbeSpec, buf: &mut Vec<u8>) -> Result<(), BuildError> {
    if spec.probe_id == 0 || spec.probe_id == 0xffff {
        return Err(BuildError::ProbeId(spec.probe_id));
    }
    buf.clear();
    match (spec.src, spec.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let l4_len = l4_len(spec.proto);
            let proto = match spec.proto {
                Proto::Icmp => IPPROTO_ICMP,
                Proto::Udp => IPPROTO_UDP,
                Proto::Tcp => IPPROTO_TCP,
            };
            write_ipv4_header(buf, s, d, spec.ttl, proto, spec.probe_id, l4_len);
            let l4_start = buf.len();
            write_l4(buf, spec, PseudoHeader::V4(s, d), proto);
            debug_assert_eq!(buf.len() - l4_start, l4_len);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let l4_len = l4_len(spec.proto);
            let nh = match spec.proto {
                Proto::Icmp => IPPROTO_ICMPV6,
                Proto::Udp => IPPROTO_UDP,
                Proto::Tcp => IPPROTO_TCP,
            };
            write_ipv6_header(buf, s, d, spec.ttl, nh, spec.flow.flow_label, l4_len);
            write_l4(buf, spec, PseudoHeader::V6(s, d), nh);
        }
        (src, dst) => return Err(BuildError::FamilyMismatch { src, dst }),
    }
    Ok(())
}

fn l4_len(proto: Proto) -> usize {
    match proto {
        Proto::Icmp | Proto::Udp => 8 + PAYLOAD_LEN,
        Proto::Tcp => 20,
    }
}

fn write_ipv4_header(
    buf: &mut Vec<u8>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    proto: u8,
    ip_id: u16,
    l4_len: usize,
) {
    let total = (20 + l4_len) as u16;
    let start = buf.len();
    buf.extend_from_slice(&[0x45, 0]);
    buf.extend_from_slice(&total.to_be_bytes());
    buf.extend_from_slice(&ip_id.to_be_bytes());
    buf.extend_from_slice(&[0, 0, ttl, proto, 0, 0]);
    buf.extend_from_slice(&src.octets());
    buf.extend_from_slice(&dst.octets());
    let csum = Sum::new().add_bytes(&buf[start..start + 20]).checksum();
    buf[start + 10..start + 12].copy_from_slice(&csum.to_be_bytes());
}

fn write_ipv6_header(
    buf: &mut Vec<u8>,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    next_header: u8,
    flow_label: u32,
    l4_len: usize,
) {
    let first = (6u32 << 28) | (flow_label & 0xfffff);
    buf.extend_from_slice(&first.to_be_bytes());
    buf.extend_from_slice(&(l4_len as u16).to_be_bytes());
    buf.extend_from_slice(&[next_header, hop_limit]);
    buf.extend_from_slice(&src.octets());
    buf.extend_from_slice(&dst.octets());
}

#[derive(Clone, Copy)]
enum PseudoHeader {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl PseudoHeader {
    fn sum(self, proto: u8, len: usize) -> Sum {
        match self {
            PseudoHeader::V4(s, d) => pseudo_v4(s, d, proto, len as u16),
            PseudoHeader::V6(s, d) => pseudo_v6(s, d, proto, len as u32),
        }
    }
}

fn write_l4(buf: &mut Vec<u8>, spec: &ProbeSpec, ph: PseudoHeader, proto: u8) {
    let start = buf.len();
    let flow = spec.flow;
    match spec.proto {
        Proto::Icmp => {
            let echo_request = if matches!(ph, PseudoHeader::V4(..)) {
                8
            } else {
                128
            };
            buf.extend_from_slice(&[echo_request, 0, 0, 0]);
            buf.extend_from_slice(&flow.cookie.to_be_bytes());
            buf.extend_from_slice(&spec.probe_id.to_be_bytes());
            buf.extend_from_slice(&[0, 0]);
            buf.extend_from_slice(TAG);
            // ICMPv4's checksum has no pseudo-header; ICMPv6's does.
            let partial = match ph {
                PseudoHeader::V4(..) => Sum::new(),
                PseudoHeader::V6(..) => ph.sum(proto, buf.len() - start),
            };
            let wanted = flow.icmp_checksum();
            let w = compensate(partial.add_bytes(&buf[start..]).fold(), wanted);
            buf[start + 8..start + 10].copy_from_slice(&w.to_be_bytes());
            buf[start + 2..start + 4].copy_from_slice(&wanted.to_be_bytes());
        }
        Proto::Udp => {
            let len = (8 + PAYLOAD_LEN) as u16;
            buf.extend_from_slice(&flow.sport.to_be_bytes());
            buf.extend_from_slice(&flow.dport.to_be_bytes());
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&[0, 0, 0, 0]);
            buf.extend_from_slice(TAG);
            let wanted = spec.probe_id;
            let partial = ph.sum(proto, usize::from(len)).add_bytes(&buf[start..]);
            let w = compensate(partial.fold(), wanted);
            buf[start + 8..start + 10].copy_from_slice(&w.to_be_bytes());
            buf[start + 6..start + 8].copy_from_slice(&wanted.to_be_bytes());
        }
        Proto::Tcp => {
            let seq = tcp_seq(flow.cookie, spec.probe_id);
            buf.extend_from_slice(&flow.sport.to_be_bytes());
            buf.extend_from_slice(&flow.dport.to_be_bytes());
            buf.extend_from_slice(&seq.to_be_bytes());
            buf.extend_from_slice(&0u32.to_be_bytes());
            // Data offset 5 words, SYN, a window like a real stack's.
            buf.extend_from_slice(&[0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
            let csum = ph.sum(proto, 20).add_bytes(&buf[start..]).checksum();
            buf[start + 16..start + 18].copy_from_slice(&csum.to_be_bytes());
        }
    }
}

pub fn tcp_seq(cookie: u16, probe_id: u16) -> u32 {
    (u32::from(cookie) << 16) | u32::from(probe_id)
}

// ---------------------------------------------------------------------------------------
// Parsing replies

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("not an IPv{expected} packet (version field {found})")]
    Version { expected: u8, found: u8 },
    #[error("bad IPv4 header length {0} bytes")]
    HeaderLength(usize),
    #[error("IP protocol {0} is neither ICMP nor TCP")]
    Protocol(u8),
    #[error("ICMP type {0} is not a traceroute reply")]
    IcmpType(u8),
}

/// A reply as it arrived, before it is matched to a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub from: IpAddr,
    pub reply_ttl: u8,
    pub body: ReplyBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    /// Time Exceeded or Destination Unreachable, quoting our probe.
    IcmpError {
        icmp_type: u8,
        icmp_code: u8,
        quoted: Quoted,
        mpls: Vec<MplsLabel>,
    },
    EchoReply {
        icmp_type: u8,
        id: u16,
        seq: u16,
    },
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
    },
}

/// What a router quoted of the probe that expired or was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quoted {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TTL (hop limit) left in the probe when the router saw it.
    pub ttl: u8,
    pub l4: QuotedL4,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotedL4 {
    Icmp {
        icmp_type: u8,
        id: u16,
        seq: u16,
        checksum: u16,
    },
    Udp {
        sport: u16,
        dport: u16,
        checksum: u16,
    },
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
    },
    /// A protocol we never send, or fewer than 8 bytes of it.
    Other {
        proto: u8,
    },
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

fn need(what: &'static str, b: &[u8], n: usize) -> Result<(), ParseError> {
    if b.len() < n {
        Err(ParseError::Truncated {
            what,
            need: n,
            have: b.len(),
        })
    } else {
        Ok(())
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn v4_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

fn v6_at(b: &[u8], at: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(o)
}

/// Parses a whole IPv4 packet as a raw `IPPROTO_ICMP` or `IPPROTO_TCP` socket delivers it.
pub fn parse_v4(pkt: &[u8]) -> Result<Reply, ParseError> {
    need("IPv4 header", pkt, 20)?;
    let version = pkt[0] >> 4;
    if version != 4 {
        return Err(ParseError::Version {
            expected: 4,
            found: version,
        });
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(ParseError::HeaderLength(ihl));
    }
    need("IPv4 header options", pkt, ihl)?;
    // Trust the shorter of the buffer and the header's total length: a raw socket may hand
    // us trailing bytes, and a lying length must not make us read past the buffer.
    let total = usize::from(be16(pkt, 2)).clamp(ihl, pkt.len());
    let from = IpAddr::V4(v4_at(pkt, 12));
    let reply_ttl = pkt[8];
    let body = &pkt[ihl..total];
    let body = match pkt[9] {
        IPPROTO_ICMP => parse_icmp(body, false)?,
        IPPROTO_TCP => parse_tcp(body)?,
        p => return Err(ParseError::Protocol(p)),
    };
    Ok(Reply {
        from,
        reply_ttl,
        body,
    })
}

/// Parses a whole IPv4 packet like [`parse_v4`], and also returns the identification
/// field of the reply's own IP header, which alias resolution reads (IP-ID series). IPv6
/// has no identification in its base header (only a fragment header carries one), so
/// there is no IPv6 counterpart.
pub fn parse_v4_with_id(pkt: &[u8]) -> Result<(Reply, u16), ParseError> {
    let reply = parse_v4(pkt)?;
    // `parse_v4` has checked that a 20-byte header is there.
    Ok((reply, be16(pkt, 4)))
}

/// Parses an IPv6 reply as a raw `IPPROTO_ICMPV6` or `IPPROTO_TCP` socket delivers it:
/// without the IPv6 header, whose source and hop limit come from `recvmsg`.
pub fn parse_v6(
    from: Ipv6Addr,
    hop_limit: u8,
    next_header: u8,
    payload: &[u8],
) -> Result<Reply, ParseError> {
    let body = match next_header {
        IPPROTO_ICMPV6 => parse_icmp(payload, true)?,
        IPPROTO_TCP => parse_tcp(payload)?,
        p => return Err(ParseError::Protocol(p)),
    };
    Ok(Reply {
        from: IpAddr::V6(from),
        reply_ttl: hop_limit,
        body,
    })
}

fn parse_tcp(b: &[u8]) -> Result<ReplyBody, ParseError> {
    need("TCP header", b, 14)?;
    Ok(ReplyBody::Tcp {
        sport: be16(b, 0),
        dport: be16(b, 2),
        seq: be32(b, 4),
        ack: be32(b, 8),
        flags: b[13],
    })
}

fn parse_icmp(b: &[u8], v6: bool) -> Result<ReplyBody, ParseError> {
    need("ICMP header", b, 8)?;
    let (ty, code) = (b[0], b[1]);
    let (echo_reply, time_exceeded, unreachable) = if v6 { (129, 3, 1) } else { (0, 11, 3) };
    if ty == echo_reply {
        return Ok(ReplyBody::EchoReply {
            icmp_type: ty,
            id: be16(b, 4),
            seq: be16(b, 6),
        });
    }
    if ty != time_exceeded && ty != unreachable {
        return Err(ParseError::IcmpType(ty));
    }
    // RFC 4884 "length" of the original datagram: ICMPv4 counts 32-bit words in octet 5,
    // ICMPv6 counts 64-bit words in octet 4.
    let declared = if v6 {
        usize::from(b[4]) * 8
    } else {
        usize::from(b[5]) * 4
    };
    let rest = &b[8..];
    let (quoted_bytes, ext) = split_extension(rest, declared);
    let quoted = if v6 {
        parse_quoted_v6(quoted_bytes)?
    } else {
        parse_quoted_v4(quoted_bytes)?
    };
    let mpls = ext.map(parse_mpls_extension).unwrap_or_default();
    Ok(ReplyBody::IcmpError {
        icmp_type: ty,
        icmp_code: code,
        quoted,
        mpls,
    })
}

/// Splits an ICMP error's data into the quoted datagram and the RFC 4884 extension
/// structure, if there is one.
fn split_extension(rest: &[u8], declared: usize) -> (&[u8], Option<&[u8]>) {
    if declared > 0 {
        if declared < rest.len() {
            return (&rest[..declared], Some(&rest[declared..]));
        }
        return (rest, None);
    }
    // RFC 4884 §5: older MPLS routers (RFC 4950 predates 4884) put the extension right
    // after a 128-byte quote without setting the length; accept that only if what sits
    // there is a well-formed extension header.
    const COMPAT: usize = 128;
    if rest.len() >= COMPAT + 8 && looks_like_extension(&rest[COMPAT..]) {
        return (&rest[..COMPAT], Some(&rest[COMPAT..]));
    }
    (rest, None)
}

fn looks_like_extension(e: &[u8]) -> bool {
    if e.len() < 4 || e[0] >> 4 != 2 {
        return false;
    }
    let csum = be16(e, 2);
    csum == 0 || Sum::new().add_bytes(e).fold() == 0xffff
}

/// Extracts MPLS label stack entries (class 1, c-type 1) from an extension structure.
/// Malformed objects end the walk: labels are evidence, not a reason to drop a reply.
fn parse_mpls_extension(e: &[u8]) -> Vec<MplsLabel> {
    let mut labels = Vec::new();
    if e.len() < 4 || e[0] >> 4 != 2 {
        return labels;
    }
    let mut at = 4;
    while at + 4 <= e.len() {
        let len = usize::from(be16(e, at));
        let (class, ctype) = (e[at + 2], e[at + 3]);
        if len < 4 || at + len > e.len() {
            break;
        }
        if class == 1 && ctype == 1 {
            for entry in e[at + 4..at + len].chunks_exact(4) {
                let v = be32(entry, 0);
                labels.push(MplsLabel {
                    label: v >> 12,
                    tc: ((v >> 9) & 0x7) as u8,
                    s: (v >> 8) & 1 == 1,
                    ttl: v as u8,
                });
            }
        }
        at += len;
    }
    labels
}

pub(crate) fn parse_quoted_v4(q: &[u8]) -> Result<Quoted, ParseError> {
    need("quoted IPv4 header", q, 20)?;
    let ihl = usize::from(q[0] & 0x0f) * 4;
    if q[0] >> 4 != 4 {
        return Err(ParseError::Version {
            expected: 4,
            found: q[0] >> 4,
        });
    }
    if ihl < 20 {
        return Err(ParseError::HeaderLength(ihl));
    }
    need("quoted IPv4 header options", q, ihl)?;
    Ok(Quoted {
        src: IpAddr::V4(v4_at(q, 12)),
        dst: IpAddr::V4(v4_at(q, 16)),
        ttl: q[8],
        l4: parse_quoted_l4(q[9], &q[ihl..], false),
    })
}

pub(crate) fn parse_quoted_v6(q: &[u8]) -> Result<Quoted, ParseError> {
    need("quoted IPv6 header", q, 40)?;
    if q[0] >> 4 != 6 {
        return Err(ParseError::Version {
            expected: 6,
            found: q[0] >> 4,
        });
    }
    Ok(Quoted {
        src: IpAddr::V6(v6_at(q, 8)),
        dst: IpAddr::V6(v6_at(q, 24)),
        ttl: q[7],
        l4: parse_quoted_l4(q[6], &q[40..], true),
    })
}

fn parse_quoted_l4(proto: u8, l4: &[u8], v6: bool) -> QuotedL4 {
    // RFC 792 promises only 8 bytes of the original datagram's payload; that is enough.
    if l4.len() < 8 {
        return QuotedL4::Other { proto };
    }
    match proto {
        IPPROTO_ICMP if !v6 => QuotedL4::Icmp {
            icmp_type: l4[0],
            checksum: be16(l4, 2),
            id: be16(l4, 4),
            seq: be16(l4, 6),
        },
        IPPROTO_ICMPV6 if v6 => QuotedL4::Icmp {
            icmp_type: l4[0],
            checksum: be16(l4, 2),
            id: be16(l4, 4),
            seq: be16(l4, 6),
        },
        IPPROTO_UDP => QuotedL4::Udp {
            sport: be16(l4, 0),
            dport: be16(l4, 2),
            checksum: be16(l4, 6),
        },
        IPPROTO_TCP => QuotedL4::Tcp {
            sport: be16(l4, 0),
            dport: be16(l4, 2),
            seq: be32(l4, 4),
        },
        proto => QuotedL4::Other { proto },
    }
}

#[cfg(test)]
pub(crate) mod replies;
#[cfg(test)]
mod tests;
