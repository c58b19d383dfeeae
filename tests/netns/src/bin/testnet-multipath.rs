//! Builds a load-balanced test network (a diamond of width N, the nested one, branches of
//! unequal length or of unequal width), prints
//! its source namespace, holds it for N seconds, tears it down: for poking at it by hand
//! (`ip netns exec NAME tracemesh-agent trace --mda ...`, `scamper -I "tracelb ..."`).

use std::process::ExitCode;
use std::time::Duration;

use tracemesh_testnet::multipath::{Multipath, Topology};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: testnet-multipath [WIDTH|nested|uneven|asymmetric (default 4)] [HOLD_SECONDS (default 60)]";
    let topo = match args.first().map(String::as_str) {
        None => Topology::diamond(4),
        Some("nested") => Topology::nested(),
        Some("uneven") => Topology::uneven(),
        Some("asymmetric") => Topology::asymmetric(),
        Some(w) => match w.parse::<usize>() {
            Ok(w) if (1..=64).contains(&w) => Topology::diamond(w),
            _ => {
                eprintln!("{usage}");
                return ExitCode::from(2);
            }
        },
    };
    let hold = match args.get(1).map_or(Ok(60), |s| s.parse::<u64>()) {
        Ok(h) if h <= 3600 => h,
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    let mp = match Multipath::build(topo, "hold") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    println!("source {}", mp.source);
    println!("sink {}", mp.sink);
    println!("destinations 10.201.0.0/16 fd00:201::/64");
    std::thread::sleep(Duration::from_secs(hold));
    ExitCode::SUCCESS
}
