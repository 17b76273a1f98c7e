//! `kubectl-connhealth`, the built binary, run as a user runs it against
//! the real control plane: `top`, `explain`, `sockets`, `-o json`, and a
//! bad pod name or context answered with one line and exit status 1. The
//! test plays the agent (reports written as it writes them) for `top` and
//! `explain`, and runs the real agent on real sockets for `sockets`.

use std::process::{Command, Output};
use std::time::Duration;

use connhealth_e2e::agent::{start_agent, start_operator};
use connhealth_e2e::{
    AgentLock, Cluster, FakePod, TestNamespace, apply_policy, create_pod, pod_events, require_root, until,
    workspace_binary, write_report,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// Runs the plugin with the cluster's kubeconfig and `args`.
fn plugin(cluster: &Cluster, args: &[&str]) -> Output {
    let kubeconfig = cluster.kubeconfig.to_str().expect("a UTF-8 path");
    Command::new(workspace_binary("kubectl-connhealth"))
        .args(["--kubeconfig", kubeconfig])
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run kubectl-connhealth")
}

/// Its stdout, asserting it succeeded.
fn plugin_ok(cluster: &Cluster, args: &[&str]) -> String {
    let out = plugin(cluster, args);
    assert!(out.status.success(), "kubectl-connhealth {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn top_and_explain_read_the_reports_verdicts_and_events() {
    let cluster = Cluster::get();
    let _one_at_a_time = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("plugin");
    let client = cluster.client().await;
    let leaking = create_pod(&client, &ns.name, "api-1").await;
    let healthy = create_pod(&client, &ns.name, "api-2").await;
    write_report(&client, &ns.name, "api-1", &leaking, 12).await;
    write_report(&client, &ns.name, "api-2", &healthy, 0).await;
    apply_policy(cluster, &ns.name, "default", "  {}\n");
    let _operator = start_operator(&cluster.kubeconfig, &ns.name, "plugin-test-operator");
    until(WAIT, "a CloseWaitLeak Event", || pod_events(cluster, &ns.name, "api-1", "CloseWaitLeak").len() == 1).await;

    // top: the leaking pod, not the healthy one; with --all both.
    let top = plugin_ok(cluster, &["top", "-n", &ns.name]);
    let lines: Vec<&str> = top.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["POD", "VERDICT", "CLOSE-WAIT", "STUCK", "OLDEST", "PORT-PRESSURE", "TOP-PEER", "OWNER"],
        "{top}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&row[..4], ["api-1", "Leaking", "12", "12"], "{top}");
    assert_eq!(lines.len(), 2, "only the pod with something to show: {top}");
    assert!(top.contains("leaky-server (pid 31337)"), "{top}");
    let all = plugin_ok(cluster, &["top", "-n", &ns.name, "--all"]);
    assert!(all.lines().nth(2).is_some_and(|l| l.starts_with("api-2")), "{all}");
    // -A: every namespace, with a NAMESPACE column.
    let everywhere = plugin_ok(cluster, &["top", "-A"]);
    assert!(everywhere.starts_with("NAMESPACE"), "{everywhere}");
    assert!(everywhere.lines().any(|l| l.starts_with(&ns.name) && l.contains("api-1")), "{everywhere}");
    // -o json: the same rows for scripts.
    let json: Value = serde_json::from_str(&plugin_ok(cluster, &["top", "-n", &ns.name, "-o", "json"])).unwrap();
    assert_eq!(json[0]["pod"], "api-1");
    assert_eq!(json[0]["closeWait"], 12);
    assert_eq!(json[0]["verdict"], "Leaking");

    // explain: verdict, policy, evidence, owner, the Event, next steps.
    let explained = plugin_ok(cluster, &["explain", "api-1", "-n", &ns.name]);
    for expected in [
        "Verdict:  Leaking for ",
        ", decided by policy default",
        "  - 12 CLOSE_WAIT sockets stuck for at least 2m (threshold 5)",
        "Policy:   default: Warning at 10 CLOSE_WAIT, Leaking at 5 stuck for 2m",
        "CLOSE_WAIT: 12 (12 stuck, the oldest for ",
        "held by leaky-server (pid 31337) in container app: 12 sockets, 52 of 1024 fds open",
        "Warning CloseWaitLeak ",
        "Next steps:",
        &format!("See every socket: kubectl connhealth sockets api-1 -n {} --state close-wait", ns.name),
    ] {
        assert!(explained.contains(expected), "{expected:?} not in:\n{explained}");
    }
    let json: Value =
        serde_json::from_str(&plugin_ok(cluster, &["explain", "api-1", "-n", &ns.name, "-o", "json"])).unwrap();
    assert_eq!(json["report"]["verdict"]["result"], "Leaking");
    assert_eq!(json["events"][0]["reason"], "CloseWaitLeak");

    // A pod that does not exist, a context that does not: one line, exit 1.
    for (args, expected) in [
        (vec!["explain", "nope", "-n", ns.name.as_str()], format!("error: pod {}/nope not found\n", ns.name)),
        (vec!["sockets", "nope", "-n", ns.name.as_str()], format!("error: pod {}/nope not found\n", ns.name)),
    ] {
        let out = plugin(cluster, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), expected, "{args:?}");
    }
    let out = plugin(cluster, &["top", "--context", "no-such-context"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("no-such-context") && stderr.lines().count() == 1,
        "{stderr}"
    );
}

#[tokio::test]
async fn sockets_lists_a_pods_sockets_as_ss_does_and_cleans_up() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::get();
    let _serial = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("plugin-sockets");
    let client = cluster.client().await;
    let mut leaky = FakePod::create(&client, cluster, &ns.name, "leaky", false).await;
    let server = leaky.spawn(&["serve", "--listen", "127.0.0.1:8080"]);
    until(WAIT, "the server to listen", || leaky.ss_count("listening") == 1).await;
    leaky.spawn(&["connect", "--to", "127.0.0.1:8080", "--count", "5", "--interval-ms", "10"]);
    until(WAIT, "5 CLOSE_WAIT sockets", || leaky.ss_count("close-wait") == 5).await;
    let _agent = start_agent(cluster, &cluster.kubeconfig, &ns.name, &[]);

    let table = plugin_ok(cluster, &["sockets", "leaky", "-n", &ns.name, "--state", "close-wait"]);
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("CLOSE-WAIT")).collect();
    assert_eq!(rows.len() as i64, leaky.ss_count("close-wait"), "{table}");
    let owner = format!("users:((\"connhealth-demo\",pid={server}))");
    assert!(rows.iter().all(|r| r.contains("127.0.0.1:8080") && r.ends_with(&owner)), "{table}");
    assert!(table.contains("5 of 5 sockets (node "), "{table}");
    assert!(
        table.contains(&format!("connhealth-demo (pid {server}) in container server: 5 of these sockets")),
        "{table}"
    );

    let json: Value =
        serde_json::from_str(&plugin_ok(cluster, &["sockets", "leaky", "-n", &ns.name, "-o", "json"])).unwrap();
    let ss_all = leaky.ss_count("all");
    assert_eq!(json["total"], ss_all, "{json:#}");
    // Both snapshots were deleted by the plugin.
    let left = cluster.kubectl_ok(&["get", "connectionsnapshots", "-n", &ns.name, "-o", "name"]).unwrap();
    assert_eq!(left.trim(), "", "snapshots left behind");
}
