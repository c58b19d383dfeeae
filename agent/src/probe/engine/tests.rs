use std::net::Ipv4Addr;
use std::time::Duration;

use super::*;
use crate::probe::packet::{parse_quoted_v4, parse_quoted_v6};

/// A pure in-memory network: every destination sits behind the same routers.
struct Net {
    routers: Vec<IpAddr>,
}

impl Net {
    /// The reply a probe gets, if any; the destination answers past the routers.
    fn answer(&self, probe: &[u8], dst: IpAddr, proto: Proto) -> Option<Reply> {
        let quoted = if dst.is_ipv4() {
            parse_quoted_v4(probe)
        } else {
            parse_quoted_v6(probe)
        }
        .ok()?;
        let ttl = usize::from(quoted.ttl);
        let v6 = dst.is_ipv6();
        if ttl <= self.routers.len() {
            return Some(Reply {
                from: self.routers[ttl - 1],
                reply_ttl: 64 - ttl as u8,
                body: ReplyBody::IcmpError {
                    icmp_type: if v6 { 3 } else { 11 },
                    icmp_code: 0,
                    quoted: super::super::packet::Quoted { ttl: 1, ..quoted },
                    mpls: vec![],
                },
            });
        }
        let body = match (proto, quoted.l4.clone()) {
            (Proto::Icmp, QuotedL4::Icmp { id, seq, .. }) => ReplyBody::EchoReply {
                icmp_type: if v6 { 129 } else { 0 },
                id,
                seq,
            },
            (Proto::Udp, _) => ReplyBody::IcmpError {
                icmp_type: if v6 { 1 } else { 3 },
                icmp_code: if v6 { 4 } else { 3 },
                quoted,
                mpls: vec![],
            },
            (Proto::Tcp, QuotedL4::Tcp { sport, dport, seq }) => ReplyBody::Tcp {
                sport: dport,
                dport: sport,
                seq: 0,
                ack: seq.wrapping_add(1),
                flags: TCP_RST | super::super::packet::TCP_ACK,
            },
            _ => return None,
        };
        Some(Reply {
            from: dst,
            reply_ttl: 60,
            body,
        })
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn params(proto: Proto) -> TraceParams {
    TraceParams {
        proto,
        wait: Duration::from_millis(200),
        attempts: 2,
        ..TraceParams::default()
    }
}

/// Runs the engine against `net` on a simulated clock where every reply takes `rtt`.
fn run(
    engine: &mut Engine,
    net: &Net,
    rtt: Duration,
    t0: Instant,
) -> (Vec<TraceResult>, Vec<Instant>) {
    let mut now = t0;
    let mut buf = Vec::new();
    let mut inflight: Vec<(Instant, Reply)> = Vec::new();
    let mut sends = Vec::new();
    let mut results = Vec::new();
    for _ in 0..1_000_000 {
        while let Some(tx) = engine.poll_transmit(now, &mut buf) {
            sends.push(now);
            if let Some(r) = net.answer(&buf, tx.dst, tx.proto) {
                inflight.push((now + rtt, r));
            }
        }
        while let Some(r) = engine.poll_result() {
            results.push(r);
        }
        if engine.is_idle() {
            return (results, sends);
        }
        let next_reply = inflight.iter().map(|(t, _)| *t).min();
        let next = [next_reply, engine.poll_timeout(now)]
            .into_iter()
            .flatten()
            .min()
            .expect("an idle engine returned above");
        now = next.max(now);
        let (due, rest): (Vec<_>, Vec<_>) = inflight.into_iter().partition(|(t, _)| *t <= now);
        inflight = rest;
        for (_, r) in due {
            engine.handle_reply(&r, now);
        }
        engine.handle_timeout(now);
    }
    panic!("simulation did not finish");
}

fn engine(cfg: EngineConfig, t0: Instant) -> Engine {
    Engine::new(cfg, t0, 1_800_000_000.0)
}

fn open_cfg() -> EngineConfig {
    EngineConfig {
        rate_pps: 100_000,
        per_dst_pps: 10_000,
        denylist: DenyList::with_allowed([
            "10.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]),
        ..EngineConfig::default()
    }
}

#[test]
fn traces_many_destinations_with_every_method_and_family() {
    for proto in [Proto::Icmp, Proto::Udp, Proto::Tcp] {
        for v6 in [false, true] {
            let t0 = Instant::now();
            let mut e = engine(open_cfg(), t0);
            let (routers, src): (Vec<IpAddr>, IpAddr) = if v6 {
                (
                    (1..=4)
                        .map(|i| format!("fd00::{i}").parse().unwrap())
                        .collect(),
                    "fd00:ffff::1".parse().unwrap(),
                )
            } else {
                (
                    (1..=4).map(|i| v4(10, 0, 0, i)).collect(),
                    v4(10, 255, 0, 1),
                )
            };
            let net = Net {
                routers: routers.clone(),
            };
            let dsts: Vec<IpAddr> = (1..=50u16)
                .map(|i| {
                    if v6 {
                        format!("fd00:1::{i:x}").parse().unwrap()
                    } else {
                        v4(10, 1, (i >> 8) as u8, i as u8)
                    }
                })
                .collect();
            for &dst in &dsts {
                e.add(TraceRequest {
                    dst,
                    src,
                    params: params(proto),
                })
                .unwrap();
            }
            let (results, sends) = run(&mut e, &net, Duration::from_millis(3), t0);
            assert_eq!(results.len(), 50, "{proto:?} v6={v6}");
            assert_eq!(sends.len(), 50 * 5, "one probe per hop");
            for r in &results {
                assert_eq!(r.stop_reason, StopReason::Completed, "{proto:?} v6={v6}");
                let addrs: Vec<_> = r.hops.iter().map(|h| h.addr.unwrap()).collect();
                assert_eq!(addrs[..4], routers[..]);
                assert_eq!(addrs[4], r.dst);
                assert!(r.hops.iter().all(|h| h.rtt_ms == Some(3.0)));
                if proto == Proto::Tcp {
                    assert_eq!(r.hops[4].tcp_flags.as_deref(), Some("RA"));
                }
            }
            assert_eq!(e.stats().replies_unmatched, 0);
        }
    }
}

#[test]
fn the_global_rate_cap_holds_over_every_second() {
    let t0 = Instant::now();
    let cfg = EngineConfig {
        rate_pps: 500,
        ..open_cfg()
    };
    let mut e = engine(cfg, t0);
    let net = Net {
        routers: (1..=8).map(|i| v4(10, 0, 0, i)).collect(),
    };
    for i in 0..200u16 {
        let dst = v4(10, 2, (i >> 8) as u8, i as u8);
        e.add(TraceRequest {
            dst,
            src: v4(10, 255, 0, 1),
            params: params(Proto::Icmp),
        })
        .unwrap();
    }
    let (results, sends) = run(&mut e, &net, Duration::from_millis(1), t0);
    assert_eq!(results.len(), 200);
    assert_eq!(sends.len(), 1800);
    // Any one-second window holds at most rate + burst probes.
    for (i, &s) in sends.iter().enumerate() {
        let in_window = sends[i..]
            .iter()
            .take_while(|&&t| t < s + Duration::from_secs(1))
            .count();
        assert!(in_window <= 500 + 2, "{in_window} probes within a second");
    }
    let span = sends.last().unwrap().duration_since(sends[0]);
    assert!(
        span >= Duration::from_millis(3500),
        "1800 probes at 500/s took {span:?}"
    );
}

#[test]
fn the_per_destination_cap_spaces_probes_to_one_target() {
    let t0 = Instant::now();
    let cfg = EngineConfig {
        per_dst_pps: 20,
        ..open_cfg()
    };
    let mut e = engine(cfg, t0);
    let net = Net {
        routers: (1..=9).map(|i| v4(10, 0, 0, i)).collect(),
    };
    e.add(TraceRequest {
        dst: v4(10, 3, 0, 1),
        src: v4(10, 255, 0, 1),
        params: params(Proto::Udp),
    })
    .unwrap();
    let (results, sends) = run(&mut e, &net, Duration::from_micros(100), t0);
    assert_eq!(results[0].hops.len(), 10);
    // Burst of 2, then one every 50 ms.
    assert!(sends[2].duration_since(sends[1]) >= Duration::from_millis(45));
    let span = sends.last().unwrap().duration_since(sends[0]);
    assert!(span >= Duration::from_millis(390), "{span:?}");
}

#[test]
fn denied_and_malformed_requests_are_refused() {
    let t0 = Instant::now();
    let mut e = engine(EngineConfig::default(), t0);
    let err = e
        .add(TraceRequest {
            dst: v4(192, 168, 1, 1),
            src: v4(192, 168, 1, 2),
            params: params(Proto::Icmp),
        })
        .unwrap_err();
    assert!(matches!(err, RequestError::Denied(_)));
    let err = e
        .add(TraceRequest {
            dst: v4(8, 8, 8, 8),
            src: "2001:db8::1".parse().unwrap(),
            params: params(Proto::Icmp),
        })
        .unwrap_err();
    assert!(matches!(err, RequestError::Family { .. }));
    let bad = TraceParams {
        first_ttl: 9,
        max_ttl: 3,
        ..params(Proto::Icmp)
    };
    assert!(
        e.add(TraceRequest {
            dst: v4(8, 8, 8, 8),
            src: v4(1, 1, 1, 1),
            params: bad
        })
        .is_err()
    );
    assert!(e.is_idle());
}

#[test]
fn one_trace_per_destination_at_a_time_and_the_window_is_respected() {
    let t0 = Instant::now();
    let cfg = EngineConfig {
        window: 3,
        ..open_cfg()
    };
    let mut e = engine(cfg, t0);
    let net = Net {
        routers: vec![v4(10, 0, 0, 1), v4(10, 0, 0, 2)],
    };
    for i in 0..4 {
        for _ in 0..2 {
            let dst = v4(10, 4, 0, i);
            e.add(TraceRequest {
                dst,
                src: v4(10, 255, 0, 1),
                params: params(Proto::Icmp),
            })
            .unwrap();
        }
    }
    let mut buf = Vec::new();
    let mut n = 0;
    while e.poll_transmit(t0, &mut buf).is_some() {
        n += 1;
    }
    assert_eq!(n, 3, "window of 3 traces, one probe each");
    assert_eq!(e.active(), 3);
    let (results, _) = run(&mut e, &net, Duration::from_millis(1), t0);
    assert_eq!(results.len(), 8, "every request traced, duplicates in turn");
}

#[test]
fn replies_for_other_processes_or_unknown_targets_are_not_matched() {
    let t0 = Instant::now();
    let mut e = engine(open_cfg(), t0);
    let dst = v4(10, 5, 0, 1);
    e.add(TraceRequest {
        dst,
        src: v4(10, 255, 0, 1),
        params: params(Proto::Icmp),
    })
    .unwrap();
    let mut buf = Vec::new();
    e.poll_transmit(t0, &mut buf).unwrap();
    let foreign = Reply {
        from: dst,
        reply_ttl: 60,
        body: ReplyBody::EchoReply {
            icmp_type: 0,
            id: 0x1111,
            seq: 1,
        },
    };
    assert!(!e.handle_reply(&foreign, t0));
    let elsewhere = Reply {
        from: v4(10, 6, 0, 1),
        reply_ttl: 60,
        body: ReplyBody::EchoReply {
            icmp_type: 0,
            id: 0x7e3a,
            seq: 1,
        },
    };
    assert!(!e.handle_reply(&elsewhere, t0));
    assert_eq!(e.stats().replies_unmatched, 2);
    // The genuine echo reply completes the trace at hop 1.
    let ours = Reply {
        from: dst,
        reply_ttl: 60,
        body: ReplyBody::EchoReply {
            icmp_type: 0,
            id: 0x7e3a,
            seq: 1,
        },
    };
    assert!(e.handle_reply(&ours, t0 + Duration::from_millis(2)));
    let r = e.poll_result().unwrap();
    assert_eq!(r.stop_reason, StopReason::Completed);
    assert_eq!(r.start, 1_800_000_000.0);
}

#[test]
fn a_probe_stamped_by_its_send_measures_from_the_send_not_the_build() {
    // Built at t0; the driver's send waits 3 ms (a full queue) and reports when it
    // went; the reply comes 1 ms after that. Without the restamp the RTT would be 4 ms.
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut e = engine(open_cfg(), t0);
    let net = Net {
        routers: vec![v4(10, 0, 0, 1)],
    };
    let dst = v4(10, 2, 0, 1);
    e.add(TraceRequest {
        dst,
        src: v4(10, 255, 0, 1),
        params: params(Proto::Icmp),
    })
    .unwrap();
    let mut buf = Vec::new();
    let mut now = t0;
    for _ in 0..2 {
        let tx = e.poll_transmit(now, &mut buf).unwrap();
        let sent = now + ms(3);
        e.on_sent(sent);
        // Only the probe last handed out is restamped, and only once.
        e.on_sent(sent + ms(50));
        let r = net.answer(&buf, tx.dst, tx.proto).unwrap();
        now = sent + ms(1);
        e.handle_reply(&r, now);
    }
    let r = e.poll_result().unwrap();
    let rtts: Vec<_> = r.hops.iter().map(|h| h.rtt_ms).collect();
    assert_eq!(rtts, [Some(1.0), Some(1.0)]);
}
