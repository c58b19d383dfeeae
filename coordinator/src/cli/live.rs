//! Live detection inside `tracemesh serve --adversary ...`: every stored trace also goes to
//! the detector, and each new or changed diversion record is published to
//! `SubscribeDiversions` subscribers. History is replayed at start so a restart does not
//! forget normal paths; replayed diversions are not re-announced (they are not news).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tracemesh::annotate::Annotator;
use tracemesh::detect::{Adversary, Detector, DiversionRecord};
use tracemesh::geo::Gazetteer;
use tracemesh::server::Coordinator;
use tracemesh::store::{StoreError, TraceQuery};
use tracemesh_proto::v1;

use super::diversions::{to_detector_trace, to_vantage_meta};

/// Reports are recomputed over the whole history; batching arrivals bounds that cost.
const REPORT_EVERY: Duration = Duration::from_millis(500);

type Key = (String, String, u64);

pub fn to_proto(d: &DiversionRecord) -> v1::Diversion {
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
    }
}

fn now_s() -> f64 {
    tracemesh::server::now_ns() as f64 / 1e9
}

/// The records whose content changed since `published`, updating it.
fn changed(
    published: &mut HashMap<Key, v1::Diversion>,
    report: &[DiversionRecord],
) -> Vec<v1::Diversion> {
    let mut out = Vec::new();
    for d in report {
        let key = (d.vantage.clone(), d.target.to_string(), d.first_round);
        let p = to_proto(d);
        if published.get(&key) != Some(&p) {
            published.insert(key, p.clone());
            out.push(p);
        }
    }
    out
}

pub fn spawn(c: Arc<Coordinator>, adversary: Adversary, annot: Annotator) {
    tokio::spawn(async move {
        if let Err(e) = run(c, adversary, annot).await {
            tracing::error!(error = %tracemesh::server::client::error_chain(&e), "live detection stopped");
        }
    });
}

async fn run(
    c: Arc<Coordinator>,
    adversary: Adversary,
    annot: Annotator,
) -> Result<(), StoreError> {
    // Subscribe before replaying so nothing falls between; a trace seen twice is the
    // same round of the same pair and changes nothing.
    let mut rx = c.subscribe_traces();
    let annot = Arc::new(annot);
    let gazetteer = Arc::new(Gazetteer::builtin());
    let (mut det, mut published) = {
        let store = c.store.clone();
        let annot = annot.clone();
        let gazetteer = gazetteer.clone();
        tokio::task::spawn_blocking(move || {
            let mut det = Detector::new(adversary);
            for a in store.list_agents()? {
                det.set_vantage(to_vantage_meta(&a.meta));
            }
            let mut n = 0usize;
            store.for_each_trace(&TraceQuery::default(), &mut |t| {
                if let Some(t) = to_detector_trace(&t) {
                    det.ingest(&t, &annot);
                    n += 1;
                }
                true
            })?;
            let mut published = HashMap::new();
            let report = det.report(&annot, &gazetteer, now_s());
            changed(&mut published, &report.diversions);
            tracing::info!(
                traces = n,
                known_diversions = published.len(),
                "live detection ready"
            );
            Ok::<_, StoreError>((det, published))
        })
        .await
        .map_err(|e| StoreError::Invalid {
            what: "detector replay",
            detail: e.to_string(),
        })??
    };
    let mut known_vantages = std::collections::HashSet::new();
    loop {
        let first = tokio::select! {
            r = rx.recv() => r,
            _ = c.shutdown_signal() => return Ok(()),
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
        for t in &batch {
            if known_vantages.insert(t.vantage.clone())
                && let Some(a) = c.store.get_agent(&t.vantage)?
            {
                det.set_vantage(to_vantage_meta(&a.meta));
            }
            if let Some(t) = to_detector_trace(t) {
                det.ingest(&t, &annot);
            }
        }
        let report = det.report(&annot, &gazetteer, now_s());
        for d in changed(&mut published, &report.diversions) {
            tracing::info!(vantage = %d.vantage, target = %d.target, asn = d.adversary_asn, "diversion");
            c.publish_diversion(d);
        }
    }
}
