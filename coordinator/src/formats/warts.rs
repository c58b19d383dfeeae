//! scamper's binary warts ↔ `TraceRecord`, through the `warts` crate (dioptra-io's
//! reader and writer of scamper's format). Traces only: list and cycle objects frame
//! them (a cycle's `hostname` names the monitor, `scamper:<hostname>`), MDA
//! (`tracelb`) and ping objects are skipped. Hops follow the scamper JSON mapping
//! (`scamper_json`): one answer per TTL, the first reply.
//!
//! The crate reads a MPLS label stack's bytes but does not expose them, and its writer
//! does not flag ICMP extensions: MPLS labels do not travel through warts here.

use std::ffi::CString;
use std::net::IpAddr;

use deku::{DekuContainerRead as _, DekuContainerWrite as _};
use tracemesh_proto::v1;
use warts::{
    Address, CycleStart, CycleStop, Flags, List, Object, Timeval, TraceProbe, TraceStopReason,
    TraceType, Traceroute,
};

use super::{FormatError, Item, Position};

/// Every object of a warts file. A damaged object ends the file: warts has no
/// resynchronisation marker, so nothing after it can be framed.
pub fn decode(data: &[u8]) -> Vec<Item> {
    Objects::new(data).collect()
}

/// The objects of a warts file one by one, as [`Item`]s.
#[derive(Debug)]
pub struct Objects<'a> {
    data: &'a [u8],
    off: usize,
    monitor: Option<String>,
    done: bool,
}

impl<'a> Objects<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Objects {
            data,
            off: 0,
            monitor: None,
            done: false,
        }
    }

    fn fail(&mut self, at: Position, why: String) -> Option<Item> {
        self.done = true;
        Some(Item::Malformed { at, why })
    }
}

impl Iterator for Objects<'_> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        if self.done || self.off >= self.data.len() {
            return None;
        }
        let at = Position::Byte(self.off as u64);
        let rest = &self.data[self.off..];
        // A header is magic (2), type (2), length (4); the crate takes the length as
        // the object's first field.
        if rest.len() < 8 {
            return self.fail(
                at,
                format!("truncated object header ({} bytes left)", rest.len()),
            );
        }
        if rest[..2] != [0x12, 0x05] {
            return self.fail(at, "not a warts object (bad magic)".into());
        }
        let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let Some(obj) = rest.get(..8 + len) else {
            return self.fail(
                at,
                format!("object of {len} bytes runs past the end of the file"),
            );
        };
        self.off += 8 + len;
        let ty = u16::from_be_bytes([obj[2], obj[3]]);
        // Only the types this module uses are handed to the crate.
        if !matches!(ty, 0x0001 | 0x0002 | 0x0003 | 0x0004 | 0x0006) {
            return Some(Item::Skipped {
                at,
                why: format!("warts object type {ty:#06x}"),
            });
        }
        // The crate panics on some damaged objects (a flag field of more than ten
        // continuation bytes overflows its shift; found by fuzzing): a damaged object
        // is a malformed record, not the end of the import.
        let parsed = std::panic::catch_unwind(|| Object::from_bytes((obj, 0)));
        let Ok(parsed) = parsed else {
            return Some(Item::Malformed {
                at,
                why: "warts: damaged object (the decoder gave up)".into(),
            });
        };
        Some(match parsed {
            Err(e) => Item::Malformed {
                at,
                why: format!("warts: {e}"),
            },
            Ok((_, Object::CycleStart(c) | Object::CycleDefinition(c))) => {
                self.monitor = c
                    .hostname
                    .and_then(|h| h.into_string().ok())
                    .filter(|h| !h.is_empty());
                Item::Skipped {
                    at,
                    why: "cycle start".into(),
                }
            }
            Ok((_, Object::Traceroute(t))) => match record(&t, self.monitor.as_deref()) {
                Ok(r) => Item::Trace(Box::new(r)),
                Err(why) => Item::Malformed { at, why },
            },
            Ok(_) => Item::Skipped {
                at,
                why: format!("warts object type {ty:#06x}"),
            },
        })
    }
}

