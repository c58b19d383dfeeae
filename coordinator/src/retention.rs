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
use crate::store::{ChunkArchive, ExpireCounts, Store, StoreError};

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
}

/// Traces per archive chunk: one set of Parquet files each (a few MB).
pub const CHUNK: usize = 50_000;

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
/// (as far as the checkpoint allows); `progress` hears the counts after each chunk.
pub fn sweep(
    store: &dyn Store,
    archive_dir: &Path,
    before_ns: i64,
    require_checkpoint: bool,
    progress: &mut dyn FnMut(&ExpireCounts),
) -> Result<SweepReport, RetentionError> {
    let started = std::time::Instant::now();
    let mut archive = Archive::new(archive_dir)?;
    let (below_group, counts) = sweep_into(
        store,
        &mut archive,
        CHUNK,
        before_ns,
        require_checkpoint,
        progress,
    )?;
    Ok(SweepReport {
        before_ns,
        below_group,
        counts,
        archive_files: archive.files(),
        archive_dir: archive.dir().to_path_buf(),
        secs: started.elapsed().as_secs_f64(),
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
    let counts = store.expire_traces(before_ns, below_group, chunk, archive, progress)?;
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
                sweep(
                    store.as_ref(),
                    &dir,
                    before_ns,
                    require_checkpoint,
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
