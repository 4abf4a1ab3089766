//! What the two binaries' `main`s share: their tokio runtimes and how a failure reaches the shell.

use std::future::Future;
use std::process::ExitCode;

/// The operator, the network node and the buyer CLI: a worker thread per core.
pub fn block_on<F: Future>(work: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts")
        .block_on(work)
}

/// Sidecars run on one thread: they sample, sign and send a few messages a second, and every
/// extra worker thread costs a lease pod memory it did not buy.
pub fn block_on_one_thread<F: Future>(work: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts")
        .block_on(work)
}

/// Prints a failure as `<binary>: <error>` on standard error and turns it into exit status 1.
pub fn exit_code(binary: &str, result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{binary}: {e}");
            ExitCode::FAILURE
        }
    }
}
