//! A pair's state as plain data for the detector's checkpoint (`detect/checkpoint.rs`).
//! Floats travel as their bits, so a restored pair answers exactly as the one saved;
//! paths travel once per pair, the runs and known paths naming them by index, so the
//! sharing the live state has survives a restart; addresses travel as indexes into the
//! checkpoint's one address table (most of a checkpoint's bytes are paths otherwise).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{CleanPath, CleanRun, DivertedObs, Hop, KnownPath, PairState, PathHops};

/// The checkpoint's addresses; a hop names one as its index + 1 (0: silent).
#[derive(Debug, Default)]
pub(in crate::detect) struct AddrTable {
    index: rustc_hash::FxHashMap<IpAddr, u32>,
    pub(in crate::detect) addrs: Vec<IpAddr>,
}

impl AddrTable {
    fn id(&mut self, a: Option<IpAddr>) -> u32 {
        let Some(a) = a else { return 0 };
        let next = self.addrs.len() as u32 + 1;
        let id = *self.index.entry(a).or_insert(next);
        if id == next {
            self.addrs.push(a);
        }
        id
    }
}

/// An address index back to the address; `Err` if the table has no such entry.
fn addr(addrs: &[IpAddr], id: u32) -> Result<Option<IpAddr>, ()> {
    match id {
        0 => Ok(None),
        i => addrs.get(i as usize - 1).copied().map(Some).ok_or(()),
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(in crate::detect) struct PairSnap {
    paths: Vec<Vec<(u8, u32)>>,
    runs: Vec<RunSnap>,
    diverted: Vec<(u64, DivSnap)>,
    known: Vec<KnownSnap>,
    dropped: u64,
    dropped_upto: Option<u64>,
    kept: u32,
    /// The (TTL, address) branches multipath traces showed; absent in checkpoints
    /// written before campaigns had MDA rounds.
    #[serde(default)]
    branches: Vec<(u8, u32)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RunSnap {
    first: u64,
    last: u64,
    n: u32,
    path: u32,
    first_start: u64,
    last_start: u64,
    first_dst_rtt: Option<u64>,
    last_dst_rtt: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct KnownSnap {
    path: u32,
    rounds: u64,
    first_round: u64,
    last_seen: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct DivSnap {
    start: u64,
    hops: Vec<HopSnap>,
    ingress: u32,
    dst_rtt: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct HopSnap {
    ttl: u8,
    addr: u32,
    rtt: Option<u64>,
    asn: Option<u32>,
    adversary: Option<u32>,
}

fn bits(v: Option<f64>) -> Option<u64> {
    v.map(f64::to_bits)
}

fn float(v: Option<u64>) -> Option<f64> {
    v.map(f64::from_bits)
}

/// Numbers the pair's distinct paths (by identity: one shared copy, one index).
struct PathTable<'a> {
    index: Vec<(*const PathHops, u32)>,
    paths: Vec<Vec<(u8, u32)>>,
    addrs: &'a mut AddrTable,
}

impl PathTable<'_> {
    fn id(&mut self, p: &CleanPath) -> u32 {
        let ptr = Arc::as_ptr(p);
        if let Some((_, i)) = self.index.iter().find(|(q, _)| *q == ptr) {
            return *i;
        }
        let i = self.paths.len() as u32;
        self.index.push((ptr, i));
        let hops = p.iter().map(|&(t, a)| (t, self.addrs.id(a))).collect();
        self.paths.push(hops);
        i
    }
}

impl PairState {
    pub(in crate::detect) fn snapshot(&self, addrs: &mut AddrTable) -> PairSnap {
        let mut table = PathTable {
            index: Vec::new(),
            paths: Vec::new(),
            addrs,
        };
        let known = self
            .known
            .iter()
            .map(|k| KnownSnap {
                path: table.id(&k.path),
                rounds: k.rounds,
                first_round: k.first_round,
                last_seen: k.last_seen.to_bits(),
            })
            .collect();
        let runs = self
            .runs
            .iter()
            .map(|r| RunSnap {
                first: r.first,
                last: r.last,
                n: r.n,
                path: table.id(&r.path),
                first_start: r.first_start.to_bits(),
                last_start: r.last_start.to_bits(),
                first_dst_rtt: bits(r.first_dst_rtt),
                last_dst_rtt: bits(r.last_dst_rtt),
            })
            .collect();
        let diverted = self
            .diverted
            .iter()
            .map(|(&round, o)| {
                let hops = o
                    .hops
                    .iter()
                    .map(|h| HopSnap {
                        ttl: h.ttl,
                        addr: table.addrs.id(h.addr),
                        rtt: bits(h.rtt),
                        asn: h.asn,
                        adversary: h.adversary,
                    })
                    .collect();
                let snap = DivSnap {
                    start: o.start.to_bits(),
                    hops,
                    ingress: o.ingress as u32,
                    dst_rtt: bits(o.dst_rtt),
                };
                (round, snap)
            })
            .collect();
        PairSnap {
            paths: table.paths,
            runs,
            diverted,
            known,
            dropped: self.dropped,
            dropped_upto: self.dropped_upto,
            kept: self.kept,
            branches: self
                .branches
                .iter()
                .map(|&(t, a)| (t, table.addrs.id(Some(a))))
                .collect(),
        }
    }

    /// The pair a [`PairSnap`] describes; `None` if it names a path it does not hold or
    /// an ingress past a diverted round's hops (a damaged checkpoint).
    pub(in crate::detect) fn restore(s: PairSnap, addrs: &[IpAddr]) -> Option<PairState> {
        let mut paths: Vec<CleanPath> = Vec::with_capacity(s.paths.len());
        for p in s.paths {
            let hops: Result<PathHops, ()> = p
                .into_iter()
                .map(|(t, a)| Ok((t, addr(addrs, a)?)))
                .collect();
            paths.push(Arc::new(hops.ok()?));
        }
        let path = |i: u32| paths.get(i as usize).cloned();
        let mut runs = Vec::with_capacity(s.runs.len());
        for r in s.runs {
            runs.push(CleanRun {
                first: r.first,
                last: r.last,
                n: r.n,
                path: path(r.path)?,
                first_start: f64::from_bits(r.first_start),
                last_start: f64::from_bits(r.last_start),
                first_dst_rtt: float(r.first_dst_rtt),
                last_dst_rtt: float(r.last_dst_rtt),
            });
        }
        let mut known = Vec::with_capacity(s.known.len());
        for k in s.known {
            known.push(KnownPath {
                path: path(k.path)?,
                rounds: k.rounds,
                first_round: k.first_round,
                last_seen: f64::from_bits(k.last_seen),
            });
        }
        let mut diverted = BTreeMap::new();
        for (round, d) in s.diverted {
            let hops: Result<Vec<Hop>, ()> = d
                .hops
                .into_iter()
                .map(|h| {
                    Ok(Hop {
                        ttl: h.ttl,
                        addr: addr(addrs, h.addr)?,
                        rtt: float(h.rtt),
                        asn: h.asn,
                        adversary: h.adversary,
                    })
                })
                .collect();
            let hops = hops.ok()?;
            let ingress = d.ingress as usize;
            if ingress >= hops.len() {
                return None;
            }
            diverted.insert(
                round,
                DivertedObs {
                    start: f64::from_bits(d.start),
                    hops,
                    ingress,
                    dst_rtt: float(d.dst_rtt),
                },
            );
        }
        let branches: Result<Vec<(u8, IpAddr)>, ()> = s
            .branches
            .into_iter()
            .map(|(t, a)| Ok((t, addr(addrs, a)?.ok_or(())?)))
            .collect();
        let mut branches = branches.ok()?;
        // `learn_branches` keeps them sorted for its binary searches.
        branches.sort_unstable();
        branches.dedup();
        Some(PairState {
            runs,
            diverted,
            known,
            dropped: s.dropped,
            dropped_upto: s.dropped_upto,
            kept: s.kept,
            branches,
        })
    }
}
