use std::path::PathBuf;

/// Everything that can go wrong while loading annotation data. Each variant names the
/// source (a path, or `<memory>` for in-memory input) and where in it the problem is, so
/// an operator can open the file at the right place.
#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    #[error("{source_name}: cannot read: {error}")]
    Io {
        source_name: String,
        #[source]
        error: std::io::Error,
    },
    #[error("{source_name}:{line} (byte {byte_offset}): {message}")]
    Parse {
        source_name: String,
        line: u64,
        byte_offset: u64,
        message: String,
    },
    #[error("{source_name}: {message}")]
    Json {
        source_name: String,
        message: String,
    },
    #[error(
        "{source_name}: MRT record at byte {byte_offset} of the decompressed stream is unreadable after {records_read} records: {message}"
    )]
    Mrt {
        source_name: String,
        byte_offset: u64,
        records_read: u64,
        message: String,
    },
}

impl AnnotateError {
    pub(crate) fn io(source_name: &str, error: std::io::Error) -> Self {
        Self::Io {
            source_name: source_name.to_owned(),
            error,
        }
    }
}

pub(crate) fn display_name(path: &std::path::Path) -> String {
    PathBuf::from(path).display().to_string()
}
