use std::process::ExitCode;

use clap::Parser;
use gpubridge::cli::{Cli, Command, crdgen};
use gpubridge::{operator, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Crdgen { out_dir } => crdgen(out_dir).map_err(Into::into),
        Command::Operator(args) => {
            telemetry::init(args.log_format);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime starts")
                .block_on(operator::run(args))
                .map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpubridge: {e}");
            ExitCode::FAILURE
        }
    }
}
