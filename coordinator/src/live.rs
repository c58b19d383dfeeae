//! Live detection inside `tracemesh serve --adversary ...`: every stored trace also goes to
//! the detector, and each new or changed diversion record is published to
//! `SubscribeDiversions` subscribers. History is replayed at start so a restart does not
//! forget normal paths; replayed diversions are not re-announced (they are not news).
//!
//! After each report it also asks for alias resolution on its own: the addresses around
//! each diverted path's border (and adversary addresses on paths not reported diverted)
//! go to `alias::auto`, which picks those not probed in the last hour, a few per minute;
//! they become one alias campaign (method both, one round, now) from the vantages that
//! saw them, created the way `CreateCampaign` creates one.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tracemesh_proto::v1;

use crate::alias::auto::{AutoAlias, border_suspects};
use crate::annotate::Annotator;
use crate::detect::{
    Adversary, Detector, DiversionRecord, Incident, MdaTrace, Tables, Trace, VantageInfo,
};
use crate::geo::GeoPoint;
use crate::server::Coordinator;
use crate::store::{AgentMeta, StoreError};

/// Reports are recomputed over the whole history; batching arrivals bounds that cost.
const REPORT_EVERY: Duration = Duration::from_millis(500);

type Key = (String, String, u64);

/// Where fresh tables come from when the operator sends SIGHUP; called on a blocking
/// thread.
pub type Reload = Arc<dyn Fn() -> anyhow::Result<Tables> + Send + Sync>;

/// An enrolled agent's metadata as the detector takes it.
fn vantage_of(m: &AgentMeta) -> VantageInfo {
    VantageInfo {
        name: m.name.clone(),
        loc: m.loc.map(|(lat, lon)| GeoPoint::new(lat, lon)),
        country: (!m.country.is_empty()).then(|| m.country.clone()),
        asn: m.asn,
    }
}

/// Whether `d`'s incident in `incidents` (the report it came from) was seen by more
/// than one vantage.
pub fn corroborated(d: &DiversionRecord, incidents: &[Incident]) -> bool {
    incidents
        .iter()
        .find(|i| i.id == d.incident)
        .is_some_and(|i| i.corroborated)
}

/// A record as `SubscribeDiversions` carries it; `mesh` are the mesh samples that say
/// which direction of an agent pair it is, `corroborated` whether its incident was seen
/// by more than one vantage ([`corroborated`]).
pub fn to_proto(
    d: &DiversionRecord,
    mesh: &[crate::mesh::MeshPoint],
    corroborated: bool,
) -> v1::Diversion {
    let ev = crate::mesh::evidence(mesh, &d.vantage, d.target, d.first_seen, d.last_seen);
    v1::Diversion {
        vantage: d.vantage.clone(),
        target: d.target.to_string(),
        adversary_asn: d.adversary_asn,
        handoff: Some(v1::DivertingHop {
            addr: d.handoff.addr.map(|a| a.to_string()).unwrap_or_default(),
            asn: d.handoff.asn,
            ..Default::default()
        }),
        ingress: Some(v1::DivertingHop {
            addr: d.ingress.addr.to_string(),
            asn: Some(d.ingress.asn),
            lat: d.ingress.loc.map(|p| p.lat),
            lon: d.ingress.loc.map(|p| p.lon),
            radius_km: d.ingress.radius_km,
            city: d.ingress.city.clone(),
        }),
        first_seen: d.first_seen,
        last_seen: d.last_seen,
        rounds: d.rounds,
        campaign_id: String::new(),
        direction: ev
            .as_ref()
            .map(|e| e.direction.to_string())
            .unwrap_or_default(),
        owd_step_ms: ev.as_ref().and_then(|e| e.owd_step_ms),
        reverse_owd_step_ms: ev.as_ref().and_then(|e| e.reverse_owd_step_ms),
        corroborated,
    }
}

/// Every stored mesh sample, when a record's target is an agent's mesh address (only
/// then can one say which direction of a pair it is); none otherwise.
async fn mesh_points_for(
    c: &Arc<Coordinator>,
    report: &[DiversionRecord],
) -> Vec<crate::mesh::MeshPoint> {
    if report.is_empty() {
        return Vec::new();
    }
    let targets: std::collections::HashSet<std::net::IpAddr> =
        report.iter().map(|d| d.target).collect();
    let store = c.store.clone();
    let load = move || -> Result<Vec<crate::mesh::MeshPoint>, StoreError> {
        let agent_ips: std::collections::HashSet<std::net::IpAddr> = store
            .list_agents()?
            .iter()
            .filter_map(|a| a.mesh_addr.as_deref()?.parse::<std::net::SocketAddr>().ok())
            .map(|sa| sa.ip())
            .collect();
        let mut out = Vec::new();
        if targets.is_disjoint(&agent_ips) {
            return Ok(out);
        }
        store.for_each_mesh_sample(None, &mut |m| {
            out.push(crate::mesh::MeshPoint::from_proto(&m));
            true
        })?;
        Ok(out)
    };
    match tokio::task::spawn_blocking(load).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "mesh samples unreadable; records go out without a direction");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "mesh sample task failed");
            Vec::new()
        }
    }
}

