//! `kubectl connhealth top [-A]`: the pods whose connections need a look,
//! worst first — by CLOSE_WAIT sockets stuck, then CLOSE_WAIT count, then
//! the oldest, then port pressure — from their ConnectionHealth reports
//! (one list request). Pods with nothing to show (no CLOSE_WAIT, no port
//! pressure, Healthy or no verdict) are left out unless `--all`.

use clap::Args;
use connhealth_crds::ConnectionHealth;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::output::{age, structured, table};
use crate::{Output, Target};

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Every pod with a report, also those with nothing to show.
    #[arg(long)]
    all: bool,
}

/// One pod's row.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopRow {
    namespace: String,
    pod: String,
    verdict: Option<String>,
    close_wait: i64,
    stuck: i64,
    oldest_since: Option<String>,
    #[serde(skip)]
    oldest_age: String,
    port_pressure_percent: i64,
    top_peer: Option<String>,
    owner: Option<String>,
}

fn row(report: &ConnectionHealth, now: Timestamp) -> TopRow {
    let status = report.status.clone().unwrap_or_default();
    let cw = status.close_wait.clone().unwrap_or_default();
    let verdict = status.verdict.as_ref();
    // The peer by name when the operator named it, else as the agent saw it.
    let top_peer = verdict
        .and_then(|v| v.peers.first())
        .and_then(|p| p.name.clone())
        .or_else(|| cw.top_peers.first().map(|p| p.endpoint.clone()));
    TopRow {
        namespace: report.namespace().unwrap_or_default(),
        pod: report.name_any(),
        verdict: verdict.map(|v| v.result.as_str().to_owned()),
        close_wait: cw.count,
        stuck: cw.stuck,
        oldest_since: cw.oldest_since.as_ref().map(|t| t.0.to_string()),
        oldest_age: cw.oldest_since.as_ref().map_or_else(|| "-".to_owned(), |t| age(t, now)),
        port_pressure_percent: status
            .port_pressure
            .as_ref()
            .map_or(0, |p| i64::from(p.effective_percent.unwrap_or(p.percent))),
        top_peer,
        owner: cw.owners.first().map(|o| format!("{} (pid {})", o.command, o.pid)),
    }
}

fn worth_showing(row: &TopRow) -> bool {
    row.close_wait > 0 || row.port_pressure_percent > 0 || row.verdict.as_deref().is_some_and(|v| v != "Healthy")
}

pub async fn run(target: &Target, args: &TopArgs, output: Output) -> anyhow::Result<()> {
    let api: Api<ConnectionHealth> = if args.all_namespaces {
        Api::all(target.client.clone())
    } else {
        Api::namespaced(target.client.clone(), &target.namespace)
    };
    let reports = api.list(&ListParams::default()).await.map_err(|error| {
        let scope =
            if args.all_namespaces { "all namespaces".to_owned() } else { format!("namespace {}", target.namespace) };
        anyhow::Error::new(error).context(format!("listing the ConnectionHealth reports of {scope}"))
    })?;
    let now = Timestamp::now();
    let mut rows: Vec<TopRow> =
        reports.items.iter().map(|r| row(r, now)).filter(|r| args.all || worth_showing(r)).collect();
    rows.sort_by(|a, b| {
        b.stuck
            .cmp(&a.stuck)
            .then(b.close_wait.cmp(&a.close_wait))
            .then(a.oldest_since.cmp(&b.oldest_since))
            .then(b.port_pressure_percent.cmp(&a.port_pressure_percent))
            .then((&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)))
    });
    if structured(&rows, output)? {
        return Ok(());
    }
    if rows.is_empty() {
        let scope =
            if args.all_namespaces { "any namespace".to_owned() } else { format!("namespace {}", target.namespace) };
        println!("No pod in {scope} has CLOSE_WAIT sockets, port pressure or a Warning/Leaking verdict.");
        return Ok(());
    }
    let mut header = vec!["POD", "VERDICT", "CLOSE-WAIT", "STUCK", "OLDEST", "PORT-PRESSURE", "TOP-PEER", "OWNER"];
    if args.all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let cells: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            let mut cells = vec![
                r.pod,
                r.verdict.unwrap_or_else(|| "-".into()),
                r.close_wait.to_string(),
                r.stuck.to_string(),
                r.oldest_age,
                format!("{}%", r.port_pressure_percent),
                r.top_peer.unwrap_or_else(|| "-".into()),
                r.owner.unwrap_or_else(|| "-".into()),
            ];
            if args.all_namespaces {
                cells.insert(0, r.namespace);
            }
            cells
        })
        .collect();
    print!("{}", table(&header, &cells));
    Ok(())
}
