//! Detection at scale: ingest a mesh's worth of stored traces into the [`Detector`] and
//! build the report, timing both. Acceptance target: 1,000,000 traces in ≤ 10 s.
//!
//! The workload is synthetic but shaped like a real mesh: vantages in access networks
//! across several continents, destinations in edge networks, paths through one of a few
//! transit carriers whose routers are shared by many pairs (so the per-address state the
//! detector keeps for triangulation grows as it would in production), RTTs that follow
//! the geography of each hop, silent hops both persistent and per round, and a small
//! fraction of pairs diverted through an adversary AS for some rounds. Every planted
//! episode must come back as exactly one diversion record; the process exits non-zero
//! otherwise, so a speed-up that changes results cannot pass for one.
//!
//! Size: `TM_BENCH_VANTAGES` × `TM_BENCH_DESTS` × `TM_BENCH_ROUNDS` (default
//! 200 × 500 × 10). Run: `cargo bench -p tracemesh --bench detect_scale`. After every
//! million traces it prints the resident set and what the detector holds, which must
//! level off once the history is longer than what detection reads back (65 clean
//! rounds per pair); `TM_BENCH_MAX_RSS_MIB` fails the run above a peak,
//! `TM_BENCH_STORED=0` skips the sled phase, `TM_BENCH_REPORT_JSON=FILE` writes the
//! whole report (to compare two detectors record by record), `TM_BENCH_RESTART=1`
//! times `serve --adversary`'s restart over the stored history with and without the
//! detector checkpoint (see `restart`).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use tracemesh::annotate::{Annotator, AsInfo, Origin};
use tracemesh::detect::{Adversary, Detector, DiversionReport, Trace, TraceHop, VantageInfo};
use tracemesh::geo::{Gazetteer, GeoPoint, great_circle_km};
use tracemesh::store::{SledStore, Store as _};
use tracemesh_proto::v1;

/// As in the `tracemesh` binary, so the figures are the coordinator's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Share of (vantage, destination) pairs that get diverted in some rounds.
const DIVERT_FRACTION: f64 = 0.004;
/// Seconds between rounds.
const ROUND_EVERY: f64 = 600.0;
const EPOCH: f64 = 1_750_000_000.0;

struct Place {
    code: &'static str,
    cc: &'static str,
    lat: f64,
    lon: f64,
}

const fn place(code: &'static str, cc: &'static str, lat: f64, lon: f64) -> Place {
    Place { code, cc, lat, lon }
}

/// Where vantages, destinations and transit routers sit.
const CITIES: [Place; 18] = [
    place("nyc", "US", 40.71, -74.01),
    place("chi", "US", 41.88, -87.63),
    place("lax", "US", 34.05, -118.24),
    place("dfw", "US", 32.78, -96.80),
    place("sea", "US", 47.61, -122.33),
    place("yyz", "CA", 43.65, -79.38),
    place("lon", "GB", 51.51, -0.13),
    place("fra", "DE", 50.11, 8.68),
    place("par", "FR", 48.86, 2.35),
    place("ams", "NL", 52.37, 4.90),
    place("sto", "SE", 59.33, 18.07),
    place("mad", "ES", 40.42, -3.70),
    place("tyo", "JP", 35.68, 139.69),
    place("sin", "SG", 1.35, 103.82),
    place("syd", "AU", -33.87, 151.21),
    place("sao", "BR", -23.55, -46.63),
    place("sel", "KR", 37.57, 126.98),
    place("bom", "IN", 19.08, 72.88),
];

/// The adversary's points of presence abroad (where diverted traffic enters it) and
/// its home core.
const ADV_POPS: [Place; 3] = [
    place("lax", "US", 34.05, -118.24),
    place("fra", "DE", 50.11, 8.68),
    place("hkg", "HK", 22.32, 114.17),
];
const ADV_CORE: [Place; 2] = [
    place("pek", "CN", 39.90, 116.40),
    place("sha", "CN", 31.23, 121.47),
];

