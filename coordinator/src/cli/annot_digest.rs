//! A digest of the annotation files `serve` loaded: the detector checkpoint is only
//! good for the tables it was computed with (they decide whose every hop is).

use std::path::Path;

use ring::digest::{Context, SHA256};

use super::args::AnnotationArgs;

fn add_file(ctx: &mut Context, p: &Path) {
    ctx.update(p.as_os_str().as_encoded_bytes());
    match std::fs::read(p) {
        Ok(bytes) => {
            ctx.update(&(bytes.len() as u64).to_be_bytes());
            ctx.update(&bytes);
        }
        // Then the tables could not be loaded either; a digest no checkpoint has.
        Err(e) => ctx.update(format!("unreadable: {e}").as_bytes()),
    }
}

impl AnnotationArgs {
    /// SHA-256 (hex) over every annotation file's name and contents, in flag order (a
    /// PeeringDB directory: its files by name).
    pub fn digest(&self) -> String {
        let mut ctx = Context::new(&SHA256);
        let files = self
            .pfx2as
            .iter()
            .chain(&self.mrt)
            .chain(&self.asnames)
            .chain(&self.as2org);
        for p in files {
            add_file(&mut ctx, p);
        }
        if let Some(dir) = &self.peeringdb {
            let mut names: Vec<_> = std::fs::read_dir(dir)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            names.sort();
            for p in names.iter().filter(|p| p.is_file()) {
                add_file(&mut ctx, p);
            }
        }
        ctx.finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}
