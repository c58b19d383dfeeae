//! Text and binary parsers must turn any input into a value or an error, never a panic.

// Helpers outside #[test] functions unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use tracemesh::annotate::{
    parse_asnames, parse_origin, parse_peeringdb, parse_prefix_line, read_mrt_rib,
    read_prefix_table, split_name_country,
};
use tracemesh::geo::Gazetteer;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn prefix_line_never_panics(s in "\\PC*") {
        let _ = parse_prefix_line(&s);
    }

    #[test]
    fn prefix_line_shaped_input(a in 0u8..=255, b in 0u8..=255, len in 0u8..=40, asns in "[0-9_,]{0,12}") {
        let line = format!("{a}.{b}.0.0\t{len}\t{asns}");
        match parse_prefix_line(&line) {
            Ok(Some((net, origin))) => {
                prop_assert!(len <= 32);
                prop_assert_eq!(net.prefix_len(), len);
                prop_assert!(!origin.asns().is_empty());
            }
            Ok(None) => prop_assert!(false, "a data line is never a comment"),
            Err(_) => {}
        }
    }

    #[test]
    fn origin_never_panics(s in "\\PC{0,20}") {
        let _ = parse_origin(&s);
    }

    #[test]
    fn table_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut n = 0;
        let r = read_prefix_table(&bytes[..], "<prop>", |_, _| n += 1);
        if let Err(e) = r {
            // The error must locate the problem.
            prop_assert!(e.to_string().contains("<prop>:"));
        }
    }

    #[test]
    fn names_never_panic(s in "\\PC*", bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = split_name_country(&s);
        let _ = parse_asnames(&bytes, "<prop>");
        let _ = parse_asnames(s.as_bytes(), "<prop>");
    }

    #[test]
    fn peeringdb_never_panics(s in "\\PC{0,64}") {
        let doc = format!(r#"{{"data":[{{"id":1,"ix_id":1,"ixlan_id":1,"name":"X","prefix":{s:?}}}]}}"#);
        let _ = parse_peeringdb((doc.as_bytes(), "ix"), (doc.as_bytes(), "ixlan"), (doc.as_bytes(), "ixpfx"));
        let _ = parse_peeringdb((s.as_bytes(), "ix"), (b"{}", "ixlan"), (b"[]", "ixpfx"));
    }

    #[test]
    fn mrt_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = read_mrt_rib(&bytes[..], "<prop>", |_, _| {});
    }

    #[test]
    fn gazetteer_never_panics(s in "\\PC*") {
        let _ = Gazetteer::parse_tsv(&s);
    }
}

#[test]
fn pfx2as_formats_and_errors() {
    let text = "; comment\n1.0.0.0\t24\t13335\n1.0.4.0/22\t56203\n\n2001:db8::/32\t64500_64501\n10.0.0.0\t8\t1,2_3\n";
    let mut got = Vec::new();
    let n = read_prefix_table(text.as_bytes(), "t", |p, o| {
        got.push((p.to_string(), o.asns().to_vec()))
    })
    .unwrap();
    assert_eq!(n, 4);
    assert_eq!(got[0], ("1.0.0.0/24".to_string(), vec![13335]));
    assert_eq!(got[1], ("1.0.4.0/22".to_string(), vec![56203]));
    assert_eq!(got[2], ("2001:db8::/32".to_string(), vec![64500, 64501]));
    assert_eq!(got[3], ("10.0.0.0/8".to_string(), vec![1, 2, 3]));

    let bad = "1.0.0.0\t24\t13335\n1.0.0.0\t33\t1\n";
    let err = read_prefix_table(bad.as_bytes(), "bad.txt", |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("bad.txt:2 (byte 17)"), "{err}");
    let err = read_prefix_table("1.2.3.4\tx\n".as_bytes(), "f", |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("f:1 (byte 0)"), "{err}");
}

#[test]
fn asnames_split_country() {
    let m = parse_asnames(br#"{"812": "ROGERS-CABLE - Rogers Cable Communications Inc., CA", "1": null, "7": "NO COUNTRY"}"#, "n").unwrap();
    assert_eq!(m[&812].country.as_deref(), Some("CA"));
    assert_eq!(
        m[&812].name,
        "ROGERS-CABLE - Rogers Cable Communications Inc."
    );
    assert_eq!(m[&7].country, None);
    assert!(!m.contains_key(&1));
    assert!(parse_asnames(br#"{"x": "A, CA"}"#, "n").is_err());
    assert!(parse_asnames(b"[1,2]", "n").is_err());
}

#[test]
fn peeringdb_join() {
    let ix = br#"{"data":[{"id":2,"name":"Equinix Chicago","country":"US","city":"Chicago"}]}"#;
    let ixlan = br#"{"data":[{"id":2,"ix_id":2},{"id":9,"ix_id":99}]}"#;
    let ixpfx = br#"{"data":[{"ixlan_id":2,"prefix":"206.223.119.0/24","protocol":"IPv4"},{"ixlan_id":9,"prefix":"192.0.2.0/24"}]}"#;
    let lans = parse_peeringdb((ix, "ix"), (ixlan, "ixlan"), (ixpfx, "ixpfx")).unwrap();
    assert_eq!(lans.len(), 1);
    assert_eq!(lans[0].ix_name, "Equinix Chicago");
    let bad = br#"{"data":[{"ixlan_id":2,"prefix":"not-a-prefix"}]}"#;
    assert!(parse_peeringdb((ix, "ix"), (ixlan, "ixlan"), (bad, "ixpfx")).is_err());
}

#[test]
fn mrt_garbage_is_an_error_with_offset() {
    // A plausible common header announcing a 100-byte TABLE_DUMP_V2 body, then EOF.
    let mut bytes = vec![0, 0, 0, 1, 0, 13, 0, 2, 0, 0, 0, 100];
    bytes.extend_from_slice(&[0; 10]);
    let err = read_mrt_rib(&bytes[..], "cut.mrt", |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("cut.mrt: MRT record at byte 0"), "{err}");
    assert_eq!(read_mrt_rib(&[][..], "empty", |_, _| {}).unwrap(), 0);
}

proptest! {
    #[test]
    fn as2org_never_panics(s in "(# format:[a-z_|]{0,30}\n)?[\\PC\n|]{0,200}") {
        let _ = tracemesh::annotate::parse_as2org(&s, "<prop>");
    }
}
