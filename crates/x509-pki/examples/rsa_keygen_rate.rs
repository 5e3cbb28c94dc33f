//! How many RSA-2048 key pairs this machine generates per second on all of its cores: one thread
//! per core (`std::thread::available_parallelism`), each generating keys the way a founding makes
//! its service-account key (`src/keys.rs`: `rsa::PrivateKey::new` with the thread's CSPRNG,
//! `rand::rng()`), for a fixed time. `scripts/bench-load.sh` divides the foundings per second of
//! a load run by this rate, since each founding makes one such key by default.
//!
//! ```sh
//! cargo build --release -p plinth-x509-pki --example rsa_keygen_rate
//! target/release/examples/rsa_keygen_rate [SECONDS [THREADS]]   # default: 10 s, one per core
//! ```
//!
//! The last line is machine-readable: `threads=.. seconds=.. keys=.. keys_per_sec=..`.

#![allow(clippy::print_stdout)] // printing the rate is the point

use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const BITS: usize = 2048;
const USAGE: &str =
    "usage: rsa_keygen_rate [SECONDS [THREADS]]  (default: 10 s, one thread per core)";

/// Generates keys until `stop` is set; the number generated, or the first error.
fn generate_until(stop: &AtomicBool) -> Result<u64, String> {
    let mut rng = rand::rng();
    let mut keys = 0u64;
    while !stop.load(Ordering::Relaxed) {
        rsa::PrivateKey::new(&mut rng, BITS)
            .map_err(|e| format!("generating an RSA-{BITS} key: {e}"))?;
        keys += 1;
    }
    Ok(keys)
}

fn parse_args() -> Result<(f64, usize), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") || args.len() > 2 {
        return Err(USAGE.to_owned());
    }
    let seconds = match args.first() {
        Some(s) => s
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
            .ok_or_else(|| format!("SECONDS must be a number in (0, 3600], got {s:?}\n{USAGE}"))?,
        None => 10.0,
    };
    let threads = match args.get(1) {
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|t| (1..=1024).contains(t))
            .ok_or_else(|| format!("THREADS must be 1 to 1024, got {t:?}\n{USAGE}"))?,
        None => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
    };
    Ok((seconds, threads))
}

fn main() -> ExitCode {
    let (seconds, threads) = match parse_args() {
        Ok(parsed) => parsed,
        Err(why) => {
            eprintln!("{why}");
            return ExitCode::from(2);
        }
    };
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    // Every thread finishes the key it is making when the time is up; those count, and so does
    // the time they take, so the rate is keys over the wall time until the last thread is done.
    let results: Vec<Result<u64, String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| generate_until(&stop)))
            .collect();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err("a key generation thread panicked".to_owned()))
            })
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut keys = 0u64;
    for result in results {
        match result {
            Ok(n) => keys += n,
            Err(why) => {
                eprintln!("rsa_keygen_rate: {why}");
                return ExitCode::FAILURE;
            }
        }
    }
    let rate = keys as f64 / elapsed;
    println!(
        "RSA-{BITS} key generation: {keys} keys in {elapsed:.2} s on {threads} threads: \
         {rate:.2} keys/s ({:.2} per thread)",
        rate / threads as f64
    );
    println!("threads={threads} seconds={elapsed:.3} keys={keys} keys_per_sec={rate:.3}");
    ExitCode::SUCCESS
}