fn ip_of(a: &Address) -> Option<IpAddr> {
    match a {
        Address::IPv4(_, x) => Some(IpAddr::V4(*x)),
        Address::IPv6(_, x) => Some(IpAddr::V6(*x)),
        _ => None,
    }
}

/// One traceroute. Addresses are numbered in the order they first appear in the
/// object (source, destination, then each hop's); a reference names an earlier one.
pub fn record(t: &Traceroute, monitor: Option<&str>) -> Result<v1::TraceRecord, String> {
    let mut table: Vec<Address> = Vec::new();
    let mut resolve = |a: &Option<Address>| -> Result<Option<IpAddr>, String> {
        match a {
            None => Ok(None),
            Some(Address::Reference(id)) => table
                .get(*id as usize)
                .and_then(ip_of)
                .map(Some)
                .ok_or_else(|| format!("address reference {id} to nothing")),
            Some(x) => {
                table.push(*x);
                ip_of(x)
                    .map(Some)
                    .ok_or_else(|| "a hardware address where an IP address belongs".into())
            }
        }
    };
    let src = resolve(&t.src_addr)?;
    let dst = resolve(&t.dst_addr)?.ok_or("no destination address")?;
    let attempts = u32::from(t.attempts.unwrap_or(1)).max(1);
    let mut hops: Vec<v1::Hop> = Vec::new();
    for p in &t.hops {
        let addr = resolve(&p.addr)?;
        let ttl = u32::from(p.probe_ttl.ok_or("a reply without its probe TTL")?);
        if ttl == 0 || hops.iter().any(|h| h.ttl == ttl) {
            continue;
        }
        hops.push(v1::Hop {
            ttl,
            addr: addr.map(|a| a.to_string()),
            rtt_ms: p.rtt_usec.map(|u| f64::from(u) / 1000.0),
            icmp_type: p.icmp_type.map(u32::from),
            icmp_code: p.icmp_code.map(u32::from),
            reply_ttl: p.reply_ttl.map(u32::from),
            quoted_ttl: p.quoted_ttl.map(u32::from),
            tcp_flags: None,
            mpls: Vec::new(),
            probes: attempts,
        });
    }
    let first = u32::from(t.first_ttl.unwrap_or(1)).max(1);
    let last = hops
        .iter()
        .map(|h| h.ttl)
        .max()
        .unwrap_or(0)
        .max(u32::from(t.hops_probed.unwrap_or(0)).min(255));
    for ttl in first..=last {
        if !hops.iter().any(|h| h.ttl == ttl) {
            hops.push(v1::Hop {
                ttl,
                probes: attempts,
                ..Default::default()
            });
        }
    }
    hops.sort_by_key(|h| h.ttl);
    let (sec, usec) = t
        .start_time
        .as_ref()
        .map_or((0, 0), |s| (s.seconds, s.microseconds));
    let dst = dst.to_string();
    let vantage = match (monitor, &src) {
        (Some(m), _) => format!("scamper:{m}"),
        (None, Some(s)) => format!("scamper:{s}"),
        (None, None) => "scamper:unknown".into(),
    };
    let proto = match t.trace_type {
        Some(TraceType::ICMPEcho | TraceType::ICMPEchoParis) => v1::ProbeProtocol::Icmp,
        Some(TraceType::UDP | TraceType::UDPParis) => v1::ProbeProtocol::Udp,
        Some(TraceType::TCP | TraceType::TCPAck) => v1::ProbeProtocol::Tcp,
        None => v1::ProbeProtocol::Unspecified,
    };
    let stop = match t.stop_reason {
        Some(TraceStopReason::Completed) => v1::StopReason::Completed,
        Some(TraceStopReason::Unreach | TraceStopReason::ICMP) => v1::StopReason::Unreachable,
        Some(TraceStopReason::Loop) => v1::StopReason::Loop,
        Some(TraceStopReason::GapLimit) => v1::StopReason::GapLimit,
        Some(TraceStopReason::HopLimit) => v1::StopReason::MaxTtl,
        _ => v1::StopReason::Unspecified,
    };
    let probes_sent = t
        .probes_sent
        .map_or_else(|| hops.iter().map(|h| h.probes).sum(), u32::from);
    Ok(v1::TraceRecord {
        result_id: format!("scamper/{vantage}/{dst}/{sec}.{usec:06}"),
        campaign_id: "scamper".into(),
        round: sec,
        vantage,
        dst,
        src: src.map(|s| s.to_string()),
        proto: proto as i32,
        stop_reason: stop as i32,
        start: f64::from(sec) + f64::from(usec) / 1e6,
        probes_sent,
        hops,
        received_at_ns: 0,
    })
}

