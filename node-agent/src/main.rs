//! `connhealth-agent`: parses the command line and hands over to the
//! library ([`connhealth_agent::cli`]).

use std::process::ExitCode;

use clap::Parser;
use connhealth_agent::cli::{self, Cli, Command};
use connhealth_agent::scan::error_chain;

fn main() -> ExitCode {
    let args = Cli::parse();
    let result = match &args.command {
        Command::Scan(scan) => {
            cli::init_logging("error");
            cli::scan(scan, &mut std::io::stdout().lock(), &mut std::io::stderr()).map_err(|e| error_chain(&e))
        }
        Command::Run(run) => connhealth_agent::cluster::run_command(run).map_err(|e| format!("{e:#}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("connhealth-agent: {message}");
            ExitCode::FAILURE
        }
    }
}
