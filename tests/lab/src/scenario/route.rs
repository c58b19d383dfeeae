//! Routing as FORMAT.md (versions 1 and 2) and its oracle define it, sans I/O: least-cost
//! paths with name tie-breaks, ECMP branches chosen per flow, events that divert or
//! re-route traffic between endpoints, and the hops a trace should show with their RTT
//! ranges.
//!
//! Version 1 is the special case where cost = delay, no router balances, hides, delays or
//! rate-limits, and answers retrace the probe's path; version-1 files therefore route
//! through the same code and mean exactly what they meant.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;

use super::{DEFAULT_ACCESS_MS, Ep, EventKind, ReplyFrom, ScenarioError, Wire, World, invalid};

/// ECMP branches enumerated per pair, as the oracle caps them.
pub const MAX_BRANCHES: usize = 64;

/// Least cost from every router to every router: `out[d][r]` from r to d.
pub(crate) fn least_costs(wires: &[Wire], nb: &[Vec<(usize, usize)>]) -> Vec<Vec<i64>> {
    (0..nb.len())
        .map(|dst| {
            let mut d = vec![i64::MAX; nb.len()];
            let mut heap = BinaryHeap::new();
            d[dst] = 0;
            heap.push(Reverse((0i64, dst)));
            while let Some(Reverse((c, r))) = heap.pop() {
                if c > d[r] {
                    continue;
                }
                for &(n, w) in &nb[r] {
                    let cand = c.saturating_add(wires[w].units);
                    if cand < d[n] {
                        d[n] = cand;
                        heap.push(Reverse((cand, n)));
                    }
                }
            }
            d
        })
        .collect()
}

/// Spreads a flow over a router's equal-cost next hops: stable for the flow, different
/// per router (so nested diamonds are not correlated), even over flows.
pub fn ecmp_pick(flow: u64, router: usize, k: usize) -> usize {
    let mut z = flow ^ (router as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // splitmix64's finaliser: every input bit moves every output bit.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % k as u64) as usize
}

/// What a trace toward a pair should show at one TTL.
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    pub ttl: usize,
    /// `Some(None)`: a silent router; `None`: the destination.
    pub addr: Option<Option<IpAddr>>,
    /// Least and greatest RTT, ms.
    pub lo: f64,
    pub hi: f64,
    /// The router rate-limits its ICMP errors: the hop may be silent.
    pub rated: bool,
}

impl World {
    pub fn ep_router(&self, e: Ep) -> usize {
        let name = match e {
            Ep::Vantage(v) => &self.s.vantages[v].router,
            Ep::Target(t) => &self.s.targets[t].router,
        };
        self.router_ix[name]
    }

    pub fn ep_name(&self, e: Ep) -> &str {
        match e {
            Ep::Vantage(v) => &self.s.vantages[v].name,
            Ep::Target(t) => &self.s.targets[t].name,
        }
    }

    pub fn ep_access(&self, e: Ep) -> f64 {
        match e {
            Ep::Vantage(v) => self.s.vantages[v].access_delay_ms,
            Ep::Target(t) => self.s.targets[t].access_delay_ms,
        }
        .unwrap_or(DEFAULT_ACCESS_MS)
    }

    /// Addresses traced toward an endpoint: a target's probes, a vantage's `addr`.
    pub fn probe_addrs(&self, e: Ep) -> Vec<IpAddr> {
        match e {
            Ep::Vantage(v) => vec![self.s.vantages[v].addr],
            Ep::Target(t) => self.probes[t].clone(),
        }
    }

    /// Whether probes toward the endpoint are IPv6.
    pub fn six(&self, e: Ep) -> bool {
        match e {
            Ep::Vantage(v) => self.s.vantages[v].addr.is_ipv6(),
            Ep::Target(t) => matches!(self.s.targets[t].prefix, ipnet::IpNet::V6(_)),
        }
    }

    /// Traced pairs, in the oracle's order: every vantage to every target and, with
    /// `mesh`, to every other vantage.
    pub fn pairs(&self) -> Vec<(usize, Ep)> {
        let mut out = Vec::new();
        for v in 0..self.s.vantages.len() {
            out.extend((0..self.s.targets.len()).map(|t| (v, Ep::Target(t))));
            if self.mesh() {
                out.extend(
                    (0..self.s.vantages.len())
                        .filter(|w| *w != v)
                        .map(|w| (v, Ep::Vantage(w))),
                );
            }
        }
        out
    }

    /// The wire between two linked routers (the cheapest, where there are several).
    pub fn wire(&self, a: usize, b: usize) -> &Wire {
        let w = self.nb[a]
            .iter()
            .find(|(n, _)| *n == b)
            .map_or(0, |(_, w)| *w);
        &self.wires[w]
    }

