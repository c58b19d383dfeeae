//! `tracemesh retain`: one retention sweep on the data directory's store (offline: a
//! running `serve` holds the store; it sweeps itself with `serve --retain`).

use anyhow::Context as _;
use tracemesh::retention;
use tracemesh::server::DataDir;
use tracemesh::store::SledStore;

use super::args::RetainArgs;

pub fn run(data: &std::path::Path, a: RetainArgs) -> anyhow::Result<()> {
    let db = DataDir(data.to_path_buf()).db_dir();
    if !db.exists() {
        anyhow::bail!(
            "no store at {}: give the coordinator's --data directory",
            db.display()
        );
    }
    let bytes_before = retention::dir_bytes(&db);
    let before_ns = tracemesh::server::now_ns()
        .saturating_sub(i64::from(a.older_than).saturating_mul(1_000_000_000));
    let store = SledStore::open(&db)?;
    let mut progress = tracemesh_proto::progress::Progress::new("retain", None);
    let report = retention::sweep(&store, &a.archive, before_ns, false, &mut |c| {
        progress.set(c.archived, "traces archived");
    })
    .with_context(|| format!("retention sweep into {}", a.archive.display()))?;
    progress.finish();
    drop(store);
    let bytes_swept = retention::dir_bytes(&db);
    let compacted = if a.compact {
        // sled's flusher lets go of the lock a moment after the store is dropped.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Some(retention::compact(&db).context("compacting the store")?)
    } else {
        None
    };
    let bytes_after = compacted.map_or(bytes_swept, |c| c.1);
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["store_bytes_before"] = bytes_before.into();
        v["store_bytes_after_sweep"] = bytes_swept.into();
        v["store_bytes_after"] = bytes_after.into();
        v["compacted"] = a.compact.into();
        println!("{v}");
    } else {
        let limit = if report.below_group == u64::MAX {
            String::new()
        } else {
            format!(
                " (kept what the detector checkpoint does not cover: groups >= {})",
                report.below_group
            )
        };
        println!(
            "archived {} traces into {} files under {}, deleted {} from the store{limit}",
            report.counts.archived,
            report.archive_files,
            report.archive_dir.display(),
            report.counts.deleted,
        );
        let c = &report.counts;
        if c.mesh_samples + c.alias_results + c.mda_results > 0 {
            println!(
                "archived and deleted {} mesh samples, {} alias results, {} multipath traces",
                c.mesh_samples, c.alias_results, c.mda_results
            );
        }
        if report.counts.resumed > 0 {
            println!(
                "finished an interrupted sweep: deleted {} traces it had archived",
                report.counts.resumed
            );
        }
        println!(
            "store: {:.1} MiB before, {:.1} MiB after the sweep{}",
            bytes_before as f64 / 1048576.0,
            bytes_swept as f64 / 1048576.0,
            match compacted {
                Some((_, after)) =>
                    format!(", {:.1} MiB after compaction", after as f64 / 1048576.0),
                None =>
                    " (sled reuses the freed space; --compact gives it back to the file system)"
                        .into(),
            }
        );
    }
    if report.counts.archived != report.counts.deleted {
        anyhow::bail!(
            "archived {} traces but deleted {}: check the store",
            report.counts.archived,
            report.counts.deleted
        );
    }
    Ok(())
}
