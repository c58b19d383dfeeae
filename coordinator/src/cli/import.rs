//! `tracemesh import`: Atlas and scamper results into the store of `--data`, as traces
//! from foreign vantages. It writes the store directly (the coordinator must be
//! stopped: sled allows one process), in batches through the same `ingest_many` the
//! coordinator's ingest uses, so keys, indexes and duplicate detection are the same.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::json;
use tracemesh::formats::{self, Item};
use tracemesh::server::DataDir;
use tracemesh::store::{AgentMeta, AgentRecord, IngestOutcome, SledStore, Store as _};
use tracemesh_proto::v1;

use super::args::ImportArgs;
use super::json::print_json;

/// Malformed records listed per file; the rest are only counted.
const LISTED: usize = 20;
const BATCH: usize = 4096;

/// A reader over `path` (`-`: stdin), gunzipped or bunzipped when the bytes say so
/// (by magic, not by name: mirrors rename files freely).
pub fn open_input(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let raw: Box<dyn Read> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(File::open(path).with_context(|| format!("cannot read {}", path.display()))?)
    };
    let mut r = BufReader::with_capacity(1 << 20, raw);
    let magic = r
        .fill_buf()
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(r),
        ))
    } else if magic.starts_with(b"BZh") {
        Box::new(BufReader::with_capacity(
            1 << 20,
            bzip2::read::MultiBzDecoder::new(r),
        ))
    } else {
        Box::new(r)
    })
}

#[derive(Debug, Default)]
struct Counts {
    traces: u64,
    stored: u64,
    duplicates: u64,
    skipped: u64,
    malformed: u64,
}

pub fn run(data: &Path, a: ImportArgs) -> anyhow::Result<()> {
    // Paths are checked before the store is touched: a typo in the last one should not
    // leave half an import behind.
    let probes: BTreeMap<String, AgentMeta> = match &a.atlas_probes {
        None => BTreeMap::new(),
        Some(p) => formats::atlas::probes(&{
            let mut b = Vec::new();
            open_input(p)?
                .read_to_end(&mut b)
                .with_context(|| format!("cannot read {}", p.display()))?;
            b
        })
        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        .into_iter()
        .map(|(_, m)| (m.name.clone(), m))
        .collect(),
    };
    for f in &a.files {
        if f != Path::new("-") && !f.exists() {
            bail!("{}: no such file", f.display());
        }
    }
    let store = SledStore::open(&DataDir(data.to_path_buf()).db_dir())?;
    let now = tracemesh::server::state::now_ns();
    let mut report = Vec::new();
    let mut vantages: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut total = Counts::default();
    for path in &a.files {
        let name = display(path);
        let mut c = Counts::default();
        let mut batch: Vec<v1::TraceRecord> = Vec::with_capacity(BATCH);
        let mut listed = 0;
        // Progress on a terminal (nothing when stderr is not one): records read so far.
        let mut progress = tracemesh_proto::progress::Progress::new(format!("import {name}"), None);
        let mut read = 0u64;
        let input = open_input(path)?;
        formats::read_items(&a.format, input, &mut |item| -> anyhow::Result<()> {
            read += 1;
            progress.set(read, "records");
            match item {
                Item::Trace(mut t) => {
                    t.received_at_ns = now;
                    if !vantages.contains_key(&t.vantage) {
                        vantages.insert(t.vantage.clone(), formats::source_of(&t.vantage));
                    }
                    batch.push(*t);
                    if batch.len() == BATCH {
                        ingest(&store, &mut batch, &mut c)?;
                    }
                }
                Item::Skipped { at, why } => {
                    c.skipped += 1;
                    tracing::debug!(file = %name, %at, %why, "skipped");
                }
                Item::Malformed { at, why } => {
                    c.malformed += 1;
                    if listed < LISTED {
                        eprintln!("{name}: {at}: malformed record: {why}");
                        listed += 1;
                    }
                }
            }
            Ok(())
        })
        .with_context(|| {
            format!("{name}: reading stopped (traces before this point were stored)")
        })?;
        ingest(&store, &mut batch, &mut c)?;
        progress.finish();
        if c.malformed > listed as u64 {
            eprintln!(
                "{name}: {} more malformed records not listed",
                c.malformed - listed as u64
            );
        }
        total.traces += c.traces;
        total.stored += c.stored;
        total.duplicates += c.duplicates;
        total.skipped += c.skipped;
        total.malformed += c.malformed;
        report.push((name, c));
    }
    for (name, source) in &vantages {
        let existing = store.get_agent(name)?;
        // Without probe metadata, a known vantage keeps what an earlier import gave it.
        let meta = match (probes.get(name), &existing) {
            (Some(m), _) => m.clone(),
            (None, Some(_)) => continue,
            (None, None) => AgentMeta {
                name: name.clone(),
                tags: vec![source.to_string()],
                ..Default::default()
            },
        };
        if existing.as_ref().is_some_and(|e| e.meta == meta) {
            continue;
        }
        // A foreign vantage is registered like an agent, so detection and `agents`
        // see its country, AS and position; it holds no certificate and never connects.
        store.put_agent(&AgentRecord {
            meta,
            enrolled_at_ns: existing.as_ref().map_or(now, |e| e.enrolled_at_ns),
            cert_sha256: String::new(),
            agent_version: format!("imported ({source})"),
            hostname: String::new(),
            last_seen_ns: None,
            mesh_addr: None,
        })?;
    }
    store.flush()?;
    if a.json {
        let files: Vec<_> = report
            .iter()
            .map(|(n, c)| {
                json!({"file": n, "traces": c.traces, "stored": c.stored,
                       "duplicates": c.duplicates, "skipped": c.skipped, "malformed": c.malformed})
            })
            .collect();
        print_json(&json!({
            "files": files, "traces": total.traces, "stored": total.stored,
            "duplicates": total.duplicates, "skipped": total.skipped,
            "malformed": total.malformed, "vantages": vantages.len(),
        }))?;
    } else {
        for (n, c) in &report {
            println!(
                "{n}: {} traces ({} stored, {} already stored), {} skipped, {} malformed",
                c.traces, c.stored, c.duplicates, c.skipped, c.malformed
            );
        }
    }
    if total.malformed > 0 {
        bail!(
            "{} malformed records (listed above); the other {} traces were imported",
            total.malformed,
            total.traces
        );
    }
    Ok(())
}

fn ingest(
    store: &SledStore,
    batch: &mut Vec<v1::TraceRecord>,
    c: &mut Counts,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    for o in store.ingest_many(batch)? {
        c.traces += 1;
        match o? {
            IngestOutcome::Stored => c.stored += 1,
            IngestOutcome::Duplicate => c.duplicates += 1,
        }
    }
    batch.clear();
    Ok(())
}

fn display(p: &PathBuf) -> String {
    if p == Path::new("-") {
        "stdin".into()
    } else {
        p.display().to_string()
    }
}
