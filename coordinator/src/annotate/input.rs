//! Opening data files whatever their compression, so every loader accepts the same
//! gzip / bzip2 / plain variants that RouteViews, CAIDA and pyasn ship.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use super::error::{AnnotateError, display_name};

/// A buffered reader over the decompressed content of `path`, chosen by magic bytes
/// rather than by extension because mirrors rename files freely.
pub fn open_decompressed(path: &Path) -> Result<Box<dyn BufRead + Send>, AnnotateError> {
    let name = display_name(path);
    let file = File::open(path).map_err(|e| AnnotateError::io(&name, e))?;
    let mut reader = BufReader::new(file);
    let magic = reader.fill_buf().map_err(|e| AnnotateError::io(&name, e))?;
    let boxed: Box<dyn BufRead + Send> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(reader)))
    } else if magic.starts_with(b"BZh") {
        Box::new(BufReader::new(bzip2::read::MultiBzDecoder::new(reader)))
    } else {
        Box::new(reader)
    };
    Ok(boxed)
}

pub(crate) fn read_all(path: &Path) -> Result<Vec<u8>, AnnotateError> {
    let mut buf = Vec::new();
    open_decompressed(path)?
        .read_to_end(&mut buf)
        .map_err(|e| AnnotateError::io(&display_name(path), e))?;
    Ok(buf)
}