fn cstring(s: &str) -> Result<CString, FormatError> {
    CString::new(s).map_err(|_| FormatError::Unwritable {
        what: "warts",
        detail: format!("{s:?} holds a NUL byte"),
    })
}

fn unwritable(e: impl std::fmt::Display) -> FormatError {
    FormatError::Unwritable {
        what: "warts",
        detail: e.to_string(),
    }
}

/// Writes traces as warts: a list, then one cycle per run of traces from the same
/// vantage (the cycle's hostname is the vantage's name), each trace in it.
#[derive(Debug)]
pub struct Writer<W: std::io::Write> {
    out: W,
    cycle: Option<(u32, String)>,
    last_start: u32,
}

impl<W: std::io::Write> Writer<W> {
    pub fn new(mut out: W) -> Result<Self, FormatError> {
        let list = List {
            length: 0,
            list_id: 1,
            list_id_human: 0,
            name: cstring("tracemesh")?,
            flags: Flags::default(),
            param_length: None,
            description: Some(cstring("tracemesh export")?),
            monitor_name: None,
        };
        out.write_all(
            &Object::List(list.finalize())
                .to_bytes()
                .map_err(unwritable)?,
        )?;
        Ok(Writer {
            out,
            cycle: None,
            last_start: 0,
        })
    }

    fn stop_cycle(&mut self) -> Result<(), FormatError> {
        if let Some((id, _)) = self.cycle.take() {
            let stop = CycleStop {
                length: 0,
                cycle_id: id,
                stop_time: self.last_start,
                flags: Flags::default(),
            };
            self.out.write_all(
                &Object::CycleStop(stop.finalize())
                    .to_bytes()
                    .map_err(unwritable)?,
            )?;
        }
        Ok(())
    }