fn now_s() -> f64 {
    crate::server::now_ns() as f64 / 1e9
}

/// The records whose content changed since `published`, updating it, each with whether
/// its incident is corroborated (a record whose incident a second vantage now
/// corroborates has changed: subscribers learn it is no longer one agent's word).
/// (Compared without mesh evidence, which only names the direction: the records that
/// changed then get it, from one read of the mesh samples.)
fn changed<'a>(
    published: &mut HashMap<Key, v1::Diversion>,
    report: &'a crate::detect::DiversionReport,
) -> Vec<(&'a DiversionRecord, bool)> {
    let mut out = Vec::new();
    for d in &report.diversions {
        let key = (d.vantage.clone(), d.target.to_string(), d.first_round);
        let corroborated = corroborated(d, &report.incidents);
        let p = to_proto(d, &[], corroborated);
        if published.get(&key) != Some(&p) {
            published.insert(key, p);
            out.push((d, corroborated));
        }
    }
    out
}

/// The changed records as `SubscribeDiversions` carries them, agent pairs with their
/// direction.
async fn with_direction(
    c: &Arc<Coordinator>,
    changed: Vec<(&DiversionRecord, bool)>,
) -> Vec<v1::Diversion> {
    let owned: Vec<DiversionRecord> = changed.iter().map(|(d, _)| (*d).clone()).collect();
    let mesh = mesh_points_for(c, &owned).await;
    owned
        .iter()
        .zip(&changed)
        .map(|(d, (_, corroborated))| to_proto(d, &mesh, *corroborated))
        .collect()
}

/// Runs live detection on the coordinator's runtime until it shuts down: `tables` to
/// start with, `reload` for fresh ones on SIGHUP.
pub fn spawn(c: Arc<Coordinator>, adversary: Adversary, tables: Tables, reload: Reload) {
    spawn_with(c, adversary, tables, reload, None);
}

/// [`spawn`], saving the detector as `checkpoint` says (and loading it at start); the
/// task ends after the coordinator's shutdown signal, once the last save is done.
pub fn spawn_with(
    c: Arc<Coordinator>,
    adversary: Adversary,
    tables: Tables,
    reload: Reload,
    checkpoint: Option<crate::live_checkpoint::Config>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = run(c, adversary, tables, reload, checkpoint).await {
            tracing::error!(error = %crate::server::client::error_chain(&e), "live detection stopped");
        }
    })
}

fn blocking_failed(e: tokio::task::JoinError) -> StoreError {
    StoreError::Invalid {
        what: "detector replay",
        detail: e.to_string(),
    }
}

/// A detector that has seen every stored trace, and the ingest position it covers;
/// or, with a checkpoint configuration, the saved one and what was stored after it
/// (`live_checkpoint.rs`).
async fn replay(
    c: &Arc<Coordinator>,
    adversary: Adversary,
    annot: Arc<Annotator>,
    fingerprint: Option<String>,
) -> Result<(Detector, u64), StoreError> {
    let store = c.store.clone();
    tokio::task::spawn_blocking(move || {
        let all = || replay_all(store.as_ref(), adversary.clone(), &annot);
        let Some(fp) = fingerprint else { return all() };
        let loaded =
            crate::live_checkpoint::load_blocking(store.as_ref(), &adversary, &annot, &fp, all)?;
        let mut det = loaded.det;
        // Vantage metadata may have changed while the coordinator was down.
        for a in store.list_agents()? {
            det.set_vantage(vantage_of(&a.meta));
        }
        Ok((det, loaded.position))
    })
    .await
    .map_err(blocking_failed)?
}

