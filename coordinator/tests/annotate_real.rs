//! Annotation against the real data in ../shared/data beside the repository: ignored by
//! default, run with `cargo test -- --ignored` where that directory is.

// Helpers outside #[test] functions unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use tracemesh::annotate::{AnnotateError, Annotator, load_mrt_file, load_peeringdb};

/// `shared/data` beside the repository, as on the development machine and in CI.
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data");

/// Asked to run, a test without its data fails, saying where the data should be.
fn require_data() {
    assert!(
        Path::new(DATA).join("asn/ipasn_20140513.dat.gz").exists(),
        "this test needs the shared data: {DATA} (../shared/data beside the repository) is not there"
    );
}

/// Every "addr" string anywhere in a JSON value (scamper `trace` hops, `tracelb` nodes
/// and links alike).
fn collect_addrs(v: &serde_json::Value, out: &mut Vec<IpAddr>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "addr"
                    && let Some(a) = x.as_str().and_then(|s| s.parse().ok())
                {
                    out.push(a);
                }
                collect_addrs(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_addrs(x, out)),
        _ => {}
    }
}

#[test]
#[ignore = "needs ../shared/data"]
fn scamper_hops_get_origin_ases() {
    require_data();
    let mut annot = Annotator::new();
    let n4 = annot
        .load_prefix_file(&Path::new(DATA).join("asn/ipasn_20140513.dat.gz"))
        .unwrap();
    assert_eq!(n4, 512_621);
    let n6 = annot
        .load_prefix_file(&Path::new(DATA).join("asn/ipasn6_20151101.dat.gz"))
        .unwrap();
    assert!(n6 > 600_000);
    annot
        .load_asnames(&Path::new(DATA).join("asn/asnames.json.gz"))
        .unwrap();
    let ixps = load_peeringdb(
        &Path::new(DATA).join("ixp/peeringdb-2016-10-19-ix.json"),
        &Path::new(DATA).join("ixp/peeringdb-2016-10-19-ixlan.json"),
        &Path::new(DATA).join("ixp/peeringdb-2016-10-19-ixpfx.json"),
    )
    .unwrap();
    assert!(ixps.len() > 500, "{} IXP LANs", ixps.len());
    for lan in &ixps {
        annot.add_ixp_lan(lan);
    }

    // Known fixed points of the 2014 table.
    assert_eq!(annot.asn("8.8.8.8".parse().unwrap()), Some(15169));
    assert_eq!(annot.as_country(15169), Some("US"));
    assert_eq!(annot.asn("202.97.33.1".parse().unwrap()), Some(4134));
    assert_eq!(
        annot.ixp("206.223.119.10".parse().unwrap()),
        Some("Equinix Chicago")
    );

    let mut addrs = Vec::new();
    for entry in std::fs::read_dir(Path::new(DATA).join("scamper")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("mlab-") && name.contains("-valid-") && name.ends_with(".jsonl")) {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                collect_addrs(&v, &mut addrs);
            }
        }
    }
    addrs.sort();
    addrs.dedup();
    assert!(addrs.len() > 10, "only {} hop addresses", addrs.len());
    let mut by_as: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let mut annotated = 0;
    for a in &addrs {
        let x = annot.annotate(*a);
        if x.asn.is_some() {
            annotated += 1;
        }
        let key = format!(
            "AS{} {} ({}){}",
            x.asn.map_or("?".into(), |n| n.to_string()),
            x.as_name.unwrap_or("-"),
            x.country.unwrap_or("-"),
            x.ixp.map(|i| format!(" IXP {i}")).unwrap_or_default()
        );
        by_as.entry(key).or_default().push(*a);
    }
    for (k, v) in &by_as {
        println!("{k}: {} hops, e.g. {}", v.len(), v[0]);
    }
    println!("{annotated}/{} hop addresses annotated", addrs.len());
    assert!(
        annotated * 2 > addrs.len(),
        "most public hop addresses must have an origin"
    );

    // Throughput: the annotator must keep up with millions of hops.
    let t = std::time::Instant::now();
    let mut hits = 0usize;
    for i in 0..1_000_000u32 {
        let ip = IpAddr::from(std::net::Ipv4Addr::from(i.wrapping_mul(2_654_435_761)));
        hits += usize::from(annot.asn(ip).is_some());
    }
    let el = t.elapsed();
    println!("1M lookups in {el:?} ({hits} hits)");
}

#[test]
#[ignore = "needs ../shared/data"]
fn truncated_mrt_reports_offset_after_yielding_entries() {
    require_data();
    let load = load_mrt_file(&Path::new(DATA).join("mrt/rib.20140523.0600_firstMB.bz2"));
    println!(
        "{} records, {} prefixes, error: {:?}",
        load.records,
        load.entries.len(),
        load.error.as_ref().map(|e| e.to_string())
    );
    assert!(
        load.entries.len() > 100,
        "entries before the damage are kept"
    );
    match load.error {
        Some(AnnotateError::Mrt {
            byte_offset,
            records_read,
            ..
        }) => {
            assert!(
                byte_offset > 1_000_000,
                "offset {byte_offset} lies in the decompressed stream"
            );
            assert_eq!(records_read, load.records);
        }
        other => panic!("expected an MRT error with an offset, got {other:?}"),
    }
    // The earliest prefixes of a RouteViews dump are well known.
    let mut annot = Annotator::new();
    annot.extend_prefixes(load.entries);
    assert_eq!(annot.asn("1.0.0.1".parse().unwrap()), Some(15169));
}
