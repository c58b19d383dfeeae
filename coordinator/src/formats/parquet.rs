//! Traces as Apache Parquet for Spark, DuckDB, BigQuery or ClickHouse: one row per
//! trace, hops as a list of structs, files Hive-partitioned by the trace's UTC start
//! date (`OUT/date=YYYY-MM-DD/part-N.parquet`). Integers are signed (Spark reads no
//! unsigned Parquet types); the schema is documented in `docs/formats.md`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, ListArray, RecordBatch,
    StringArray, StructArray,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tracemesh_proto::v1;

use super::{FormatError, source_of};

/// Rows per record batch (and so per row group at most).
const BATCH_ROWS: usize = 16_384;

fn mpls_fields() -> Fields {
    Fields::from(vec![
        Field::new("label", DataType::Int64, false),
        Field::new("tc", DataType::Int32, false),
        Field::new("s", DataType::Boolean, false),
        Field::new("ttl", DataType::Int32, false),
    ])
}

fn hop_fields() -> Fields {
    Fields::from(vec![
        Field::new("ttl", DataType::Int32, false),
        Field::new("addr", DataType::Utf8, true),
        Field::new("rtt_ms", DataType::Float64, true),
        Field::new("icmp_type", DataType::Int32, true),
        Field::new("icmp_code", DataType::Int32, true),
        Field::new("reply_ttl", DataType::Int32, true),
        Field::new("quoted_ttl", DataType::Int32, true),
        Field::new("tcp_flags", DataType::Utf8, true),
        Field::new(
            "mpls",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(mpls_fields()),
                false,
            ))),
            false,
        ),
        Field::new("probes", DataType::Int32, false),
        Field::new("asn", DataType::Int64, true),
    ])
}

/// The file schema (see `docs/formats.md`).
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("campaign", DataType::Utf8, false),
        Field::new("round", DataType::Int64, false),
        Field::new("vantage", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("dst", DataType::Utf8, false),
        Field::new("src", DataType::Utf8, true),
        Field::new("proto", DataType::Utf8, false),
        Field::new("stop_reason", DataType::Utf8, false),
        Field::new("start", DataType::Float64, false),
        Field::new("probes_sent", DataType::Int64, false),
        Field::new("result_id", DataType::Utf8, false),
        Field::new("received_at", DataType::Float64, false),
        Field::new(
            "hops",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(hop_fields()),
                false,
            ))),
            false,
        ),
    ]))
}

fn i32_of(x: u32) -> i32 {
    i32::try_from(x).unwrap_or(i32::MAX)
}

fn arrow_err(e: impl std::fmt::Display) -> FormatError {
    FormatError::Unwritable {
        what: "parquet",
        detail: e.to_string(),
    }
}

/// One record batch of traces; `asn` gives a hop address's origin AS (or none).
pub fn batch(
    traces: &[v1::TraceRecord],
    asn: &dyn Fn(&str) -> Option<u32>,
) -> Result<RecordBatch, FormatError> {
    let n_hops: usize = traces.iter().map(|t| t.hops.len()).sum();
    let mut hop_offsets = Vec::with_capacity(traces.len() + 1);
    hop_offsets.push(0i32);
    let mut ttl = Vec::with_capacity(n_hops);
    let mut addr: Vec<Option<&str>> = Vec::with_capacity(n_hops);
    let mut rtt = Vec::with_capacity(n_hops);
    let mut icmp_type = Vec::with_capacity(n_hops);
    let mut icmp_code = Vec::with_capacity(n_hops);
    let mut reply_ttl = Vec::with_capacity(n_hops);
    let mut quoted_ttl = Vec::with_capacity(n_hops);
    let mut tcp_flags: Vec<Option<&str>> = Vec::with_capacity(n_hops);
    let mut probes = Vec::with_capacity(n_hops);
    let mut asns = Vec::with_capacity(n_hops);
    let mut mpls_offsets = Vec::with_capacity(n_hops + 1);
    mpls_offsets.push(0i32);
    let (mut label, mut tc, mut s, mut mttl) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let too_many = || arrow_err("more hops or labels than a 32-bit list offset holds");
    for t in traces {
        for h in &t.hops {
            ttl.push(i32_of(h.ttl));
            addr.push(h.addr.as_deref());
            rtt.push(h.rtt_ms);
            icmp_type.push(h.icmp_type.map(i32_of));
            icmp_code.push(h.icmp_code.map(i32_of));
            reply_ttl.push(h.reply_ttl.map(i32_of));
            quoted_ttl.push(h.quoted_ttl.map(i32_of));
            tcp_flags.push(h.tcp_flags.as_deref());
            probes.push(i32_of(h.probes));
            asns.push(h.addr.as_deref().and_then(asn).map(i64::from));
            for m in &h.mpls {
                label.push(i64::from(m.label));
                tc.push(i32_of(m.tc));
                s.push(m.s);
                mttl.push(i32_of(m.ttl));
            }
            mpls_offsets.push(i32::try_from(label.len()).map_err(|_| too_many())?);
        }
        hop_offsets.push(i32::try_from(ttl.len()).map_err(|_| too_many())?);
    }
    let mpls_struct = StructArray::try_new(
        mpls_fields(),
        vec![
            Arc::new(Int64Array::from(label)) as ArrayRef,
            Arc::new(Int32Array::from(tc)),
            Arc::new(BooleanArray::from(s)),
            Arc::new(Int32Array::from(mttl)),
        ],
        None,
    )
    .map_err(arrow_err)?;
    let mpls = ListArray::try_new(
        Arc::new(Field::new("item", DataType::Struct(mpls_fields()), false)),
        OffsetBuffer::new(mpls_offsets.into()),
        Arc::new(mpls_struct),
        None,
    )
    .map_err(arrow_err)?;
    let hops_struct = StructArray::try_new(
        hop_fields(),
        vec![
            Arc::new(Int32Array::from(ttl)) as ArrayRef,
            Arc::new(StringArray::from(addr)),
            Arc::new(Float64Array::from(rtt)),
            Arc::new(Int32Array::from(icmp_type)),
            Arc::new(Int32Array::from(icmp_code)),
            Arc::new(Int32Array::from(reply_ttl)),
            Arc::new(Int32Array::from(quoted_ttl)),
            Arc::new(StringArray::from(tcp_flags)),
            Arc::new(mpls),
            Arc::new(Int32Array::from(probes)),
            Arc::new(Int64Array::from(asns)),
        ],
        None,
    )
    .map_err(arrow_err)?;
    let hops = ListArray::try_new(
        Arc::new(Field::new("item", DataType::Struct(hop_fields()), false)),
        OffsetBuffer::new(hop_offsets.into()),
        Arc::new(hops_struct),
        None,
    )
    .map_err(arrow_err)?;
    let strs = |f: &dyn Fn(&v1::TraceRecord) -> &str| -> ArrayRef {
        Arc::new(StringArray::from(traces.iter().map(f).collect::<Vec<_>>()))
    };
    let columns: Vec<ArrayRef> = vec![
        strs(&|t| &t.campaign_id),
        Arc::new(Int64Array::from(
            traces
                .iter()
                .map(|t| i64::from(t.round))
                .collect::<Vec<_>>(),
        )),
        strs(&|t| &t.vantage),
        strs(&|t| source_of(&t.vantage)),
        strs(&|t| &t.dst),
        Arc::new(StringArray::from(
            traces.iter().map(|t| t.src.as_deref()).collect::<Vec<_>>(),
        )),
        strs(&|t| {
            v1::ProbeProtocol::try_from(t.proto)
                .unwrap_or(v1::ProbeProtocol::Unspecified)
                .as_str_name()
        }),
        strs(&|t| {
            v1::StopReason::try_from(t.stop_reason)
                .unwrap_or(v1::StopReason::Unspecified)
                .as_str_name()
        }),
        Arc::new(Float64Array::from(
            traces.iter().map(|t| t.start).collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            traces
                .iter()
                .map(|t| i64::from(t.probes_sent))
                .collect::<Vec<_>>(),
        )),
        strs(&|t| &t.result_id),
        Arc::new(Float64Array::from(
            traces
                .iter()
                .map(|t| t.received_at_ns as f64 / 1e9)
                .collect::<Vec<_>>(),
        )),
        Arc::new(hops),
    ];
    RecordBatch::try_new(schema(), columns).map_err(arrow_err)
}

