//! Retention, the sweep `tracemesh retain` runs once and `serve --retain` runs in the
//! background: traces older than the window go to the archive (`archive.rs`), then
//! leave the store (`Store::expire_traces`). Never what the detector checkpoint does
//! not cover yet: a restart would replay from the checkpoint and miss them.
//!
//! sled does not give freed space back to the file system: deleted pages become free
//! space inside its files, reused by later writes, so the files stop growing rather
//! than shrink. `compact` (offline, `tracemesh retain --compact`) gives it back by
//! copying every tree into a fresh database and swapping the directories.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::archive::{Archive, ArchiveError};
use crate::store::{ChunkArchive, ExpireCounts, ResultKind, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("compacting {path}: {detail}")]
    Compact { path: String, detail: String },
}

/// What one sweep did.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// Traces that started before this (Unix ns) were due.
    pub before_ns: i64,
    /// Ingest groups at and above this were kept (the checkpoint's position).
    pub below_group: u64,
    #[serde(flatten)]
    pub counts: ExpireCounts,
    pub archive_files: u64,
    pub archive_dir: PathBuf,
    pub secs: f64,
    /// Of `secs`, paused between chunks for ingest ([`Pace`]).
    pub paused_secs: f64,
}

/// Traces per archive chunk: one set of Parquet files each (a few MB).
pub const CHUNK: usize = 50_000;

/// How a sweep shares the machine with ingest: after each chunk it pauses in
/// proportion to what the chunk cost, so it takes at most `duty` of the time (of a
/// core, and of sled's log) and ingest keeps the rest. Chunks are small beside ingest
/// so that no single one holds the disk for long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Traces per chunk (one set of archive files each).
    pub chunk: usize,
    /// Share of the sweep's wall time spent working, in (0, 1]; 1: no pauses.
    pub duty: f64,
}

impl Pace {
    /// `tracemesh retain`: the coordinator is stopped, nothing to yield to.
    pub const OFFLINE: Pace = Pace {
        chunk: CHUNK,
        duty: 1.0,
    };
    /// `serve --retain`: half the time, 10,000 traces a chunk.
    pub const BESIDE_INGEST: Pace = Pace {
        chunk: 10_000,
        duty: 0.5,
    };

    /// The pause after a chunk that took `worked`.
    pub fn pause(&self, worked: Duration) -> Duration {
        if self.duty.is_nan() || self.duty >= 1.0 {
            return Duration::ZERO;
        }
        // A duty of 0 or below would never finish: a hundredth at least.
        let duty = self.duty.max(0.01);
        worked.mul_f64((1.0 - duty) / duty)
    }
}

/// Where the sweep must stop: the checkpoint's position; with `require_checkpoint`
/// (live detection runs) and none saved yet, nothing goes.
pub fn limit(store: &dyn Store, require_checkpoint: bool) -> Result<u64, StoreError> {
    Ok(match store.get_checkpoint()? {
        Some(cp) => cp.position,
        None if require_checkpoint => 0,
        None => u64::MAX,
    })
}

/// Archives into `archive_dir`, then deletes, the traces started before `before_ns`
/// (as far as the checkpoint allows), at full speed; `progress` hears the counts after
/// each chunk.
pub fn sweep(
    store: &dyn Store,
    archive_dir: &Path,
    before_ns: i64,
    require_checkpoint: bool,
    progress: &mut dyn FnMut(&ExpireCounts),
) -> Result<SweepReport, RetentionError> {
    sweep_paced(
        store,
        archive_dir,
        before_ns,
        require_checkpoint,
        Pace::OFFLINE,
        progress,
    )
}

/// [`sweep`] at `pace`.
pub fn sweep_paced(
    store: &dyn Store,
    archive_dir: &Path,
    before_ns: i64,
    require_checkpoint: bool,
    pace: Pace,
    progress: &mut dyn FnMut(&ExpireCounts),
) -> Result<SweepReport, RetentionError> {
    let started = std::time::Instant::now();
    let mut archive = Archive::new(archive_dir)?;
    let mut paused = Duration::ZERO;
    let mut mark = std::time::Instant::now();
    let (below_group, counts) = sweep_into(
        store,
        &mut archive,
        pace.chunk,
        before_ns,
        require_checkpoint,
        &mut |c| {
            progress(c);
            let p = pace.pause(mark.elapsed());
            if !p.is_zero() {
                std::thread::sleep(p);
                paused += p;
            }
            mark = std::time::Instant::now();
        },
    )?;
    Ok(SweepReport {
        before_ns,
        below_group,
        counts,
        archive_files: archive.files(),
        archive_dir: archive.dir().to_path_buf(),
        secs: started.elapsed().as_secs_f64(),
        paused_secs: paused.as_secs_f64(),
    })
}

