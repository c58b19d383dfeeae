//! AFL entry point for [`tracemesh_fuzz::spool`]: `cargo afl build --features afl`, then
//! `fuzz/run.sh`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        tracemesh_fuzz::spool(data);
    });
}
