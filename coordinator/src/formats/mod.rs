//! The field's traceroute formats, as pure codecs between bytes and `TraceRecord`s:
//! RIPE Atlas results (`atlas`), scamper's JSON (`scamper_json`) and scamper's binary
//! warts (`warts`). Reading never stops at a bad record: each decoder yields one
//! [`Item`] per record, and a record it cannot use says where it was (line or byte
//! offset) and why, so an import can report it and store the rest.
//!
//! Foreign results become traces from foreign vantages, `atlas:<prb_id>` and
//! `scamper:<monitor or src>`, with keys built only from the record (measurement,
//! probe, destination, start), so importing a file twice stores it once.

use std::fmt;

use tracemesh_proto::v1;

pub mod atlas;
pub mod parquet;
pub mod scamper_json;
pub mod warts;

/// Where a record sits in its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// 1-based line of a JSON-lines input.
    Line(u64),
    /// Byte offset of the record's first byte.
    Byte(u64),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line(n) => write!(f, "line {n}"),
            Position::Byte(n) => write!(f, "byte {n}"),
        }
    }
}

/// What one record of an input became.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Trace(Box<v1::TraceRecord>),
    /// A well-formed record that is not a traceroute we can store (a cycle marker, an
    /// MDA `tracelb`, an Atlas result that never ran because its name did not resolve).
    Skipped {
        at: Position,
        why: String,
    },
    /// A record we could not read.
    Malformed {
        at: Position,
        why: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{at}: {why}")]
    Malformed { at: Position, why: String },
    #[error("cannot write {what}: {detail}")]
    Unwritable { what: &'static str, detail: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl From<FormatError> for String {
    fn from(e: FormatError) -> String {
        e.to_string()
    }
}

/// Where a stored trace came from, from its vantage's name: `atlas:` and `scamper:`
/// vantages are imported, every other one is one of our agents.
pub fn source_of(vantage: &str) -> &'static str {
    if vantage.starts_with("atlas:") {
        "atlas"
    } else if vantage.starts_with("scamper:") {
        "scamper"
    } else {
        "agent"
    }
}

/// The extension object our exports add to each record (`"tracemesh": {...}`): foreign
/// tools ignore unknown keys, and a re-import keeps the campaign, round and exact start
/// the record had here.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    pub campaign: String,
    pub round: u32,
    pub vantage: String,
    pub start: f64,
}

impl Origin {
    pub fn of(t: &v1::TraceRecord) -> Origin {
        Origin {
            campaign: t.campaign_id.clone(),
            round: t.round,
            vantage: t.vantage.clone(),
            start: t.start,
        }
    }

    pub(crate) fn from_value(v: &serde_json::Value) -> Option<Origin> {
        serde_json::from_value(v.get("tracemesh")?.clone()).ok()
    }
}

/// A stable 31-bit number for a vantage name: the `prb_id` our Atlas export gives it
/// (FNV-1a, so the same name gets the same id in every export).
pub fn probe_id_for(vantage: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in vantage.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h & 0x7fff_ffff).max(1)
}

/// JSON values of a document that is either JSON lines, one JSON array, or (Atlas's
/// measurement dumps) an object holding the array under `results`; each with its
/// position. A syntax error ends the document (nothing after it can be framed).
pub(crate) fn json_records(
    data: &[u8],
    array_key: &str,
) -> Vec<(Position, Result<serde_json::Value, String>)> {
    let first = data.iter().position(|b| !b.is_ascii_whitespace());
    let Some(first) = first else {
        return Vec::new();
    };
    if data[first] == b'[' {
        return array_elements(data, first);
    }
    // A measurement dump: one object holding the records under `array_key`.
    if data[first] == b'{'
        && let Some(open) = find_key_array(data, first, array_key)
    {
        return array_elements(data, open);
    }
    let mut out = Vec::new();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let at = Position::Line(i as u64 + 1);
        out.push((
            at,
            serde_json::from_slice::<serde_json::Value>(line).map_err(|e| e.to_string()),
        ));
    }
    out
}

