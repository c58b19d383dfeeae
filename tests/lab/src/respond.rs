//! The emulated internet's answers, sans I/O: a packet a vantage sent, and the time it
//! was sent, in; the packets to deliver (to which vantage, after how long) out.
//!
//! The probe's flow picks its branch at balancing routers; the *k*-th visible router of
//! its way answers a probe whose TTL runs out there with an ICMP Time Exceeded quoting
//! the probe (with an RFC 4950 MPLS label stack where the router has labels, in RFC 4884
//! form), from the address `reply_from` says, after its slow-path delay and within its
//! rate limit; past the way, the destination host answers as a live host would, a router
//! probed directly as routers answer alias probes, and a packet for another vantage is
//! delivered to it. Version 2: every answer comes home on its own way (FORMAT.md);
//! version 1: on the probe's way reversed, twice the one-way delay.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use tracemesh_agent::probe::checksum::{Sum, pseudo_v4, pseudo_v6};

use crate::scenario::route::ecmp_pick;
use crate::scenario::{Ep, World};

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
    /// The router's ICMP rate limit (`icmp_rate`) held the answer back.
    RateLimited,
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

/// Where a packet is going.
#[derive(Debug, Clone, Copy)]
enum Dest {
    /// A target host or another vantage.
    Ep(Ep),
    /// A router probed directly (alias resolution): the last hop, answering itself.
    Router(usize),
}

/// A per-router ICMP token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_s: f64,
}

/// What the routers of the emulated internet remember between packets, shared by every
/// emulator thread: ICMP rate-limit buckets and IPv4 identification counters.
#[derive(Debug)]
pub struct Shared {
    buckets: Vec<Mutex<Option<Bucket>>>,
    ipid: Vec<AtomicU16>,
}

impl Shared {
    pub fn new(world: &World) -> Shared {
        Shared {
            buckets: world.s.routers.iter().map(|_| Mutex::new(None)).collect(),
            // Real counters start anywhere; a fixed start per router keeps runs repeatable.
            ipid: (0..world.s.routers.len())
                .map(|r| AtomicU16::new((ecmp_pick(0x1d, r, 65_536)) as u16))
                .collect(),
        }
    }

    /// Whether router `r` (at most `rate` errors/s, burst = rate) may send an ICMP error
    /// at scenario time `now_s`. Threads may present instants slightly out of order; a
    /// bucket never refills backwards.
    fn take(&self, r: usize, rate: f64, now_s: f64) -> bool {
        let Some(slot) = self.buckets.get(r) else {
            return true;
        };
        let mut b = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cur = b.get_or_insert(Bucket {
            tokens: rate,
            at_s: now_s,
        });
        if now_s > cur.at_s {
            cur.tokens = (cur.tokens + (now_s - cur.at_s) * rate).min(rate);
            cur.at_s = now_s;
        }
        if cur.tokens >= 1.0 {
            cur.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The next IPv4 identification of router `r`: one counter per router, whichever
    /// address it sends from, so that alias probes see one interleaved series.
    pub fn next_ipid(&self, r: usize) -> u16 {
        self.ipid
            .get(r)
            .map_or(0, |c| c.fetch_add(1, Ordering::Relaxed))
    }
}

#[derive(Debug)]
pub struct Responder<'w> {
    world: &'w World,
    shared: Arc<Shared>,
    /// xorshift state for slow-path delays and jitter (one responder per thread).
    rng: Cell<u64>,
}

/// The flow of a probe as ECMP hashes it: addresses, protocol, and the ports (UDP, TCP)
/// or the ICMP type, code and checksum (what Paris traceroute holds constant).
fn flow_of(ip: &Ip, pkt: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for a in [ip.src, ip.dst] {
        match a {
            IpAddr::V4(a) => eat(&a.octets()),
            IpAddr::V6(a) => eat(&a.octets()),
        }
    }
    eat(&[ip.proto]);
    if matches!(ip.proto, 1 | 6 | 17 | 58) {
        let l4 = pkt.get(ip.header_len..).unwrap_or(&[]);
        eat(&l4[..l4.len().min(4)]);
    }
    h
}

impl<'w> Responder<'w> {
    pub fn new(world: &'w World) -> Self {
        Self::with_shared(world, Arc::new(Shared::new(world)))
    }

    /// A responder for one emulator thread; `shared` is the routers' state, common to all.
    pub fn with_shared(world: &'w World, shared: Arc<Shared>) -> Self {
        Responder {
            world,
            shared,
            rng: Cell::new(0x2545_f491_4f6c_dd1d),
        }
    }

    /// Uniform in [0, 1).
    fn unit(&self) -> f64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn uniform(&self, lo: f64, hi: f64) -> f64 {
        if hi > lo {
            lo + (hi - lo) * self.unit()
        } else {
            lo
        }
    }

