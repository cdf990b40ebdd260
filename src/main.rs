//! The `hedgehog` binary: reads the configuration and starts what it asks for.

// Outside data must never reach a panic: errors are returned and answered instead.
// (Tests may unwrap; indexing is left to the fuzz targets, see fuzz/.)
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::process::ExitCode;

use hedgehog::config::{self, Command};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match config::parse(&args, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hedgehog: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            print!("{}", config::USAGE);
            Ok(())
        }
        Command::Version => {
            println!("hedgehog {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Simulate(cfg) => simulate(cfg),
        Command::Serve(cfg) => serve(cfg),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hedgehog: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the relay until SIGTERM or SIGINT, then shuts it down gracefully.
fn serve(cfg: hedgehog::config::ServeConfig) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    // glommio has no signal handling: a plain thread waits for them.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("signals: {e}"))?;
    let relay = hedgehog::shard::start(cfg)?;
    if let Some(signal) = signals.forever().next() {
        log::info!("signal {signal}: shutting down (at most {:?})", hedgehog::SHUTDOWN_GRACE);
    }
    if relay.shutdown(hedgehog::SHUTDOWN_GRACE) {
        log::info!("shut down cleanly");
    } else {
        log::warn!("clients still connected after {:?}; stopped anyway", hedgehog::SHUTDOWN_GRACE);
    }
    Ok(())
}

fn simulate(cfg: hedgehog::sim::SimConfig) -> Result<(), String> {
    let products = cfg.products.len();
    let (rate, replay) = (cfg.rate, cfg.replay.clone());
    let sim = hedgehog::sim::spawn(cfg)?;
    match replay {
        Some(file) => log::info!("simulator listening on {}, replaying {}", sim.url(), file.display()),
        None => log::info!("simulator listening on {} ({products} products, {rate} trades/s each)", sim.url()),
    }
    sim.join();
    Ok(())
}
