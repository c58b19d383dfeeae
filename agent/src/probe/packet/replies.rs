//! Test-only builders of the IPv4 replies a router sends to our probes, with a chosen
//! identification field: what alias-resolution tests feed back to the parser and prober.

use std::net::Ipv4Addr;

use super::super::checksum::Sum;

/// How the router answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyKind {
    /// Echo Reply carrying the request's ICMP body.
    Echo,
    /// Destination Unreachable, code 3 (port), quoting the whole probe.
    PortUnreachable,
}

/// The reply `from` sends to the IPv4 `probe`'s source, IP header identification `ip_id`.
/// `None` if the probe is not an IPv4 packet of the right protocol.
pub(crate) fn reply_v4(
    probe: &[u8],
    from: Ipv4Addr,
    ip_id: u16,
    kind: ReplyKind,
) -> Option<Vec<u8>> {
    if probe.len() < 28 || probe[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(probe[0] & 0x0f) * 4;
    let to = Ipv4Addr::new(probe[12], probe[13], probe[14], probe[15]);
    let icmp = match kind {
        ReplyKind::Echo => {
            if probe[9] != 1 || probe.get(ihl) != Some(&8) {
                return None;
            }
            let mut icmp = probe.get(ihl..)?.to_vec();
            icmp[0] = 0;
            icmp
        }
        ReplyKind::PortUnreachable => {
            if probe[9] != 17 {
                return None;
            }
            let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(probe);
            icmp
        }
    };
    let mut icmp = icmp;
    icmp[2..4].copy_from_slice(&[0, 0]);
    let c = Sum::new().add_bytes(&icmp).checksum();
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&ip_id.to_be_bytes());
    p.extend_from_slice(&[0, 0, 60, 1, 0, 0]);
    p.extend_from_slice(&from.octets());
    p.extend_from_slice(&to.octets());
    let c = Sum::new().add_bytes(&p).checksum();
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&icmp);
    Some(p)
}
