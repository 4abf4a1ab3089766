use std::process::ExitCode;

use clap::Parser;
use gpubridge::cli::{Cli, Command, crdgen, keygen, order};
use gpubridge::process::runtime::{block_on, exit_code};
use gpubridge::process::telemetry;
use gpubridge::{deviceplugin, node, operator};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Crdgen { out_dir } => crdgen(out_dir).map_err(Into::into),
        Command::Keygen { out } => keygen(&out),
        Command::Operator(args) => {
            telemetry::init(args.log_format);
            block_on(operator::run(*args)).map_err(Into::into)
        }
        Command::Network(args) => {
            telemetry::init(args.log_format);
            block_on(node::run(*args)).map_err(Into::into)
        }
        Command::SimulatedGpuPlugin(args) => {
            telemetry::init(args.log_format);
            block_on(deviceplugin::service::run(args)).map_err(Into::into)
        }
        Command::Order(args) => return block_on(order::run(args)),
    };
    exit_code("gpubridge", result)
}
