//! Prefix → origin AS from MRT RIB dumps (TABLE_DUMP and TABLE_DUMP_V2) via
//! bgpkit-parser. Dumps are often cut short (interrupted downloads, `head -c`
//! samples), so what was read before the damage is handed over together with an
//! error naming the offset where the unreadable record starts.

use std::io::Read;
use std::path::Path;

use bgpkit_parser::models::{Attributes, MrtMessage, TableDumpV2Message};
use bgpkit_parser::parse_mrt_record;
use ipnet::IpNet;

use super::error::{AnnotateError, display_name};
use super::input::open_decompressed;
use super::pfx2as::Origin;

/// Counts consumed bytes so an error can say where in the stream it happened.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// What a (possibly damaged) dump yielded.
#[derive(Debug, Default)]
pub struct MrtLoad {
    pub entries: Vec<(IpNet, Origin)>,
    pub records: u64,
    /// Set when reading stopped early; `entries` still holds everything read before.
    pub error: Option<AnnotateError>,
}

fn origins_of(attrs: &Attributes, into: &mut Vec<u32>) {
    if let Some(path) = attrs.as_path() {
        for asn in path.iter_origins() {
            let asn = u32::from(asn);
            if !into.contains(&asn) {
                into.push(asn);
            }
        }
    }
}

fn to_origin(asns: Vec<u32>) -> Option<Origin> {
    match asns.as_slice() {
        [] => None,
        [one] => Some(Origin::Single(*one)),
        _ => Some(Origin::Multiple(asns.into_boxed_slice())),
    }
}

/// Reads MRT records until clean end of stream or the first damaged record, calling
/// `sink` for every prefix with at least one origin. Returns the record count, or the
/// error (after all preceding entries were passed to `sink`).
pub fn read_mrt_rib<R: Read>(
    reader: R,
    source_name: &str,
    mut sink: impl FnMut(IpNet, Origin),
) -> Result<u64, AnnotateError> {
    let mut input = Counting {
        inner: reader,
        count: 0,
    };
    let mut records = 0u64;
    loop {
        let start = input.count;
        match parse_mrt_record(&mut input) {
            Ok(record) => {
                records += 1;
                match record.message {
                    MrtMessage::TableDumpV2Message(TableDumpV2Message::RibAfi(rib)) => {
                        let mut asns = Vec::new();
                        for entry in &rib.rib_entries {
                            origins_of(&entry.attributes, &mut asns);
                        }
                        if let Some(origin) = to_origin(asns) {
                            sink(rib.prefix.prefix, origin);
                        }
                    }
                    MrtMessage::TableDumpMessage(msg) => {
                        let mut asns = Vec::new();
                        origins_of(&msg.attributes, &mut asns);
                        if let Some(origin) = to_origin(asns) {
                            sink(msg.prefix.prefix, origin);
                        }
                    }
                    MrtMessage::TableDumpMessageBatch(batch) => {
                        for msg in batch {
                            let mut asns = Vec::new();
                            origins_of(&msg.attributes, &mut asns);
                            if let Some(origin) = to_origin(asns) {
                                sink(msg.prefix.prefix, origin);
                            }
                        }
                    }
                    // Peer tables and BGP4MP updates carry no RIB state.
                    _ => {}
                }
            }
            Err(e) => {
                // Nothing consumed at a record boundary is the normal end of the dump.
                if input.count == start {
                    return Ok(records);
                }
                return Err(AnnotateError::Mrt {
                    source_name: source_name.to_owned(),
                    byte_offset: start,
                    records_read: records,
                    message: format!(
                        "{} (stream ended or broke {} bytes into the record)",
                        e.error,
                        input.count - start
                    ),
                });
            }
        }
    }
}

/// Loads a RIB dump file (bzip2, gzip or plain), keeping what was read before any damage.
pub fn load_mrt_file(path: &Path) -> MrtLoad {
    let name = display_name(path);
    let reader = match open_decompressed(path) {
        Ok(r) => r,
        Err(e) => {
            return MrtLoad {
                error: Some(e),
                ..MrtLoad::default()
            };
        }
    };
    let mut entries = Vec::new();
    let result = read_mrt_rib(reader, &name, |n, o| entries.push((n, o)));
    let (records, error) = match result {
        Ok(r) => (r, None),
        Err(e) => {
            tracing::warn!(file = %name, error = %e, entries = entries.len(), "MRT dump damaged; keeping what was read");
            let records = match &e {
                AnnotateError::Mrt { records_read, .. } => *records_read,
                _ => 0,
            };
            (records, Some(e))
        }
    };
    MrtLoad {
        entries,
        records,
        error,
    }
}
