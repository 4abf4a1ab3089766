use std::process::ExitCode;

use clap::Parser;
use gpubridge::cli::{SidecarCli, SidecarCommand};
use gpubridge::process::runtime::{block_on_one_thread, exit_code};
use gpubridge::process::telemetry;
use gpubridge::sidecar::{attest, gpu, meter, probe};

fn main() -> ExitCode {
    let cli = SidecarCli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        SidecarCommand::Meter(args) => {
            telemetry::init(args.log_format);
            block_on_one_thread(meter::run(args)).map_err(Into::into)
        }
        SidecarCommand::Attest(args) => {
            telemetry::init(args.log_format);
            block_on_one_thread(attest::run(args)).map_err(Into::into)
        }
        SidecarCommand::Probe(args) => {
            telemetry::init(args.log_format);
            block_on_one_thread(probe::run(args)).map_err(Into::into)
        }
        SidecarCommand::ProbeEngine(args) => probe::check_engine(args).map_err(Into::into),
        SidecarCommand::Gpus(args) => gpu::run_gpus(args).map_err(Into::into),
    };
    exit_code("gpubridge-sidecar", result)
}
