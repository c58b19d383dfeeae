//! AFL entry point for [`tracemesh_fuzz::grpc`]: `cargo afl build --features afl`, then
//! `fuzz/run.sh`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        tracemesh_fuzz::grpc(data);
    });
}