const ADVERSARY_ASN: u32 = 4134;
/// AS index layout: the adversary, then transit carriers, access networks (vantages'),
/// edge networks (destinations').
const ADV: usize = 0;
const TRANSIT: [(u32, &str, &str); 4] = [
    (3356, "LEVEL3", "US"),
    (1299, "TWELVE99 Arelion", "SE"),
    (174, "COGENT-174", "US"),
    (2914, "NTT-LTD-2914", "US"),
];
const N_ACCESS: usize = 20;
const N_EDGE: usize = 20;
const FIRST_ACCESS: usize = 1 + TRANSIT.len();
const FIRST_EDGE: usize = FIRST_ACCESS + N_ACCESS;
const N_AS: usize = FIRST_EDGE + N_EDGE;
/// /16s announced per AS; router addresses use only the lower ones, customer /24s the
/// last one, so longest-prefix match decides the owner there.
const SLASH16_PER_AS: u8 = 80;
const ROUTER_SLASH16S: u64 = 64;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("{name}={v:?} is not a count; using {default}");
            default
        }),
        Err(_) => default,
    }
}

/// SplitMix64: deterministic, fast, good enough to shape a workload.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn mix2(a: u64, b: u64) -> u64 {
    mix(mix(a) ^ b)
}

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

fn as_number(idx: usize) -> u32 {
    match idx {
        ADV => ADVERSARY_ASN,
        i if i < FIRST_ACCESS => TRANSIT[i - 1].0,
        i if i < FIRST_EDGE => 20_000 + 37 * (i - FIRST_ACCESS) as u32,
        i => 30_000 + 41 * (i - FIRST_EDGE) as u32,
    }
}

fn first_octet(idx: usize) -> u8 {
    // 20..=64: public unicast space, clear of every special-purpose block.
    20 + idx as u8
}

/// A router interface of AS `idx`; ids below 16,000 map to distinct /24s.
fn router_addr(idx: usize, id: u64) -> IpAddr {
    let o2 = ((id / 250) % ROUTER_SLASH16S) as u8;
    let o3 = (id % 250) as u8;
    let o4 = 1 + (mix2(idx as u64, id) % 250) as u8;
    IpAddr::V4(Ipv4Addr::new(first_octet(idx), o2, o3, o4))
}

fn build_annotator() -> Annotator {
    let mut annot = Annotator::new();
    for idx in 0..N_AS {
        let asn = as_number(idx);
        for o2 in 0..SLASH16_PER_AS {
            let net =
                Ipv4Net::new(Ipv4Addr::new(first_octet(idx), o2, 0, 0), 16).expect("valid /16");
            // Edge networks often announce from two origins; the first stays primary.
            let origin = if idx >= FIRST_EDGE && o2 % 8 == 7 {
                Origin::Multiple(vec![asn, asn + 1].into())
            } else {
                Origin::Single(asn)
            };
            annot.insert_prefix(IpNet::V4(net), origin);
        }
        let (name, cc) = match idx {
            ADV => ("CHINANET-BACKBONE No.31,Jin-rong Street".to_owned(), "CN"),
            i if i < FIRST_ACCESS => (TRANSIT[i - 1].1.to_owned(), TRANSIT[i - 1].2),
            i if i < FIRST_EDGE => (format!("ACCESS-{asn}"), CITIES[i % CITIES.len()].cc),
            i => (format!("EDGE-{asn}"), CITIES[(i * 7) % CITIES.len()].cc),
        };
        annot.set_as_info(
            asn,
            AsInfo {
                name,
                country: Some(cc.to_owned()),
            },
        );
    }
    // Carriers' customer space: /24s inside a transit /16 announced by access networks.
    for t in 1..FIRST_ACCESS {
        for o3 in 0..50u8 {
            let cust = FIRST_ACCESS + (usize::from(o3) + t) % N_ACCESS;
            let net = Ipv4Net::new(Ipv4Addr::new(first_octet(t), SLASH16_PER_AS - 1, o3, 0), 24)
                .expect("valid /24");
            annot.insert_prefix(IpNet::V4(net), Origin::Single(as_number(cust)));
        }
    }
    annot
}

