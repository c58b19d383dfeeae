use super::*;

const S: i64 = 1_000_000_000;

fn meta() -> AgentMeta {
    AgentMeta {
        name: "tor-1".into(),
        country: "CA".into(),
        city: "Toronto".into(),
        loc: None,
        asn: Some(812),
        tags: vec!["core".into()],
    }
}

fn spec(targets: &[&str], agents: &[&str], every_s: u32, rounds: u32) -> v1::CampaignSpec {
    v1::CampaignSpec {
        targets: targets.iter().map(|s| s.to_string()).collect(),
        agents: agents.iter().map(|s| s.to_string()).collect(),
        method: Some(v1::ProbeMethod {
            proto: v1::ProbeProtocol::Icmp as i32,
            attempts: 2,
            max_ttl: 30,
            wait_ms: 0,
            flow_id: 0,
        }),
        every_s,
        rounds,
        start_at_ns: 0,
        alias: None,
        mesh: None,
        mda: None,
    }
}

#[test]
fn selectors_parse_and_match() {
    let m = meta();
    for (s, hit) in [
        ("all", true),
        ("name:tor-1", true),
        ("name:tor-2", false),
        ("country:ca", true),
        ("country:US", false),
        ("asn:812", true),
        ("asn:AS812", true),
        ("asn:13335", false),
        ("tag:core", true),
        ("tag:edge", false),
    ] {
        assert_eq!(s.parse::<Selector>().unwrap().matches(&m), hit, "{s}");
    }
    for bad in ["", "name:", "asn:x", "city:Toronto", "everyone"] {
        assert!(bad.parse::<Selector>().is_err(), "{bad}");
    }
    assert!(selects(&["country:US".into(), "tag:core".into()], &m));
    assert!(!selects(&["country:US".into()], &m));
}

#[test]
fn targets_expand_and_deduplicate() {
    let t = expand_targets(&[
        "192.0.2.0/30".into(),
        "192.0.2.1".into(),
        "2001:db8::1".into(),
    ])
    .unwrap();
    assert_eq!(
        t,
        [
            "192.0.2.0",
            "192.0.2.1",
            "192.0.2.2",
            "192.0.2.3",
            "2001:db8::1"
        ]
    );
    assert_eq!(
        expand_targets(&["10.0.0.0/16".into()]).unwrap().len(),
        65_536
    );
    assert!(matches!(
        expand_targets(&["10.0.0.0/8".into()]),
        Err(CampaignError::TooManyTargets(_))
    ));
    assert!(matches!(
        expand_targets(&["2001:db8::/32".into()]),
        Err(CampaignError::TooManyTargets(_))
    ));
    assert_eq!(
        expand_targets(&["example.com".into()]),
        Err(CampaignError::BadTarget("example.com".into()))
    );
}

#[test]
fn build_resolves_start_and_validates() {
    let now = 1_000 * S;
    let c = build("c1", &spec(&["192.0.2.1"], &["all"], 10, 3), now).unwrap();
    assert_eq!(c.start_at_ns, now + DEFAULT_START_LEAD_NS);
    assert_eq!(state(&c, now), CampaignState::Scheduled);
    assert!(build("c", &spec(&[], &["all"], 10, 3), now).is_err());
    assert!(build("c", &spec(&["192.0.2.1"], &[], 10, 3), now).is_err());
    assert!(build("c", &spec(&["192.0.2.1"], &["bogus"], 10, 3), now).is_err());
    assert!(build("c", &spec(&["192.0.2.1"], &["all"], 0, 3), now).is_err());
    assert!(build("c", &spec(&["192.0.2.1"], &["all"], 10, 0), now).is_err());
    let mut past = spec(&["192.0.2.1"], &["all"], 10, 3);
    past.start_at_ns = now - 100 * S;
    assert!(build("c", &past, now).is_err());
    let mut no_proto = spec(&["192.0.2.1"], &["all"], 10, 3);
    no_proto.method.as_mut().unwrap().proto = 0;
    assert!(build("c", &no_proto, now).is_err());
}

#[test]
fn state_and_push_follow_the_clock() {
    let now = 1_000 * S;
    let mut s = spec(&["192.0.2.1"], &["country:CA"], 10, 3);
    s.start_at_ns = now + 10 * S;
    let mut c = build("c1", &s, now).unwrap();
    let m = meta();
    assert!(should_push(&c, &m, now));
    assert_eq!(state(&c, now + 10 * S), CampaignState::Running);
    // Last round starts at +30 s; an agent connecting at +25 s still has it to run.
    assert!(should_push(&c, &m, now + 25 * S));
    assert!(!should_push(&c, &m, now + 31 * S));
    assert_eq!(state(&c, now + 31 * S), CampaignState::Running);
    assert_eq!(state(&c, now + 61 * S), CampaignState::Finished);
    let other = AgentMeta {
        country: "US".into(),
        ..meta()
    };
    assert!(!should_push(&c, &other, now));
    c.cancelled_at_ns = Some(now);
    assert!(!should_push(&c, &m, now));
    assert_eq!(state(&c, now), CampaignState::Cancelled);
    let i = instruction(&c, "a");
    assert_eq!(i.targets, vec!["192.0.2.1".to_string()]);
    assert_eq!((i.every_s, i.rounds, i.start_at_ns), (10, 3, now + 10 * S));
}

