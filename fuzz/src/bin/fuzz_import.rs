//! AFL entry point for [`tracemesh_fuzz::import`]: `cargo afl build --features afl`, then
//! `fuzz/run.sh`. Without afl's abort-on-panic hook: the warts importer catches the
//! `warts` crate's panics on damaged objects itself (they are malformed records); a panic
//! that escapes the target still aborts the run and counts as a crash.
fn main() {
    afl::fuzz_nohook!(|data: &[u8]| {
        tracemesh_fuzz::import(data);
    });
}
