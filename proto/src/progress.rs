//! Progress on a terminal for long commands (`tracemesh-lab run`, `tracemesh
//! diversions` and `report` while traces stream in): one line on stderr, redrawn at
//! most ten times a second, cleared at the end; nothing at all when stderr is not a
//! terminal (logs, CI, pipes). [`line`] formats, [`Progress`] draws.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

/// The progress line: label, a bar when the total is known, counts, elapsed time and a
/// note, cut to `width` columns.
pub fn line(
    label: &str,
    done: u64,
    total: Option<u64>,
    elapsed: Duration,
    note: &str,
    width: usize,
) -> String {
    let secs = elapsed.as_secs();
    let clock = format!("{}:{:02}", secs / 60, secs % 60);
    let mut s = match total {
        Some(t) if t > 0 => {
            let frac = (done as f64 / t as f64).clamp(0.0, 1.0);
            let cells = 20;
            let full = (frac * cells as f64).round() as usize;
            format!(
                "{label} [{}{}] {:>3}% {done}/{t} {clock}",
                "#".repeat(full),
                "-".repeat(cells - full),
                (frac * 100.0).round() as u32
            )
        }
        _ => format!("{label} {done} {clock}"),
    };
    if !note.is_empty() {
        s.push_str("  ");
        s.push_str(note);
    }
    s.chars().take(width.max(10)).collect()
}

/// A progress line on stderr, drawn only when stderr is a terminal.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: Option<u64>,
    started: Instant,
    last: Option<Instant>,
    enabled: bool,
}

const REDRAW: Duration = Duration::from_millis(100);

impl Progress {
    pub fn new(label: impl Into<String>, total: Option<u64>) -> Self {
        Progress {
            label: label.into(),
            total,
            started: Instant::now(),
            last: None,
            enabled: std::io::stderr().is_terminal(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Redraws with `done` (and `note`) unless the last draw was under 100 ms ago.
    pub fn set(&mut self, done: u64, note: &str) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < REDRAW) {
            return;
        }
        self.last = Some(now);
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(100usize)
            .saturating_sub(1);
        let text = line(
            &self.label,
            done,
            self.total,
            now.duration_since(self.started),
            note,
            width,
        );
        let mut err = std::io::stderr().lock();
        // Carriage return and erase-line: the line is redrawn in place.
        let _ = write!(err, "\r\x1b[2K{text}");
        let _ = err.flush();
    }

    /// Clears the line.
    pub fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
        self.enabled = false;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_bar_counts_time_and_note_within_the_width() {
        let l = line(
            "lab",
            30,
            Some(120),
            Duration::from_secs(75),
            "answered 9/10",
            200,
        );
        assert_eq!(
            l,
            "lab [#####---------------]  25% 30/120 1:15  answered 9/10"
        );
        assert_eq!(
            line("traces", 40_000, None, Duration::from_secs(3), "", 200),
            "traces 40000 0:03"
        );
        // Past the total (late uploads) stays a full bar.
        assert!(
            line("x", 9, Some(3), Duration::ZERO, "", 200).contains("[####################] 100%")
        );
        assert_eq!(
            line("x", 1, Some(0), Duration::ZERO, "a long note", 12)
                .chars()
                .count(),
            12
        );
    }

    #[test]
    fn nothing_is_drawn_without_a_terminal() {
        // Test runs capture stderr: not a terminal.
        let mut p = Progress::new("t", Some(1));
        if !std::io::stderr().is_terminal() {
            assert!(!p.is_enabled());
        }
        p.set(1, "");
        p.finish();
        assert!(!p.is_enabled());
    }
}
