//! The emulated internet's answers, sans I/O: a packet a vantage sent, and the time it
//! was sent, in; the packets to deliver (to which vantage, after how long) out.
//!
//! Hop *k* of the path answers a probe whose TTL runs out there with an ICMP Time
//! Exceeded quoting the probe (with an RFC 4950 MPLS label stack where the router has
//! labels, in RFC 4884 form); past the path, the destination host answers as a live host
//! would. Delays follow FORMAT.md: twice the one-way delay to the answering hop.

use std::net::IpAddr;

use tracemesh_agent::probe::checksum::{Sum, pseudo_v4, pseudo_v6};

use crate::scenario::{DEFAULT_ACCESS_MS, World};

#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    pub vantage: usize,
    pub delay_ms: f64,
    pub packet: Vec<u8>,
}

/// Why a packet got no answer (counted, never fatal: the kernel of a vantage sends all
/// sorts of things).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    Malformed,
    NoRoute,
    Silent,
    NotAProbe,
}

/// The fields of an IP header the emulator needs.
#[derive(Debug, Clone, Copy)]
struct Ip {
    v6: bool,
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    proto: u8,
    header_len: usize,
}

fn parse_ip(p: &[u8]) -> Option<Ip> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if ihl < 20 || p.len() < ihl {
                return None;
            }
            let a = |i: usize| IpAddr::from([p[i], p[i + 1], p[i + 2], p[i + 3]]);
            Some(Ip {
                v6: false,
                src: a(12),
                dst: a(16),
                ttl: p[8],
                proto: p[9],
                header_len: ihl,
            })
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let a = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&p[i..i + 16]);
                IpAddr::from(o)
            };
            Some(Ip {
                v6: true,
                src: a(8),
                dst: a(24),
                ttl: p[7],
                proto: p[6],
                header_len: 40,
            })
        }
        _ => None,
    }
}

/// What sits at the end of a path.
#[derive(Debug, Clone, Copy)]
enum End {
    /// A host inside a target prefix (answers from the probed address).
    Host { access_ms: f64 },
    /// A router probed directly: it is the last hop and answers as a host.
    Router,
    /// Another vantage: the packet is delivered to it.
    Vantage(usize),
}

#[derive(Debug)]
pub struct Responder<'w> {
    world: &'w World,
}

impl<'w> Responder<'w> {
    pub fn new(world: &'w World) -> Self {
        Responder { world }
    }

    /// Answers one packet sent by vantage `v` at `t_s` seconds after campaign start.
    pub fn handle(&self, v: usize, pkt: &[u8], t_s: f64) -> Result<Vec<Emit>, Dropped> {
        let ip = parse_ip(pkt).ok_or(Dropped::Malformed)?;
        let w = self.world;
        let vant = &w.s.vantages[v];
        let from_router = w.router(&vant.router).ok_or(Dropped::NoRoute)?;
        let (path, end) = if let Some(tg) = w.target_of(ip.dst) {
            let (p, _) = w.path(v, tg, t_s).ok_or(Dropped::NoRoute)?;
            let access_ms = w.s.targets[tg].access_delay_ms.unwrap_or(DEFAULT_ACCESS_MS);
            (p, End::Host { access_ms })
        } else if let Some(other) = w.vantage_by_addr(ip.dst) {
            if other == v {
                return Err(Dropped::NoRoute);
            }
            let to = w
                .router(&w.s.vantages[other].router)
                .ok_or(Dropped::NoRoute)?;
            (
                w.shortest(from_router, to).ok_or(Dropped::NoRoute)?,
                End::Vantage(other),
            )
        } else if let Some(r) =
            w.s.routers
                .iter()
                .position(|r| r.addr == ip.dst || r.addr6 == Some(ip.dst))
        {
            (
                w.shortest(from_router, r).ok_or(Dropped::NoRoute)?,
                End::Router,
            )
        } else {
            return Err(Dropped::NoRoute);
        };
        let n = path.len();
        // The router that answers as the destination itself is not an intermediate hop.
        let intermediate = if matches!(end, End::Router) { n - 1 } else { n };
        let ttl = usize::from(ip.ttl);
        if ttl == 0 {
            return Err(Dropped::Malformed);
        }
        if ttl <= intermediate {
            let r = path[ttl - 1];
            if w.silent(r, t_s) {
                return Err(Dropped::Silent);
            }
            let router = &w.s.routers[r];
            // A router answers from the address of the probe's family: `addr6`, or `addr`
            // itself where that is IPv6 (IPv6-only scenarios).
            let from = [Some(router.addr), router.addr6]
                .into_iter()
                .flatten()
                .rfind(|a| a.is_ipv6() == ip.v6);
            let Some(from) = from else {
                return Err(Dropped::Silent);
            };
            let rtt = 2.0 * w.one_way_to_hop(v, &path, ttl);
            let packet = time_exceeded(&ip, pkt, from, &router.mpls, 255 - (ttl as u8 - 1));
            return Ok(vec![Emit {
                vantage: v,
                delay_ms: rtt,
                packet,
            }]);
        }
        let one_way = w.one_way_to_hop(v, &path, n);
        match end {
            End::Vantage(other) => {
                let access = w.s.vantages[other]
                    .access_delay_ms
                    .unwrap_or(DEFAULT_ACCESS_MS);
                let mut fwd = pkt.to_vec();
                set_ttl(&mut fwd, &ip, ip.ttl - n as u8);
                Ok(vec![Emit {
                    vantage: other,
                    delay_ms: one_way + access,
                    packet: fwd,
                }])
            }
            End::Host { access_ms } => {
                let reply =
                    host_reply(&ip, pkt, ip.dst, 64 - n.min(63) as u8).ok_or(Dropped::NotAProbe)?;
                Ok(vec![Emit {
                    vantage: v,
                    delay_ms: 2.0 * (one_way + access_ms),
                    packet: reply,
                }])
            }
            End::Router => {
                if w.silent(path[n - 1], t_s) {
                    return Err(Dropped::Silent);
                }
                let reply =
                    host_reply(&ip, pkt, ip.dst, 255 - (n as u8 - 1)).ok_or(Dropped::NotAProbe)?;
                Ok(vec![Emit {
                    vantage: v,
                    delay_ms: 2.0 * one_way,
                    packet: reply,
                }])
            }
        }
    }
}