/// Feeds every stored trace to a fresh detector (on a blocking thread); the ingest
/// position read before the first one is what it covers.
pub fn replay_all(
    store: &dyn crate::store::Store,
    adversary: Adversary,
    annot: &Annotator,
) -> Result<(Detector, u64), StoreError> {
    let position = store.ingest_position()?;
    let started = std::time::Instant::now();
    let mut det = Detector::new(adversary);
    for a in store.list_agents()? {
        det.set_vantage(vantage_of(&a.meta));
    }
    let mut n = 0usize;
    // A long history takes minutes to replay: say how far it got, every few seconds
    // (serve runs as a daemon, so progress goes to the log, not a terminal line).
    let mut last_note = started;
    store.for_each_trace_any_order(&mut |t| {
        if let Some(t) = Trace::from_record(&t) {
            det.ingest(&t, annot);
            n += 1;
        }
        if n.is_multiple_of(4096) && last_note.elapsed() >= std::time::Duration::from_secs(5) {
            last_note = std::time::Instant::now();
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                traces = n,
                secs,
                rate = (n as f64 / secs.max(1e-9)).round(),
                "replaying stored traces"
            );
        }
        true
    })?;
    tracing::info!(
        traces = n,
        secs = started.elapsed().as_secs_f64(),
        state = ?det.state_size(),
        "detector replayed the stored traces"
    );
    feed_mda(store, &mut det, annot)?;
    Ok((det, position))
}

/// Feeds every stored multipath trace to `det`: every branch of the pairs' load
/// balancers is normal. Learning a branch twice changes nothing, and MDA rounds are
/// few, so a detector loaded from a checkpoint takes them all again rather than only
/// those stored after it (they are not in the trace groups the checkpoint counts).
pub(crate) fn feed_mda(
    store: &dyn crate::store::Store,
    det: &mut Detector,
    annot: &Annotator,
) -> Result<usize, StoreError> {
    let mut n = 0usize;
    store.for_each_mda_result(None, &mut |r| {
        if let Some(m) = MdaTrace::from_record(&r) {
            det.ingest_mda(&m, annot);
            n += 1;
        }
        true
    })?;
    if n > 0 {
        tracing::info!(mda = n, "detector took the stored multipath traces");
    }
    Ok(n)
}

/// Resolves on SIGHUP (never elsewhere).
async fn reload_requested(hup: &mut Option<tokio::signal::unix::Signal>) {
    match hup {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The addresses worth resolving after a report, most telling first, each with the
/// vantage that saw it: the border of every diversion, then adversary addresses on the
/// new traces whose pair is not reported diverted.
fn alias_suspects(
    diversions: &[DiversionRecord],
    batch: &[v1::TraceRecord],
    annot: &Annotator,
    adversary: &Adversary,
) -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    let mut diverted = HashSet::new();
    for d in diversions {
        diverted.insert((d.vantage.as_str(), d.target));
        out.extend(
            border_suspects(d)
                .into_iter()
                .map(|a| (d.vantage.clone(), a)),
        );
    }
    for t in batch {
        let Ok(dst) = t.dst.parse::<IpAddr>() else {
            continue;
        };
        if diverted.contains(&(t.vantage.as_str(), dst)) {
            continue;
        }
        for a in t
            .hops
            .iter()
            .filter_map(|h| h.addr.as_deref()?.parse::<IpAddr>().ok())
        {
            let hostile = annot.asn(a).is_some_and(|asn| {
                adversary.asns.contains(&asn) || adversary.has_country(annot.as_country(asn))
            });
            if hostile && a != dst {
                out.push((t.vantage.clone(), a));
            }
        }
    }
    out
}

/// What alias resolution knows, for the detector: the groups every stored alias result
/// supports, merged (`alias::merge`), and each vantage's best echo RTT per address.
type AliasKnowledge = (Vec<Vec<IpAddr>>, Vec<IpAddr>, Vec<(String, IpAddr, f64)>);

async fn alias_knowledge(c: &Arc<Coordinator>) -> Result<AliasKnowledge, StoreError> {
    let store = c.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut results = Vec::new();
        store.for_each_alias_result(None, &mut |r| {
            results.push(r);
            true
        })?;
        let groups = crate::alias::merge(&results)
            .into_iter()
            .map(|set| set.addrs.iter().filter_map(|a| a.parse().ok()).collect())
            .collect();
        Ok((
            groups,
            crate::alias::router_sources(&results),
            crate::alias::echo_rtts(&results),
        ))
    })
    .await
    .map_err(blocking_failed)?
}

/// Hands alias resolution's groups and echo RTTs to the detector, unless nothing was
/// stored since `fed` (the alias generation it last handed over; `None` for a fresh
/// detector): merging every stored result is not work for every batch of traces.
async fn feed_aliases(
    c: &Arc<Coordinator>,
    det: &mut Detector,
    fed: &mut Option<u64>,
) -> Result<(), StoreError> {
    // Read before loading: results stored meanwhile bump it again, and load next time.
    let generation = c.alias_generation();
    if *fed == Some(generation) {
        return Ok(());
    }
    *fed = Some(generation);
    let (groups, sources, echoes) = alias_knowledge(c).await?;
    det.set_aliases(groups);
    det.set_router_sources(sources);
    for (v, a, ms) in echoes {
        det.observe_echo(&v, a, ms);
    }
    Ok(())
}