    /// Delay and drawn jitter of crossing a router path, ms.
    fn crossing(&self, p: &[usize]) -> f64 {
        p.windows(2)
            .map(|w| {
                let wire = self.world.wire(w[0], w[1]);
                wire.delay + self.uniform(0.0, wire.jitter)
            })
            .sum()
    }

    /// Routers on a path that count as hops (not hidden).
    fn visible(&self, p: &[usize]) -> usize {
        p.iter()
            .filter(|r| !self.world.s.routers[**r].is_hidden())
            .count()
    }

    fn ipid(&self, r: usize) -> u16 {
        if self.world.is_v2() {
            self.shared.next_ipid(r)
        } else {
            0
        }
    }

    /// Whether router `r` may send an ICMP error at `now_s` under its `icmp_rate`.
    fn may_send_error(&self, r: usize, now_s: f64) -> bool {
        match self.world.s.routers[r].icmp_rate {
            Some(rate) => self.shared.take(r, rate, now_s),
            None => true,
        }
    }

    /// An ICMP error's extra time on router `r`'s slow path.
    fn slow_path(&self, r: usize) -> f64 {
        let [lo, hi] = self.world.s.routers[r].icmp_delay();
        self.uniform(lo, hi)
    }

    /// The way back from router `r` to vantage `v` (version 2: its own least-cost way,
    /// no event applied; version 1: the probe's way reversed, `fwd_path`), its delay with
    /// jitter, and how many routers on it count as hops after `r`.
    fn way_home(&self, r: usize, v: usize, flow: u64, fwd_path: &[usize]) -> (f64, usize) {
        let w = self.world;
        let home = w.ep_router(Ep::Vantage(v));
        let back = if w.is_v2() {
            w.walk(r, home, Some(flow ^ 0xa5a5_5a5a_0f0f_f0f0))
        } else {
            None
        };
        let back = back.unwrap_or_else(|| fwd_path.iter().rev().copied().collect());
        (self.crossing(&back), self.visible(&back).saturating_sub(1))
    }

