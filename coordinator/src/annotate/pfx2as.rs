//! Prefix-to-origin-AS tables in the two text formats in common use:
//! CAIDA RouteViews pfx2as (`prefix<TAB>len<TAB>asn`) and pyasn `ipasn`
//! (`prefix/len<TAB>asn`, `;` comments). The format is recognised per line, so one
//! reader takes either, plain or compressed.

use std::io::BufRead;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use super::error::{AnnotateError, display_name};
use super::input::open_decompressed;

/// Who originates a prefix. CAIDA writes multi-origin prefixes (MOAS) as `a_b` and
/// origins from an AS-set as `a,b`; both are kept because a hop inside a MOAS prefix
/// genuinely belongs to either AS, and the detector must not miss the adversary one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Single(u32),
    /// Several origins (MOAS and/or AS-set members), in file order.
    Multiple(Box<[u32]>),
}

impl Origin {
    /// The origin to display when one number is wanted: the first one listed.
    pub fn primary(&self) -> u32 {
        match self {
            Origin::Single(a) => *a,
            Origin::Multiple(v) => v.first().copied().unwrap_or(0),
        }
    }

    pub fn asns(&self) -> &[u32] {
        match self {
            Origin::Single(a) => std::slice::from_ref(a),
            Origin::Multiple(v) => v,
        }
    }

    pub fn contains(&self, asn: u32) -> bool {
        self.asns().contains(&asn)
    }
}

/// What is wrong with one line of a prefix table (the reader adds where it is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixLineError {
    #[error("bad AS number {part:?} in origin {field:?}")]
    BadAsn { part: String, field: String },
    #[error("empty origin")]
    EmptyOrigin,
    #[error("bad prefix address {0:?}")]
    BadAddress(String),
    #[error("bad prefix length {0:?}")]
    BadLength(String),
    #[error("prefix length {len} too long for {addr}")]
    LengthTooLong { len: u8, addr: String },
    #[error("expected prefix/len, got {0:?}")]
    NoLength(String),
    #[error("expected `prefix<TAB>len<TAB>asn` or `prefix/len<TAB>asn`, got {0} fields")]
    FieldCount(usize),
}

/// Parses the origin field: `13335`, `a_b`, `a,b`, `a_b,c`, optionally `AS`-prefixed.
pub fn parse_origin(field: &str) -> Result<Origin, PrefixLineError> {
    let mut asns: Vec<u32> = Vec::new();
    for part in field.split(['_', ',']) {
        let part = part.trim();
        let digits = part
            .strip_prefix("AS")
            .or_else(|| part.strip_prefix("as"))
            .unwrap_or(part);
        let asn: u32 = digits.parse().map_err(|_| PrefixLineError::BadAsn {
            part: part.to_owned(),
            field: field.to_owned(),
        })?;
        if !asns.contains(&asn) {
            asns.push(asn);
        }
    }
    match asns.as_slice() {
        [] => Err(PrefixLineError::EmptyOrigin),
        [one] => Ok(Origin::Single(*one)),
        _ => Ok(Origin::Multiple(asns.into_boxed_slice())),
    }
}

fn parse_net(addr: &str, len: &str) -> Result<IpNet, PrefixLineError> {
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| PrefixLineError::BadAddress(addr.to_owned()))?;
    let len: u8 = len
        .parse()
        .map_err(|_| PrefixLineError::BadLength(len.to_owned()))?;
    // Some dumps carry host bits in the address; the prefix is what matters.
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .map_err(|_| PrefixLineError::LengthTooLong {
            len,
            addr: addr.to_owned(),
        })
}

/// One line of either format. `Ok(None)` for blank lines and comments.
pub fn parse_prefix_line(line: &str) -> Result<Option<(IpNet, Origin)>, PrefixLineError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
        return Ok(None);
    }
    let fields: Vec<&str> = trimmed
        .split(['\t', ' '])
        .filter(|f| !f.is_empty())
        .collect();
    let (net, origin) = match fields.as_slice() {
        [pfx, origin] => {
            let (addr, len) = pfx
                .split_once('/')
                .ok_or_else(|| PrefixLineError::NoLength((*pfx).to_owned()))?;
            (parse_net(addr, len)?, *origin)
        }
        [addr, len, origin] => (parse_net(addr, len)?, *origin),
        _ => return Err(PrefixLineError::FieldCount(fields.len())),
    };
    Ok(Some((net, parse_origin(origin)?)))
}

/// Streams a table, calling `sink` per entry; stops at the first bad line with an
/// error naming the line number and the byte offset of the line's start.
pub fn read_prefix_table<R: BufRead>(
    mut reader: R,
    source_name: &str,
    mut sink: impl FnMut(IpNet, Origin),
) -> Result<u64, AnnotateError> {
    let mut buf = Vec::with_capacity(128);
    let mut line_no = 0u64;
    let mut offset = 0u64;
    let mut entries = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| AnnotateError::Parse {
                source_name: source_name.to_owned(),
                line: line_no + 1,
                byte_offset: offset,
                message: format!("read error: {e}"),
            })?;
        if n == 0 {
            return Ok(entries);
        }
        line_no += 1;
        let err = |message: String| AnnotateError::Parse {
            source_name: source_name.to_owned(),
            line: line_no,
            byte_offset: offset,
            message,
        };
        let text = std::str::from_utf8(&buf).map_err(|_| err("not UTF-8".to_owned()))?;
        if let Some((net, origin)) = parse_prefix_line(text).map_err(|e| err(e.to_string()))? {
            sink(net, origin);
            entries += 1;
        }
        offset += n as u64;
    }
}

/// Reads a whole pfx2as / ipasn file (gzip, bzip2 or plain).
pub fn load_prefix_file(path: &Path) -> Result<Vec<(IpNet, Origin)>, AnnotateError> {
    let mut out = Vec::new();
    read_prefix_table(open_decompressed(path)?, &display_name(path), |n, o| {
        out.push((n, o))
    })?;
    tracing::info!(file = %path.display(), entries = out.len(), "loaded prefix-to-AS table");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_errors_say_what_is_wrong() {
        let e = |line: &str| parse_prefix_line(line).unwrap_err().to_string();
        assert_eq!(e("10.0.0.0/8\tx"), "bad AS number \"x\" in origin \"x\"");
        assert_eq!(
            e("10.0.0.0\t8\t1_y"),
            "bad AS number \"y\" in origin \"1_y\""
        );
        assert_eq!(e("10.0.0.x/8\t1"), "bad prefix address \"10.0.0.x\"");
        assert_eq!(e("10.0.0.0/z\t1"), "bad prefix length \"z\"");
        assert_eq!(
            e("10.0.0.0/33\t1"),
            "prefix length 33 too long for 10.0.0.0"
        );
        assert_eq!(e("10.0.0.0\t1"), "expected prefix/len, got \"10.0.0.0\"");
        assert_eq!(
            e("10.0.0.0"),
            "expected `prefix<TAB>len<TAB>asn` or `prefix/len<TAB>asn`, got 1 fields"
        );
        let mut n = 0;
        let r = read_prefix_table(&b"10.0.0.0/8\t1\n10.0.0.0/8\tx\n"[..], "t.txt", |_, _| {
            n += 1
        });
        assert_eq!(
            r.unwrap_err().to_string(),
            "t.txt:2 (byte 13): bad AS number \"x\" in origin \"x\""
        );
    }
}