/// Every address of the stored alias results, with when it was probed.
async fn load_probed(c: &Arc<Coordinator>) -> Result<AutoAlias, StoreError> {
    let store = c.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut auto = AutoAlias::default();
        store.for_each_alias_result(None, &mut |r| {
            for a in &r.addrs {
                if let Ok(ip) = a.addr.parse() {
                    auto.probed(ip, r.start);
                }
            }
            true
        })?;
        Ok(auto)
    })
    .await
    .map_err(blocking_failed)?
}

/// Plans alias resolution for `suspects` and, if anything is due, creates the campaign
/// in the background (detection does not wait for it).
fn schedule_aliases(c: &Arc<Coordinator>, auto: &mut AutoAlias, suspects: &[(String, IpAddr)]) {
    let plan = auto.plan(suspects, now_s());
    if plan.is_empty() {
        return;
    }
    let mut targets: Vec<String> = Vec::new();
    for a in plan.values().flatten() {
        let a = a.to_string();
        if !targets.contains(&a) {
            targets.push(a);
        }
    }
    let agents: Vec<String> = plan.keys().map(|v| format!("name:{v}")).collect();
    let spec = v1::CampaignSpec {
        targets: targets.clone(),
        agents: agents.clone(),
        method: None,
        every_s: 0,
        rounds: 1,
        start_at_ns: 0,
        alias: Some(v1::AliasSpec {
            method: v1::AliasMethod::Both as i32,
            rounds: 0,
        }),
        mesh: None,
        mda: None,
    };
    let c = c.clone();
    tokio::spawn(async move {
        match c.create_campaign(&spec).await {
            Ok((camp, pushed)) => tracing::info!(
                campaign = %camp.id,
                addrs = ?targets,
                vantages = ?agents,
                pushed = pushed.len(),
                "alias resolution scheduled near suspected borders"
            ),
            Err(e) => {
                tracing::error!(error = %crate::server::client::error_chain(&e), addrs = ?targets, "cannot schedule alias resolution")
            }
        }
    });
}

/// Hands the report to the live view (`serve --http`), which renders it only when on.
fn publish_view(
    c: &Coordinator,
    det: &Detector,
    report: &crate::detect::DiversionReport,
    annot: &crate::annotate::Annotator,
    gazetteer: &crate::geo::Gazetteer,
) {
    if c.live_view.is_enabled() {
        c.live_view
            .publish(&det.map_view(report, annot, gazetteer, 0, now_s()));
    }
}