fn set_ttl(p: &mut [u8], ip: &Ip, ttl: u8) {
    if ip.v6 {
        p[7] = ttl;
    } else {
        p[8] = ttl;
        p[10] = 0;
        p[11] = 0;
        let c = Sum::new().add_bytes(&p[..ip.header_len]).checksum();
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

/// An IP packet around `payload` from `src` to `dst`; ICMP/TCP checksums are the caller's.
fn ip_packet(v6: bool, src: IpAddr, dst: IpAddr, proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + payload.len());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) if !v6 => {
            let total = (20 + payload.len()) as u16;
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0, ttl, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let c = Sum::new().add_bytes(&p[..20]).checksum();
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, ttl]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => {}
    }
    p.extend_from_slice(payload);
    p
}

/// Fills in the L4 checksum at `at` of the payload that starts at `l4` in `p`.
fn l4_checksum(p: &mut [u8], v6: bool, proto: u8, l4: usize, at: usize) {
    let len = p.len() - l4;
    let sum = match (v6, parse_ip(p)) {
        (
            _,
            Some(Ip {
                src: IpAddr::V4(s),
                dst: IpAddr::V4(d),
                ..
            }),
        ) if proto != 1 => pseudo_v4(s, d, proto, len as u16),
        (
            true,
            Some(Ip {
                src: IpAddr::V6(s),
                dst: IpAddr::V6(d),
                ..
            }),
        ) => pseudo_v6(s, d, proto, len as u32),
        _ => Sum::new(),
    };
    p[l4 + at] = 0;
    p[l4 + at + 1] = 0;
    let c = sum.add_bytes(&p[l4..]).checksum();
    p[l4 + at..l4 + at + 2].copy_from_slice(&c.to_be_bytes());
}