#[test]
fn an_alias_campaign_needs_addresses_not_a_trace_method_and_carries_its_spec_to_agents() {
    let mut sp = spec(&["10.0.0.2", "10.9.0.2"], &["all"], 0, 1);
    sp.method = None;
    sp.alias = Some(v1::AliasSpec {
        method: v1::AliasMethod::Both as i32,
        rounds: 4,
    });
    let c = build("c1", &sp, 100 * S).unwrap();
    assert_eq!(c.expanded_targets, ["10.0.0.2", "10.9.0.2"]);
    let ins = instruction(&c, "a");
    assert_eq!(ins.alias, sp.alias);
    let mut bad = sp.clone();
    bad.targets = vec!["10.0.0.0/24".into()];
    assert!(
        build("c2", &bad, 100 * S)
            .unwrap_err()
            .to_string()
            .contains("must be addresses")
    );
    let mut bad = sp.clone();
    bad.alias.as_mut().unwrap().method = 17;
    assert!(build("c3", &bad, 100 * S).is_err());
    // Without the alias spec, the missing method is an error again.
    sp.alias = None;
    assert!(build("c4", &sp, 100 * S).is_err());
}

#[test]
fn a_mesh_campaign_pairs_agents_and_each_traces_and_times_its_partners() {
    let mut sp = spec(&["192.0.2.1"], &["country:CA"], 10, 3);
    sp.mesh = Some(v1::MeshSpec::default());
    let meta = |name: &str, country: &str| AgentMeta {
        name: name.into(),
        country: country.into(),
        ..AgentMeta::default()
    };
    let agents = vec![
        (meta("tor", "CA"), "198.51.100.1:7444".to_string()),
        (meta("van", "CA"), "198.51.100.2:7444".to_string()),
        (meta("sel", "KR"), "198.51.100.3:7444".to_string()),
    ];
    let mut c = build("m1", &sp, 100 * S).unwrap();
    c.mesh_peers = mesh_peers(&sp, &agents);
    // Without --mesh-peers: the campaign's own agents, each with every other.
    assert_eq!(c.mesh_peers.len(), 2);
    let ins = instruction(&c, "tor");
    assert_eq!(ins.targets, ["192.0.2.1", "198.51.100.2"]);
    assert_eq!(
        ins.mesh_peers
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["van", "tor"]
    );
    assert!(should_push(&c, &meta("van", "CA"), 100 * S));
    assert!(!should_push(&c, &meta("sel", "KR"), 100 * S));
    // With --mesh-peers country:KR: Canadians pair with Korea, not with each other, and
    // the Korean agent gets the campaign to send its trains back.
    sp.mesh = Some(v1::MeshSpec {
        peers: vec!["country:KR".into()],
        ..Default::default()
    });
    c.spec = Some(sp.clone());
    c.mesh_peers = mesh_peers(&sp, &agents);
    let tor = instruction(&c, "tor");
    assert_eq!(tor.targets, ["192.0.2.1", "198.51.100.3"]);
    let sel = instruction(&c, "sel");
    assert_eq!(sel.targets, ["192.0.2.1", "198.51.100.1", "198.51.100.2"]);
    assert!(should_push(&c, &meta("sel", "KR"), 100 * S));
    // An alias campaign cannot be a mesh campaign.
    let mut bad = sp.clone();
    bad.alias = Some(v1::AliasSpec::default());
    assert!(build("m2", &bad, 100 * S).is_err());
}

#[test]
fn an_mda_campaign_is_checked_and_its_instruction_carries_the_mda_spec() {
    let mut sp = spec(&["192.0.2.1"], &["all"], 10, 6);
    sp.mda = Some(v1::MdaSpec {
        every: 3,
        confidence: 99,
        budget: 0,
    });
    let c = build("d1", &sp, 100 * S).unwrap();
    let ins = instruction(&c, "tor-1");
    assert_eq!(ins.mda, sp.mda);
    for bad in [
        v1::MdaSpec {
            confidence: 90,
            ..Default::default()
        },
        v1::MdaSpec {
            budget: 70_000,
            ..Default::default()
        },
    ] {
        sp.mda = Some(bad);
        assert!(build("d2", &sp, 100 * S).is_err());
    }
    sp.mda = Some(v1::MdaSpec::default());
    sp.alias = Some(v1::AliasSpec::default());
    let e = build("d3", &sp, 100 * S).unwrap_err().to_string();
    assert!(e.contains("--mda"), "{e}");
}
