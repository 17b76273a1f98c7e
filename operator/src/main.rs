//! `connhealth-operator`: parses arguments and hands over to the library.

use clap::Parser;
use connhealth_operator::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => connhealth_operator::cli::run(args).await,
    }
}
