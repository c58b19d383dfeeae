//! The answers a lab run's emulator sent late (`OUT/late_answers.jsonl`, written by
//! [`crate::run`]), looked up per hop: a path check judges an agent's RTT against what
//! the emulator really did, the model's RTT plus the emulator's own recorded lateness.

use std::collections::HashMap;
use std::path::Path;

/// Late answers by (probing vantage, probe destination, TTL): (scenario second of the
/// probe, ms late).
#[derive(Debug, Default)]
pub struct LateLog {
    by_probe: HashMap<(String, String, u8), Vec<(f64, f64)>>,
}

impl LateLog {
    /// Reads `late_answers.jsonl` from a run's output directory; an absent file (a run
    /// from before the log existed) is an empty log.
    pub fn load(out: &Path) -> std::io::Result<LateLog> {
        let path = out.join("late_answers.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LateLog::default()),
            Err(e) => return Err(e),
        };
        let mut log = LateLog::default();
        for (i, line) in text.lines().enumerate() {
            let bad = |what: &str| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}:{}: {what}", path.display(), i + 1),
                )
            };
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
            let field = |k: &str| v.get(k).ok_or_else(|| bad(&format!("no {k}")));
            let vantage = field("vantage")?.as_str().ok_or_else(|| bad("vantage"))?;
            let dst = field("dst")?.as_str().ok_or_else(|| bad("dst"))?;
            let ttl = field("ttl")?
                .as_u64()
                .and_then(|t| u8::try_from(t).ok())
                .ok_or_else(|| bad("ttl"))?;
            let t_s = field("t_s")?.as_f64().ok_or_else(|| bad("t_s"))?;
            let late_ms = field("late_ms")?.as_f64().ok_or_else(|| bad("late_ms"))?;
            log.add(vantage, dst, ttl, t_s, late_ms);
        }
        Ok(log)
    }

    pub fn add(&mut self, vantage: &str, dst: &str, ttl: u8, t_s: f64, late_ms: f64) {
        self.by_probe
            .entry((vantage.to_string(), dst.to_string(), ttl))
            .or_default()
            .push((t_s, late_ms));
    }

    /// How late (ms) the emulator answered `vantage`'s probe to `dst` at `ttl` sent
    /// within [`from_s`, `to_s`] (scenario seconds): the latest such answer's lateness
    /// if several (retries), 0 if none was logged.
    pub fn late_ms(&self, vantage: &str, dst: &str, ttl: u8, from_s: f64, to_s: f64) -> f64 {
        self.by_probe
            .get(&(vantage.to_string(), dst.to_string(), ttl))
            .into_iter()
            .flatten()
            .filter(|(t, _)| (from_s..=to_s).contains(t))
            .map(|(_, ms)| *ms)
            .fold(0.0, f64::max)
    }

    pub fn len(&self) -> usize {
        self.by_probe.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_probe.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hop_gets_the_lateness_of_its_own_probe_only() {
        let mut log = LateLog::default();
        log.add("v", "10.0.0.1", 1, 5.0, 0.8);
        log.add("v", "10.0.0.1", 1, 15.0, 2.0);
        log.add("v", "10.0.0.1", 2, 5.1, 0.3);
        log.add("w", "10.0.0.1", 1, 5.0, 9.0);
        assert_eq!(log.late_ms("v", "10.0.0.1", 1, 4.9, 8.0), 0.8);
        assert_eq!(log.late_ms("v", "10.0.0.1", 2, 4.9, 8.0), 0.3);
        // Another round, another TTL, another destination or vantage: nothing.
        assert_eq!(log.late_ms("v", "10.0.0.1", 1, 9.0, 12.0), 0.0);
        assert_eq!(log.late_ms("v", "10.0.0.1", 3, 4.9, 8.0), 0.0);
        assert_eq!(log.late_ms("v", "10.0.0.2", 1, 4.9, 8.0), 0.0);
        assert_eq!(log.late_ms("x", "10.0.0.1", 1, 4.9, 8.0), 0.0);
        assert_eq!(log.len(), 4);
    }

    #[test]
    fn a_missing_log_is_empty_and_a_broken_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(LateLog::load(dir.path()).unwrap().is_empty());
        std::fs::write(
            dir.path().join("late_answers.jsonl"),
            "{\"vantage\":\"v\",\"dst\":\"10.0.0.1\",\"ttl\":1,\"t_s\":5.0,\"late_ms\":0.5}\n{\"vantage\":1}\n",
        )
        .unwrap();
        let e = LateLog::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("late_answers.jsonl:2"), "{e}");
    }
}
