//! The `hedgehog` binary: reads the configuration and starts what it asks for.

// Outside data must never reach a panic: errors are returned and answered instead.
// (Tests may unwrap; indexing is left to the fuzz targets, see fuzz/.)
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::process::ExitCode;

use hedgehog::config::{self, Command};
use hedgehog::logs::LogFormat;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match config::parse(&args, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hedgehog: {e}");
            return ExitCode::from(2);
        }
    };
    // The format is a setting, so the logger starts once the settings are read.
    let format = match &command {
        Command::Serve(cfg) => cfg.log_format,
        _ => LogFormat::Text,
    };
    hedgehog::logs::init(format);
    let result = match command {
        Command::Help => {
            print!("{}", config::USAGE);
            Ok(())
        }
        Command::Version => {
            println!("hedgehog {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::HashKey => {
            print!("{}", hedgehog::access::hash_key_text());
            Ok(())
        }
        // Unhealthy is status 1, as a container's HEALTHCHECK expects.
        Command::Healthcheck(target) => match hedgehog::healthcheck::run(&target) {
            Ok(line) => {
                println!("healthy: {line}");
                Ok(())
            }
            Err(message) => Err(Failure { status: 1, message }),
        },
        // A bad file is a bad value: one line, exit 2.
        Command::CheckConfig(file) => match config::check_config(&file) {
            Ok(report) => {
                print!("{report}");
                Ok(())
            }
            Err(message) => Err(Failure { status: 2, message }),
        },
        // The simulator fails only while starting (a port in use, a capture with
        // nothing to replay): a start-up error, as for the relay.
        Command::Simulate(cfg) => simulate(cfg).map_err(|message| Failure { status: 2, message }),
        Command::Serve(cfg) => serve(cfg),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { status, message }) => {
            match format {
                // Every line of a JSON log is JSON, the last one too.
                LogFormat::Json => log::error!(event = "exit", status; "hedgehog: {message}"),
                LogFormat::Text => eprintln!("hedgehog: {message}"),
            }
            ExitCode::from(status)
        }
    }
}

/// Why `serve` failed, and the exit status that says so.
struct Failure {
    status: u8,
    message: String,
}

/// Runs the relay until SIGTERM or SIGINT, then shuts it down gracefully; SIGHUP
/// reloads the TLS certificate and the access rules of the `--config` file. A shard
/// that dies first ends the process (status 70) so a supervisor restarts it; a
/// shard that does not stop on shutdown does too (status 1).
fn serve(cfg: hedgehog::config::ServeConfig) -> Result<(), Failure> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let fail = |status: u8| move |message: String| Failure { status, message };
    // glommio has no signal handling: a plain thread waits for them.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("signals: {e}"))
        .map_err(fail(1))?;
    let (signal_tx, signal_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal_tx.send(signal).is_err() {
                return;
            }
        }
    });
    // Before any executor: a system that refuses io_uring or locks too little
    // memory is one line naming the fix, not an executor's error.
    let executors = cfg.shards + usize::from(cfg.simulate || cfg.replay.is_some());
    hedgehog::preflight::check(executors).map_err(fail(2))?;
    let relay = hedgehog::server::start(cfg).map_err(fail(2))?;
    loop {
        if let Some(end) = relay.shard_ended(std::time::Duration::from_millis(100)) {
            log::error!(event = "shard_ended"; "{end}; exiting so that a supervisor can restart hedgehog");
            return Err(Failure { status: 70, message: end.to_string() });
        }
        match signal_rx.try_recv() {
            // SIGHUP: the access rules again; a bad file is logged and changes nothing.
            Ok(SIGHUP) => {
                for outcome in relay.reload_all() {
                    match outcome {
                        Ok(said) => log::warn!(event = "reload"; "SIGHUP: {said}"),
                        Err(why) => log::error!(event = "reload_failed", reason = why.as_str(); "SIGHUP: {why}"),
                    }
                }
            }
            Ok(signal) => {
                log::info!(event = "stopping", signal;
                    "signal {signal}: shutting down (at most {:?})", hedgehog::SHUTDOWN_GRACE);
                break;
            }
            Err(_) => {}
        }
    }
    match relay.shutdown(hedgehog::SHUTDOWN_GRACE) {
        Ok(true) => log::info!(event = "stopped"; "shut down cleanly"),
        Ok(false) => {
            log::warn!(event = "stopped";
                "clients still connected after {:?}; stopped anyway", hedgehog::SHUTDOWN_GRACE)
        }
        Err(stuck) => {
            log::error!(event = "shard_stuck"; "{stuck}; exiting without them");
            return Err(Failure { status: 1, message: stuck });
        }
    }
    Ok(())
}

fn simulate(cfg: hedgehog::sim::SimConfig) -> Result<(), String> {
    let products = cfg.products.len();
    let (rate, replay, speed) = (cfg.rate, cfg.replay.clone(), cfg.speed);
    hedgehog::preflight::check(1)?;
    let sim = hedgehog::sim::spawn(cfg)?;
    match replay {
        Some(file) => log::info!("simulator listening on {}, replaying {} at speed {speed}", sim.url(), file.display()),
        None => log::info!("simulator listening on {} ({products} products, {rate} trades/s each)", sim.url()),
    }
    sim.join();
    Ok(())
}
