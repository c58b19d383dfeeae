use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use crate::probe::packet::replies::{ReplyKind, reply_v4};
use crate::probe::packet::{Quoted, parse_quoted_v4};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const SRC: &str = "198.51.100.1";

/// How a simulated router numbers the packets it originates.
#[derive(Debug, Clone, Copy)]
enum Ids {
    /// One counter for every address, +1 per packet.
    Shared,
    Zero,
    /// Copies the probe's identification.
    Echo,
    /// Pseudo-random per packet.
    Random,
}

struct Router {
    addrs: Vec<IpAddr>,
    /// Where it sources ICMP errors from (Mercator's answer).
    error_src: IpAddr,
    ids: Ids,
    counter: u16,
    silent: bool,
}

/// A pure in-memory network of routers answering alias probes as real ones do.
struct Net {
    routers: Vec<Router>,
    rng: u64,
}

impl Net {
    fn new(routers: Vec<Router>) -> Net {
        Net {
            routers,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn answer(&mut self, probe: &[u8]) -> Option<Vec<u8>> {
        let q = parse_quoted_v4(probe).ok()?;
        let r = self.routers.iter_mut().find(|r| r.addrs.contains(&q.dst))?;
        if r.silent {
            return None;
        }
        let probe_id = u16::from_be_bytes([probe[4], probe[5]]);
        r.counter = r.counter.wrapping_add(1);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let id = match r.ids {
            Ids::Shared => r.counter,
            Ids::Zero => 0,
            Ids::Echo => probe_id,
            Ids::Random => self.rng as u16,
        };
        let (from, kind) = match q.l4 {
            QuotedL4::Udp { .. } => (r.error_src, ReplyKind::PortUnreachable),
            _ => (q.dst, ReplyKind::Echo),
        };
        let IpAddr::V4(from) = from else {
            return None;
        };
        reply_v4(probe, from, id, kind)
    }
}

fn router(addrs: &[&str], ids: Ids, counter: u16) -> Router {
    let addrs: Vec<IpAddr> = addrs.iter().map(|a| ip(a)).collect();
    Router {
        error_src: addrs[0],
        addrs,
        ids,
        counter,
        silent: false,
    }
}

fn cfg(method: Method) -> AliasConfig {
    AliasConfig {
        method,
        denylist: DenyList::with_allowed(["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]),
        ..AliasConfig::default()
    }
}

fn targets(addrs: &[&str]) -> Vec<(IpAddr, IpAddr)> {
    addrs.iter().map(|a| (ip(a), ip(SRC))).collect()
}

/// Runs the prober against `net` on a simulated clock (1 ms steps, 5 ms round trips);
/// returns the send log (time, destination).
fn run(p: &mut AliasProber, net: &mut Net, t0: Instant) -> Vec<(Duration, IpAddr)> {
    let mut buf = Vec::new();
    let mut pending: Vec<(Instant, Vec<u8>)> = Vec::new();
    let mut log = Vec::new();
    let mut now = t0;
    for _ in 0..600_000 {
        p.handle_timeout(now);
        while let Some(dst) = p.poll_transmit(now, &mut buf) {
            log.push((now - t0, dst));
            if let Some(r) = net.answer(&buf) {
                pending.push((now + Duration::from_millis(5), r));
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(at, _)| *at <= now);
        pending = later;
        for (_, r) in due {
            assert!(p.handle_packet_v4(&r, now), "our reply was not matched");
        }
        if p.is_done() {
            return log;
        }
        let next = p.poll_timeout(now).expect("a busy prober has a deadline");
        assert!(next >= now, "deadline in the past");
        now += Duration::from_millis(1);
    }
    panic!("prober never finished");
}

fn groups_of(r: &AliasReport, m: Method) -> Vec<Vec<IpAddr>> {
    let mut g: Vec<Vec<IpAddr>> = r
        .groups
        .iter()
        .filter(|g| g.method == m)
        .map(|g| g.addrs.clone())
        .collect();
    g.sort();
    g
}

fn reason(r: &AliasReport, a: &str) -> Option<UnusableReason> {
    r.unusable
        .iter()
        .find(|u| u.addr == ip(a))
        .map(|u| u.reason)
}

#[test]
fn finds_shared_counters_and_mercator_answers_and_rejects_the_rest() {
    let t0 = Instant::now();
    let mut net = Net::new(vec![
        // Three interfaces of one router, its counter about to wrap.
        router(
            &["192.0.2.1", "192.0.2.11", "192.0.2.21"],
            Ids::Shared,
            65_530,
        ),
        // Two routers whose counters run close together: still two routers.
        router(&["192.0.2.2"], Ids::Shared, 1000),
        router(&["192.0.2.3"], Ids::Shared, 1001),
        router(&["192.0.2.4"], Ids::Zero, 0),
        router(&["192.0.2.5"], Ids::Echo, 0),
        router(&["192.0.2.6"], Ids::Random, 0),
    ]);
    let addrs = [
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.11",
        "192.0.2.3",
        "192.0.2.21",
        "192.0.2.4",
        "192.0.2.5",
        "192.0.2.6",
    ];
    let mut p = AliasProber::new(cfg(Method::Both), &targets(&addrs), t0).unwrap();
    run(&mut p, &mut net, t0);
    let r = p.report();
    assert_eq!(
        groups_of(&r, Method::IpId),
        vec![vec![ip("192.0.2.1"), ip("192.0.2.11"), ip("192.0.2.21")]],
        "{r:#?}"
    );
    assert_eq!(
        groups_of(&r, Method::Mercator),
        vec![vec![ip("192.0.2.1"), ip("192.0.2.11"), ip("192.0.2.21")]]
    );
    assert_eq!(r.mercator[&ip("192.0.2.11")], Some(ip("192.0.2.1")));
    assert_eq!(reason(&r, "192.0.2.4"), Some(UnusableReason::Zero));
    assert_eq!(reason(&r, "192.0.2.5"), Some(UnusableReason::EchoesProbe));
    assert_eq!(reason(&r, "192.0.2.6"), Some(UnusableReason::NotMonotonic));
    assert_eq!(reason(&r, "192.0.2.2"), None);
    // One UDP probe and `rounds` echoes per address, nothing more.
    assert_eq!(r.probes_sent, 8 * 9);
    assert!(r.probes_per_addr.values().all(|&n| n == 9), "{r:?}");
    assert!(r.samples.values().all(|s| s.len() == 8));
    let Evidence::IpId {
        samples,
        velocity_per_s,
        pairs_passed,
    } = &r
        .groups
        .iter()
        .find(|g| g.method == Method::IpId)
        .unwrap()
        .evidence
    else {
        panic!("ipid evidence");
    };
    assert_eq!(*pairs_passed, 3);
    assert!(samples.values().all(|&n| n == 8));
    assert!(
        velocity_per_s.values().all(|&v| v > 10.0 && v < 100.0),
        "{velocity_per_s:?}"
    );
}

#[test]
fn rate_cap_and_per_address_spacing_hold() {
    let t0 = Instant::now();
    let mut net = Net::new(vec![
        router(&["192.0.2.1", "192.0.2.11"], Ids::Shared, 7),
        router(&["192.0.2.2"], Ids::Shared, 9000),
    ]);
    let c = AliasConfig {
        rate_pps: 50,
        rounds: 5,
        spacing: Duration::from_millis(300),
        ..cfg(Method::IpId)
    };
    let mut p =
        AliasProber::new(c, &targets(&["192.0.2.1", "192.0.2.11", "192.0.2.2"]), t0).unwrap();
    let log = run(&mut p, &mut net, t0);
    assert_eq!(log.len(), 15);
    for w in log.windows(2) {
        assert!(
            w[1].0 - w[0].0 >= Duration::from_millis(20),
            "50 pps: {log:?}"
        );
    }
    let mut last: HashMap<IpAddr, Duration> = HashMap::new();
    for &(t, dst) in &log {
        if let Some(prev) = last.insert(dst, t) {
            assert!(t - prev >= Duration::from_millis(300), "spacing: {log:?}");
        }
    }
    // Round-robin: each round probes every address once, in order.
    let order: Vec<IpAddr> = log.iter().map(|&(_, d)| d).collect();
    assert_eq!(order[..3], order[3..6]);
    let r = p.report();
    assert_eq!(
        groups_of(&r, Method::IpId),
        vec![vec![ip("192.0.2.1"), ip("192.0.2.11")]]
    );
    assert!(r.mercator.is_empty());
}

#[test]
fn silent_addresses_get_retried_then_given_up() {
    let t0 = Instant::now();
    let mut silent = router(&["192.0.2.9"], Ids::Shared, 0);
    silent.silent = true;
    let mut net = Net::new(vec![silent, router(&["192.0.2.1"], Ids::Shared, 0)]);
    let mut p = AliasProber::new(
        cfg(Method::Mercator),
        &targets(&["192.0.2.9", "192.0.2.1"]),
        t0,
    )
    .unwrap();
    let log = run(&mut p, &mut net, t0);
    let r = p.report();
    assert_eq!(r.probes_per_addr[&ip("192.0.2.9")], 2, "{log:?}");
    assert_eq!(r.probes_per_addr[&ip("192.0.2.1")], 1);
    assert_eq!(r.mercator[&ip("192.0.2.9")], None);
    assert_eq!(r.mercator[&ip("192.0.2.1")], Some(ip("192.0.2.1")));
    assert!(r.groups.is_empty(), "answered from itself: no alias");
    assert!(r.samples.is_empty() && r.unusable.is_empty());
}

#[test]
fn foreign_and_mismatched_replies_are_ignored() {
    let t0 = Instant::now();
    let mut p =
        AliasProber::new(cfg(Method::Both), &targets(&["192.0.2.1", "192.0.2.2"]), t0).unwrap();
    let mut buf = Vec::new();
    let dst = p.poll_transmit(t0, &mut buf).unwrap();
    assert_eq!(dst, ip("192.0.2.1"));
    let probe = buf.clone();
    // Someone else's UDP probe (another source port) answered.
    let mut other = probe.clone();
    other[20] ^= 0x01;
    let r = reply_v4(
        &other,
        Ipv4Addr::new(192, 0, 2, 1),
        5,
        ReplyKind::PortUnreachable,
    )
    .unwrap();
    assert!(!p.handle_packet_v4(&r, t0));
    // Our probe quoted with another destination.
    let mut moved = probe.clone();
    moved[19] = 2;
    let r = reply_v4(
        &moved,
        Ipv4Addr::new(192, 0, 2, 2),
        5,
        ReplyKind::PortUnreachable,
    )
    .unwrap();
    assert!(!p.handle_packet_v4(&r, t0));
    // An echo reply with our cookie but a sequence never sent.
    let echo = Reply {
        from: ip("192.0.2.1"),
        reply_ttl: 60,
        body: ReplyBody::EchoReply {
            icmp_type: 0,
            id: p.cfg.cookie,
            seq: 999,
        },
    };
    assert!(!p.handle_reply(&echo, Some(1), t0));
    assert!(!p.handle_packet_v4(&[0x45, 0, 0], t0));
    // The real answer, once; a duplicate is not ours any more.
    let r = reply_v4(
        &probe,
        Ipv4Addr::new(192, 0, 2, 77),
        5,
        ReplyKind::PortUnreachable,
    )
    .unwrap();
    assert!(p.handle_packet_v4(&r, t0));
    assert!(!p.handle_packet_v4(&r, t0));
    let rep = p.report();
    assert_eq!(rep.mercator[&ip("192.0.2.1")], Some(ip("192.0.2.77")));
    assert_eq!(
        groups_of(&rep, Method::Mercator),
        vec![vec![ip("192.0.2.1"), ip("192.0.2.77")]]
    );
}

#[test]
fn ipv6_gets_mercator_only_and_is_unusable_for_ipid() {
    let t0 = Instant::now();
    let a = ip("2001:db8::1");
    let b = ip("2001:db8::2");
    let src = ip("2001:db8:ff::1");
    let mut p = AliasProber::new(cfg(Method::Both), &[(a, src), (b, src)], t0).unwrap();
    let mut buf = Vec::new();
    let mut now = t0;
    let mut sent = Vec::new();
    while !p.is_done() {
        while let Some(dst) = p.poll_transmit(now, &mut buf) {
            let q = crate::probe::packet::parse_quoted_v6(&buf).unwrap();
            assert!(matches!(q.l4, QuotedL4::Udp { .. }), "only UDP for IPv6");
            sent.push((dst, q.clone()));
            // Both addresses answer from a third one: the router's loopback.
            let reply = Reply {
                from: ip("2001:db8::99"),
                reply_ttl: 60,
                body: ReplyBody::IcmpError {
                    icmp_type: 1,
                    icmp_code: 4,
                    quoted: Quoted { ttl: 1, ..q },
                    mpls: vec![],
                },
            };
            assert!(p.handle_reply(&reply, None, now));
        }
        now += Duration::from_millis(1);
        p.handle_timeout(now);
    }
    assert_eq!(sent.len(), 2);
    let r = p.report();
    assert_eq!(
        groups_of(&r, Method::Mercator),
        vec![vec![a, b, ip("2001:db8::99")]]
    );
    assert_eq!(r.unusable.len(), 2);
    assert!(r.unusable.iter().all(|u| u.reason == UnusableReason::Ipv6));
    assert!(r.samples.is_empty());
    let _ = Ipv6Addr::LOCALHOST;
}

#[test]
fn bad_requests_are_refused() {
    let t0 = Instant::now();
    let strict = AliasConfig::default();
    let e = AliasProber::new(strict.clone(), &targets(&["10.0.0.1"]), t0).unwrap_err();
    assert!(matches!(e, AliasError::Denied(_)), "{e}");
    assert!(e.to_string().contains("--allow"));
    assert_eq!(
        AliasProber::new(strict.clone(), &[], t0).unwrap_err(),
        AliasError::NoTargets
    );
    let e = AliasProber::new(cfg(Method::IpId), &[(ip("192.0.2.1"), ip("::1"))], t0).unwrap_err();
    assert!(matches!(e, AliasError::Family { .. }));
    let c = AliasConfig {
        rounds: 0,
        ..cfg(Method::IpId)
    };
    assert_eq!(
        AliasProber::new(c, &targets(&["192.0.2.1"]), t0).unwrap_err(),
        AliasError::Rounds(0)
    );
    // Duplicates are probed once.
    let p = AliasProber::new(
        cfg(Method::Mercator),
        &targets(&["192.0.2.1", "192.0.2.1"]),
        t0,
    )
    .unwrap();
    assert_eq!(p.report().probes_per_addr.len(), 1);
}

// ---------------------------------------------------------------------------------------
// Inference alone

fn s(tx_ms: u64, ip_id: u16) -> IpIdSample {
    IpIdSample {
        tx: Duration::from_millis(tx_ms),
        rx: Duration::from_millis(tx_ms + 5),
        ip_id,
        probe_ip_id: 0,
    }
}

#[test]
fn monotonic_bounds_test_handles_wrap_velocity_and_reordering() {
    let p = IpIdParams::default();
    // One counter crossing 2^16, sampled alternately through two addresses.
    let a = [s(0, 65_530), s(200, 65_534), s(400, 2)];
    let b = [s(100, 65_532), s(300, 0), s(500, 4)];
    let v = series_velocity(&a, &p).unwrap();
    assert!((v - 20.0).abs() < 1.0, "{v}");
    assert!(monotonic_bounds_test(&a, &b, v, &p).is_ok());
    // Two counters 3000 apart fail, however fast they run.
    let c = [s(100, 3000), s(300, 3004), s(500, 3008)];
    assert!(monotonic_bounds_test(&a, &c, v, &p).is_err());
    // A repeated value is two counters.
    let d = [s(100, 65_530), s(300, 65_534), s(500, 2)];
    let e = monotonic_bounds_test(&a, &d, v, &p).unwrap_err();
    assert_eq!(e.step, 0);
    // A forward jump larger than the velocity allows fails.
    let far = [s(100, 54), s(300, 58), s(500, 62)];
    assert!(monotonic_bounds_test(&a, &far, v, &p).is_err());
    // Probes in flight together may be answered in either order.
    let x = [s(0, 100), s(3, 99)];
    assert!(monotonic_bounds_test(&x, &[], 100.0, &p).is_ok());
    let y = [s(0, 100), s(50, 99)];
    assert!(monotonic_bounds_test(&y, &[], 100.0, &p).is_err());
}

#[test]
fn unusable_series_are_named() {
    let p = IpIdParams::default();
    assert_eq!(
        series_velocity(&[s(0, 1), s(1, 2)], &p),
        Err(UnusableReason::TooFewReplies)
    );
    assert_eq!(
        series_velocity(&[s(0, 0), s(1, 0), s(2, 0)], &p),
        Err(UnusableReason::Zero)
    );
    assert_eq!(
        series_velocity(&[s(0, 7), s(1, 7), s(2, 7)], &p),
        Err(UnusableReason::Constant)
    );
    assert_eq!(
        series_velocity(&[s(0, 9), s(1, 40_000), s(2, 12)], &p),
        Err(UnusableReason::NotMonotonic)
    );
    let echo: Vec<IpIdSample> = (1..5)
        .map(|i| IpIdSample {
            probe_ip_id: i * 3,
            ..s(u64::from(i), i * 3)
        })
        .collect();
    assert_eq!(series_velocity(&echo, &p), Err(UnusableReason::EchoesProbe));
}

#[test]
fn groups_need_every_pair_to_pass() {
    let p = IpIdParams::default();
    // b passes with a and with c, but a and c are two counters: a chain is not a group.
    let mut m = BTreeMap::new();
    m.insert(ip("192.0.2.1"), vec![s(0, 100), s(300, 106), s(600, 112)]);
    m.insert(ip("192.0.2.2"), vec![s(100, 102), s(400, 108), s(700, 114)]);
    m.insert(ip("192.0.2.3"), vec![s(200, 103), s(500, 109), s(800, 115)]);
    let (g, u) = ipid_groups(&m, &p);
    assert!(u.is_empty());
    for grp in &g {
        for x in &grp.addrs {
            for y in &grp.addrs {
                if x < y {
                    let v = 100.0;
                    assert!(monotonic_bounds_test(&m[x], &m[y], v, &p).is_ok());
                }
            }
        }
    }
}

#[test]
fn mercator_groups_join_shared_answers() {
    let mut answers = BTreeMap::new();
    answers.insert(ip("192.0.2.1"), ip("192.0.2.1"));
    answers.insert(ip("192.0.2.2"), ip("192.0.2.1"));
    answers.insert(ip("192.0.2.3"), ip("192.0.2.9"));
    answers.insert(ip("192.0.2.4"), ip("192.0.2.9"));
    answers.insert(ip("192.0.2.5"), ip("192.0.2.5"));
    let g = mercator_groups(&answers);
    let sets: Vec<Vec<IpAddr>> = g.iter().map(|g| g.addrs.clone()).collect();
    assert_eq!(
        sets,
        vec![
            vec![ip("192.0.2.1"), ip("192.0.2.2")],
            vec![ip("192.0.2.3"), ip("192.0.2.4"), ip("192.0.2.9")],
        ]
    );
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn handle_packet_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let t0 = Instant::now();
            let mut p = AliasProber::new(cfg(Method::Both), &targets(&["192.0.2.1"]), t0).unwrap();
            let mut buf = Vec::new();
            p.poll_transmit(t0, &mut buf);
            let _ = p.handle_packet_v4(&bytes, t0);
        }

        #[test]
        fn one_counter_split_between_addresses_always_passes(
            start in any::<u16>(),
            rate in 1u16..2000,
            steps in proptest::collection::vec((0.8f64..1.25, any::<bool>()), 6..30),
        ) {
            // A counter at `rate` per 100 ms (±25%), sampled every 100 ms, each sample
            // through one of two addresses.
            let p = IpIdParams::default();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let mut id = start;
            for (i, (f, to_a)) in steps.iter().enumerate() {
                id = id.wrapping_add(((f64::from(rate) * f) as u16).max(1));
                let x = s(100 * i as u64, id);
                if *to_a { a.push(x) } else { b.push(x) }
            }
            let all: Vec<IpIdSample> = a.iter().chain(&b).copied().collect();
            let v = series_velocity(&all, &p).unwrap();
            prop_assert!(monotonic_bounds_test(&a, &b, v, &p).is_ok());
        }

        #[test]
        fn two_counters_far_apart_never_pass(
            start in any::<u16>(),
            gap in 2000u16..63_000,
            n in 3usize..10,
        ) {
            // Both at 10 per second, one `gap` ahead: never one counter.
            let p = IpIdParams::default();
            let a: Vec<IpIdSample> = (0..n).map(|i| s(200 * i as u64, start.wrapping_add(2 * i as u16))).collect();
            let b: Vec<IpIdSample> = (0..n)
                .map(|i| s(200 * i as u64 + 100, start.wrapping_add(gap).wrapping_add(2 * i as u16)))
                .collect();
            let v = series_velocity(&a, &p).unwrap();
            prop_assert!(monotonic_bounds_test(&a, &b, v, &p).is_err());
        }
    }
}
