//! Traces and queries the store's unit tests share.
#![allow(clippy::unwrap_used)]

use tracemesh_proto::v1;

use super::SledStore;
use crate::store::{Store as _, TraceQuery, keys};

pub(super) fn trace(dst: &str, result_id: Option<&str>, start: f64) -> v1::TraceRecord {
    v1::TraceRecord {
        result_id: result_id
            .map_or_else(|| tracemesh_proto::result_id("c1", 0, dst), str::to_string),
        campaign_id: "c1".into(),
        round: 0,
        vantage: "tor".into(),
        dst: dst.into(),
        start,
        ..Default::default()
    }
}

pub(super) fn by(s: &SledStore, q: TraceQuery) -> Vec<(String, f64)> {
    s.query_traces(&q)
        .unwrap()
        .into_iter()
        .map(|t| (t.dst, t.start))
        .collect()
}

pub(super) fn all_queries(s: &SledStore) -> [Vec<(String, f64)>; 4] {
    [
        by(
            s,
            TraceQuery {
                campaign_id: Some("c1".into()),
                ..Default::default()
            },
        ),
        by(
            s,
            TraceQuery {
                vantage: Some("tor".into()),
                ..Default::default()
            },
        ),
        by(
            s,
            TraceQuery {
                dst: Some("1.1.1.1".into()),
                ..Default::default()
            },
        ),
        by(s, TraceQuery::default()),
    ]
}

pub(super) fn pk(t: &v1::TraceRecord) -> Vec<u8> {
    keys::trace_key(&t.campaign_id, t.round, &t.vantage, &t.dst)
}
