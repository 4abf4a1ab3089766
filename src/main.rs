use std::future::Future;
use std::process::ExitCode;

use clap::Parser;
use gpubridge::cli::{Cli, Command, crdgen, keygen, order};
use gpubridge::{attestation, hub, metering, operator, telemetry};

fn block_on<F: Future>(work: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts")
        .block_on(work)
}

/// Sidecars run on one thread: they sample, sign and send a few messages a second, and every
/// extra worker thread costs a lease pod memory it did not buy.
fn block_on_one_thread<F: Future>(work: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts")
        .block_on(work)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Crdgen { out_dir } => crdgen(out_dir).map_err(Into::into),
        Command::Keygen { out } => keygen(&out).map_err(Into::into),
        Command::Operator(args) => {
            telemetry::init(args.log_format);
            block_on(operator::run(args)).map_err(Into::into)
        }
        Command::Meter(args) => {
            telemetry::init(args.log_format);
            block_on_one_thread(metering::sidecar::run(args)).map_err(Into::into)
        }
        Command::Attest(args) => {
            telemetry::init(args.log_format);
            block_on_one_thread(attestation::sidecar::run(args)).map_err(Into::into)
        }
        Command::Network(args) => {
            telemetry::init(args.log_format);
            block_on(hub::run(args)).map_err(Into::into)
        }
        Command::Order(args) => block_on(order::run(args)).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpubridge: {e}");
            ExitCode::FAILURE
        }
    }
}
