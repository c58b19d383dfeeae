//! Results waiting on disk until the coordinator acknowledges them.
//!
//! Each batch of results (typically one round) is one file, written to a temporary name,
//! fsynced and renamed into place, so a crash leaves either the whole batch or none of
//! it. A file is deleted once every record in it is acknowledged. After a restart every
//! record still on disk is sent again; the coordinator's ingest is idempotent by result
//! id, so a record whose ack was lost in the crash is recognised, not stored twice.
//!
//! File format (version 2, written): magic `TMSP2\n`, then records of `u8 kind, u16 id
//! length, id, u32 payload length, payload, u32 CRC-32 of the kind byte and payload`, all
//! big-endian; kind 0 is an encoded `TraceRecord`, 1 an encoded `AliasResult`, 2 a
//! `MeshSample`, 3 an `MdaResult`. Version 1
//! files (magic `TMSP1\n`, no kind byte, CRC of the payload alone, traces only), written
//! by older agents, are still read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

const MAGIC_V1: &[u8] = b"TMSP1\n";
const MAGIC: &[u8] = b"TMSP2\n";

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("spool file {path} is corrupt at byte {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: usize,
        what: &'static str,
    },
    #[error("result id {0:?} is longer than 65535 bytes")]
    IdTooLong(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a spooled payload encodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A `tracemesh.v1.TraceRecord`.
    #[default]
    Trace,
    /// A `tracemesh.v1.AliasResult`.
    Alias,
    /// A `tracemesh.v1.MeshSample`.
    Mesh,
    /// A `tracemesh.v1.MdaResult`.
    Mda,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Trace => 0,
            Kind::Alias => 1,
            Kind::Mesh => 2,
            Kind::Mda => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Trace),
            1 => Some(Kind::Alias),
            2 => Some(Kind::Mesh),
            3 => Some(Kind::Mda),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    next_seq: u64,
    /// Unacknowledged ids per batch file.
    pending: BTreeMap<u64, HashSet<String>>,
    /// Which batch holds an id (the newest, if an id was spooled twice), and its payload,
    /// kept so a reconnecting session can resend without reading the disk.
    where_is: HashMap<String, (u64, Kind, Vec<u8>)>,
}

impl Spool {
    /// Opens (creating) the spool in `dir` and returns what is waiting in it, oldest first.
    /// A corrupt file is renamed to `*.corrupt` and reported, never silently dropped.
    pub fn open(dir: &Path) -> Result<(Spool, Vec<Record>, Vec<SpoolError>), SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut seqs: Vec<u64> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name.strip_suffix(".batch").and_then(|s| s.parse().ok()) {
                seqs.push(seq);
            } else if name.ends_with(".tmp") {
                // A batch whose write never completed was never reported as spooled, so
                // nobody relies on it; its results are re-made if the round is re-run.
                let _ = fs::remove_file(entry.path());
            }
        }
        seqs.sort_unstable();
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            next_seq: seqs.last().map_or(0, |s| s + 1),
            pending: BTreeMap::new(),
            where_is: HashMap::new(),
        };
        let mut records = Vec::new();
        let mut problems = Vec::new();
        for seq in seqs {
            let path = spool.path(seq);
            match read_batch(&path) {
                Ok(batch) => {
                    spool.index(seq, &batch);
                    records.extend(batch);
                }
                Err(e) => {
                    let _ = fs::rename(&path, path.with_extension("corrupt"));
                    problems.push(e);
                }
            }
        }
        Ok((spool, records, problems))
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:012}.batch"))
    }

    fn index(&mut self, seq: u64, batch: &[Record]) {
        let ids: HashSet<String> = batch.iter().map(|r| r.id.clone()).collect();
        for r in batch {
            // A result spooled again (a round re-run after a restart) supersedes the old
            // copy, so the old file does not wait forever for an ack that goes elsewhere.
            if let Some((old, _, _)) = self
                .where_is
                .insert(r.id.clone(), (seq, r.kind, r.payload.clone()))
                && old != seq
                && let Err(e) = self.forget(old, &r.id)
            {
                tracing::warn!(error = %e, "cannot delete a superseded spool file");
            }
        }
        if ids.is_empty() {
            let _ = fs::remove_file(self.path(seq));
        } else {
            self.pending.insert(seq, ids);
        }
    }

    /// Durably stores a batch; when this returns, a crash cannot lose it.
    pub fn push(&mut self, batch: &[Record]) -> Result<(), SpoolError> {
        if batch.is_empty() {
            return Ok(());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = self.path(seq);
        let tmp = path.with_extension("tmp");
        let mut bytes = MAGIC.to_vec();
        for r in batch {
            bytes.push(r.kind.byte());
            let id_len =
                u16::try_from(r.id.len()).map_err(|_| SpoolError::IdTooLong(r.id.clone()))?;
            bytes.extend_from_slice(&id_len.to_be_bytes());
            bytes.extend_from_slice(r.id.as_bytes());
            bytes.extend_from_slice(&(r.payload.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&r.payload);
            bytes.extend_from_slice(&crc32_parts(&[&[r.kind.byte()], &r.payload]).to_be_bytes());
        }
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        // The rename itself must survive a crash too.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        self.index(seq, batch);
        Ok(())
    }

    /// Forgets acknowledged ids, deleting batch files that have nothing left.
    pub fn ack<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> Result<(), SpoolError> {
        for id in ids {
            if let Some((seq, _, _)) = self.where_is.remove(id) {
                self.forget(seq, id)?;
            }
        }
        Ok(())
    }

    fn forget(&mut self, seq: u64, id: &str) -> Result<(), SpoolError> {
        let Some(set) = self.pending.get_mut(&seq) else {
            return Ok(());
        };
        set.remove(id);
        if set.is_empty() {
            self.pending.remove(&seq);
            let path = self.path(seq);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Ok(())
    }

    /// Results stored but not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.where_is.len()
    }

    /// Every result not yet acknowledged, oldest batch first.
    pub fn unacked(&self) -> Vec<Record> {
        let mut v: Vec<(u64, Record)> = self
            .where_is
            .iter()
            .map(|(id, (seq, kind, payload))| {
                (
                    *seq,
                    Record {
                        id: id.clone(),
                        kind: *kind,
                        payload: payload.clone(),
                    },
                )
            })
            .collect();
        v.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
        v.into_iter().map(|(_, r)| r).collect()
    }
}

fn read_batch(path: &Path) -> Result<Vec<Record>, SpoolError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    parse_batch(&bytes).map_err(|(offset, what)| SpoolError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what,
    })
}

