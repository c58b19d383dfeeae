//! Archives of expired traces (retention, `store/sled_store/retention.rs`): Parquet in
//! the export's Hive layout, `DIR/date=YYYY-MM-DD/PART.parquet` (`formats/parquet.rs`,
//! schema in `docs/formats.md`), so DuckDB or Spark read them as they read an export.
//! Each chunk of a sweep is its own set of files, fsynced before the store deletes the
//! traces; `read` gives them back as `TraceRecord`s for `diversions --archive`.

use std::path::{Path, PathBuf};

use tracemesh_proto::v1;

use crate::formats::FormatError;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("archive: {0}")]
    Format(#[from] FormatError),
    #[error("archive {path}: {detail}")]
    Read { path: String, detail: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A sweep's writer into an archive directory: each chunk's files staged as hidden
/// temporary files (`DIR/date=D/.NAME.parquet.tmp`, skipped by `files`, DuckDB and
/// Spark), then renamed into place once the store has journalled the chunk.
#[derive(Debug)]
pub struct Archive {
    dir: PathBuf,
    files: u64,
}

impl Archive {
    pub fn new(dir: &Path) -> Result<Self, ArchiveError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        // Absolute: the journal keeps these paths for a later process.
        let dir = std::path::absolute(dir).map_err(io(dir))?;
        Ok(Archive { dir, files: 0 })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Files published so far.
    pub fn files(&self) -> u64 {
        self.files
    }

    /// Writes one chunk under temporary names and makes it durable (files fsynced);
    /// the paths it will have once published.
    pub fn stage(
        &mut self,
        name: &str,
        traces: &[v1::TraceRecord],
    ) -> Result<Vec<PathBuf>, ArchiveError> {
        if traces.is_empty() {
            return Ok(Vec::new());
        }
        let no_asn = |_: &str| None;
        let final_name = format!("{name}.parquet");
        let mut w = crate::formats::parquet::Writer::new(&self.dir, &no_asn)?
            .with_file_name(&format!(".{final_name}.tmp"));
        for t in traces {
            w.write(t.clone())?;
        }
        let staged = w.finish()?;
        let mut out = Vec::with_capacity(staged.len());
        for f in &staged {
            std::fs::File::open(f)
                .and_then(|h| h.sync_all())
                .map_err(io(f))?;
            out.push(f.with_file_name(&final_name));
        }
        Ok(out)
    }

    /// Writes records of another kind (`kind-NAME`: (UTC date, protobuf bytes)) as
    /// `DIR/date=D/.NAME.pb.gz.tmp`, gzip of length-delimited messages, fsynced; the
    /// paths they will have once published.
    pub fn stage_encoded(
        &mut self,
        name: &str,
        records: &[(String, Vec<u8>)],
    ) -> Result<Vec<PathBuf>, ArchiveError> {
        use std::io::Write as _;
        let final_name = format!("{name}.pb.gz");
        let mut by_date: std::collections::BTreeMap<&str, Vec<&[u8]>> = Default::default();
        for (date, bytes) in records {
            by_date.entry(date).or_default().push(bytes);
        }
        let mut out = Vec::with_capacity(by_date.len());
        for (date, msgs) in by_date {
            let part = self.dir.join(format!("date={date}"));
            std::fs::create_dir_all(&part).map_err(io(&part))?;
            let f = part.join(&final_name);
            let tmp = staged_name(&f);
            let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            let mut gz = flate2::write::GzEncoder::new(
                std::io::BufWriter::new(file),
                flate2::Compression::default(),
            );
            for m in msgs {
                let mut len = Vec::with_capacity(5);
                prost::encoding::encode_varint(m.len() as u64, &mut len);
                gz.write_all(&len).map_err(io(&tmp))?;
                gz.write_all(m).map_err(io(&tmp))?;
            }
            let file = gz
                .finish()
                .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
                .map_err(io(&tmp))?;
            file.sync_all().map_err(io(&tmp))?;
            out.push(f);
        }
        Ok(out)
    }

    /// Renames staged files into place and fsyncs their directories; a file already in
    /// place (an earlier, interrupted publish) is done.
    pub fn publish(&mut self, files: &[PathBuf]) -> Result<(), ArchiveError> {
        for f in files {
            let tmp = staged_name(f);
            if tmp.exists() {
                std::fs::rename(&tmp, f).map_err(io(f))?;
            } else if !f.exists() {
                return Err(ArchiveError::Read {
                    path: f.display().to_string(),
                    detail: "journalled archive file neither staged nor in place: its traces stay in the store".into(),
                });
            }
            if let Some(parent) = f.parent() {
                sync_dir(parent)?;
            }
            self.files += 1;
        }
        sync_dir(&self.dir)
    }
}

impl crate::store::ChunkArchive for Archive {
    fn stage(
        &mut self,
        name: &str,
        traces: &[v1::TraceRecord],
    ) -> Result<Vec<String>, crate::store::StoreError> {
        let files = Archive::stage(self, name, traces).map_err(store_err)?;
        Ok(files.iter().map(|p| p.display().to_string()).collect())
    }

    fn publish(&mut self, files: &[String]) -> Result<(), crate::store::StoreError> {
        let files: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
        Archive::publish(self, &files).map_err(store_err)
    }

    fn stage_encoded(
        &mut self,
        name: &str,
        records: &[(String, Vec<u8>)],
    ) -> Result<Vec<String>, crate::store::StoreError> {
        let files = Archive::stage_encoded(self, name, records).map_err(store_err)?;
        Ok(files.iter().map(|p| p.display().to_string()).collect())
    }

    fn resumed(&mut self) -> Result<(), crate::store::StoreError> {
        remove_staged(&self.dir).map_err(store_err)
    }
}

fn store_err(e: ArchiveError) -> crate::store::StoreError {
    crate::store::StoreError::Invalid {
        what: "archive",
        detail: e.to_string(),
    }
}

/// Where `f` is staged before it is published.
fn staged_name(f: &Path) -> PathBuf {
    let name = f
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    f.with_file_name(format!(".{name}.tmp"))
}

/// Staged files no journal entry names (a sweep stopped before journalling them; the
/// next chunk that covers their traces writes them again): removed once the journal
/// entries left are finished.
fn remove_staged(dir: &Path) -> Result<(), ArchiveError> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            remove_staged(&p)?;
        } else if is_staged(&p) {
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
    }
    Ok(())
}

