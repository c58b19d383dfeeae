//! Which uploads an agent may make: results only for campaigns the coordinator issued to
//! it. Without this an agent could store traces under any campaign id it invents (under
//! its own vantage, but inside other people's campaigns, or in campaigns of its own
//! making that nobody asked for).
//!
//! "Issued" is `Campaign.pushed_to`, which the coordinator writes (and flushes) *before*
//! it sends the instruction (`Coordinator::push_campaign`, the session's Hello): so an
//! agent never holds a campaign the store does not list it for, across a crash or a
//! restart, and results in flight for a cancelled campaign are still taken. A refused
//! result is acknowledged with the refusal (`Ack.refused`): the agent drops it from its
//! spool with a log line instead of re-sending it forever.

use std::collections::{BTreeMap, HashSet};

use tracemesh_proto::v1;

/// Why results of `campaign_id` from `agent` are refused, given what the store holds
/// for it (`None`: no such campaign); `None` when they are taken.
pub fn refusal(campaign_id: &str, stored: Option<&v1::Campaign>, agent: &str) -> Option<String> {
    match stored {
        None => Some(format!(
            "campaign {campaign_id:?} does not exist on this coordinator (never created, or deleted)"
        )),
        Some(c) if !c.pushed_to.iter().any(|n| n == agent) => Some(format!(
            "campaign {campaign_id:?} was never issued to agent {agent:?}"
        )),
        Some(_) => None,
    }
}

/// Sorts a batch's items into those to store and those refused, by campaign.
#[derive(Debug)]
pub struct Screened<R> {
    pub accepted: Vec<R>,
    /// Ids of the refused items: acknowledged, never stored.
    pub refused_ids: Vec<String>,
    pub refusals: Vec<v1::Refusal>,
}

/// Splits `items` by `reasons` (campaign id → why it is refused; absent: taken).
pub fn screen<R>(
    items: Vec<R>,
    campaign_of: impl Fn(&R) -> &str,
    id_of: impl Fn(&R) -> String,
    reasons: &BTreeMap<String, String>,
) -> Screened<R> {
    let mut accepted = Vec::with_capacity(items.len());
    let mut refused_ids = Vec::new();
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for r in items {
        let campaign = campaign_of(&r);
        match reasons.get_key_value(campaign) {
            Some((k, _)) => {
                *counts.entry(k.as_str()).or_default() += 1;
                refused_ids.push(id_of(&r));
            }
            None => accepted.push(r),
        }
    }
    let refusals = counts
        .into_iter()
        .map(|(campaign_id, results)| v1::Refusal {
            campaign_id: campaign_id.to_string(),
            reason: reasons[campaign_id].clone(),
            results,
        })
        .collect();
    Screened {
        accepted,
        refused_ids,
        refusals,
    }
}

/// The campaign ids of a batch that are not yet known to be issued to this session's
/// agent (`known`): those are looked up in the store.
pub fn to_check<'a>(
    campaigns: impl Iterator<Item = &'a str>,
    known: &HashSet<String>,
) -> Vec<String> {
    let mut out: Vec<String> = campaigns
        .filter(|c| !known.contains(*c))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign(pushed: &[&str]) -> v1::Campaign {
        v1::Campaign {
            id: "c1".into(),
            pushed_to: pushed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_campaigns_issued_to_the_agent() {
        assert!(refusal("c1", Some(&campaign(&["a", "b"])), "a").is_none());
        let why = refusal("c1", Some(&campaign(&["b"])), "a").unwrap();
        assert!(why.contains("never issued to agent \"a\""), "{why}");
        let why = refusal("zz", None, "a").unwrap();
        assert!(why.contains("does not exist"), "{why}");
        // A cancelled campaign it was issued still takes its late results.
        let mut c = campaign(&["a"]);
        c.cancelled_at_ns = Some(1);
        assert!(refusal("c1", Some(&c), "a").is_none());
    }

    #[test]
    fn screening_splits_and_counts_by_campaign() {
        let items = vec![
            ("c1", "c1/0/x"),
            ("bad", "bad/0/x"),
            ("c1", "c1/0/y"),
            ("bad", "bad/1/x"),
        ];
        let reasons = BTreeMap::from([("bad".to_string(), "no".to_string())]);
        let s = screen(items, |r| r.0, |r| r.1.to_string(), &reasons);
        assert_eq!(s.accepted, [("c1", "c1/0/x"), ("c1", "c1/0/y")]);
        assert_eq!(s.refused_ids, ["bad/0/x", "bad/1/x"]);
        assert_eq!(s.refusals.len(), 1);
        assert_eq!(
            (s.refusals[0].campaign_id.as_str(), s.refusals[0].results),
            ("bad", 2)
        );
        let known = HashSet::from(["c1".to_string()]);
        assert_eq!(
            to_check(["c1", "c2", "c2", "c0"].into_iter(), &known),
            ["c0", "c2"]
        );
    }
}