/// Parses a batch file's bytes; an error gives the offset and what was wrong.
pub fn parse_batch(bytes: &[u8]) -> Result<Vec<Record>, (usize, &'static str)> {
    let v2 = if bytes.starts_with(MAGIC) {
        true
    } else if bytes.starts_with(MAGIC_V1) {
        false
    } else {
        return Err((0, "bad magic"));
    };
    let mut at = MAGIC.len();
    let mut out = Vec::new();
    let take =
        |at: &mut usize, n: usize, what: &'static str| -> Result<&[u8], (usize, &'static str)> {
            let end = at
                .checked_add(n)
                .filter(|&e| e <= bytes.len())
                .ok_or((*at, what))?;
            let s = &bytes[*at..end];
            *at = end;
            Ok(s)
        };
    while at < bytes.len() {
        let start = at;
        let kind = if v2 {
            let k = take(&mut at, 1, "truncated kind")?;
            Kind::from_byte(k[0]).ok_or((start, "unknown record kind"))?
        } else {
            Kind::Trace
        };
        let l = take(&mut at, 2, "truncated id length")?;
        let id_len = usize::from(u16::from_be_bytes([l[0], l[1]]));
        let id = take(&mut at, id_len, "truncated id")?;
        let id = std::str::from_utf8(id)
            .map_err(|_| (start, "id is not UTF-8"))?
            .to_string();
        let l = take(&mut at, 4, "truncated payload length")?;
        let len = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
        let payload = take(&mut at, len, "truncated payload")?.to_vec();
        let c = take(&mut at, 4, "truncated checksum")?;
        let crc = if v2 {
            crc32_parts(&[&[kind.byte()], &payload])
        } else {
            crc32(&payload)
        };
        if crc != u32::from_be_bytes([c[0], c[1], c[2], c[3]]) {
            return Err((start, "checksum mismatch"));
        }
        out.push(Record { id, kind, payload });
    }
    Ok(out)
}

/// CRC-32 (IEEE), bitwise: spool files are small and written once per round.
fn crc32(data: &[u8]) -> u32 {
    crc32_parts(&[data])
}

