//! `connhealth-operator`: parses arguments and hands over to the library;
//! prints why it stopped, the error and its causes on one line.

use std::process::ExitCode;

use clap::Parser;
use connhealth_operator::cli::{Cli, Command};
use connhealth_runtime::error_chain;

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run(args) => connhealth_operator::cli::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Not anyhow's `{:#}`: kube's errors repeat their cause in their
            // own message, and `error_chain` says each cause once.
            eprintln!("connhealth-operator: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}
