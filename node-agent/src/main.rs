//! `connhealth-agent`: parses the command line, hands over to the library,
//! and says in one line why it stopped.

use std::process::ExitCode;

use clap::Parser;
use connhealth_agent::args::{Cli, Command};
use connhealth_agent::scan_cli;
use connhealth_runtime::error_chain;
use connhealth_runtime::logging::{self, LogFormat};

fn main() -> ExitCode {
    let args = Cli::parse();
    let result = match &args.command {
        Command::Scan(scan) => {
            // What a person needs is in the output; a missing capability is
            // said once, in one line.
            logging::init(LogFormat::Text, "error");
            scan_cli::run(scan, &mut std::io::stdout().lock(), &mut std::io::stderr())
        }
        #[cfg(feature = "cluster")]
        Command::Run(run) => connhealth_agent::cluster::run_command(run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("connhealth-agent: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}