/// Offset of the `[` that opens the top-level object's `key` array.
fn find_key_array(data: &[u8], open: usize, key: &str) -> Option<usize> {
    // Walk the top level by hand: `{ "k": value, ... }`, skipping values by parsing them.
    let mut i = open + 1;
    loop {
        while i < data.len() && (data[i].is_ascii_whitespace() || data[i] == b',') {
            i += 1;
        }
        if i >= data.len() || data[i] == b'}' {
            return None;
        }
        let mut s = serde_json::Deserializer::from_slice(&data[i..]).into_iter::<String>();
        let k = s.next()?.ok()?;
        i += s.byte_offset();
        while i < data.len() && (data[i].is_ascii_whitespace() || data[i] == b':') {
            i += 1;
        }
        if k == key {
            return (data.get(i) == Some(&b'[')).then_some(i);
        }
        let mut v =
            serde_json::Deserializer::from_slice(&data[i..]).into_iter::<serde::de::IgnoredAny>();
        v.next()?.ok()?;
        i += v.byte_offset();
    }
}

/// The elements of the JSON array opening at `open`, each with its byte offset.
fn array_elements(data: &[u8], open: usize) -> Vec<(Position, Result<serde_json::Value, String>)> {
    let mut out = Vec::new();
    let mut i = open + 1;
    loop {
        while i < data.len() && data[i].is_ascii_whitespace() {
            i += 1;
        }
        match data.get(i) {
            None => {
                out.push((Position::Byte(i as u64), Err("unterminated array".into())));
                return out;
            }
            Some(b']') => return out,
            Some(b',') if !out.is_empty() => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let at = Position::Byte(i as u64);
        let mut s =
            serde_json::Deserializer::from_slice(&data[i..]).into_iter::<serde_json::Value>();
        match s.next() {
            Some(Ok(v)) => {
                out.push((at, Ok(v)));
                i += s.byte_offset();
            }
            Some(Err(e)) => {
                out.push((at, Err(e.to_string())));
                return out;
            }
            None => {
                out.push((at, Err("unterminated array".into())));
                return out;
            }
        }
    }
}

/// The formats `tracemesh import` reads.
pub const IMPORT_FORMATS: [&str; 3] = ["atlas", "scamper-json", "warts"];

/// Calls `f` with every record of `input` in `format`, as it is read: JSON lines one
/// line at a time (a file of any size in bounded memory); an Atlas array or measurement
/// dump, and a warts file, read whole first (they cannot be framed line by line).
pub fn read_items<E: From<FormatError>>(
    format: &str,
    mut input: impl std::io::BufRead,
    f: &mut dyn FnMut(Item) -> Result<(), E>,
) -> Result<(), E> {
    let io = |e: std::io::Error| E::from(FormatError::Io(e));
    match format {
        "warts" => {
            let mut data = Vec::new();
            input.read_to_end(&mut data).map_err(io)?;
            for item in warts::Objects::new(&data) {
                f(item)?;
            }
            Ok(())
        }
        "atlas" | "scamper-json" => {
            let mut line = Vec::new();
            input.read_until(b'\n', &mut line).map_err(io)?;
            let head = line.trim_ascii_start();
            let whole = format == "atlas"
                && (head.starts_with(b"[")
                    || match serde_json::from_slice::<serde_json::Value>(&line) {
                        // A document over several lines.
                        Err(_) => !head.is_empty(),
                        Ok(v) => v.get("results").is_some_and(serde_json::Value::is_array),
                    });
            if whole {
                input.read_to_end(&mut line).map_err(io)?;
                for item in atlas::decode(&line) {
                    f(item)?;
                }
                return Ok(());
            }
            let mut scamper = scamper_json::Decoder::default();
            let mut lineno = 1;
            while !line.is_empty() {
                let item = if format == "atlas" {
                    atlas::decode_line(lineno, &line)
                } else {
                    scamper.line(lineno, &line)
                };
                if let Some(item) = item {
                    f(item)?;
                }
                line.clear();
                input.read_until(b'\n', &mut line).map_err(io)?;
                lineno += 1;
            }
            Ok(())
        }
        other => Err(E::from(FormatError::Unwritable {
            what: "import",
            detail: format!("unknown format {other:?} (expected one of {IMPORT_FORMATS:?})"),
        })),
    }
}

/// The byte formats a trace stream can be written in (Parquet is a directory: see
/// [`parquet::Writer`]).
pub const STREAM_FORMATS: [&str; 3] = ["warts", "scamper-json", "atlas"];

/// Writes traces one by one in a stream format: what `tracemesh export` writes to a
/// file and `ExportTraces` streams.
#[derive(Debug)]
pub enum Encoder<W: std::io::Write> {
    Warts(warts::Writer<W>),
    ScamperJson { out: W, cycle: Option<String> },
    Atlas { out: W },
}

impl<W: std::io::Write> Encoder<W> {
    pub fn new(format: &str, out: W) -> Result<Self, FormatError> {
        match format {
            "warts" => Ok(Encoder::Warts(warts::Writer::new(out)?)),
            "scamper-json" => Ok(Encoder::ScamperJson { out, cycle: None }),
            "atlas" => Ok(Encoder::Atlas { out }),
            other => Err(FormatError::Unwritable {
                what: "traces",
                detail: format!("unknown format {other:?} (expected one of {STREAM_FORMATS:?})"),
            }),
        }
    }

    pub fn write(&mut self, t: &v1::TraceRecord) -> Result<(), FormatError> {
        let json_err = |e: serde_json::Error| FormatError::Io(e.into());
        match self {
            Encoder::Warts(w) => w.write(t),
            Encoder::ScamperJson { out, cycle } => {
                // A cycle-start names the monitor (our vantage) for the traces after it.
                if cycle.as_deref() != Some(t.vantage.as_str()) {
                    let cs = scamper_json::cycle_start(&t.vantage, t.start.max(0.0) as u64);
                    serde_json::to_writer(&mut *out, &cs).map_err(json_err)?;
                    out.write_all(b"\n")?;
                    *cycle = Some(t.vantage.clone());
                }
                serde_json::to_writer(&mut *out, &scamper_json::trace(t)).map_err(json_err)?;
                out.write_all(b"\n")?;
                Ok(())
            }
            Encoder::Atlas { out } => {
                let v = atlas::result(t, msm_id(&t.campaign_id), prb_id(&t.vantage));
                serde_json::to_writer(&mut *out, &v).map_err(json_err)?;
                out.write_all(b"\n")?;
                Ok(())
            }
        }
    }

    pub fn finish(self) -> Result<W, FormatError> {
        match self {
            Encoder::Warts(w) => w.finish(),
            Encoder::ScamperJson { mut out, .. } | Encoder::Atlas { mut out } => {
                out.flush()?;
                Ok(out)
            }
        }
    }
}

/// Atlas numbers measurements: `atlas-N` (an imported one) keeps N, a campaign `cN`
/// becomes N, any other name a stable hash of it.
pub fn msm_id(campaign: &str) -> u64 {
    let digits = campaign
        .strip_prefix("atlas-")
        .or_else(|| campaign.strip_prefix('c'))
        .and_then(|d| d.parse::<u64>().ok());
    digits.unwrap_or_else(|| u64::from(probe_id_for(campaign)))
}

/// Atlas numbers probes: `atlas:N` keeps N, any other vantage gets [`probe_id_for`].
pub fn prb_id(vantage: &str) -> u32 {
    vantage
        .strip_prefix("atlas:")
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| probe_id_for(vantage))
}

#[cfg(test)]
mod tests;