struct World {
    vantages: Vec<VantageInfo>,
    vantage_city: Vec<usize>,
    dests: Vec<IpAddr>,
    dest_city: Vec<usize>,
    /// Planted episodes, as inclusive round ranges, per diverted (vantage, destination).
    planted: HashMap<(usize, usize), Vec<(u64, u64)>>,
}

fn loc_of(p: &Place) -> GeoPoint {
    GeoPoint::new(p.lat, p.lon)
}

fn build_world(n_vantages: usize, n_dests: usize, rounds: u64) -> World {
    let mut vantages = Vec::with_capacity(n_vantages);
    let mut vantage_city = Vec::with_capacity(n_vantages);
    for v in 0..n_vantages {
        let c = (v * 5 + v / CITIES.len()) % CITIES.len();
        let p = &CITIES[c];
        // Spread vantages around their metro so no two share a position.
        let jitter = |k: u64| ((mix2(v as u64, k) % 1000) as f64 / 1000.0 - 0.5) * 0.6;
        vantages.push(VantageInfo {
            name: format!("vp{v:03}-{}", p.code),
            loc: Some(GeoPoint::new(p.lat + jitter(1), p.lon + jitter(2))),
            country: Some(p.cc.to_owned()),
            asn: Some(as_number(access_of(v))),
        });
        vantage_city.push(c);
    }
    let mut dests = Vec::with_capacity(n_dests);
    let mut dest_city = Vec::with_capacity(n_dests);
    for d in 0..n_dests {
        let e = edge_of(d);
        // Hosts live above the router /16s, inside the same announced space.
        let o2 = ROUTER_SLASH16S as u8 + (d / 250 % 15) as u8;
        let addr = Ipv4Addr::new(first_octet(e), o2, (d % 250) as u8, 10 + (d % 7) as u8);
        dests.push(IpAddr::V4(addr));
        dest_city.push((e * 7 + d) % CITIES.len());
    }
    let mut planted = HashMap::new();
    for v in 0..n_vantages {
        for d in 0..n_dests {
            let mut rng = Rng(mix2(pair_key(v, d), 0xd1));
            if !rng.chance(DIVERT_FRACTION) {
                continue;
            }
            let first = rng.below(rounds);
            let last = (first + rng.below(4)).min(rounds - 1);
            let mut eps = vec![(first, last)];
            // Some pairs are diverted twice, with clean rounds between.
            if last + 2 < rounds && rng.chance(0.25) {
                let again = last + 2 + rng.below(rounds - last - 2);
                eps.push((again, (again + rng.below(3)).min(rounds - 1)));
            }
            planted.insert((v, d), eps);
        }
    }
    World {
        vantages,
        vantage_city,
        dests,
        dest_city,
        planted,
    }
}

fn access_of(v: usize) -> usize {
    FIRST_ACCESS + v % N_ACCESS
}

fn edge_of(d: usize) -> usize {
    FIRST_EDGE + d % N_EDGE
}

fn pair_key(v: usize, d: usize) -> u64 {
    mix2(v as u64, d as u64)
}

/// One hop before RTTs are assigned.
struct Step {
    addr: Option<IpAddr>,
    loc: GeoPoint,
    /// May go silent (adversary hops stay visible so every planted round is a diverted
    /// round; their ingress alone sometimes hides, as real ones do).
    may_hide: bool,
}

impl World {
    fn diverted(&self, v: usize, d: usize, round: u64) -> bool {
        self.planted
            .get(&(v, d))
            .is_some_and(|eps| eps.iter().any(|(a, b)| (*a..=*b).contains(&round)))
    }