/// The Hive partition a trace goes to: the UTC date of its start.
pub use tracemesh_proto::time::date_of;

/// Writes traces into `dir/date=YYYY-MM-DD/part-0.parquet`, one open file per date.
pub struct Writer<'a> {
    dir: PathBuf,
    asn: &'a dyn Fn(&str) -> Option<u32>,
    open: BTreeMap<String, (ArrowWriter<File>, Vec<v1::TraceRecord>)>,
    files: Vec<PathBuf>,
    /// File name inside each date's directory.
    part: String,
}

impl std::fmt::Debug for Writer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("parquet::Writer")
            .field("dir", &self.dir)
            .field("dates", &self.open.len())
            .finish()
    }
}

impl<'a> Writer<'a> {
    pub fn new(dir: &Path, asn: &'a dyn Fn(&str) -> Option<u32>) -> Result<Self, FormatError> {
        std::fs::create_dir_all(dir)?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            asn,
            open: BTreeMap::new(),
            files: Vec::new(),
            part: "part-0.parquet".into(),
        })
    }

    /// Names each date's file `NAME.parquet` instead of `part-0.parquet` (archives add
    /// files to partitions that already have some).
    pub fn with_part(mut self, name: &str) -> Self {
        self.part = format!("{name}.parquet");
        self
    }

    /// Names each date's file exactly `name` (archives stage theirs under temporary
    /// names before renaming them into place).
    pub fn with_file_name(mut self, name: &str) -> Self {
        self.part = name.to_owned();
        self
    }

    pub fn write(&mut self, t: v1::TraceRecord) -> Result<(), FormatError> {
        let date = date_of(t.start);
        if !self.open.contains_key(&date) {
            let part = self.dir.join(format!("date={date}"));
            std::fs::create_dir_all(&part)?;
            let path = part.join(&self.part);
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build();
            let w = ArrowWriter::try_new(File::create(&path)?, schema(), Some(props))
                .map_err(arrow_err)?;
            self.files.push(path);
            self.open.insert(date.clone(), (w, Vec::new()));
        }
        let Some((w, rows)) = self.open.get_mut(&date) else {
            return Err(arrow_err("partition writer vanished"));
        };
        rows.push(t);
        if rows.len() >= BATCH_ROWS {
            w.write(&batch(rows, self.asn)?).map_err(arrow_err)?;
            rows.clear();
        }
        Ok(())
    }

    /// Flushes and closes every file; returns their paths.
    pub fn finish(mut self) -> Result<Vec<PathBuf>, FormatError> {
        for (_, (mut w, rows)) in std::mem::take(&mut self.open) {
            if !rows.is_empty() {
                w.write(&batch(&rows, self.asn)?).map_err(arrow_err)?;
            }
            w.close().map_err(arrow_err)?;
        }
        Ok(self.files)
    }
}
