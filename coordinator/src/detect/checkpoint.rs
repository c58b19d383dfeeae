//! The detector's state as bytes, for `serve --adversary` to save in the store and load
//! at start instead of replaying the whole history: per pair what `paths.rs` keeps, per
//! router what `links.rs` keeps, the vantages, and the adversary it was computed for.
//! Alias groups and error sources are not in it (the live loop feeds them from the
//! store after loading), nor the per-address classification cache (rebuilt on demand).
//!
//! Bytes: `TMCK`, a format number (u32, big-endian), then deflated JSON. JSON because
//! serde_json is already here and the state is plain data; floats go as their bits so
//! a restored detector reports exactly what the saved one would have.

use std::io::Read as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::links::{Links, LinksSnap};
use super::paths::{AddrTable, PairSnap, PairState, Pairs};
use super::{Adversary, Detector, VantageInfo};

const MAGIC: &[u8; 4] = b"TMCK";
const FORMAT: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a detector checkpoint")]
    NotACheckpoint,
    #[error("detector checkpoint format {0}, this build reads {FORMAT}")]
    Format(u32),
    #[error("detector checkpoint is for another adversary")]
    OtherAdversary,
    #[error("detector checkpoint damaged: {0}")]
    Damaged(String),
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    adversary: Adversary,
    vantages: Vec<VantageInfo>,
    /// Every address the pairs' paths name (they name them by index).
    addrs: Vec<IpAddr>,
    pairs: Vec<(u32, IpAddr, PairSnap)>,
    links: LinksSnap,
}

impl Detector {
    /// The state as checkpoint bytes (see the module's notes).
    pub fn checkpoint(&self) -> Vec<u8> {
        let mut addrs = AddrTable::default();
        let pairs = self
            .pairs
            .iter()
            .map(|(&(vid, dst), p)| (vid, dst, p.snapshot(&mut addrs)))
            .collect();
        let snap = Snapshot {
            adversary: self.adversary.clone(),
            vantages: self.vantages.clone(),
            addrs: addrs.addrs,
            pairs,
            links: self.links.snapshot(),
        };
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT.to_be_bytes());
        // Level 1: the state is rewritten every few minutes; speed over the last few
        // percent of size.
        let z = flate2::write::DeflateEncoder::new(out, flate2::Compression::fast());
        // serde_json writes a few bytes at a time; the encoder pays per call.
        let mut w = std::io::BufWriter::with_capacity(1 << 20, z);
        // Writing plain data into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut w, &snap);
        w.into_inner()
            .ok()
            .and_then(|z| z.finish().ok())
            .unwrap_or_default()
    }

    /// A detector for `adversary` holding the state `bytes` describe.
    pub fn from_checkpoint(adversary: &Adversary, bytes: &[u8]) -> Result<Self, CheckpointError> {
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or(CheckpointError::NotACheckpoint)?;
        let (format, body) = rest
            .split_first_chunk::<4>()
            .ok_or(CheckpointError::NotACheckpoint)?;
        let format = u32::from_be_bytes(*format);
        if format != FORMAT {
            return Err(CheckpointError::Format(format));
        }
        let mut json = Vec::new();
        flate2::read::DeflateDecoder::new(body)
            .read_to_end(&mut json)
            .map_err(|e| CheckpointError::Damaged(e.to_string()))?;
        let snap: Snapshot =
            serde_json::from_slice(&json).map_err(|e| CheckpointError::Damaged(e.to_string()))?;
        if snap.adversary != *adversary {
            return Err(CheckpointError::OtherAdversary);
        }
        let mut det = Detector::new(snap.adversary);
        for v in snap.vantages {
            det.set_vantage(v);
        }
        let n_vantages = det.vantages.len() as u32;
        let mut pairs = Pairs::new();
        for (vid, dst, p) in snap.pairs {
            if vid >= n_vantages {
                return Err(CheckpointError::Damaged(format!("vantage {vid} unknown")));
            }
            let p = PairState::restore(p, &snap.addrs)
                .ok_or_else(|| CheckpointError::Damaged(format!("pair {vid} {dst}")))?;
            pairs.insert((vid, dst), p);
        }
        det.pairs = pairs;
        det.links =
            Links::restore(snap.links).ok_or_else(|| CheckpointError::Damaged("links".into()))?;
        Ok(det)
    }
}
