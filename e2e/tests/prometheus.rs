//! The alerts and the dashboard, proven on a real Prometheus (Go-built,
//! `e2e/cluster/build --prometheus`):
//!
//! - [`promtool_unit_tests_cover_every_alert`]: `promtool test rules` on the
//!   rules `helm template` renders, with a firing and a quiet case for every
//!   alert (`e2e/prometheus/alerts.test.yaml`).
//! - [`a_real_prometheus_scrapes_both_components_and_fires_on_the_leak`]:
//!   the agent and the operator on the real control plane, a pod that leaks
//!   CLOSE_WAIT and a pod whose client storm leaves TIME_WAIT in a narrow
//!   port range; Prometheus scrapes both components with the chart's rules
//!   (their `for` shortened) and the test reads its HTTP API: the series
//!   with the right labels and values (equal to `ss`), the leak's and the
//!   port pressure's alerts pending or firing, and every dashboard query
//!   parsing and returning data. The `TimeWaitPressure` Event carries the
//!   effective figure, the sysctls and the widening hint.

use std::collections::BTreeSet;
use std::time::Duration;

use connhealth_crds::names::reasons;
use connhealth_e2e::agent::{agent_run_args, metrics_addr, operator_run_args};
use connhealth_e2e::prometheus::{Prometheus, bin_dir, chart_rules};
use connhealth_e2e::{
    AgentLock, ChildProcess, Cluster, FakePod, TestNamespace, apply_policy, eventually, random_suffix, repo_root,
    require_root, until,
};
use connhealth_scan::netns::NetnsHandle;
use connhealth_scan::testing::{listen, time_wait};
use serde_json::Value;

/// Longest wait for the system to converge (never a performance limit).
const WAIT: Duration = Duration::from_secs(90);

