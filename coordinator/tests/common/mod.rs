//! What several coordinator test files share.

use tracemesh::annotate::{Annotator, Origin, split_name_country};

/// Rogers, Telia, KT and China Telecom (the adversary, AS4134): the annotation the
/// Canada→Korea test paths need.
pub fn annotator() -> Annotator {
    let mut a = Annotator::new();
    for (p, asn, name) in [
        ("24.114.0.0/16", 812, "ROGERS, CA"),
        ("62.115.0.0/16", 1299, "TELIANET, SE"),
        ("211.192.0.0/13", 4766, "KT, KR"),
        ("202.97.0.0/16", 4134, "CHINANET, CN"),
    ] {
        a.insert_prefix(p.parse().unwrap(), Origin::Single(asn));
        a.set_as_info(asn, split_name_country(name));
    }
    a
}
