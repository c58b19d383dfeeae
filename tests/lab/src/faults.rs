//! Faults injected into a lab run for the soak (`tracemesh-lab run --restart-coordinator-every
//! ...`, `tests/soak/lab_soak.sh`): the coordinator killed and restarted on a schedule
//! (kill -9 and SIGTERM in turn), one agent killed with -9 repeatedly and restarted a few
//! seconds later from its state directory, vantages' control links (agent to
//! coordinator) taken down and up, vantages' probe paths cut beyond their first hop and
//! restored (an upstream link flapping: the access router still answers, nothing further
//! does), and a garbage-uploading agent beside the real ones.
//! The schedule is pure (a plan and the span in, timed actions out); `run.rs` carries it
//! out and logs what it did.

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    /// Kill and restart the coordinator this often (seconds from the campaign's start);
    /// every other time with kill -9, else SIGTERM.
    pub restart_every_s: Option<f64>,
    /// The agent killed with -9 every `kill_every_s`, restarted `restart_after_s` later.
    pub victim: Option<String>,
    pub kill_every_s: f64,
    pub restart_after_s: f64,
    /// Vantages whose control link goes down every `flap_every_s` for `flap_down_s`.
    pub flap: Vec<String>,
    /// Vantages whose probe path is cut beyond the first hop on the same period.
    pub flap_probe: Vec<String>,
    pub flap_every_s: f64,
    pub flap_down_s: f64,
    /// Run `examples/garbage_agent` beside the real agents.
    pub garbage: bool,
    /// Sample the coordinator's RSS this often.
    pub rss_every_s: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", content = "target", rename_all = "snake_case")]
pub enum Action {
    /// Stop the coordinator (kill -9 when `hard`, else SIGTERM) and start it again.
    RestartCoordinator {
        hard: bool,
    },
    KillAgent(String),
    StartAgent(String),
    LinkDown(String),
    LinkUp(String),
    /// The emulator drops the vantage's probes beyond its first hop, or stops doing so.
    ProbePathDown(String),
    ProbePathUp(String),
}

/// Every action of `plan` within `span_s` seconds of the start, in time order. Faults
/// stop `settle_s` before the end so the last rounds' results can land; an agent killed
/// or a link taken down is always brought back.
pub fn schedule(plan: &FaultPlan, span_s: f64, settle_s: f64) -> Vec<(f64, Action)> {
    let last = span_s - settle_s;
    let mut out = Vec::new();
    if let Some(every) = plan.restart_every_s.filter(|e| *e > 0.0) {
        let mut k = 1;
        while f64::from(k) * every < last {
            out.push((
                f64::from(k) * every,
                Action::RestartCoordinator { hard: k % 2 == 1 },
            ));
            k += 1;
        }
    }
    if let Some(v) = &plan.victim
        && plan.kill_every_s > 0.0
    {
        // Half a period in, so kills and coordinator restarts do not coincide.
        let mut t = plan.kill_every_s / 2.0;
        while t < last {
            out.push((t, Action::KillAgent(v.clone())));
            out.push((t + plan.restart_after_s, Action::StartAgent(v.clone())));
            t += plan.kill_every_s;
        }
    }
    if plan.flap_every_s > 0.0 {
        let flaps: Vec<(Action, Action)> = plan
            .flap
            .iter()
            .map(|v| (Action::LinkDown(v.clone()), Action::LinkUp(v.clone())))
            .chain(plan.flap_probe.iter().map(|v| {
                (
                    Action::ProbePathDown(v.clone()),
                    Action::ProbePathUp(v.clone()),
                )
            }))
            .collect();
        let n = flaps.len().max(1) as f64;
        for (i, (down, up)) in flaps.into_iter().enumerate() {
            // Staggered over the period: never all vantages cut off at once.
            let mut t = plan.flap_every_s * (i as f64 + 0.5) / n;
            while t < last {
                out.push((t, down.clone()));
                out.push((t + plan.flap_down_s, up.clone()));
                t += plan.flap_every_s;
            }
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_alternates_restarts_and_brings_everything_back() {
        let plan = FaultPlan {
            restart_every_s: Some(60.0),
            victim: Some("v1".into()),
            kill_every_s: 40.0,
            restart_after_s: 3.0,
            flap: vec!["v2".into(), "v3".into()],
            flap_probe: vec!["v4".into()],
            flap_every_s: 100.0,
            flap_down_s: 10.0,
            ..FaultPlan::default()
        };
        let s = schedule(&plan, 200.0, 20.0);
        let restarts: Vec<_> = s
            .iter()
            .filter_map(|(t, a)| match a {
                Action::RestartCoordinator { hard } => Some((*t, *hard)),
                _ => None,
            })
            .collect();
        assert_eq!(restarts, [(60.0, true), (120.0, false)]);
        let kills: Vec<f64> = s
            .iter()
            .filter(|(_, a)| matches!(a, Action::KillAgent(_)))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(kills, [20.0, 60.0, 100.0, 140.0]);
        // Every kill and every link down has its undoing, after it.
        for (t, a) in &s {
            let undo = match a {
                Action::KillAgent(v) => Action::StartAgent(v.clone()),
                Action::LinkDown(v) => Action::LinkUp(v.clone()),
                Action::ProbePathDown(v) => Action::ProbePathUp(v.clone()),
                _ => continue,
            };
            assert!(s.iter().any(|(u, b)| *b == undo && u > t), "{a:?} at {t}");
        }
        let downs: Vec<_> = s
            .iter()
            .filter(|(_, a)| matches!(a, Action::LinkDown(_) | Action::ProbePathDown(_)))
            .map(|(t, a)| (t.round() as u32, a.clone()))
            .collect();
        assert_eq!(
            downs,
            [
                (17, Action::LinkDown("v2".into())),
                (50, Action::LinkDown("v3".into())),
                (83, Action::ProbePathDown("v4".into())),
                (117, Action::LinkDown("v2".into())),
                (150, Action::LinkDown("v3".into())),
            ]
        );
        assert!(s.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(schedule(&FaultPlan::default(), 1000.0, 10.0).is_empty());
    }
}