async fn run(
    c: Arc<Coordinator>,
    adversary: Adversary,
    tables: Tables,
    reload: Reload,
    checkpoint: Option<crate::live_checkpoint::Config>,
) -> Result<(), StoreError> {
    // Subscribe before replaying so nothing falls between; a trace seen twice is the
    // same round of the same pair and changes nothing.
    let mut rx = c.subscribe_traces();
    let mut mda_rx = c.subscribe_mda();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(
            |e| tracing::warn!(error = %e, "no SIGHUP handler: annotation cannot be reloaded"),
        )
        .ok();
    let mut annot = Arc::new(tables.annot);
    let mut gazetteer = Arc::new(tables.gazetteer);
    let fingerprint = |cp: &crate::live_checkpoint::Config| {
        crate::live_checkpoint::fingerprint(&adversary, &(cp.annotation_digest)())
    };
    let mut fp = checkpoint.as_ref().map(fingerprint);
    let (mut det, mut position) = replay(&c, adversary.clone(), annot.clone(), fp.clone()).await?;
    let mut save_tick = tokio::time::interval(
        checkpoint
            .as_ref()
            .map_or(crate::live_checkpoint::DEFAULT_EVERY, |cp| cp.every),
    );
    save_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: what was just loaded needs no saving.
    save_tick.tick().await;
    let mut aliases_fed = None;
    feed_aliases(&c, &mut det, &mut aliases_fed).await?;
    let mut published = HashMap::new();
    let report = det.report(&annot, &gazetteer, now_s());
    crate::metrics::note_report(&report.diversions);
    publish_view(&c, &det, &report, &annot, &gazetteer);
    let known = changed(&mut published, &report);
    let records: Vec<&DiversionRecord> = known.iter().map(|(d, _)| *d).collect();
    crate::live_checkpoint::store_records(c.store.as_ref(), &records);
    tracing::info!(known_diversions = published.len(), "live detection ready");
    let mut auto = load_probed(&c).await?;
    schedule_aliases(
        &c,
        &mut auto,
        &alias_suspects(&report.diversions, &[], &annot, &adversary),
    );
    let mut known_vantages = std::collections::HashSet::new();
    loop {
        let first = tokio::select! {
            r = rx.recv() => r,
            () = reload_requested(&mut hup) => {
                let reload = reload.clone();
                match tokio::task::spawn_blocking(move || reload()).await {
                    Ok(Ok(fresh)) => {
                        tracing::info!(prefixes = fresh.annot.prefix_count(), "annotation reloaded");
                        annot = Arc::new(fresh.annot);
                        gazetteer = Arc::new(fresh.gazetteer);
                        // Another annotation classifies hops differently: the saved
                        // state says nothing about it, so a full replay.
                        fp = checkpoint.as_ref().map(fingerprint);
                        (det, position) = replay(&c, adversary.clone(), annot.clone(), None).await?;
                        aliases_fed = None;
                        feed_aliases(&c, &mut det, &mut aliases_fed).await?;
                        let report = det.report(&annot, &gazetteer, now_s());
                        crate::metrics::note_report(&report.diversions);
                        publish_view(&c, &det, &report, &annot, &gazetteer);
                        let fresh = changed(&mut published, &report);
                        let records: Vec<&DiversionRecord> = fresh.iter().map(|(d, _)| *d).collect();
                        crate::live_checkpoint::store_records(c.store.as_ref(), &records);
                        for d in with_direction(&c, fresh).await {
                            c.publish_diversion(d);
                        }
                    }
                    Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "annotation reload failed; keeping the tables in use"),
                    Err(e) => tracing::error!(error = %e, "annotation reload failed"),
                }
                continue;
            }
            _ = save_tick.tick(), if fp.is_some() => {
                if let Some(fp) = &fp {
                    (det, position) = crate::live_checkpoint::save(c.store.clone(), det, annot.clone(), position, fp.clone()).await?;
                }
                continue;
            }
            _ = c.shutdown_signal() => {
                if let Some(fp) = &fp {
                    crate::live_checkpoint::save(c.store.clone(), det, annot.clone(), position, fp.clone()).await?;
                }
                return Ok(());
            }
        };
        let mut batch = Vec::new();
        match first {
            Ok(t) => batch.push(t),
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    skipped = n,
                    "live detection fell behind; skipped traces are still stored"
                );
            }
            Err(RecvError::Closed) => return Ok(()),
        }
        // Let a burst (one round from many agents) arrive before recomputing.
        tokio::time::sleep(REPORT_EVERY).await;
        loop {
            match rx.try_recv() {
                Ok(t) => batch.push(t),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "live detection fell behind");
                }
                Err(_) => break,
            }
        }
        // Multipath traces follow their round's traces: they go in with the next batch.
        loop {
            match mda_rx.try_recv() {
                Ok(r) => {
                    if let Some(m) = MdaTrace::from_record(&r) {
                        det.ingest_mda(&m, &annot);
                    }
                }
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => {
                    tracing::warn!(
                        skipped = n,
                        "live detection fell behind on multipath traces"
                    );
                }
                Err(_) => break,
            }
        }
        for t in &batch {
            if known_vantages.insert(t.vantage.clone())
                && let Some(a) = c.store.get_agent(&t.vantage)?
            {
                det.set_vantage(vantage_of(&a.meta));
            }
            if let Some(t) = Trace::from_record(t) {
                det.ingest(&t, &annot);
            }
        }
        feed_aliases(&c, &mut det, &mut aliases_fed).await?;
        let report = det.report(&annot, &gazetteer, now_s());
        crate::metrics::note_report(&report.diversions);
        publish_view(&c, &det, &report, &annot, &gazetteer);
        let fresh = changed(&mut published, &report);
        let records: Vec<&DiversionRecord> = fresh.iter().map(|(d, _)| *d).collect();
        crate::live_checkpoint::store_records(c.store.as_ref(), &records);
        for d in with_direction(&c, fresh).await {
            tracing::info!(vantage = %d.vantage, target = %d.target, asn = d.adversary_asn, direction = %d.direction, "diversion");
            c.publish_diversion(d);
        }
        schedule_aliases(
            &c,
            &mut auto,
            &alias_suspects(&report.diversions, &batch, &annot, &adversary),
        );
    }
}