    pub fn write(&mut self, t: &v1::TraceRecord) -> Result<(), FormatError> {
        let sec = t.start.floor().clamp(0.0, f64::from(u32::MAX)) as u32;
        let usec = ((t.start - f64::from(sec)) * 1e6)
            .round()
            .clamp(0.0, 999_999.0) as u32;
        if self.cycle.as_ref().is_none_or(|(_, v)| *v != t.vantage) {
            let id = self.cycle.as_ref().map_or(1, |(id, _)| id + 1);
            self.stop_cycle()?;
            let start = CycleStart {
                length: 0,
                cycle_id: id,
                list_id: 1,
                cycle_id_human: id,
                start_time: sec,
                flags: Flags::default(),
                param_length: None,
                stop_time: None,
                hostname: Some(cstring(&t.vantage)?),
            };
            self.out.write_all(
                &Object::CycleStart(start.finalize())
                    .to_bytes()
                    .map_err(unwritable)?,
            )?;
            self.cycle = Some((id, t.vantage.clone()));
        }
        self.last_start = sec;
        let ip = |s: &str| -> Result<IpAddr, FormatError> {
            s.parse()
                .map_err(|_| unwritable(format!("{s:?} is not an IP address")))
        };
        let small = |x: u32| u8::try_from(x).unwrap_or(u8::MAX);
        let mut hops = Vec::new();
        for h in &t.hops {
            let Some(a) = &h.addr else { continue };
            hops.push(
                TraceProbe {
                    flags: Flags::default(),
                    param_length: None,
                    addr_id: None,
                    probe_ttl: Some(small(h.ttl)),
                    reply_ttl: h.reply_ttl.map(small),
                    hop_flags: None,
                    probe_id: Some(0),
                    rtt_usec: h
                        .rtt_ms
                        .map(|r| (r * 1000.0).round().clamp(0.0, f64::from(u32::MAX)) as u32),
                    icmp_type: Some(h.icmp_type.map_or(0, small)),
                    icmp_code: Some(h.icmp_code.map_or(0, small)),
                    probe_size: None,
                    reply_size: None,
                    reply_ip_id: None,
                    reply_ip_tos: None,
                    next_hop_mtu: None,
                    quoted_length: None,
                    quoted_ttl: h.quoted_ttl.map(small),
                    reply_tcp_flags: None,
                    quoted_tos: None,
                    icmp_extensions_length: None,
                    icmp_extensions: Vec::new(),
                    addr: Some(Address::from(ip(a)?)),
                    tx: None,
                }
                .finalize(),
            );
        }
        let trace_type = match v1::ProbeProtocol::try_from(t.proto) {
            Ok(v1::ProbeProtocol::Udp) => TraceType::UDPParis,
            Ok(v1::ProbeProtocol::Tcp) => TraceType::TCP,
            _ => TraceType::ICMPEchoParis,
        };
        let stop = match v1::StopReason::try_from(t.stop_reason) {
            Ok(v1::StopReason::Completed) => TraceStopReason::Completed,
            Ok(v1::StopReason::Unreachable) => TraceStopReason::Unreach,
            Ok(v1::StopReason::GapLimit) => TraceStopReason::GapLimit,
            Ok(v1::StopReason::Loop) => TraceStopReason::Loop,
            Ok(v1::StopReason::MaxTtl) => TraceStopReason::HopLimit,
            _ => TraceStopReason::None,
        };
        let last_ttl = t.hops.iter().map(|h| h.ttl).max().unwrap_or(0);
        let trace = Traceroute {
            length: 0,
            flags: Flags::default(),
            param_length: None,
            list_id: Some(1),
            cycle_id: self.cycle.as_ref().map(|(id, _)| *id),
            src_addr_id: None,
            dst_addr_id: None,
            start_time: Some(Timeval {
                seconds: sec,
                microseconds: usec,
            }),
            stop_reason: Some(stop),
            stop_data: Some(0),
            trace_flags: None,
            attempts: Some(small(
                t.hops.iter().map(|h| h.probes).max().unwrap_or(1).max(1),
            )),
            hop_limit: None,
            trace_type: Some(trace_type),
            probe_size: None,
            src_port: None,
            dst_port: None,
            first_ttl: Some(small(
                t.hops.iter().map(|h| h.ttl).min().unwrap_or(1).max(1),
            )),
            ip_tos: None,
            timeout_sec: None,
            allowed_loops: None,
            hops_probed: Some(u16::try_from(last_ttl).unwrap_or(u16::MAX)),
            gap_limit: None,
            gap_limit_action: None,
            loop_action: None,
            probes_sent: Some(u16::try_from(t.probes_sent).unwrap_or(u16::MAX)),
            interval_csec: None,
            confidence_level: None,
            src_addr: t.src.as_deref().map(ip).transpose()?.map(Address::from),
            dst_addr: Some(Address::from(ip(&t.dst)?)),
            user_id: None,
            ip_offset: None,
            router_addr: None,
            hop_count: 0,
            hops,
            eof: 0,
        };
        self.out.write_all(
            &Object::Traceroute(trace.finalize())
                .to_bytes()
                .map_err(unwritable)?,
        )?;
        Ok(())
    }

    pub fn finish(mut self) -> Result<W, FormatError> {
        self.stop_cycle()?;
        self.out.flush()?;
        Ok(self.out)
    }
}