/// ICMP Time Exceeded from `from`, quoting the probe as the router saw it (TTL 1).
fn time_exceeded(ip: &Ip, probe: &[u8], from: IpAddr, mpls: &[u32], ttl: u8) -> Vec<u8> {
    let mut quote = probe.to_vec();
    set_ttl(&mut quote, ip, 1);
    let (ty, icmp_proto) = if ip.v6 { (3u8, 58u8) } else { (11u8, 1u8) };
    let mut icmp = vec![ty, 0, 0, 0, 0, 0, 0, 0];
    if mpls.is_empty() {
        // Linux quotes up to 576 (IPv4) or 1280 (IPv6) bytes in all; probes are small.
        quote.truncate(if ip.v6 { 1232 } else { 548 });
        icmp.extend_from_slice(&quote);
    } else {
        // RFC 4884: a 128-byte original datagram field, its length in the header (32-bit
        // words at octet 5 for ICMPv4, 64-bit words at octet 4 for ICMPv6), then the
        // extension structure with one MPLS label stack object (RFC 4950).
        quote.resize(128, 0);
        if ip.v6 {
            icmp[4] = 128 / 8;
        } else {
            icmp[5] = 128 / 4;
        }
        icmp.extend_from_slice(&quote);
        let mut ext = vec![0x20, 0, 0, 0];
        ext.extend_from_slice(&(4 + 4 * mpls.len() as u16).to_be_bytes());
        ext.extend_from_slice(&[1, 1]);
        for (i, label) in mpls.iter().enumerate() {
            let bottom = u32::from(i + 1 == mpls.len());
            let entry = (label & 0xfffff) << 12 | bottom << 8 | 1;
            ext.extend_from_slice(&entry.to_be_bytes());
        }
        let c = Sum::new().add_bytes(&ext).checksum();
        ext[2..4].copy_from_slice(&c.to_be_bytes());
        icmp.extend_from_slice(&ext);
    }
    let mut p = ip_packet(ip.v6, from, ip.src, icmp_proto, ttl, &icmp);
    let l4 = if ip.v6 { 40 } else { 20 };
    l4_checksum(&mut p, ip.v6, icmp_proto, l4, 2);
    p
}

/// What a live host at `me` answers to a probe: echo reply, port unreachable, or a TCP
/// SYN-ACK (ports 80 and 443) or RST. `None` for anything that is not a probe.
fn host_reply(ip: &Ip, pkt: &[u8], me: IpAddr, ttl: u8) -> Option<Vec<u8>> {
    let l4 = pkt.get(ip.header_len..)?;
    let hl = if ip.v6 { 40 } else { 20 };
    match ip.proto {
        1 | 58 => {
            let (echo_req, echo_rep) = if ip.v6 { (128, 129) } else { (8, 0) };
            if l4.len() < 8 || l4[0] != echo_req || (ip.proto == 58) != ip.v6 {
                return None;
            }
            let mut icmp = l4.to_vec();
            icmp[0] = echo_rep;
            let mut p = ip_packet(ip.v6, me, ip.src, ip.proto, ttl, &icmp);
            l4_checksum(&mut p, ip.v6, ip.proto, hl, 2);
            Some(p)
        }
        17 => {
            if l4.len() < 8 {
                return None;
            }
            let mut quote = pkt.to_vec();
            quote.truncate(if ip.v6 { 1232 } else { 548 });
            let (ty, code, proto) = if ip.v6 { (1u8, 4u8, 58u8) } else { (3, 3, 1) };
            let mut icmp = vec![ty, code, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&quote);
            let mut p = ip_packet(ip.v6, me, ip.src, proto, ttl, &icmp);
            l4_checksum(&mut p, ip.v6, proto, hl, 2);
            Some(p)
        }
        6 => {
            if l4.len() < 20 {
                return None;
            }
            let flags = l4[13];
            // Only a SYN opens a conversation; the prober's kernel RSTs our SYN-ACK.
            if flags & 0x02 == 0 || flags & 0x10 != 0 {
                return None;
            }
            let (sport, dport) = (&l4[0..2], &l4[2..4]);
            let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
            let open = matches!(u16::from_be_bytes([dport[0], dport[1]]), 80 | 443);
            let mut tcp = Vec::with_capacity(20);
            tcp.extend_from_slice(dport);
            tcp.extend_from_slice(sport);
            let my_seq: u32 = if open {
                0x1000_0000 ^ seq.rotate_left(13)
            } else {
                0
            };
            tcp.extend_from_slice(&my_seq.to_be_bytes());
            tcp.extend_from_slice(&seq.wrapping_add(1).to_be_bytes());
            let reply_flags = if open { 0x12 } else { 0x14 };
            let window: u16 = if open { 65535 } else { 0 };
            tcp.extend_from_slice(&[0x50, reply_flags]);
            tcp.extend_from_slice(&window.to_be_bytes());
            tcp.extend_from_slice(&[0, 0, 0, 0]);
            let mut p = ip_packet(ip.v6, me, ip.src, 6, ttl, &tcp);
            l4_checksum(&mut p, ip.v6, 6, hl, 16);
            Some(p)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
