//! Builds a router chain, prints its namespaces, holds it for N seconds, tears it down:
//! for poking at the test network by hand (`ip netns exec NAME ...`).

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parse = |i: usize, default: u64| args.get(i).map_or(Ok(default), |s| s.parse::<u64>());
    let (Ok(routers), Ok(hold)) = (parse(0, 8), parse(1, 60)) else {
        eprintln!("usage: testnet-chain [ROUTERS (default 8)] [HOLD_SECONDS (default 60)]");
        return ExitCode::from(2);
    };
    if !(1..=200).contains(&routers) || hold > 3600 {
        eprintln!("error: ROUTERS must be 1..=200 and HOLD_SECONDS at most 3600");
        return ExitCode::from(2);
    }
    let chain = match tracemesh_testnet::Chain::build(routers as usize, "hold") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    println!("source {}", chain.source);
    println!("sink {}", chain.sink);
    std::thread::sleep(Duration::from_secs(hold));
    ExitCode::SUCCESS
}
