//! `kubectl-connhealth`, a kubectl plugin (copy it to a directory on
//! `PATH`; `kubectl connhealth ...` runs it):
//!
//! - `top`: the pods whose connections need a look, worst first, from their
//!   ConnectionHealth reports.
//! - `sockets POD`: the pod's sockets as `ss -tanp` would print them,
//!   without exec: creates a ConnectionSnapshot, waits for the agent on the
//!   pod's node to serve it, prints it, deletes it.
//! - `explain POD`: the verdict, its evidence, the deciding policy, the
//!   last Events, the peers by name, the owner and its fd budget, and what
//!   to look at next.
//!
//! It talks to the API server as the user, with the user's kubeconfig
//! (`--kubeconfig`, `KUBECONFIG`, `--context`, `-n`), so RBAC decides what
//! it may read and whether it may ask for sockets. Errors are one line on
//! stderr and exit status 1; usage errors exit 2 (clap's).

mod explain;
mod output;
mod sockets;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-connhealth",
    bin_name = "kubectl connhealth",
    version,
    about = "connhealth for kubectl: pods leaking TCP connections, their sockets, and why"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// What every command takes, as kubectl spells it.
#[derive(Debug, Args)]
struct GlobalArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace (default: the context's, else `default`).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// JSON, for scripts.
    Json,
    /// YAML.
    Yaml,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pods by CLOSE_WAIT sockets stuck, CLOSE_WAIT count, oldest, and port pressure.
    Top(top::TopArgs),
    /// List a pod's TCP sockets like `ss -tanp`, without exec (a ConnectionSnapshot).
    Sockets(sockets::SocketsArgs),
    /// Why a pod is Healthy, Warning or Leaking, and what to look at next.
    Explain(explain::ExplainArgs),
}

/// A client and the namespace to use, from the user's kubeconfig.
pub struct Target {
    /// The client.
    pub client: Client,
    /// `-n`, else the context's namespace, else `default`.
    pub namespace: String,
}

async fn connect(global: &GlobalArgs) -> anyhow::Result<Target> {
    let kubeconfig = match &global.kubeconfig {
        Some(path) => Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?,
        None => Kubeconfig::read().context("reading the kubeconfig ($KUBECONFIG or ~/.kube/config)")?,
    };
    let options = KubeConfigOptions { context: global.context.clone(), ..Default::default() };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.context("using the kubeconfig")?;
    let namespace = global.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("building the API client")?;
    Ok(Target { client, namespace })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let target = connect(&cli.global).await?;
    match cli.command {
        Command::Top(args) => top::run(&target, &args, cli.global.output).await,
        Command::Sockets(args) => sockets::run(&target, &args, cli.global.output).await,
        Command::Explain(args) => explain::run(&target, &args, cli.global.output).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the context, then its causes.
            eprintln!("error: {}", output::one_line(&error));
            ExitCode::FAILURE
        }
    }
}