    fn trace(&self, v: usize, d: usize, round: u64) -> Trace {
        let key = pair_key(v, d);
        let mut rng = Rng(mix2(key, round));
        let (cv, cd) = (self.vantage_city[v], self.dest_city[d]);
        let vloc = self.vantages[v].loc.unwrap_or(loc_of(&CITIES[cv]));
        let (vcity, dcity) = (loc_of(&CITIES[cv]), loc_of(&CITIES[cd]));
        let transit = 1 + (key % TRANSIT.len() as u64) as usize;
        let step = |addr: IpAddr, loc: GeoPoint| Step {
            addr: Some(addr),
            loc,
            may_hide: true,
        };
        let mut steps = vec![
            step(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)), vloc),
            step(router_addr(access_of(v), v as u64), vcity),
            step(router_addr(access_of(v), 1000 + cv as u64), vcity),
            // The carrier's edge facing the access network: the hand-off when diverted.
            step(router_addr(transit, cv as u64 * 400 + key % 8), vcity),
        ];
        if self.diverted(v, d, round) {
            let pop = |c: GeoPoint| {
                (0..ADV_POPS.len())
                    .min_by(|a, b| {
                        great_circle_km(c, loc_of(&ADV_POPS[*a]))
                            .total_cmp(&great_circle_km(c, loc_of(&ADV_POPS[*b])))
                    })
                    .unwrap_or(0)
            };
            let (pin, pout) = (pop(vcity), pop(dcity));
            let ingress_hides = rng.chance(0.05);
            steps.push(Step {
                addr: Some(router_addr(ADV, pin as u64 * 400 + key % 4)),
                loc: loc_of(&ADV_POPS[pin]),
                may_hide: ingress_hides,
            });
            for (i, core) in ADV_CORE.iter().enumerate() {
                steps.push(Step {
                    addr: Some(router_addr(ADV, 2000 + i as u64 * 400 + key % 3)),
                    loc: loc_of(core),
                    may_hide: false,
                });
            }
            steps.push(Step {
                addr: Some(router_addr(ADV, pout as u64 * 400 + 100 + key % 4)),
                loc: loc_of(&ADV_POPS[pout]),
                may_hide: false,
            });
        } else {
            steps.push(step(
                router_addr(transit, cv as u64 * 400 + 8 + (key >> 8) % 4),
                vcity,
            ));
            // Longer hauls cross intermediate hubs.
            let hub = (cv + cd) / 2;
            for k in 0..(key >> 16) % 3 {
                steps.push(step(
                    router_addr(transit, hub as u64 * 400 + 20 + k),
                    loc_of(&CITIES[hub]),
                ));
            }
            steps.push(step(
                router_addr(transit, cd as u64 * 400 + 12 + (key >> 24) % 4),
                dcity,
            ));
        }
        steps.push(step(
            router_addr(transit, cd as u64 * 400 + 16 + d as u64 % 4),
            dcity,
        ));
        steps.push(step(router_addr(edge_of(d), 2000 + cd as u64), dcity));
        steps.push(step(router_addr(edge_of(d), d as u64), dcity));

        let mut hops = Vec::with_capacity(steps.len() + 1);
        let mut km = 0.0;
        let mut prev = vloc;
        for (i, s) in steps.iter().enumerate() {
            km += great_circle_km(prev, s.loc);
            prev = s.loc;
            let ttl = i as u8 + 1;
            // Routers that never answer, and the odd lost reply.
            let silent =
                s.may_hide && i > 0 && (mix2(key, u64::from(ttl)) % 100 < 4 || rng.chance(0.01));
            hops.push(TraceHop {
                ttl,
                addr: if silent { None } else { s.addr },
                rtt_ms: (!silent).then(|| rtt(km, i, &mut rng)),
            });
        }
        km += great_circle_km(prev, loc_of(&CITIES[cd]));
        hops.push(TraceHop {
            ttl: steps.len() as u8 + 1,
            addr: Some(self.dests[d]),
            rtt_ms: Some(rtt(km, steps.len(), &mut rng)),
        });
        Trace {
            round,
            vantage: self.vantages[v].name.clone(),
            dst: self.dests[d],
            start: EPOCH + round as f64 * ROUND_EVERY,
            hops,
        }
    }
}

