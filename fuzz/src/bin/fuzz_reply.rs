//! AFL entry point for [`tracemesh_fuzz::reply`]: `cargo afl build --features afl`, then
//! `fuzz/run.sh`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        tracemesh_fuzz::reply(data);
    });
}