#[test]
fn promtool_unit_tests_cover_every_alert() {
    let helm = Cluster::get().bin_dir.join("helm");
    let rules = chart_rules(&helm, &["prometheusJobs.agent=agent", "prometheusJobs.operator=operator"]);
    let tests = std::fs::read_to_string(repo_root().join("e2e/prometheus/alerts.test.yaml")).unwrap();

    // Every alert of the chart has a case.
    let alert_names = |text: &str, key: &str| -> BTreeSet<String> {
        text.lines().filter_map(|l| l.trim().strip_prefix(key)).map(|n| n.trim().to_owned()).collect()
    };
    let alerts = alert_names(&rules, "- alert:");
    assert_eq!(alerts.len(), 13, "{alerts:?}");
    assert_eq!(alert_names(&tests, "alertname:"), alerts, "every alert, and only those, is tested");

    let dir = std::env::temp_dir().join(format!("connhealth-promtool-{}", random_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rules.yml"), &rules).unwrap();
    std::fs::write(dir.join("alerts.test.yaml"), &tests).unwrap();
    let promtool = bin_dir().join("promtool");
    for args in [&["check", "rules", "rules.yml"][..], &["test", "rules", "alerts.test.yaml"]] {
        let out = std::process::Command::new(&promtool).args(args).current_dir(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The value of a one-sample vector result.
fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

#[tokio::test]
async fn a_real_prometheus_scrapes_both_components_and_fires_on_the_leak() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::get();
    let _serial = AgentLock::acquire(cluster);
    let client = cluster.client().await;
    let ns = TestNamespace::new("prom");
    let policy = "prom-policy";
    apply_policy(cluster, &ns.name, policy, "  closeWait: {stuckCount: 5, minAge: 5s}\n");

    // A pod that leaks CLOSE_WAIT, as in the scenario.
    let mut leaky = FakePod::create(&client, cluster, &ns.name, "leaky", false).await;
    leaky.spawn(&["serve", "--listen", "127.0.0.1:8080"]);
    until(WAIT, "the server to listen", || leaky.ss_count("listening") == 1).await;
    leaky.spawn(&["connect", "--to", "127.0.0.1:8080", "--count", "8", "--interval-ms", "10"]);
    until(WAIT, "8 CLOSE_WAIT sockets", || leaky.ss_count("close-wait") == 8).await;

    // The agent and the operator (admin credentials: the scenario proves
    // the chart's RBAC), metrics on free loopback ports.
    let node_args = agent_run_args(&cluster.node_name(), &ns.name);
    let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
    let agent = ChildProcess::spawn("connhealth-agent", &node_args, &cluster.kubeconfig, &[]);
    let identity = format!("prom-operator-{}", random_suffix());
    let operator_args = operator_run_args(&ns.name, &identity);
    let operator_args: Vec<&str> = operator_args.iter().map(String::as_str).collect();
    let operator = ChildProcess::spawn("connhealth-operator", &operator_args, &cluster.kubeconfig, &[]);
    let agent_addr = eventually("the agent's metrics address", WAIT, || {
        let a = metrics_addr(&agent);
        async move { a }
    })
    .await;
    let operator_addr = eventually("the operator's metrics address", WAIT, || {
        let a = metrics_addr(&operator);
        async move { a }
    })
    .await;

    // Prometheus with the chart's rules, as the chart would select the two
    // jobs, their `for` shortened to a few seconds.
    let helm = cluster.bin_dir.join("helm");
    let rules = chart_rules(
        &helm,
        &[
            "prometheusJobs.agent=connhealth-agent",
            "prometheusJobs.operator=connhealth-operator",
            "prometheusRule.leakingFor=3s",
            "prometheusRule.portPressureFor=3s",
            "prometheusRule.violatingFor=3s",
        ],
    );
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         rule_files: [rules.yml]\n\
         scrape_configs:\n\
         - {{job_name: connhealth-agent, honor_labels: true, static_configs: [{{targets: ['{agent_addr}']}}]}}\n\
         - {{job_name: connhealth-operator, honor_labels: true, static_configs: [{{targets: ['{operator_addr}']}}]}}\n"
    );
    let prometheus = Prometheus::start(&config, &rules);

    // The series, labelled with the pod they are about, equal to ss.
    let selector = format!("job=\"connhealth-agent\",namespace=\"{}\"", ns.name);
    let close_wait = eventually("leaky's CLOSE-WAIT series", WAIT, || {
        let v =
            prometheus.vector(&format!("connhealth_agent_sockets{{{selector},pod=\"leaky\",state=\"CLOSE-WAIT\"}}"));
        async move { v.first().map(value).filter(|v| *v == 8.0) }
    })
    .await;
    assert_eq!(close_wait, leaky.ss_count("close-wait") as f64);
    // The alerts: the leak's, for this pod, and the policy's.
    let alert_for = |name: &str, pod: Option<&str>| {
        let alerts = prometheus.alerts();
        let found = alerts.into_iter().find(|a| {
            a["labels"]["alertname"] == name
                && a["labels"]["namespace"] == ns.name.as_str()
                && pod.is_none_or(|p| a["labels"]["pod"] == p)
        });
        async move { found.filter(|a| a["state"] == "pending" || a["state"] == "firing") }
    };
    let violations = eventually("ConnhealthPolicyViolations pending or firing", WAIT, || {
        alert_for("ConnhealthPolicyViolations", None)
    })
    .await;
    assert_eq!(violations["labels"]["policy"], policy, "{violations:#}");
    let firing = eventually("ConnhealthPodLeaking firing", WAIT, || {
        let a = alert_for("ConnhealthPodLeaking", Some("leaky"));
        async move { a.await.filter(|a| a["state"] == "firing") }
    })
    .await;
    assert!(firing["annotations"]["description"].as_str().unwrap_or_default().contains("stuck in CLOSE_WAIT"));

    // Then a client storm from a narrow range without TIME_WAIT reuse: 150
    // of 200 ephemeral ports held by TIME_WAIT towards one server, for the
    // 60 s TIME_WAIT lasts. Everything else is checked before, so that only
    // the storm's own figures, alert and Event (a sweep, a scrape and a
    // reconcile away) fall in that window.
    let mut storm = FakePod::create(&client, cluster, &ns.name, "storm", false).await;
    for (file, value) in [("ip_local_port_range", "40000 40199"), ("tcp_tw_reuse", "0"), ("tcp_timestamps", "1")] {
        let path = format!("/proc/sys/net/ipv4/{file}");
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &storm.netns, "sh", "-c", &format!("echo '{value}' > {path}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "set {file}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // A process of the pod (what ties its namespace to it), then the storm,
    // made by this test inside the pod's namespace one connection at a time:
    // each client closes first and holds the TIME_WAIT (no accept backlog
    // to overflow, no close to race, however loaded the machine is).
    storm.spawn(&["serve", "--listen", "127.0.0.1:8082"]);
    until(WAIT, "the storm pod's process to listen", || storm.ss_count("listening") == 1).await;
    NetnsHandle::open(format!("/run/netns/{}", storm.netns))
        .and_then(|netns| {
            netns.run_in(|| {
                let server = listen("127.0.0.1:8081");
                for _ in 0..150 {
                    time_wait(&server);
                }
            })
        })
        .expect("the storm in the pod's namespace");
    until(WAIT, "150 TIME_WAIT sockets in the storm pod", || storm.ss_count("time-wait") == 150).await;

    let pressure = eventually("storm's effective port pressure", WAIT, || {
        let v =
            prometheus.vector(&format!("connhealth_agent_port_pressure_effective_percent{{{selector},pod=\"storm\"}}"));
        // 150 of 200 ports (a sweep in the middle of the storm saw less).
        async move { v.first().map(value).filter(|v| *v == 75.0) }
    })
    .await;
    assert_eq!(pressure, 75.0);
    let raw = prometheus.vector(&format!("connhealth_agent_port_pressure_percent{{{selector},pod=\"storm\"}}"));
    assert_eq!(raw.first().map(value), Some(75.0), "without reuse, raw = effective");
    let buckets = prometheus.vector(&format!("connhealth_agent_time_wait_buckets_percent{{{selector},pod=\"storm\"}}"));
    assert_eq!(buckets.len(), 1, "{buckets:?}");
    let conntrack = prometheus.vector("connhealth_agent_node_conntrack_max{job=\"connhealth-agent\"}");
    assert_eq!(conntrack.len(), 1, "{conntrack:?}");

    let pressure_alert = eventually("ConnhealthPortPressure pending or firing", WAIT, || {
        alert_for("ConnhealthPortPressure", Some("storm"))
    })
    .await;
    assert!(pressure_alert["annotations"]["summary"].as_str().unwrap_or_default().contains("ephemeral ports"));

    // The storm's Event: the effective figure, the evidence, the hint.
    let event = eventually("a TimeWaitPressure Event on storm", WAIT, || {
        let out = cluster.kubectl_ok(&[
            "get",
            "events.events.k8s.io",
            "-n",
            &ns.name,
            "--field-selector",
            &format!("regarding.name=storm,reason={}", reasons::TIME_WAIT_PRESSURE),
            "-o",
            "jsonpath={.items[0].note}",
        ]);
        async move { out.ok().filter(|n| !n.is_empty()) }
    })
    .await;
    // The Event comes when the storm crosses the threshold, perhaps before
    // its last connection.
    let percent: u32 = event
        .strip_prefix("port pressure ")
        .and_then(|rest| rest.split('%').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure first in {event:?}"));
    assert!((60..=75).contains(&percent), "{event}");
    for needle in [
        // The destination named: loopback, the pod itself.
        "% towards 127.0.0.1:8081 (loopback: the pod itself) of 200 ephemeral ports (threshold 60%)",
        "Ephemeral range 40000-40199, tcp_tw_reuse=0, tcp_timestamps=1",
        "securityContext.sysctls net.ipv4.ip_local_port_range",
    ] {
        assert!(event.contains(needle), "{needle:?} not in {event:?}");
    }

    // Every dashboard query parses and returns data for this scenario.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("charts/connhealth/dashboards/connhealth.json")).unwrap(),
    )
    .unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("$agent_job", "connhealth-agent")
                .replace("$operator_job", "connhealth-operator")
                .replace("$namespace", &ns.name)
                .replace("$__rate_interval", "1m");
            // Without connection tracking in the kernel, the conntrack panel
            // is rightly empty.
            if expr.contains("conntrack") && !std::path::Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists()
            {
                continue;
            }
            let answer = eventually(&format!("data for panel {:?}: {expr}", panel["title"]), WAIT, || {
                let answer = prometheus.query(&expr);
                let expr = expr.clone();
                async move {
                    assert_eq!(answer["status"], "success", "{expr}: {answer}");
                    answer["data"]["result"].as_array().is_some_and(|r| !r.is_empty()).then_some(answer)
                }
            })
            .await;
            assert_eq!(answer["data"]["resultType"], "vector", "{expr}");
            queries += 1;
        }
    }
    assert!(queries >= 16, "{queries} dashboard queries");
    drop(prometheus);
    drop(storm);
    drop(leaky);
}