/// Fibre is slower than the 100 km/ms bound and paths are not straight: never faster
/// than physics allows, so triangulation sees consistent constraints.
fn rtt(path_km: f64, hop: usize, rng: &mut Rng) -> f64 {
    let v = 0.4 + path_km / 100.0 * 1.3 + 0.15 * hop as f64 + 2.0 * rng.unit().powi(3);
    (v * 1000.0).round() / 1000.0
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Current and peak resident set, MiB.
fn rss_mib() -> Option<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<f64> {
        let v = status.lines().find_map(|l| l.strip_prefix(name))?;
        let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib as f64 / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn main() -> ExitCode {
    let n_vantages = env_usize("TM_BENCH_VANTAGES", 200).max(1);
    let n_dests = env_usize("TM_BENCH_DESTS", 500).max(1);
    let rounds = env_usize("TM_BENCH_ROUNDS", 10).max(1) as u64;

    let setup = Instant::now();
    let annot = build_annotator();
    let gazetteer = Gazetteer::builtin();
    let world = build_world(n_vantages, n_dests, rounds);
    println!(
        "workload: {n_vantages} vantages x {n_dests} destinations x {rounds} rounds, \
         {} prefixes, {} ASes, {} pairs diverted (setup {:.2} s)",
        annot.prefix_count(),
        N_AS,
        world.planted.len(),
        setup.elapsed().as_secs_f64()
    );

    let mut det = Detector::new(Adversary::from_asns([ADVERSARY_ASN]));
    for v in &world.vantages {
        det.set_vantage(v.clone());
    }
    let (mut traces, mut hops) = (0u64, 0u64);
    let mut ingest = Duration::ZERO;
    let mut generate = Duration::ZERO;
    // RSS as the history grows: it must stay flat once every pair has been seen.
    let mut next_mark = 1_000_000u64;
    // A round at a time, as the store hands them out; only ingest is timed.
    for round in 0..rounds {
        let t0 = Instant::now();
        let batch: Vec<Trace> = (0..n_vantages)
            .flat_map(|v| (0..n_dests).map(move |d| (v, d)))
            .map(|(v, d)| world.trace(v, d, round))
            .collect();
        generate += t0.elapsed();
        traces += batch.len() as u64;
        hops += batch.iter().map(|t| t.hops.len() as u64).sum::<u64>();
        let t1 = Instant::now();
        for t in &batch {
            det.ingest(t, &annot);
        }
        ingest += t1.elapsed();
        if traces >= next_mark {
            if let Some((rss, peak)) = rss_mib() {
                println!(
                    "at {traces:>10} traces: RSS {rss:.1} MiB, peak {peak:.1} MiB; {:?}",
                    det.state_size()
                );
            }
            next_mark += 1_000_000;
        }
    }
    let now = EPOCH + rounds as f64 * ROUND_EVERY + 3600.0;
    let t2 = Instant::now();
    let report = det.report(&annot, &gazetteer, now);
    let report_time = t2.elapsed();

    let planted: BTreeSet<(String, IpAddr, u64, u64)> = world
        .planted
        .iter()
        .flat_map(|((v, d), eps)| {
            eps.iter()
                .map(|(a, b)| (world.vantages[*v].name.clone(), world.dests[*d], *a, *b))
        })
        .collect();
    let planted_n: usize = world.planted.values().map(Vec::len).sum();
    let (ing_s, rep_s) = (ingest.as_secs_f64(), report_time.as_secs_f64());
    let total = ing_s + rep_s;
    println!("traces:        {traces}");
    println!("hops:          {hops}");
    println!(
        "generate:      {:.3} s (not counted)",
        generate.as_secs_f64()
    );
    println!("ingest:        {ing_s:.3} s");
    println!("report:        {rep_s:.3} s");
    println!("total:         {total:.3} s");
    println!("traces/s:      {:.0}", traces as f64 / total.max(1e-9));
    match peak_rss_kib() {
        Some(kib) => println!("peak RSS:      {:.1} MiB", kib as f64 / 1024.0),
        None => println!("peak RSS:      unknown (no /proc/self/status)"),
    }
    println!(
        "diversions:    found {} records ({} incidents), planted {planted_n}",
        report.diversions.len(),
        report.incidents.len()
    );
    // The whole report, for comparing two detectors record by record.
    if let Some(path) = std::env::var_os("TM_BENCH_REPORT_JSON") {
        let written = serde_json::to_vec(&report)
            .map_err(|e| e.to_string())
            .and_then(|j| std::fs::write(&path, j).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("cannot write {}: {e}", path.to_string_lossy());
            return ExitCode::FAILURE;
        }
    }
    if !same_episodes(&report, &planted, planted_n) {
        return ExitCode::FAILURE;
    }
    // The detector's memory must not grow with history: CI holds it under a ceiling.
    let ceiling = env_usize("TM_BENCH_MAX_RSS_MIB", 0);
    if let (true, Some((_, peak))) = (ceiling > 0, rss_mib())
        && peak > ceiling as f64
    {
        eprintln!("peak RSS {peak:.1} MiB is above TM_BENCH_MAX_RSS_MIB={ceiling}");
        return ExitCode::FAILURE;
    }
    if total > 10.0 {
        println!("note: above the 10 s acceptance target");
    }
    if std::env::var("TM_BENCH_STORED").is_ok_and(|v| v == "0") {
        return ExitCode::SUCCESS;
    }
    match from_store(&world, &annot, &gazetteer, now, n_vantages, n_dests, rounds) {
        Ok(report) if same_episodes(&report, &planted, planted_n) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("stored phase failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn same_episodes(
    report: &DiversionReport,
    planted: &BTreeSet<(String, IpAddr, u64, u64)>,
    planted_n: usize,
) -> bool {
    let found: BTreeSet<(String, IpAddr, u64, u64)> = report
        .diversions
        .iter()
        .map(|r| (r.vantage.clone(), r.target, r.first_round, r.last_round))
        .collect();
    if report.diversions.len() == planted_n && found == *planted {
        return true;
    }
    let missing = planted.difference(&found).count();
    let extra = found.difference(planted).count();
    eprintln!("MISMATCH: {missing} planted episodes not found, {extra} found but not planted");
    false
}

/// A trace as an agent uploads it and the coordinator stores it.
fn to_record(t: &Trace) -> v1::TraceRecord {
    v1::TraceRecord {
        result_id: format!("bench/{}/{}", t.round, t.dst),
        campaign_id: "bench".into(),
        round: t.round as u32,
        vantage: t.vantage.clone(),
        dst: t.dst.to_string(),
        start: t.start,
        probes_sent: t.hops.len() as u32,
        hops: t
            .hops
            .iter()
            .map(|h| v1::Hop {
                ttl: u32::from(h.ttl),
                addr: h.addr.map(|a| a.to_string()),
                rtt_ms: h.rtt_ms,
                icmp_type: Some(11),
                icmp_code: Some(0),
                probes: 1,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The same workload through a real sled store: written first (not timed), then read
/// back, decoded and detected, as `tracemesh serve --adversary` replays its history at
/// start and as any report over stored traces must.
#[allow(clippy::too_many_arguments)]
fn from_store(
    world: &World,
    annot: &Annotator,
    gazetteer: &Gazetteer,
    now: f64,
    n_vantages: usize,
    n_dests: usize,
    rounds: u64,
) -> Result<DiversionReport, Box<dyn std::error::Error>> {
    // TM_BENCH_STORE_DIR keeps the written store for the next run of the same size
    // (writing it is the slow part of this bench and is not what it measures).
    let tmp = tempfile::tempdir()?;
    let keep = std::env::var_os("TM_BENCH_STORE_DIR").map(std::path::PathBuf::from);
    let path = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let size = format!("{n_vantages}x{n_dests}x{rounds}");
    let marker = path.join("bench-complete");
    let reuse = keep.is_some() && std::fs::read_to_string(&marker).is_ok_and(|m| m == size);
    if keep.is_some() && !reuse && path.exists() {
        std::fs::remove_dir_all(&path)?;
    }
    let store = SledStore::open(&path)?;
    let t0 = Instant::now();
    let mut stored = 0u64;
    for round in (0..rounds).filter(|_| !reuse) {
        for v in 0..n_vantages {
            let batch: Vec<v1::TraceRecord> = (0..n_dests)
                .map(|d| to_record(&world.trace(v, d, round)))
                .collect();
            for r in store.ingest_many(&batch)? {
                r?;
            }
            stored += batch.len() as u64;
        }
        eprint!("\rstoring: round {}/{rounds}", round + 1);
    }
    store.flush()?;
    if reuse {
        stored = (n_vantages * n_dests) as u64 * rounds;
        println!(
            "stored:        {stored} traces, reused from {}",
            path.display()
        );
    } else {
        eprintln!();
        println!(
            "stored:        {stored} traces in sled in {:.1} s (setup, not counted)",
            t0.elapsed().as_secs_f64()
        );
        if keep.is_some() {
            std::fs::write(&marker, &size)?;
        }
    }

    let t1 = Instant::now();
    let mut det = Detector::new(Adversary::from_asns([ADVERSARY_ASN]));
    for v in &world.vantages {
        det.set_vantage(v.clone());
    }
    let mut read = 0u64;
    store.for_each_trace_any_order(&mut |rec| {
        read += 1;
        if let Some(t) = Trace::from_record(&rec) {
            det.ingest(&t, annot);
        }
        true
    })?;
    let scan = t1.elapsed();
    let t2 = Instant::now();
    let report = det.report(annot, gazetteer, now);
    let rep = t2.elapsed();
    let total = (scan + rep).as_secs_f64();
    println!(
        "read+detect:   {:.3} s ({read} traces read, decoded, ingested)",
        scan.as_secs_f64()
    );
    println!("report:        {:.3} s", rep.as_secs_f64());
    println!("total:         {total:.3} s from the store");
    println!("traces/s:      {:.0}", read as f64 / total.max(1e-9));
    if let Some(kib) = peak_rss_kib() {
        println!("peak RSS:      {:.1} MiB", kib as f64 / 1024.0);
    }
    if read != stored {
        return Err(format!("read {read} traces back, stored {stored}").into());
    }
    if total > 10.0 {
        println!("note: above the 10 s acceptance target");
    }
    if std::env::var("TM_BENCH_RESTART").is_ok_and(|v| v == "1") {
        drop(store);
        restart(world, annot, gazetteer, now, &path, rounds)?;
        // The store now holds one more round than its size says: not reusable.
        let _ = std::fs::remove_file(&marker);
    }
    Ok(report)
}

/// `TM_BENCH_RESTART=1`: `serve --adversary` restarting over this store, through the
/// functions it starts with (`live::replay_all`, `live_checkpoint::load_blocking`,
/// `save_blocking`): a checkpoint is saved after the history, one more round is stored
/// (what arrived while the coordinator was down), then the store is reopened twice and
/// the time to the first report (from which on live alerts go out) is taken with and
/// without the checkpoint. Both reports must be the same.
fn restart(
    world: &World,
    annot: &Annotator,
    gazetteer: &Gazetteer,
    now: f64,
    path: &std::path::Path,
    rounds: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use tracemesh::live::replay_all;
    use tracemesh::live_checkpoint::{fingerprint, load_blocking, save_blocking};
    use tracemesh::store::{AgentMeta, AgentRecord};
    let adversary = Adversary::from_asns([ADVERSARY_ASN]);
    let fp = fingerprint(&adversary, "detect_scale");
    let store = SledStore::open(path)?;
    // The vantages as enrolled agents, as serve knows them.
    for v in &world.vantages {
        store.put_agent(&AgentRecord {
            meta: AgentMeta {
                name: v.name.clone(),
                country: v.country.clone().unwrap_or_default(),
                loc: v.loc.map(|p| (p.lat, p.lon)),
                asn: v.asn,
                ..AgentMeta::default()
            },
            enrolled_at_ns: 0,
            cert_sha256: String::new(),
            agent_version: String::new(),
            hostname: String::new(),
            last_seen_ns: None,
            mesh_addr: None,
        })?;
    }
    let (det, position) = replay_all(&store, adversary.clone(), annot)?;
    // The state to bytes alone, then the whole save (the same again, written, flushed).
    let t = Instant::now();
    let encoded = det.checkpoint().len();
    println!(
        "checkpoint:    state encoded in {:.3} s ({:.1} MiB)",
        t.elapsed().as_secs_f64(),
        encoded as f64 / (1 << 20) as f64
    );
    let t = Instant::now();
    let (det, _) = save_blocking(&store, det, annot, position, &fp)?;
    let save_s = t.elapsed().as_secs_f64();
    let cp_bytes = store.get_checkpoint()?.map_or(0, |c| c.state.len());
    drop(det);
    println!(
        "checkpoint:    saved in {save_s:.3} s, {:.1} MiB, at ingest position {position}",
        cp_bytes as f64 / (1 << 20) as f64
    );
    // One more round while "down": one ingest group per vantage, as before.
    let mut extra = 0u64;
    for v in 0..world.vantages.len() {
        let batch: Vec<v1::TraceRecord> = (0..world.dests.len())
            .map(|d| to_record(&world.trace(v, d, rounds)))
            .collect();
        for r in store.ingest_many(&batch)? {
            r?;
        }
        extra += batch.len() as u64;
    }
    store.flush()?;
    drop(store);
    let now = now + ROUND_EVERY;

    let mut reports = Vec::new();
    for with_checkpoint in [false, true] {
        let t = Instant::now();
        let store = SledStore::open(path)?;
        let opened = t.elapsed().as_secs_f64();
        let loaded = if with_checkpoint {
            load_blocking(&store, &adversary, annot, &fp, || {
                replay_all(&store, adversary.clone(), annot)
            })?
        } else {
            let (det, position) = replay_all(&store, adversary.clone(), annot)?;
            tracemesh::live_checkpoint::Loaded {
                det,
                position,
                from_checkpoint: false,
                replayed: 0,
            }
        };
        let loaded_s = t.elapsed().as_secs_f64();
        let report = loaded.det.report(annot, gazetteer, now);
        let first = t.elapsed().as_secs_f64();
        println!(
            "restart {}: store open {opened:.3} s, detector ready {loaded_s:.3} s, first report (alerts from here on) {first:.3} s; {} records{}",
            if with_checkpoint {
                "with checkpoint   "
            } else {
                "without checkpoint"
            },
            report.diversions.len(),
            if loaded.from_checkpoint {
                format!(
                    ", {} traces replayed after the checkpoint (of {extra} stored since)",
                    loaded.replayed
                )
            } else {
                String::new()
            }
        );
        if with_checkpoint && !loaded.from_checkpoint {
            return Err("the checkpoint was not used".into());
        }
        reports.push(serde_json::to_string(&report)?);
    }
    if reports[0] != reports[1] {
        return Err(
            "the restart from the checkpoint reports otherwise than the full replay".into(),
        );
    }
    println!("restart:       same report with and without the checkpoint");
    Ok(())
}