    pub fn link_delay(&self, a: usize, b: usize) -> f64 {
        self.wire(a, b).delay
    }

    /// (delay, greatest jitter) of crossing the links of a router path.
    pub fn cross(&self, p: &[usize]) -> (f64, f64) {
        p.windows(2).fold((0.0, 0.0), |(d, j), w| {
            let wire = self.wire(w[0], w[1]);
            (d + wire.delay, j + wire.jitter)
        })
    }

    /// Neighbours of `r` on a least-cost path to `dst`, in name order.
    fn next_hops(&self, r: usize, dst: usize) -> impl Iterator<Item = usize> + '_ {
        let d = &self.dist[dst];
        self.nb[r].iter().filter_map(move |&(n, w)| {
            (d[n] != i64::MAX
                && d[r] != i64::MAX
                && self.wires[w].units.saturating_add(d[n]) == d[r])
                .then_some(n)
        })
    }

    /// One least-cost path from router `from` to router `to`: the main branch (first
    /// next hop in name order everywhere) when `flow` is `None`, else the branch the
    /// flow's hash picks at every balancing router.
    pub fn walk(&self, from: usize, to: usize, flow: Option<u64>) -> Option<Vec<usize>> {
        if self.dist[to][from] == i64::MAX {
            return None;
        }
        let mut p = vec![from];
        let mut r = from;
        while r != to {
            let k = if self.s.routers[r].is_ecmp() {
                self.next_hops(r, to).count()
            } else {
                1
            };
            let pick = match flow {
                Some(f) if k > 1 => ecmp_pick(f, r, k),
                _ => 0,
            };
            // A zero-cost version-1 link could lead back; the oracle never revisits.
            let mut nxt = self.next_hops(r, to).filter(|n| !p.contains(n));
            r = if k > 1 { nxt.nth(pick) } else { nxt.next() }?;
            p.push(r);
        }
        Some(p)
    }

    /// The main least-cost path (version 1's "normal path").
    pub fn shortest(&self, from: usize, to: usize) -> Option<Vec<usize>> {
        self.walk(from, to, None)
    }

    /// Every equal-cost path the routers' `ecmp` flags allow, main first, at most
    /// [`MAX_BRANCHES`], in the oracle's order.
    pub fn branches(&self, from: usize, to: usize) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        if self.dist[to][from] == i64::MAX {
            return out;
        }
        let mut stack = vec![vec![from]];
        while let Some(p) = stack.pop() {
            if out.len() >= MAX_BRANCHES {
                break;
            }
            let r = *p.last().unwrap_or(&from);
            if r == to {
                out.push(p);
                continue;
            }
            let mut nxt: Vec<usize> = self.next_hops(r, to).filter(|n| !p.contains(n)).collect();
            if !self.s.routers[r].is_ecmp() {
                nxt.truncate(1);
            }
            for n in nxt.into_iter().rev() {
                let mut q = p.clone();
                q.push(n);
                stack.push(q);
            }
        }
        out
    }

    /// Whether event `e` concerns traffic from endpoint `x` to endpoint `y`: named, or
    /// `"*"` (every vantage in `from`, every target in `to`).
    fn matches(&self, e: usize, x: Ep, y: Ep) -> bool {
        let e = &self.s.events[e];
        let (xn, yn) = (self.ep_name(x), self.ep_name(y));
        let from = e
            .from
            .iter()
            .any(|f| f == xn || (f == "*" && matches!(x, Ep::Vantage(_))));
        let to =
            e.to.iter()
                .any(|t| t == yn || (t == "*" && matches!(y, Ep::Target(_))));
        from && to
    }

    /// The first diversion or re-route active at `t` that concerns (x, y) and whose `at`
    /// lies on `p`.
    fn event_on(&self, x: Ep, y: Ep, t: f64, p: &[usize]) -> Option<(usize, usize)> {
        self.s.events.iter().enumerate().find_map(|(i, e)| {
            if e.kind == EventKind::Silence || !(e.start_s <= t && t < e.end_s) {
                return None;
            }
            if !self.matches(i, x, y) {
                return None;
            }
            let at = self.router_ix[e.at.as_ref()?];
            p.iter().position(|&r| r == at).map(|pos| (i, pos))
        })
    }

    /// The way of a packet of `flow` from endpoint `x` to endpoint `y` at `t` (`None`:
    /// the main branch), and the diversion or re-route in force on it.
    pub fn route(
        &self,
        x: Ep,
        y: Ep,
        t: f64,
        flow: Option<u64>,
    ) -> Option<(Vec<usize>, Option<usize>)> {
        let dst = self.ep_router(y);
        let p = self.walk(self.ep_router(x), dst, flow)?;
        let Some((ei, pos)) = self.event_on(x, y, t, &p) else {
            return Some((p, None));
        };
        let e = &self.s.events[ei];
        let mut q: Vec<usize> = p[..=pos].to_vec();
        q.extend(e.via.iter().map(|n| self.router_ix[n]));
        let last = *q.last()?;
        let tail = self.walk(last, dst, flow)?;
        q.extend_from_slice(&tail[1..]);
        Some((q, Some(ei)))
    }

    /// Every way from `x` to `y` at `t`, one per ECMP branch (main first, at most
    /// [`MAX_BRANCHES`]), with the event in force on each.
    pub fn routes(&self, x: Ep, y: Ep, t: f64) -> Vec<(Vec<usize>, Option<usize>)> {
        let dst = self.ep_router(y);
        let mut out: Vec<(Vec<usize>, Option<usize>)> = Vec::new();
        let mut add = |p: Vec<usize>, e: Option<usize>| {
            if !out.iter().any(|(q, _)| *q == p) {
                out.push((p, e));
            }
        };
        for p in self.branches(self.ep_router(x), dst) {
            match self.event_on(x, y, t, &p) {
                None => add(p, None),
                Some((ei, pos)) => {
                    let e = &self.s.events[ei];
                    let mut head: Vec<usize> = p[..=pos].to_vec();
                    head.extend(e.via.iter().map(|n| self.router_ix[n]));
                    let last = *head.last().unwrap_or(&dst);
                    for q in self.branches(last, dst) {
                        let mut h = head.clone();
                        h.extend_from_slice(&q[1..]);
                        add(h, Some(ei));
                    }
                }
            }
        }
        out.truncate(MAX_BRANCHES);
        out
    }

    /// Routers from the vantage's first hop to the target's last router at `t` along the
    /// main branch, and the diversion/reroute event in force, if any.
    pub fn path(&self, v: usize, tg: usize, t: f64) -> Option<(Vec<usize>, Option<usize>)> {
        self.route(Ep::Vantage(v), Ep::Target(tg), t, None)
    }

    /// Whether a router answers at `t`.
    pub fn silent(&self, r: usize, t: f64) -> bool {
        let router = &self.s.routers[r];
        !router.respond
            || self.s.events.iter().any(|e| {
                e.kind == EventKind::Silence
                    && e.start_s <= t
                    && t < e.end_s
                    && e.routers.contains(&router.name)
            })
    }

    /// The address router `r` answers from when a probe of that family reached it from
    /// router `prev` (`None`: from an endpoint's access link, which has no interface
    /// address): per `reply_from`, the incoming interface's, else its own.
    pub fn answer_addr(&self, r: usize, prev: Option<usize>, six: bool) -> IpAddr {
        let router = &self.s.routers[r];
        let mut cands: Vec<Option<IpAddr>> = Vec::with_capacity(4);
        if router.reply_from == Some(ReplyFrom::Incoming)
            && let Some(prev) = prev
        {
            let link = &self.s.links[self.wire(prev, r).link];
            let a_side = self.router_ix[&link.a] == r;
            if a_side {
                cands.extend([link.addr_a, link.addr6_a]);
            } else {
                cands.extend([link.addr_b, link.addr6_b]);
            }
        }
        cands.extend([Some(router.addr), router.addr6]);
        cands
            .into_iter()
            .flatten()
            .find(|a| a.is_ipv6() == six)
            .unwrap_or(router.addr)
    }

    /// Every address of router `r`: `addr`, `addr6` and its interfaces', sorted as the
    /// oracle sorts them (IPv4 first).
    pub fn addrs(&self, r: usize) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self
            .addr_router
            .iter()
            .filter(|(_, x)| **x == r)
            .map(|(a, _)| *a)
            .collect();
        out.sort_by_key(|a| (a.is_ipv6(), *a));
        out
    }

    /// The hops a trace from vantage `v` toward endpoint `y` should show at `t`, one list
    /// per ECMP branch of the way there (main first). Each ends with the destination.
    pub fn expected(&self, v: usize, y: Ep, t: f64) -> Vec<Vec<Hop>> {
        let x = Ep::Vantage(v);
        let acc = 2.0 * self.ep_access(x);
        let six = self.six(y);
        let home = self.ep_router(x);
        // The destination's answer comes back on the way from y to v at t (events apply).
        let back: Vec<(f64, f64)> = if self.is_v2() {
            self.routes(y, x, t)
                .iter()
                .map(|(p, _)| self.cross(p))
                .collect()
        } else {
            Vec::new()
        };
        let mut out = Vec::new();
        for (routers, _) in self.routes(x, y, t) {
            let mut hops = Vec::new();
            let (mut fwd, mut jit) = (0.0, 0.0);
            for (k, &r) in routers.iter().enumerate() {
                if k > 0 {
                    let w = self.wire(routers[k - 1], r);
                    fwd += w.delay;
                    jit += w.jitter;
                }
                let router = &self.s.routers[r];
                if router.is_hidden() {
                    continue;
                }
                // Version 1 names a router by its `addr` whatever the probe's family (the
                // emulator answers IPv6 probes from `addr6`).
                let addr = (!self.silent(r, t)).then(|| {
                    if self.is_v2() {
                        self.answer_addr(r, k.checked_sub(1).map(|j| routers[j]), six)
                    } else {
                        router.addr
                    }
                });
                let (lo, hi) = if self.is_v2() {
                    let [dlo, dhi] = router.icmp_delay();
                    let ways: Vec<(f64, f64)> = self
                        .branches(r, home)
                        .iter()
                        .map(|p| self.cross(p))
                        .collect();
                    (
                        acc + fwd + dlo + ways.iter().map(|w| w.0).fold(f64::INFINITY, f64::min),
                        acc + fwd + jit + dhi + ways.iter().map(|w| w.0 + w.1).fold(0.0, f64::max),
                    )
                } else {
                    (acc + 2.0 * fwd, acc + 2.0 * fwd)
                };
                hops.push(Hop {
                    ttl: hops.len() + 1,
                    addr: Some(addr),
                    lo,
                    hi,
                    rated: router.icmp_rate.is_some(),
                });
            }
            let base = acc + 2.0 * self.ep_access(y) + fwd;
            let (lo, hi) = if self.is_v2() {
                (
                    base + back.iter().map(|w| w.0).fold(f64::INFINITY, f64::min),
                    base + jit + back.iter().map(|w| w.0 + w.1).fold(0.0, f64::max),
                )
            } else {
                (base + fwd, base + fwd)
            };
            hops.push(Hop {
                ttl: hops.len() + 1,
                addr: None,
                lo,
                hi,
                rated: false,
            });
            out.push(hops);
        }
        out
    }

    /// Version-1 view of [`World::expected`] on the main branch toward a target: (ttl,
    /// addr or None if silent, least RTT), the destination last (addr None there: its
    /// address is whichever was probed).
    pub fn hops(&self, v: usize, tg: usize, t: f64) -> Option<Vec<(usize, Option<IpAddr>, f64)>> {
        let main = self.expected(v, Ep::Target(tg), t).into_iter().next()?;
        Some(
            main.into_iter()
                .map(|h| (h.ttl, h.addr.flatten(), h.lo))
                .collect(),
        )
    }

    /// Version-2 checks that need routes: every traced pair has a way, no diversion
    /// enters at a hidden router, and a diversion's `at` lies on all or none of an
    /// affected pair's equal-cost paths.
    pub(super) fn check_v2(&self) -> Result<(), ScenarioError> {
        for (v, y) in self.pairs() {
            if self
                .walk(self.ep_router(Ep::Vantage(v)), self.ep_router(y), None)
                .is_none()
            {
                return Err(invalid(format!(
                    "no path from {} to {}",
                    self.s.vantages[v].name,
                    self.ep_name(y)
                )));
            }
        }
        let eps: Vec<Ep> = (0..self.s.vantages.len())
            .map(Ep::Vantage)
            .chain((0..self.s.targets.len()).map(Ep::Target))
            .collect();
        for (i, e) in self.s.events.iter().enumerate() {
            if e.kind != EventKind::Diversion {
                continue;
            }
            let (Some(at), Some(first)) = (e.at.as_ref(), e.via.first()) else {
                continue;
            };
            if self.s.routers[self.router_ix[first]].is_hidden() {
                return Err(invalid(format!(
                    "[[event]] #{}: via[0] {first} is hidden",
                    i + 1
                )));
            }
            let at = self.router_ix[at];
            for &x in &eps {
                for &y in &eps {
                    if x == y || !self.matches(i, x, y) {
                        continue;
                    }
                    let on: Vec<bool> = self
                        .branches(self.ep_router(x), self.ep_router(y))
                        .iter()
                        .map(|p| p.contains(&at))
                        .collect();
                    if on.iter().any(|b| *b) && !on.iter().all(|b| *b) {
                        return Err(invalid(format!(
                            "[[event]] #{}: at {} lies on some but not all equal-cost paths of {}>{}",
                            i + 1,
                            self.s.routers[at].name,
                            self.ep_name(x),
                            self.ep_name(y)
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}
