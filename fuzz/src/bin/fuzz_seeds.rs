//! Writes [`tracemesh_fuzz::seeds`] as AFL input corpora: `fuzz_seeds DIR` makes
//! `DIR/TARGET/NAME` for every seed.
fn main() -> std::io::Result<()> {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: fuzz_seeds DIR");
        std::process::exit(2);
    };
    let dir = std::path::PathBuf::from(dir);
    for (target, name, bytes) in tracemesh_fuzz::seeds() {
        std::fs::create_dir_all(dir.join(target))?;
        std::fs::write(dir.join(target).join(name), bytes)?;
    }
    Ok(())
}