/// `sweep` into any [`ChunkArchive`], `chunk` traces at a time: the checkpoint's limit
/// it kept to and what it did.
pub fn sweep_into(
    store: &dyn Store,
    archive: &mut dyn ChunkArchive,
    chunk: usize,
    before_ns: i64,
    require_checkpoint: bool,
    progress: &mut dyn FnMut(&ExpireCounts),
) -> Result<(u64, ExpireCounts), RetentionError> {
    let below_group = limit(store, require_checkpoint)?;
    let mut counts = store.expire_traces(before_ns, below_group, chunk, archive, progress)?;
    // The other kinds are not in ingest groups: what was stored before the checkpoint
    // was written is in it.
    let received_before = match store.get_checkpoint()? {
        Some(cp) => cp.written_at_ns,
        None if require_checkpoint => 0,
        None => i64::MAX,
    };
    for kind in ResultKind::ALL {
        store.expire_results(
            kind,
            before_ns,
            received_before,
            chunk,
            archive,
            &mut counts,
            progress,
        )?;
    }
    store.set_retention_horizon(before_ns)?;
    store.flush()?;
    Ok((below_group, counts))
}

/// Bytes in the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => n += m.len(),
                Err(_) => {}
            }
        }
    }
    n
}

/// Rewrites the sled database at `db` into a fresh one (sled's export/import of every
/// tree) and puts it in its place, the old one kept beside it until the new one is in.
/// Offline only: the store must not be open anywhere.
pub fn compact(db: &Path) -> Result<(u64, u64), RetentionError> {
    let err = |detail: String| RetentionError::Compact {
        path: db.display().to_string(),
        detail,
    };
    let before = dir_bytes(db);
    let fresh = db.with_extension("compacting");
    let old = db.with_extension("old");
    for p in [&fresh, &old] {
        if p.exists() {
            return Err(err(format!(
                "{} exists (an interrupted compaction?): move it away first",
                p.display()
            )));
        }
    }
    {
        let src = sled::open(db).map_err(|e| match e {
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                RetentionError::Store(StoreError::Locked {
                    path: db.display().to_string(),
                })
            }
            e => err(e.to_string()),
        })?;
        let dst = sled::open(&fresh).map_err(|e| err(e.to_string()))?;
        dst.import(src.export());
        dst.flush().map_err(|e| err(e.to_string()))?;
    }
    // sled releases its file lock a moment after the handles drop.
    std::thread::sleep(Duration::from_millis(200));
    std::fs::rename(db, &old).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&fresh, db).map_err(|e| err(e.to_string()))?;
    std::fs::remove_dir_all(&old).map_err(|e| err(e.to_string()))?;
    Ok((before, dir_bytes(db)))
}

/// `serve --retain`: a sweep every `every` (the first one `every` after start), on a
/// blocking thread beside ingest, until the coordinator shuts down.
pub fn spawn(
    c: std::sync::Arc<crate::server::Coordinator>,
    window: Duration,
    every: Duration,
    archive_dir: PathBuf,
    require_checkpoint: bool,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = c.shutdown_signal() => return,
            }
            let store = c.store.clone();
            let dir = archive_dir.clone();
            let window_ns = i64::try_from(window.as_nanos()).unwrap_or(i64::MAX);
            let before_ns = crate::server::now_ns().saturating_sub(window_ns);
            let run = tokio::task::spawn_blocking(move || {
                sweep_paced(
                    store.as_ref(),
                    &dir,
                    before_ns,
                    require_checkpoint,
                    Pace::BESIDE_INGEST,
                    &mut |_| {},
                )
            });
            match run.await {
                Ok(Ok(r)) => tracing::info!(
                    archived = r.counts.archived,
                    deleted = r.counts.deleted,
                    resumed = r.counts.resumed,
                    postings = r.counts.postings_deleted,
                    files = r.archive_files,
                    kept_from_group = r.below_group,
                    secs = r.secs,
                    paused_secs = r.paused_secs,
                    "retention sweep"
                ),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "retention sweep failed; nothing un-archived was deleted")
                }
                Err(e) => tracing::error!(error = %e, "retention sweep task failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_sweep_pauses_in_proportion_to_its_work() {
        let ms = Duration::from_millis;
        assert_eq!(Pace::OFFLINE.pause(ms(300)), Duration::ZERO);
        assert_eq!(Pace::BESIDE_INGEST.pause(ms(300)), ms(300));
        let quarter = Pace {
            chunk: 1,
            duty: 0.25,
        };
        assert_eq!(quarter.pause(ms(100)), ms(300));
        let never = Pace {
            chunk: 1,
            duty: 0.0,
        };
        assert_eq!(never.pause(ms(1)), ms(99));
    }
}