fn is_staged(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
}

/// Calls `f` with every record of `kind` archived under `dir` (`*/KIND-*.pb.gz`), in
/// file order; how many.
pub fn read_results<M: prost::Message + Default>(
    dir: &Path,
    kind: crate::store::ResultKind,
    f: &mut dyn FnMut(M),
) -> Result<u64, ArchiveError> {
    use std::io::Read as _;
    let prefix = format!("{}-", kind.name());
    let mut paths = Vec::new();
    for d in std::fs::read_dir(dir).map_err(io(dir))? {
        let d = d.map_err(io(dir))?.path();
        if !d.is_dir() {
            continue;
        }
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let p = e.map_err(io(&d))?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with(&prefix) && name.ends_with(".pb.gz") {
                paths.push(p);
            }
        }
    }
    paths.sort();
    let mut n = 0;
    for p in paths {
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&p).map_err(io(&p))?)
            .read_to_end(&mut bytes)
            .map_err(io(&p))?;
        let mut buf = bytes.as_slice();
        while !buf.is_empty() {
            let m = M::decode_length_delimited(&mut buf).map_err(|e| read_err(&p, e))?;
            f(m);
            n += 1;
        }
    }
    Ok(n)
}

fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    std::fs::File::open(dir)
        .and_then(|h| h.sync_all())
        .map_err(io(dir))
}