    /// Answers one packet sent by vantage `v` at `t_s` seconds after campaign start.
    pub fn handle(&self, v: usize, pkt: &[u8], t_s: f64) -> Result<Vec<Emit>, Dropped> {
        let ip = parse_ip(pkt).ok_or(Dropped::Malformed)?;
        let w = self.world;
        let x = Ep::Vantage(v);
        let flow = flow_of(&ip, pkt);
        let dest = if let Some(tg) = w.target_of(ip.dst) {
            Dest::Ep(Ep::Target(tg))
        } else if let Some(other) = w.vantage_by_addr(ip.dst) {
            if other == v {
                return Err(Dropped::NoRoute);
            }
            Dest::Ep(Ep::Vantage(other))
        } else if let Some(r) = w.router_by_addr(ip.dst) {
            if w.s.routers[r].is_hidden() {
                return Err(Dropped::NoRoute);
            }
            Dest::Router(r)
        } else {
            return Err(Dropped::NoRoute);
        };
        let path = match dest {
            Dest::Ep(y) => w.route(x, y, t_s, Some(flow)).ok_or(Dropped::NoRoute)?.0,
            // Events concern traffic between endpoints, not probes to a router.
            Dest::Router(r) => w
                .walk(w.ep_router(x), r, Some(flow))
                .ok_or(Dropped::NoRoute)?,
        };
        let acc = w.ep_access(x);
        // Indices into `path` of the routers a TTL counts; a router probed directly is
        // the destination, not an intermediate hop.
        let mut hops: Vec<usize> = (0..path.len())
            .filter(|&j| !w.s.routers[path[j]].is_hidden())
            .collect();
        if matches!(dest, Dest::Router(_)) {
            hops.pop();
        }
        let ttl = usize::from(ip.ttl);
        if ttl == 0 {
            return Err(Dropped::Malformed);
        }
        if ttl <= hops.len() {
            let j = hops[ttl - 1];
            let r = path[j];
            if w.silent(r, t_s) {
                return Err(Dropped::Silent);
            }
            let fwd = self.crossing(&path[..=j]);
            if !self.may_send_error(r, t_s + (acc + fwd) / 1000.0) {
                return Err(Dropped::RateLimited);
            }
            let router = &w.s.routers[r];
            let from = w.answer_addr(r, j.checked_sub(1).map(|i| path[i]), ip.v6);
            if from.is_ipv6() != ip.v6 {
                return Err(Dropped::Silent);
            }
            let (back, back_hops) = self.way_home(r, v, flow, &path[..=j]);
            let rtt = 2.0 * acc + fwd + self.slow_path(r) + back;
            let reply_ttl = 255 - back_hops.min(254) as u8;
            let packet = time_exceeded(&ip, pkt, from, &router.mpls, reply_ttl, self.ipid(r));
            return Ok(vec![Emit {
                vantage: v,
                delay_ms: rtt,
                packet,
            }]);
        }
        let fwd = self.crossing(&path);
        match dest {
            Dest::Ep(Ep::Vantage(other)) => {
                let mut out = pkt.to_vec();
                set_ttl(&mut out, &ip, ip.ttl - hops.len() as u8);
                Ok(vec![Emit {
                    vantage: other,
                    delay_ms: acc + fwd + w.ep_access(Ep::Vantage(other)),
                    packet: out,
                }])
            }
            Dest::Ep(y @ Ep::Target(_)) => {
                let (back, back_hops) = if w.is_v2() {
                    // The host's answer takes the way from it to the vantage now, events
                    // applied (an event `from` a target moves only the answers).
                    let (p, _) = w
                        .route(y, x, t_s, Some(flow ^ 0x3c3c_c3c3_5555_aaaa))
                        .ok_or(Dropped::NoRoute)?;
                    (self.crossing(&p), self.visible(&p))
                } else {
                    (fwd, path.len())
                };
                let reply = host_reply(&ip, pkt, ip.dst, 64 - back_hops.min(63) as u8, 0, true)
                    .ok_or(Dropped::NotAProbe)?;
                Ok(vec![Emit {
                    vantage: v,
                    delay_ms: 2.0 * acc + 2.0 * w.ep_access(y) + fwd + back,
                    packet: reply,
                }])
            }
            Dest::Router(r) => {
                if w.silent(r, t_s) {
                    return Err(Dropped::Silent);
                }
                let (back, back_hops) = self.way_home(r, v, flow, &path);
                let reply_ttl = 255 - back_hops.min(254) as u8;
                if !w.is_v2() {
                    let reply = host_reply(&ip, pkt, ip.dst, reply_ttl, 0, true)
                        .ok_or(Dropped::NotAProbe)?;
                    return Ok(vec![Emit {
                        vantage: v,
                        delay_ms: 2.0 * acc + fwd + back,
                        packet: reply,
                    }]);
                }
                // As real routers answer alias-resolution probes: echo from the probed
                // address on the fast path; UDP, a Port Unreachable from the address it
                // sources errors from, on the slow path and under its rate limit; TCP, a
                // RST from the probed address.
                let (reply, slow) = if ip.proto == 17 {
                    let router = &w.s.routers[r];
                    let src = [Some(router.addr), router.addr6]
                        .into_iter()
                        .flatten()
                        .find(|a| a.is_ipv6() == ip.v6)
                        .ok_or(Dropped::NoRoute)?;
                    if !self.may_send_error(r, t_s + (acc + fwd) / 1000.0) {
                        return Err(Dropped::RateLimited);
                    }
                    let p = host_reply(&ip, pkt, src, reply_ttl, self.ipid(r), false)
                        .ok_or(Dropped::NotAProbe)?;
                    (p, self.slow_path(r))
                } else {
                    let p = host_reply(&ip, pkt, ip.dst, reply_ttl, self.ipid(r), false)
                        .ok_or(Dropped::NotAProbe)?;
                    (p, 0.0)
                };
                Ok(vec![Emit {
                    vantage: v,
                    delay_ms: 2.0 * acc + fwd + slow + back,
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
fn ip_packet(
    v6: bool,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    ttl: u8,
    id: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + payload.len());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) if !v6 => {
            let total = (20 + payload.len()) as u16;
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&[0, 0, ttl, proto, 0, 0]);
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
fn time_exceeded(ip: &Ip, probe: &[u8], from: IpAddr, mpls: &[u32], ttl: u8, id: u16) -> Vec<u8> {
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
    let mut p = ip_packet(ip.v6, from, ip.src, icmp_proto, ttl, id, &icmp);
    let l4 = if ip.v6 { 40 } else { 20 };
    l4_checksum(&mut p, ip.v6, icmp_proto, l4, 2);
    p
}

/// What a live host at `me` answers to a probe: echo reply, port unreachable, or a TCP
/// SYN-ACK (ports 80 and 443 where `open`) or RST. `None` for anything that is not a
/// probe.
fn host_reply(ip: &Ip, pkt: &[u8], me: IpAddr, ttl: u8, id: u16, open: bool) -> Option<Vec<u8>> {
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
            let mut p = ip_packet(ip.v6, me, ip.src, ip.proto, ttl, id, &icmp);
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
            let mut p = ip_packet(ip.v6, me, ip.src, proto, ttl, id, &icmp);
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
            let open = open && matches!(u16::from_be_bytes([dport[0], dport[1]]), 80 | 443);
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
            let mut p = ip_packet(ip.v6, me, ip.src, 6, ttl, id, &tcp);
            l4_checksum(&mut p, ip.v6, 6, hl, 16);
            Some(p)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod v2_tests;