/// CRC-32 of the concatenation of `parts`.
fn crc32_parts(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, payload: &[u8]) -> Record {
        Record {
            id: id.into(),
            kind: Kind::Trace,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn every_kind_survives_a_reopen_and_an_ack_deletes_it() {
        let dir = tempfile::tempdir().unwrap();
        let kinds = [Kind::Trace, Kind::Alias, Kind::Mesh, Kind::Mda];
        {
            let (mut s, _, _) = Spool::open(dir.path()).unwrap();
            let batch: Vec<Record> = kinds
                .iter()
                .enumerate()
                .map(|(i, &kind)| Record {
                    id: format!("c/0/{i}"),
                    kind,
                    payload: vec![i as u8; 3],
                })
                .collect();
            s.push(&batch).unwrap();
        }
        let (mut s, waiting, problems) = Spool::open(dir.path()).unwrap();
        assert!(problems.is_empty());
        assert_eq!(waiting.iter().map(|r| r.kind).collect::<Vec<_>>(), kinds);
        s.ack(["c/0/0", "c/0/1", "c/0/2", "c/0/3"]).unwrap();
        let (_, waiting, _) = Spool::open(dir.path()).unwrap();
        assert!(waiting.is_empty());
    }

    #[test]
    fn version_1_files_still_load_and_kinds_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        // A batch as an older agent wrote it: TMSP1, no kind byte, CRC of the payload.
        let mut old = MAGIC_V1.to_vec();
        old.extend_from_slice(&5u16.to_be_bytes());
        old.extend_from_slice(b"c/0/x");
        old.extend_from_slice(&3u32.to_be_bytes());
        old.extend_from_slice(b"abc");
        old.extend_from_slice(&crc32(b"abc").to_be_bytes());
        fs::write(dir.path().join(format!("{:012}.batch", 0)), &old).unwrap();
        {
            let (mut s, waiting, problems) = Spool::open(dir.path()).unwrap();
            assert!(problems.is_empty());
            assert_eq!(waiting, vec![rec("c/0/x", b"abc")]);
            s.push(&[Record {
                id: "a/0/alias".into(),
                kind: Kind::Alias,
                payload: b"groups".to_vec(),
            }])
            .unwrap();
        }
        let (s, waiting, problems) = Spool::open(dir.path()).unwrap();
        assert!(problems.is_empty());
        let kinds: Vec<_> = waiting.iter().map(|r| (r.id.as_str(), r.kind)).collect();
        assert_eq!(kinds, [("c/0/x", Kind::Trace), ("a/0/alias", Kind::Alias)]);
        assert_eq!(s.unacked()[1].kind, Kind::Alias);
        // A flipped kind byte is caught by the checksum, not read as the other kind.
        let path = dir.path().join(format!("{:012}.batch", 1));
        let mut bytes = fs::read(&path).unwrap();
        bytes[MAGIC.len()] = 0;
        assert_eq!(parse_batch(&bytes).unwrap_err().1, "checksum mismatch");
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn survives_reopen_and_forgets_acked_batches() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, waiting, problems) = Spool::open(dir.path()).unwrap();
            assert!(waiting.is_empty() && problems.is_empty());
            s.push(&[rec("c/0/a", b"one"), rec("c/0/b", b"two")])
                .unwrap();
            s.push(&[rec("c/1/a", b"three")]).unwrap();
            s.ack(["c/0/a"]).unwrap();
            assert_eq!(s.pending(), 2);
            let ids: Vec<_> = s.unacked().into_iter().map(|r| r.id).collect();
            assert_eq!(ids, ["c/0/b", "c/1/a"]);
        }
        let (mut s, waiting, _) = Spool::open(dir.path()).unwrap();
        // Ack state lives in memory: the half-acked batch comes back whole.
        let ids: Vec<_> = waiting.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["c/0/a", "c/0/b", "c/1/a"]);
        assert_eq!(waiting[2].payload, b"three");
        s.ack(["c/0/a", "c/0/b", "c/1/a", "unknown"]).unwrap();
        assert_eq!(s.pending(), 0);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "files deleted"
        );
        s.push(&[rec("c/2/a", b"x"), rec("c/2/b", b"y")]).unwrap();
        // The same result spooled again supersedes the first copy.
        s.push(&[rec("c/2/a", b"x again")]).unwrap();
        s.ack(["c/2/b", "c/2/a"]).unwrap();
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "both batches gone"
        );
        s.push(&[rec("c/3/a", b"z")]).unwrap();
        let (_, waiting, _) = Spool::open(dir.path()).unwrap();
        assert_eq!(waiting.len(), 1);
    }

    #[test]
    fn a_corrupt_batch_is_set_aside_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _, _) = Spool::open(dir.path()).unwrap();
            s.push(&[rec("a", b"good")]).unwrap();
            s.push(&[rec("b", b"will rot")]).unwrap();
        }
        let victim = dir.path().join(format!("{:012}.batch", 1));
        let mut bytes = fs::read(&victim).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 0xff;
        fs::write(&victim, bytes).unwrap();
        let (_, waiting, problems) = Spool::open(dir.path()).unwrap();
        assert_eq!(waiting, vec![rec("a", b"good")]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].to_string().contains("checksum mismatch"),
            "{}",
            problems[0]
        );
        assert!(victim.with_extension("corrupt").exists());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _, _) = Spool::open(dir.path()).unwrap();
        s.push(&[rec("abc", b"payload"), rec("d", b"")]).unwrap();
        let bytes = fs::read(dir.path().join(format!("{:012}.batch", 0))).unwrap();
        assert_eq!(parse_batch(&bytes).unwrap().len(), 2);
        for n in 0..bytes.len() {
            // A prefix ending on a record boundary is a valid shorter batch; any other
            // prefix is an error. Never both records, never a panic.
            if let Ok(v) = parse_batch(&bytes[..n]) {
                assert!(v.len() < 2, "{n}");
            }
        }
    }
}