/// Every `*.parquet` file under `dir` (the date partitions), sorted.
pub fn files(dir: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let p = e.map_err(io(&d))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn read_err(path: &Path, detail: impl ToString) -> ArchiveError {
    ArchiveError::Read {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// Calls `f` with every trace in the archive's Parquet files under `dir` (as
/// `formats/parquet.rs` writes them: every field of a `TraceRecord` but the vantage's
/// source tag and the hops' ASNs, which are derived); the number of traces.
pub fn read(dir: &Path, f: &mut dyn FnMut(v1::TraceRecord)) -> Result<u64, ArchiveError> {
    let mut n = 0;
    for path in files(dir)? {
        n += read_file(&path, f)?;
    }
    Ok(n)
}

/// One Parquet file of the archive's layout.
pub fn read_file(path: &Path, f: &mut dyn FnMut(v1::TraceRecord)) -> Result<u64, ArchiveError> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).map_err(io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| read_err(path, e))?;
    let mut n = 0;
    for batch in reader {
        let batch = batch.map_err(|e| read_err(path, e))?;
        for t in columns::traces(&batch).map_err(|e| read_err(path, e))? {
            f(t);
            n += 1;
        }
    }
    Ok(n)
}

/// Record batches of the export schema back into `TraceRecord`s.
mod columns {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{ArrowPrimitiveType, Float64Type, Int32Type, Int64Type};
    use arrow_array::{Array, PrimitiveArray, RecordBatch, StringArray, StructArray};
    use tracemesh_proto::v1;

    fn col<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a dyn Array, String> {
        b.column_by_name(name)
            .map(|c| c.as_ref())
            .ok_or_else(|| format!("no column {name}"))
    }

    fn field<'a>(s: &'a StructArray, name: &str) -> Result<&'a dyn Array, String> {
        s.column_by_name(name)
            .map(|c| c.as_ref())
            .ok_or_else(|| format!("no hop field {name}"))
    }

    fn u32_of(x: i64) -> u32 {
        u32::try_from(x).unwrap_or(0)
    }

    fn u32_of_i32(x: i32) -> u32 {
        u32::try_from(x).unwrap_or(0)
    }

    /// A column as strings, or `what` as the error.
    fn strs<'a>(a: &'a dyn Array, what: &str) -> Result<&'a StringArray, String> {
        a.as_string_opt::<i32>().ok_or_else(|| what.to_owned())
    }

    /// A column as `T` values, or `what` as the error.
    fn prims<'a, T: ArrowPrimitiveType>(
        a: &'a dyn Array,
        what: &str,
    ) -> Result<&'a PrimitiveArray<T>, String> {
        a.as_primitive_opt::<T>().ok_or_else(|| what.to_owned())
    }

    pub(super) fn traces(b: &RecordBatch) -> Result<Vec<v1::TraceRecord>, String> {
        let campaign = strs(col(b, "campaign")?, "campaign")?;
        let round = prims::<Int64Type>(col(b, "round")?, "round")?;
        let vantage = strs(col(b, "vantage")?, "vantage")?;
        let dst = strs(col(b, "dst")?, "dst")?;
        let src = strs(col(b, "src")?, "src")?;
        let proto = strs(col(b, "proto")?, "proto")?;
        let stop = strs(col(b, "stop_reason")?, "stop_reason")?;
        let start = prims::<Float64Type>(col(b, "start")?, "start")?;
        let probes_sent = prims::<Int64Type>(col(b, "probes_sent")?, "probes_sent")?;
        let result_id = strs(col(b, "result_id")?, "result_id")?;
        let received = prims::<Float64Type>(col(b, "received_at")?, "received_at")?;
        let hops = col(b, "hops")?.as_list_opt::<i32>().ok_or("hops")?;
        let hs = hops.values().as_struct_opt().ok_or("hop struct")?;
        let ttl = prims::<Int32Type>(field(hs, "ttl")?, "ttl")?;
        let addr = strs(field(hs, "addr")?, "addr")?;
        let rtt = prims::<Float64Type>(field(hs, "rtt_ms")?, "rtt_ms")?;
        let icmp_type = prims::<Int32Type>(field(hs, "icmp_type")?, "icmp_type")?;
        let icmp_code = prims::<Int32Type>(field(hs, "icmp_code")?, "icmp_code")?;
        let reply_ttl = prims::<Int32Type>(field(hs, "reply_ttl")?, "reply_ttl")?;
        let quoted_ttl = prims::<Int32Type>(field(hs, "quoted_ttl")?, "quoted_ttl")?;
        let tcp_flags = strs(field(hs, "tcp_flags")?, "tcp_flags")?;
        let probes = prims::<Int32Type>(field(hs, "probes")?, "probes")?;
        let mpls = field(hs, "mpls")?.as_list_opt::<i32>().ok_or("mpls")?;
        let ms = mpls.values().as_struct_opt().ok_or("mpls struct")?;
        let label = prims::<Int64Type>(field(ms, "label")?, "label")?;
        let tc = prims::<Int32Type>(field(ms, "tc")?, "tc")?;
        let s_bit = field(ms, "s")?.as_boolean_opt().ok_or("s")?;
        let mttl = prims::<Int32Type>(field(ms, "ttl")?, "mpls ttl")?;
        let opt_i32 =
            |a: &arrow_array::Int32Array, i: usize| (!a.is_null(i)).then(|| u32_of_i32(a.value(i)));
        let opt_str =
            |a: &arrow_array::StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_owned());
        let hop_offsets = hops.value_offsets();
        let mpls_offsets = mpls.value_offsets();
        let mut out = Vec::with_capacity(b.num_rows());
        for r in 0..b.num_rows() {
            let (h0, h1) = (hop_offsets[r] as usize, hop_offsets[r + 1] as usize);
            let mut hv = Vec::with_capacity(h1 - h0);
            for h in h0..h1 {
                let (m0, m1) = (mpls_offsets[h] as usize, mpls_offsets[h + 1] as usize);
                hv.push(v1::Hop {
                    ttl: u32_of_i32(ttl.value(h)),
                    addr: opt_str(addr, h),
                    rtt_ms: (!rtt.is_null(h)).then(|| rtt.value(h)),
                    icmp_type: opt_i32(icmp_type, h),
                    icmp_code: opt_i32(icmp_code, h),
                    reply_ttl: opt_i32(reply_ttl, h),
                    quoted_ttl: opt_i32(quoted_ttl, h),
                    tcp_flags: opt_str(tcp_flags, h),
                    probes: u32_of_i32(probes.value(h)),
                    mpls: (m0..m1)
                        .map(|m| v1::MplsLabel {
                            label: u32_of(label.value(m)),
                            tc: u32_of_i32(tc.value(m)),
                            s: s_bit.value(m),
                            ttl: u32_of_i32(mttl.value(m)),
                        })
                        .collect(),
                });
            }
            out.push(v1::TraceRecord {
                result_id: result_id.value(r).to_owned(),
                campaign_id: campaign.value(r).to_owned(),
                round: u32_of(round.value(r)),
                vantage: vantage.value(r).to_owned(),
                dst: dst.value(r).to_owned(),
                src: opt_str(src, r),
                proto: v1::ProbeProtocol::from_str_name(proto.value(r))
                    .unwrap_or(v1::ProbeProtocol::Unspecified) as i32,
                stop_reason: v1::StopReason::from_str_name(stop.value(r))
                    .unwrap_or(v1::StopReason::Unspecified) as i32,
                start: start.value(r),
                probes_sent: u32_of(probes_sent.value(r)),
                hops: hv,
                received_at_ns: (received.value(r) * 1e9) as i64,
            });
        }
        Ok(out)
    }
}
