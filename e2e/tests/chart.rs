//! The Helm chart (`charts/connhealth`) and the images, against the real
//! control plane:
//!
//! - `helm lint --strict`, with the defaults and with every option on;
//! - every rendered object validated by the API server
//!   (`kubectl apply --dry-run=server --validate=strict`), CRD templates
//!   included, and the operator's pod template checked against Pod Security
//!   `restricted`;
//! - `helm install` / `upgrade` / `uninstall` in a fresh namespace;
//! - `values.schema.json` refusing wrong values with a clear message, and
//!   every value documented (values.yaml comment, schema, README table);
//! - the rendered RBAC is exactly the documented verbs, the workloads carry
//!   the documented security model and the settings the binaries read;
//! - `scripts/build-image` writes OCI archives whose digests all check out,
//!   holding a static binary that runs, named as the chart expects, and in
//!   step with what a released chart renders (`image.digest`).
//!
//! The cluster is shared with other tests running at the same time: every
//! release has a unique name in its own namespace, nothing cluster-scoped is
//! ever deleted, and the connhealth CRDs (installed by the harness with
//! `kubectl apply --server-side`) are never taken over by a release (the
//! round trip installs with `crds.install=false`; the CRD templates are
//! checked by a server-side dry run and against the generator instead).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use connhealth_e2e::{
    Cluster, Output, TempDir, TestNamespace, random_suffix, repo_root, run_command, workspace_binary,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde::Deserialize;
use serde_json::{Value, json};

/// The crate version: chart `version`, `appVersion` and image tags.
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn chart_dir() -> PathBuf {
    repo_root().join("charts/connhealth")
}

/// What a command did.
fn run(cmd: &mut Command) -> Output {
    run_command(cmd)
}

/// `helm` from the harness' bin dir, talking to the test cluster.
fn helm(args: &[&str]) -> Output {
    let cluster = Cluster::get();
    let mut cmd = Command::new(cluster.bin_dir.join("helm"));
    run(cmd.arg("--kubeconfig").arg(&cluster.kubeconfig).args(args))
}

fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(out.ok, "helm {} failed:\n{}{}", args.join(" "), out.stdout, out.stderr);
    out.stdout
}

/// Every YAML document of a multi-document stream, as JSON values (empty
/// documents left out).
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn to_yaml(docs: &[&Value]) -> String {
    docs.iter().map(|d| format!("---\n{}", serde_yaml::to_string(d).expect("YAML"))).collect()
}

/// `helm template` of the chart; panics with helm's message on failure.
fn render(release: &str, namespace: &str, extra: &[&str]) -> Vec<Value> {
    let chart = chart_dir();
    let mut args = vec!["template", release, chart.to_str().unwrap(), "--namespace", namespace];
    args.extend_from_slice(extra);
    documents(&helm_ok(&args))
}

fn kind_name(doc: &Value) -> (String, String) {
    (
        doc["kind"].as_str().unwrap_or_default().to_owned(),
        doc["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
    )
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter().find(|d| kind_name(d) == (kind.to_owned(), name.to_owned())).unwrap_or_else(|| {
        let have: Vec<_> = docs.iter().map(kind_name).collect();
        panic!("no {kind} {name} rendered; have {have:?}")
    })
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// Values that switch every optional feature on; `NAMESPACE` is replaced by
/// the namespace that gets the default policy.
const EVERYTHING_ON: &str = r#"
commonLabels: {team: platform}
logFormat: json
apiTimeout: 20s
serviceMonitor: {enabled: true, labels: {release: prometheus}, interval: 1m, scrapeTimeout: 20s}
prometheusRule: {enabled: true, labels: {release: prometheus}, alertLabels: {team: platform}, leakingFor: 15m}
grafanaDashboard: {enabled: true, annotations: {grafana_folder: Networking}}
metricsService: {annotations: {prometheus.io/scrape: "true"}}
defaultPolicy:
  enabled: true
  namespaces: [NAMESPACE]
  spec: {closeWait: {stuckCount: 3, minAge: 90s}, actions: {eventCooldown: 30m}}
image: {registry: registry.example.com/connhealth, pullPolicy: Always, pullSecrets: [{name: regcred}]}
agent:
  priorityClassName: system-node-critical
  appArmorProfile: {type: RuntimeDefault}
  podAnnotations: {example.com/note: agent}
  podLabels: {example.com/tier: node}
  extraEnv: [{name: RUST_LOG, value: debug}]
  serviceAccount: {annotations: {example.com/sa: agent}}
operator:
  priorityClassName: system-cluster-critical
  replicas: 3
  podDisruptionBudget: {minAvailable: 2}
  tolerations: [{key: dedicated, operator: Equal, value: infra, effect: NoSchedule}]
  affinity: {nodeAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 1, preference: {matchExpressions: [{key: kubernetes.io/os, operator: In, values: [linux]}]}}]}}
"#;

// ---------------------------------------------------------------------------
// Chart metadata, lint, documentation

#[test]
fn chart_version_and_app_version_are_the_crate_version() {
    let chart: Value = serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "connhealth");
    assert_eq!(chart["version"], VERSION, "Chart.yaml version must be the workspace version");
    assert_eq!(chart["appVersion"], VERSION, "Chart.yaml appVersion must be the workspace version");
}

#[test]
fn lint_strict_passes_with_defaults_and_with_every_option() {
    let dir = TempDir::new("chart-lint");
    let everything = dir.write("everything.yaml", &EVERYTHING_ON.replace("NAMESPACE", "shop"));
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    for extra in [
        vec![],
        vec!["-f", everything.to_str().unwrap()],
        vec![
            "--set",
            "crds.install=false",
            "--set",
            "operator.replicas=1",
            "--set",
            "operator.leaderElection.enabled=false",
        ],
    ] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend_from_slice(&extra);
        let out = helm(&args);
        assert!(
            out.ok && out.stdout.contains("0 chart(s) failed"),
            "helm lint {extra:?}:\n{}{}",
            out.stdout,
            out.stderr
        );
        assert!(
            !out.stdout.contains("[WARNING]") && !out.stdout.contains("[ERROR]"),
            "helm lint {extra:?}:\n{}",
            out.stdout
        );
    }
}

/// Paths of the values the schema treats as one value (no `properties` of
/// its own), with their schema node.
fn schema_leaves<'a>(schema: &'a Value, path: &str, out: &mut Vec<(String, &'a Value)>) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        out.push((path.to_owned(), schema));
        return;
    };
    for (key, prop) in props {
        let here = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        schema_leaves(prop, &here, out);
    }
}

fn lookup<'a>(values: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(values, |v, key| v.get(key))
}

fn schema_node<'a>(schema: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(schema, |node, key| node.get("properties")?.get(key))
}

/// The dotted paths of `path` and every ancestor, nearest first.
fn self_and_ancestors(path: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(path), |p| p.rsplit_once('.').map(|(parent, _)| parent))
}

/// Every value is documented: in values.yaml each key is either a section
/// (a map of further values) or carries a `# --` comment (itself or an
/// ancestor, for maps such as `resources`); each commented value has a
/// described, typed schema entry and a row in the README's values table; and
/// every value the schema knows is in values.yaml and commented.
#[test]
fn every_value_is_documented_in_values_schema_and_readme() {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let values: Value = serde_yaml::from_str(&text).unwrap();
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap())
        .expect("values.schema.json is JSON");
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).unwrap();

    // Keys of values.yaml by dotted path, and whether a `# --` comment block
    // sits right above each.
    let mut keys: BTreeMap<String, bool> = BTreeMap::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut in_comment = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("# --") {
            in_comment = true;
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let key = trimmed.split_once(':').map(|(k, _)| k).filter(|k| {
            !k.is_empty()
                && !trimmed.starts_with('-')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
        });
        if let Some(key) = key {
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            stack.push((indent, key.to_owned()));
            let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
            keys.insert(path.join("."), in_comment);
        }
        if !trimmed.is_empty() {
            in_comment = false;
        }
    }
    let commented = |path: &str| self_and_ancestors(path).any(|p| keys.get(p) == Some(&true));

    let mut problems = Vec::new();
    for (path, has_comment) in &keys {
        // Keys under a map value (e.g. nodeSelector's `kubernetes.io/os`) are
        // dotted here; they are covered by the commented map.
        let section = lookup(&values, path).and_then(Value::as_object).is_some_and(|m| !m.is_empty());
        if !commented(path) && !section {
            problems.push(format!("{path}: no `# --` comment right above it in values.yaml"));
        }
        if *has_comment {
            match schema_node(&schema, path) {
                None => problems.push(format!("{path}: in values.yaml but not in values.schema.json")),
                Some(node) => {
                    if node.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
                        problems.push(format!("{path}: no description in values.schema.json"));
                    }
                    if node.get("type").is_none() && node.get("anyOf").is_none() {
                        problems.push(format!("{path}: no type in values.schema.json"));
                    }
                }
            }
            if !readme.contains(&format!("| `{path}` |")) {
                problems.push(format!("{path}: no row in the README values table"));
            }
        }
    }
    let mut leaves = Vec::new();
    schema_leaves(&schema, "", &mut leaves);
    for (path, _) in &leaves {
        if path == "global" {
            continue; // Helm's own
        }
        let documented = self_and_ancestors(path).any(|p| keys.get(p) == Some(&true));
        let in_values = self_and_ancestors(path).any(|p| lookup(&values, p).is_some());
        if !documented || !in_values {
            problems.push(format!("{path}: in values.schema.json but not documented in values.yaml"));
        }
    }
    assert!(problems.is_empty(), "undocumented values:\n{}", problems.join("\n"));
    let documented = keys.values().filter(|c| **c).count();
    assert!(documented > 50, "found only {documented} documented values");
}

// ---------------------------------------------------------------------------
// Schema

#[test]
fn schema_refuses_wrong_values_with_a_clear_message() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["--set-string", "operator.replicas=two"], &["/operator/replicas", "got string, want integer"]),
        (&["--set", "operator.replicas=0"], &["/operator/replicas", "minimum"]),
        (&["--set-string", "crds.install=yes"], &["/crds/install", "want boolean"]),
        (&["--set", "image.pullPolicy=Sometimes"], &["/image/pullPolicy", "IfNotPresent"]),
        (&["--set", "agent.scanInterval=15seconds"], &["/agent/scanInterval", "does not match pattern"]),
        (&["--set", "prometheusRule.leakingFor=1.5h"], &["/prometheusRule/leakingFor", "does not match pattern"]),
        (&["--set", "agent.metrics.port=70000"], &["/agent/metrics/port", "maximum"]),
        // A tag where a digest belongs would pull whatever the tag names now.
        (&["--set", "agent.image.digest=0.1.0"], &["/agent/image/digest", "does not match pattern"]),
        (&["--set", "agent.resources.limits.memory=lots"], &["/agent/resources/limits/memory"]),
        (&["--set", "logFormat=xml"], &["/logFormat", "json"]),
        (&["--set-string", "apiTimeout=10"], &["/apiTimeout", "does not match pattern"]),
        (&["--set", "agent.scanIntervall=15s"], &["/agent", "scanIntervall", "not allowed"]),
        (&["--set", "defaultPolicy.namespaces[0]=Not_A_Namespace"], &["/defaultPolicy/namespaces/0"]),
        // Not a type error, but refused as early: without a leader every replica would act.
        (
            &["--set", "operator.replicas=2", "--set", "operator.leaderElection.enabled=false"],
            &["operator.replicas > 1 needs operator.leaderElection.enabled=true"],
        ),
    ];
    let chart = chart_dir();
    for (args, messages) in cases {
        let mut all = vec!["template", "schema-test", chart.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = helm(&all);
        assert!(!out.ok, "helm template {args:?} was accepted");
        for message in *messages {
            assert!(out.stderr.contains(message), "helm template {args:?}: expected {message:?} in:\n{}", out.stderr);
        }
    }
    // The defaults themselves pass.
    render("schema-test", "default", &[]);
}

/// A wrong value fails `helm install` itself, before anything is created.
#[test]
fn install_with_a_wrong_value_fails_before_creating_anything() {
    let cluster = Cluster::get();
    let ns = TestNamespace::new("chart-badvalue");
    let release = format!("chb-{}", random_suffix());
    let chart = chart_dir();
    let out = helm(&[
        "install",
        &release,
        chart.to_str().unwrap(),
        "-n",
        &ns.name,
        "--set",
        "crds.install=false",
        "--set-string",
        "operator.replicas=two",
    ]);
    assert!(!out.ok, "install with operator.replicas=two succeeded:\n{}", out.stdout);
    assert!(
        out.stderr.contains("INSTALLATION FAILED")
            && out.stderr.contains("at '/operator/replicas': got string, want integer"),
        "unclear message:\n{}",
        out.stderr
    );
    assert!(!helm(&["status", &release, "-n", &ns.name]).ok, "a failed install left a release behind");
    let left = cluster
        .kubectl_ok(&[
            "get",
            "all,serviceaccounts,roles",
            "-n",
            &ns.name,
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
            "-o",
            "name",
        ])
        .unwrap();
    assert!(left.trim().is_empty(), "objects created by a refused install:\n{left}");
}

// ---------------------------------------------------------------------------
// RBAC and the security model (rendered, no cluster writes)

/// (API group, resource, verb, resource name) of every permission a role grants.
type Grant = (String, String, String, Option<String>);

fn grants(role: &Value) -> BTreeSet<Grant> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().map(|s| s.as_str().expect("a string").to_owned()).collect()).unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        assert!(rule.get("nonResourceURLs").is_none(), "{rule}: non-resource URLs granted");
        let names: Vec<Option<String>> = match strings(&rule["resourceNames"]) {
            names if names.is_empty() => vec![None],
            names => names.into_iter().map(Some).collect(),
        };
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    for name in &names {
                        assert!(![&group, &resource, &verb].contains(&&"*".to_owned()), "{rule}: wildcard granted");
                        out.insert((group.clone(), resource.clone(), verb.clone(), name.clone()));
                    }
                }
            }
        }
    }
    out
}

/// The permissions the chart README's "Security model" table documents, by
/// role (`agent (ClusterRole)`, `operator (ClusterRole)`, `operator (Role,
/// release namespace)`). In the verbs column, the backticked words before the
/// first parenthesis are the verbs; "of its own Lease" limits the verbs after
/// the `;` to the operator's Lease (`operator_lease`).
fn documented_grants(operator_lease: &str) -> BTreeMap<String, BTreeSet<Grant>> {
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).expect("chart README");
    let section = readme.split("## Security model").nth(1).expect("a Security model section");
    let ticked = |text: &str| -> Vec<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .map(|word| if word == "\"\"" { String::new() } else { word.to_owned() })
            .collect()
    };
    let mut out: BTreeMap<String, BTreeSet<Grant>> = BTreeMap::new();
    let mut role = String::new();
    for row in section.lines().skip_while(|l| !l.starts_with("| component")).skip(2) {
        let Some(cells) = row.strip_prefix('|').map(|r| r.split('|').map(str::trim).collect::<Vec<_>>()) else {
            break;
        };
        assert!(cells.len() >= 4, "a row of four cells: {row}");
        if !cells[0].is_empty() {
            role = cells[0].to_owned();
        }
        let (group, resource) = (&ticked(cells[1])[0], &ticked(cells[2])[0]);
        let verbs_cell = cells[3].split('(').next().unwrap();
        let (any_name, own_lease) = match verbs_cell.split_once(';') {
            Some((any, own)) if cells[3].contains("of its own Lease") => (any, own),
            _ => (verbs_cell, ""),
        };
        let grants = out.entry(role.clone()).or_default();
        for (verbs, name) in [(any_name, None), (own_lease, Some(operator_lease.to_owned()))] {
            for verb in ticked(verbs) {
                grants.insert((group.clone(), resource.clone(), verb, name.clone()));
            }
        }
    }
    out
}

#[test]
fn rbac_grants_exactly_the_documented_verbs() {
    let release = "rbac";
    let ns = "connhealth-system";
    let docs = render(release, ns, &[]);
    let agent = format!("{release}-connhealth-agent");
    let operator = format!("{release}-connhealth-operator");

    let documented = documented_grants(&operator);
    let table = |role: &str| documented.get(role).cloned().unwrap_or_else(|| panic!("no {role:?} rows in the table"));
    let (expected_agent, expected_operator, expected_lease) =
        (table("agent (ClusterRole)"), table("operator (ClusterRole)"), table("operator (Role, release namespace)"));
    let expected_agent_lease = table("agent (Role, release namespace)");
    let expected_requester = table("snapshot requester (ClusterRole, bound by you)");
    assert_eq!(documented.len(), 5, "roles in the table: {:?}", documented.keys());
    // The table is read as meant: a few rows spelled out.
    assert!(expected_agent.contains(&("".into(), "pods".into(), "watch".into(), None)));
    assert!(expected_lease.contains(&(
        "coordination.k8s.io".into(),
        "leases".into(),
        "update".into(),
        Some(operator.clone())
    )));
    assert!(expected_lease.contains(&("coordination.k8s.io".into(), "leases".into(), "create".into(), None)));
    assert!(expected_lease.contains(&("coordination.k8s.io".into(), "leases".into(), "watch".into(), None)));
    assert!(expected_agent_lease.contains(&("coordination.k8s.io".into(), "leases".into(), "patch".into(), None)));

    assert_eq!(grants(find(&docs, "ClusterRole", &agent)), expected_agent, "agent ClusterRole");
    assert_eq!(grants(find(&docs, "ClusterRole", &operator)), expected_operator, "operator ClusterRole");
    let lease_role = find(&docs, "Role", &operator);
    assert_eq!(lease_role["metadata"]["namespace"], ns);
    assert_eq!(grants(lease_role), expected_lease, "operator Role");
    let agent_lease_role = find(&docs, "Role", &agent);
    assert_eq!(agent_lease_role["metadata"]["namespace"], ns);
    assert_eq!(grants(agent_lease_role), expected_agent_lease, "agent Role");
    // No other role anywhere.
    let roles: Vec<_> =
        docs.iter().filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role").map(kind_name).collect();
    assert_eq!(roles.len(), 5, "unexpected roles: {roles:?}");
    // The requester role, for people to bind: bound to no one by the chart.
    let requester = format!("{release}-connhealth-snapshot-requester");
    assert_eq!(grants(find(&docs, "ClusterRole", &requester)), expected_requester, "snapshot requester ClusterRole");
    assert!(
        !docs.iter().any(|d| d["roleRef"]["name"] == requester.as_str()),
        "the chart binds the requester role to no one"
    );

    // Each role is bound to its component's ServiceAccount, and only to it.
    for (kind, role_kind, name) in [
        ("ClusterRoleBinding", "ClusterRole", &agent),
        ("ClusterRoleBinding", "ClusterRole", &operator),
        ("RoleBinding", "Role", &agent),
        ("RoleBinding", "Role", &operator),
    ] {
        let binding = find(&docs, kind, name);
        assert_eq!(
            binding["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name})
        );
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": name, "namespace": ns}]),
            "{kind} {name}"
        );
        find(&docs, "ServiceAccount", name);
    }
    let bindings = docs.iter().filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding").count();
    assert_eq!(bindings, 4);

    // The Lease the Role names is the one the operator is told to use.
    let deployment: Deployment = serde_json::from_value(find(&docs, "Deployment", &operator).clone()).unwrap();
    assert_eq!(
        env_value(&pod_spec(&deployment.spec.unwrap().template.spec).containers[0], "CONNHEALTH_LEASE_NAME"),
        operator
    );

    // Without leader election the operator has no Lease of its own: its
    // Role only reads the agents' Leases.
    let single =
        render(release, ns, &["--set", "operator.replicas=1", "--set", "operator.leaderElection.enabled=false"]);
    let reads_only: BTreeSet<Grant> = ["list", "watch"]
        .map(|verb| ("coordination.k8s.io".to_owned(), "leases".to_owned(), verb.to_owned(), None))
        .into();
    assert_eq!(grants(find(&single, "Role", &operator)), reads_only);
    assert!(of_kind(&single, "PodDisruptionBudget").is_empty(), "a PDB for one replica would block drains");
}

/// Cluster-scoped objects carry the release in their name, so releases never
/// share (or fight over) them.
#[test]
fn cluster_scoped_objects_are_named_per_release() {
    for release in ["one", "two-connhealth"] {
        let docs = render(release, "ns", &[]);
        let cluster_scoped =
            ["ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"];
        let found: Vec<&Value> = docs.iter().filter(|d| cluster_scoped.iter().any(|k| d["kind"] == *k)).collect();
        assert_eq!(
            found.len(),
            11,
            "three ClusterRoles (agent, operator, snapshot requester), the first two's bindings, the node, Lease and \
             snapshot restrictions and their bindings"
        );
        for doc in found {
            let (kind, name) = kind_name(doc);
            assert!(name.starts_with(release), "{kind} {name} does not carry the release name {release}");
        }
    }
}

/// The node restriction binds the policy of its own name, matches only this
/// release's agent, denies, and goes with `agent.nodeRestriction.enabled`.
#[test]
fn the_node_restriction_matches_this_releases_agent_and_can_be_turned_off() {
    let docs = render("rel", "ops", &["--set", "agent.serviceAccount.name=node-agent"]);
    let policy = find(&docs, "ValidatingAdmissionPolicy", "rel-connhealth-agent-node-restriction");
    let binding = find(&docs, "ValidatingAdmissionPolicyBinding", "rel-connhealth-agent-node-restriction");
    assert_eq!(binding["spec"]["policyName"], "rel-connhealth-agent-node-restriction");
    assert_eq!(binding["spec"]["validationActions"], serde_json::json!(["Deny"]));
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    assert_eq!(
        policy["spec"]["matchConditions"][0]["expression"],
        "request.userInfo.username == \"system:serviceaccount:ops:node-agent\""
    );
    let rules = &policy["spec"]["matchConstraints"]["resourceRules"][0];
    assert_eq!(
        rules["resources"],
        serde_json::json!([
            "connectionhealths",
            "connectionhealths/status",
            "nodeconnectionhealths",
            "nodeconnectionhealths/status"
        ])
    );
    assert_eq!(rules["operations"], serde_json::json!(["CREATE", "UPDATE"]));
    // The Lease restriction, likewise: this release's agent, its Leases.
    let lease_policy = find(&docs, "ValidatingAdmissionPolicy", "rel-connhealth-agent-lease-restriction");
    let lease_binding = find(&docs, "ValidatingAdmissionPolicyBinding", "rel-connhealth-agent-lease-restriction");
    assert_eq!(lease_binding["spec"]["policyName"], "rel-connhealth-agent-lease-restriction");
    assert_eq!(lease_binding["spec"]["validationActions"], serde_json::json!(["Deny"]));
    assert_eq!(lease_policy["spec"]["matchConditions"], policy["spec"]["matchConditions"]);
    let lease_rules = &lease_policy["spec"]["matchConstraints"]["resourceRules"][0];
    assert_eq!(lease_rules["apiGroups"], serde_json::json!(["coordination.k8s.io"]));
    assert_eq!(lease_rules["resources"], serde_json::json!(["leases"]));
    let off = render("rel", "ops", &["--set", "agent.nodeRestriction.enabled=false"]);
    assert!(
        of_kind(&off, "ValidatingAdmissionPolicy").is_empty()
            && of_kind(&off, "ValidatingAdmissionPolicyBinding").is_empty()
    );
}

fn pod_spec(spec: &Option<PodSpec>) -> &PodSpec {
    spec.as_ref().expect("a pod spec")
}

fn env_value(container: &Container, name: &str) -> String {
    let env = container.env.as_deref().unwrap_or_default();
    let var = env.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("{}: no env {name}", container.name));
    var.value.clone().unwrap_or_else(|| panic!("{}: env {name} has no literal value", container.name))
}

fn env_field_ref(container: &Container, name: &str) -> String {
    let env = container.env.as_deref().unwrap_or_default();
    let var = env.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("{}: no env {name}", container.name));
    var.value_from.as_ref().and_then(|f| f.field_ref.as_ref()).map(|f| f.field_path.clone()).expect("a fieldRef")
}

fn env_names(container: &Container) -> BTreeSet<String> {
    container.env.as_deref().unwrap_or_default().iter().map(|e| e.name.clone()).collect()
}

fn probe_path(probe: &Option<k8s_openapi::api::core::v1::Probe>) -> String {
    let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("an httpGet probe");
    assert_eq!(get.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into()));
    get.path.clone().unwrap_or_default()
}

#[test]
fn agent_daemonset_has_the_documented_security_model_and_settings() {
    let docs = render("sec", "connhealth-system", &[]);
    let ds: DaemonSet = serde_json::from_value(find(&docs, "DaemonSet", "sec-connhealth-agent").clone()).unwrap();
    let pod = pod_spec(&ds.spec.as_ref().unwrap().template.spec);
    assert_eq!(pod.host_pid, Some(true), "the agent needs the host PID namespace");
    assert_ne!(pod.host_network, Some(true));
    assert_ne!(pod.host_ipc, Some(true));
    assert!(pod.volumes.as_deref().unwrap_or_default().iter().all(|v| v.host_path.is_none()), "no host paths");
    assert_eq!(pod.service_account_name.as_deref(), Some("sec-connhealth-agent"));
    assert_eq!(pod.security_context.as_ref().unwrap().seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()),
        "the agent must tolerate every taint to run on every node: {tolerations:?}"
    );
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some(format!("connhealth-agent:{VERSION}").as_str()));
    assert_eq!(c.args.as_deref(), Some(&["run".to_owned()][..]));

    let sc = c.security_context.as_ref().expect("container securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<&str> = caps.add.as_deref().unwrap_or_default().iter().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"]));

    // The agent's contract: NODE_NAME from the downward API, its settings by env.
    assert_eq!(env_field_ref(c, "NODE_NAME"), "spec.nodeName");
    assert_eq!(env_value(c, "CONNHEALTH_SCAN_INTERVAL"), "15s");
    assert_eq!(env_value(c, "CONNHEALTH_CLOSE_WAIT_MIN_AGE"), "2m");
    assert_eq!(env_field_ref(c, "POD_NAMESPACE"), "metadata.namespace");
    assert_eq!(env_value(c, "CONNHEALTH_LEASE_DURATION"), "40s");
    assert_eq!(env_value(c, "CONNHEALTH_LEASE_RENEW_INTERVAL"), "10s");
    assert_eq!(env_value(c, "CONNHEALTH_METRICS_ADDR"), "0.0.0.0:9090");
    assert_eq!(env_value(c, "CONNHEALTH_LOG_FORMAT"), "text");
    assert_eq!(env_value(c, "CONNHEALTH_API_TIMEOUT"), "10s");
    let port = &c.ports.as_deref().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.container_port), (Some("metrics"), 9090));
    assert_eq!(probe_path(&c.liveness_probe), "/healthz");
    assert_eq!(probe_path(&c.readiness_probe), "/readyz");
    let resources = serde_json::to_value(c.resources.as_ref().unwrap()).unwrap();
    assert_eq!(
        resources,
        json!({"requests": {"cpu": "20m", "memory": "48Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}})
    );

    // Options: priority class, IPv6 listen address, AppArmor.
    let docs = render(
        "sec",
        "connhealth-system",
        &[
            "--set",
            "agent.priorityClassName=system-node-critical",
            "--set",
            "agent.metrics.bindAddress=::",
            "--set",
            "agent.appArmorProfile.type=Unconfined",
        ],
    );
    let ds: DaemonSet = serde_json::from_value(find(&docs, "DaemonSet", "sec-connhealth-agent").clone()).unwrap();
    let pod = pod_spec(&ds.spec.as_ref().unwrap().template.spec);
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    assert_eq!(env_value(&pod.containers[0], "CONNHEALTH_METRICS_ADDR"), "[::]:9090");
    let apparmor = pod.containers[0].security_context.as_ref().unwrap().app_armor_profile.as_ref().unwrap();
    assert_eq!(apparmor.type_, "Unconfined");
}

#[test]
fn operator_deployment_has_the_documented_security_model_and_settings() {
    let docs = render("sec", "connhealth-system", &[]);
    let deployment: Deployment =
        serde_json::from_value(find(&docs, "Deployment", "sec-connhealth-operator").clone()).unwrap();
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pdb = find(&docs, "PodDisruptionBudget", "sec-connhealth-operator");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], serde_json::to_value(&spec.selector.match_labels).unwrap());

    let pod = pod_spec(&spec.template.spec);
    assert_ne!(pod.host_pid, Some(true));
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!((psc.run_as_non_root, psc.run_as_user, psc.run_as_group), (Some(true), Some(65532), Some(65532)));
    assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some(format!("connhealth-operator:{VERSION}").as_str()));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert!(sc.capabilities.as_ref().unwrap().add.is_none(), "the operator needs no capability");
    assert_eq!(env_field_ref(c, "POD_NAME"), "metadata.name");
    assert_eq!(env_field_ref(c, "POD_NAMESPACE"), "metadata.namespace");
    assert_eq!(env_value(c, "CONNHEALTH_METRICS_ADDR"), "0.0.0.0:8080");
    assert_eq!(env_value(c, "CONNHEALTH_LEADER_ELECTION"), "true");
    assert_eq!(env_value(c, "CONNHEALTH_API_TIMEOUT"), "10s");
    assert_eq!(probe_path(&c.liveness_probe), "/healthz");
    assert_eq!(probe_path(&c.readiness_probe), "/readyz");
    assert!(c.resources.as_ref().unwrap().limits.is_some() && c.resources.as_ref().unwrap().requests.is_some());

    // Every setting the chart passes is one the operator binary reads...
    let operator = workspace_binary("connhealth-operator");
    let help = run(Command::new(&operator).args(["run", "--help"]));
    assert!(help.ok, "connhealth-operator run --help: {}", help.stderr);
    let read: BTreeSet<String> =
        help.stdout.split("[env: ").skip(1).map(|rest| rest.split(['=', ']']).next().unwrap().to_owned()).collect();
    let unknown: Vec<_> = env_names(c).difference(&read).cloned().collect();
    assert!(
        unknown.is_empty(),
        "the chart sets {unknown:?}, which connhealth-operator does not read (it reads {read:?})"
    );

    // ...and the values the chart gives are accepted: with them the operator
    // gets past its settings and stops only for want of a cluster.
    let mut cmd = Command::new(&operator);
    cmd.arg("run").env_clear().env("KUBECONFIG", "/nonexistent/kubeconfig");
    for var in c.env.as_deref().unwrap() {
        if let Some(value) = &var.value {
            cmd.env(&var.name, value);
        }
    }
    cmd.env("POD_NAME", "op-0").env("POD_NAMESPACE", "connhealth-system");
    cmd.env("CONNHEALTH_METRICS_ADDR", "127.0.0.1:0"); // not 0.0.0.0:8080 on a shared machine
    let out = run(&mut cmd);
    assert!(!out.ok, "connhealth-operator ran without a cluster");
    for refusal in ["error: invalid value", "must be shorter", "must be positive", "unexpected argument"] {
        assert!(!out.stderr.contains(refusal), "connhealth-operator refused the chart's settings:\n{}", out.stderr);
    }
    assert!(out.stderr.contains("Kubernetes client"), "expected a failure for want of a cluster:\n{}", out.stderr);
}

// ---------------------------------------------------------------------------
// Monitoring extras (rendered)

#[test]
fn monitoring_objects_select_the_right_services_metrics_and_jobs() {
    let ns = "connhealth-system";
    let on = [
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "grafanaDashboard.enabled=true",
    ];
    // Off by default.
    let plain = render("mon", ns, &[]);
    for kind in ["ServiceMonitor", "PrometheusRule", "ConfigMap", "ConnectionHealthPolicy"] {
        assert!(of_kind(&plain, kind).is_empty(), "{kind} rendered by default");
    }
    let docs = render("mon", ns, &on);
    let agent_job = "mon-connhealth-agent";
    let operator_job = "mon-connhealth-operator";

    // Each ServiceMonitor selects exactly its component's Service, by a port it has.
    for (name, port) in [(agent_job, 9090), (operator_job, 8080)] {
        let monitor = find(&docs, "ServiceMonitor", name);
        let service = find(&docs, "Service", name);
        let selector = monitor["spec"]["selector"]["matchLabels"].as_object().unwrap();
        for (k, v) in selector {
            assert_eq!(&service["metadata"]["labels"][k], v, "ServiceMonitor {name} label {k}");
        }
        let other = if name == agent_job { operator_job } else { agent_job };
        let other_labels = &find(&docs, "Service", other)["metadata"]["labels"];
        assert!(selector.iter().any(|(k, v)| &other_labels[k] != v), "ServiceMonitor {name} also selects {other}");
        assert_eq!(monitor["spec"]["namespaceSelector"]["matchNames"], json!([ns]));
        assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
        assert_eq!(monitor["spec"]["endpoints"][0]["honorLabels"], true);
        assert_eq!(
            service["spec"]["ports"][0],
            json!({"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"})
        );
        assert_eq!(service["spec"]["selector"], monitor["spec"]["selector"]["matchLabels"]);
    }

    // Alerts: the documented set, on the right jobs, Prometheus templates intact.
    let rule = find(&docs, "PrometheusRule", "mon-connhealth");
    let alerts: BTreeMap<&str, &Value> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["alert"].as_str().unwrap(), r))
        .collect();
    assert_eq!(
        alerts.keys().copied().collect::<Vec<_>>(),
        [
            "ConnhealthAgentAbsent",
            "ConnhealthAgentDown",
            "ConnhealthAgentLeaseExpired",
            "ConnhealthNodeConntrackFull",
            "ConnhealthNodeLeaking",
            "ConnhealthNodeTimeWaitBuckets",
            "ConnhealthOperatorNoLeader",
            "ConnhealthPodLeaking",
            "ConnhealthPolicyViolations",
            "ConnhealthPortPressure",
            "ConnhealthTimeWaitBuckets",
            "ConnhealthTimeWaitOverflow",
            "ConnhealthTimeWaitSurge"
        ]
    );
    assert_eq!(
        alerts["ConnhealthNodeLeaking"]["expr"],
        format!("max by (node) (connhealth_agent_host_close_wait_stuck{{job=\"{agent_job}\"}}) >= 5")
    );
    let leaking = alerts["ConnhealthPodLeaking"];
    assert_eq!(
        leaking["expr"],
        format!("max by (namespace, pod) (connhealth_agent_close_wait_stuck{{job=\"{agent_job}\"}}) >= 5")
    );
    assert_eq!(leaking["for"], "10m");
    assert!(leaking["annotations"]["summary"].as_str().unwrap().contains("{{ $labels.namespace }}/{{ $labels.pod }}"));
    assert!(
        alerts["ConnhealthPolicyViolations"]["expr"]
            .as_str()
            .unwrap()
            .contains(&format!("connhealth_operator_violating_pods{{job=\"{operator_job}\"}}"))
    );
    assert_eq!(alerts["ConnhealthAgentDown"]["expr"], format!("up{{job=\"{agent_job}\"}} == 0"));
    assert_eq!(alerts["ConnhealthAgentAbsent"]["expr"], format!("absent(up{{job=\"{agent_job}\"}} == 1)"));
    assert!(
        alerts["ConnhealthOperatorNoLeader"]["expr"]
            .as_str()
            .unwrap()
            .contains(&format!("connhealth_operator_leader{{job=\"{operator_job}\"}}"))
    );
    assert_eq!(
        alerts["ConnhealthAgentLeaseExpired"]["expr"],
        format!("max(connhealth_operator_expired_agent_leases{{job=\"{operator_job}\"}}) > 0")
    );
    for (name, alert) in &alerts {
        assert_eq!(alert["labels"]["severity"], "warning", "{name}");
        assert!(alert["annotations"]["description"].as_str().is_some_and(|d| d.len() > 40), "{name}: no description");
    }

    // The dashboard: JSON, jobs filled in. Its queries are evaluated
    // against a real Prometheus scraping real components in
    // tests/prometheus.rs.
    let cm = find(&docs, "ConfigMap", "mon-connhealth-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value =
        serde_json::from_str(cm["data"]["connhealth.json"].as_str().unwrap()).expect("dashboard JSON");
    let text = dashboard.to_string();
    assert!(!text.contains("__CONNHEALTH_"), "a job placeholder was left in the dashboard");
    assert!(text.contains(agent_job) && text.contains(operator_job));

    // Job overrides reach alerts and dashboard.
    let overridden: Vec<&str> = on.iter().copied().chain(["--set", "prometheusJobs.agent=node-agents"]).collect();
    let docs = render("mon", ns, &overridden);
    let rule = find(&docs, "PrometheusRule", "mon-connhealth").to_string();
    assert!(rule.contains("up{job=\\\"node-agents\\\"} == 0"), "{rule}");
    assert!(find(&docs, "ConfigMap", "mon-connhealth-dashboard").to_string().contains("node-agents"));
}

/// Default policies: one per listed namespace with the given spec, but only
/// once the ConnectionHealthPolicy API exists where helm renders (helm cannot
/// create an object whose CRD the same release creates).
#[test]
fn default_policies_render_per_namespace_once_their_api_exists() {
    let on = ["--set", "defaultPolicy.enabled=true", "--set", "defaultPolicy.namespaces={shop,payments}"];
    let api = ["--api-versions", "connhealth.io/v1alpha1/ConnectionHealthPolicy"];
    let policies = |extra: &[&str]| -> Vec<Value> {
        let args: Vec<&str> = on.iter().chain(extra).copied().collect();
        render("pol", "ns", &args).into_iter().filter(|d| d["kind"] == "ConnectionHealthPolicy").collect()
    };
    assert!(policies(&[]).is_empty(), "policies rendered before their API exists");

    let custom = policies(&[&api[..], &["--set", "defaultPolicy.spec.closeWait.stuckCount=3"]].concat());
    let placed: Vec<(&str, &str)> = custom
        .iter()
        .map(|p| (p["metadata"]["namespace"].as_str().unwrap(), p["metadata"]["name"].as_str().unwrap()))
        .collect();
    assert_eq!(placed, [("shop", "connhealth-default"), ("payments", "connhealth-default")]);
    assert!(custom.iter().all(|p| p["spec"] == json!({"closeWait": {"stuckCount": 3}})));
    // An empty spec stays an (empty) object, so the API fills in its defaults.
    let defaults = policies(&api);
    assert_eq!(defaults.len(), 2);
    assert!(defaults.iter().all(|p| p["spec"] == json!({})));
}

// ---------------------------------------------------------------------------
// The API server validates every object

/// Minimal copies of prometheus-operator's ServiceMonitor and PrometheusRule
/// CRDs: the fields the chart uses, typed and patterned as upstream's
/// (`monitoring.coreos.com/v1`), so that a server-side dry run with strict
/// field validation refuses unknown fields and malformed durations. They are
/// created only when absent (the real CRDs, if someone installed them, are
/// used as they are), never updated and never deleted: the cluster is shared.
const PROMETHEUS_OPERATOR_FIXTURE_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
  labels: {connhealth.io/test-fixture: "true"}
  annotations: {connhealth.io/test-fixture: "minimal subset of prometheus-operator's CRD, for e2e/tests/chart.rs; the real CRD may replace it"}
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          required: [spec]
          properties:
            apiVersion: {type: string}
            kind: {type: string}
            metadata: {type: object}
            spec:
              type: object
              required: [selector]
              properties:
                endpoints:
                  type: array
                  items:
                    type: object
                    properties:
                      port: {type: string}
                      path: {type: string}
                      interval: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                      scrapeTimeout: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                      honorLabels: {type: boolean}
                namespaceSelector:
                  type: object
                  properties:
                    any: {type: boolean}
                    matchNames: {type: array, items: {type: string}}
                selector:
                  type: object
                  x-kubernetes-map-type: atomic
                  properties:
                    matchLabels: {type: object, additionalProperties: {type: string}}
                    matchExpressions:
                      type: array
                      items:
                        type: object
                        required: [key, operator]
                        properties:
                          key: {type: string}
                          operator: {type: string}
                          values: {type: array, items: {type: string}}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: prometheusrules.monitoring.coreos.com
  labels: {connhealth.io/test-fixture: "true"}
  annotations: {connhealth.io/test-fixture: "minimal subset of prometheus-operator's CRD, for e2e/tests/chart.rs; the real CRD may replace it"}
spec:
  group: monitoring.coreos.com
  names: {kind: PrometheusRule, listKind: PrometheusRuleList, plural: prometheusrules, singular: prometheusrule}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          required: [spec]
          properties:
            apiVersion: {type: string}
            kind: {type: string}
            metadata: {type: object}
            spec:
              type: object
              properties:
                groups:
                  type: array
                  x-kubernetes-list-type: map
                  x-kubernetes-list-map-keys: [name]
                  items:
                    type: object
                    required: [name]
                    properties:
                      name: {type: string, minLength: 1}
                      interval: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                      rules:
                        type: array
                        items:
                          type: object
                          required: [expr]
                          properties:
                            alert: {type: string}
                            record: {type: string}
                            expr: {anyOf: [{type: integer}, {type: string}], x-kubernetes-int-or-string: true}
                            for: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                            labels: {type: object, additionalProperties: {type: string}}
                            annotations: {type: object, additionalProperties: {type: string}}
"#;

fn ensure_prometheus_operator_crds(cluster: &Cluster) {
    for doc in documents(PROMETHEUS_OPERATOR_FIXTURE_CRDS) {
        let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
        if cluster.kubectl_run(&["get", "crd", &name]).0 {
            continue;
        }
        let (ok, _, stderr) = cluster.kubectl_stdin(&["create", "-f", "-"], &to_yaml(&[&doc]));
        assert!(ok || stderr.contains("AlreadyExists"), "creating fixture CRD {name}: {stderr}");
    }
    cluster
        .kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com",
        ])
        .expect("fixture CRDs established");
}

#[test]
fn every_rendered_object_passes_server_side_validation() {
    let cluster = Cluster::get();
    let ns = TestNamespace::new("chart-dryrun");
    // Pod Security: warn (never enforce) at `restricted`, to see which pod
    // templates would fall short of it.
    cluster
        .kubectl_ok(&["label", "namespace", &ns.name, "pod-security.kubernetes.io/warn=restricted"])
        .expect("label namespace");
    ensure_prometheus_operator_crds(cluster);

    let dir = TempDir::new("chart-dryrun");
    let values = dir.write("everything.yaml", &EVERYTHING_ON.replace("NAMESPACE", &ns.name));
    let release = format!("chd-{}", random_suffix());
    let docs = render(
        &release,
        &ns.name,
        &["-f", values.to_str().unwrap(), "--api-versions", "connhealth.io/v1alpha1/ConnectionHealthPolicy"],
    );
    let kinds: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "DaemonSet",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "ConnectionHealthPolicy",
    ] {
        assert!(kinds.contains(kind), "everything-on render lacks a {kind}");
    }

    let all: Vec<&Value> = docs.iter().collect();
    let (ok, stdout, stderr) =
        cluster.kubectl_stdin(&["apply", "--dry-run=server", "--validate=strict", "-f", "-"], &to_yaml(&all));
    assert!(ok, "the API server refused the chart's objects:\n{stdout}\n{stderr}");
    let accepted = stdout.lines().filter(|l| l.ends_with("(server dry run)")).count();
    assert_eq!(accepted, docs.len(), "not every object was validated:\n{stdout}");

    // The operator meets Pod Security `restricted`; the agent cannot (host PID
    // and capabilities), and the check sees that.
    for (kind, name, restricted) in [
        ("Deployment", format!("{release}-connhealth-operator"), true),
        ("DaemonSet", format!("{release}-connhealth-agent"), false),
    ] {
        let (ok, _, stderr) =
            cluster.kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &to_yaml(&[find(&docs, kind, &name)]));
        assert!(ok, "{kind} {name}: {stderr}");
        let warned = stderr.contains("would violate PodSecurity \"restricted");
        assert_eq!(!warned, restricted, "{kind} {name}: Pod Security warnings:\n{stderr}");
        if !restricted {
            assert!(stderr.contains("hostPID=true"), "{stderr}");
            assert!(!stderr.contains("privileged"), "the agent must not be privileged: {stderr}");
        }
    }
}

/// The chart's CRDs are the generated ones, plus the keep annotation; and
/// switch off.
#[test]
fn crd_templates_are_the_generated_crds_kept_on_uninstall_and_switchable() {
    let docs = render("crds", "ns", &[]);
    let rendered = of_kind(&docs, "CustomResourceDefinition");
    let generated: Vec<Value> = connhealth_crds::crds().iter().map(|c| serde_json::to_value(c).unwrap()).collect();
    assert_eq!(rendered.len(), generated.len());
    for expected in &generated {
        let name = expected["metadata"]["name"].as_str().unwrap();
        let mut actual = find(&docs, "CustomResourceDefinition", name).clone();
        let annotations = actual["metadata"]["annotations"].as_object_mut().expect("annotations");
        assert_eq!(
            annotations.remove("helm.sh/resource-policy"),
            Some(json!("keep")),
            "{name} is not kept on uninstall"
        );
        if annotations.is_empty() {
            actual["metadata"].as_object_mut().unwrap().remove("annotations");
        }
        assert!(actual == *expected, "the chart's {name} differs from what crds/src generates; run crdgen");
    }
    let off = render("crds", "ns", &["--set", "crds.install=false"]);
    assert!(of_kind(&off, "CustomResourceDefinition").is_empty(), "crds.install=false still renders CRDs");
}

// ---------------------------------------------------------------------------
// install / upgrade / uninstall

/// Names (`kind.group/name`) of the release's objects in a namespace.
fn release_objects(cluster: &Cluster, namespace: Option<&str>, kinds: &str, release: &str) -> BTreeSet<String> {
    let selector = format!("app.kubernetes.io/instance={release}");
    let mut args = vec!["get", kinds, "-l", &selector, "-o", "name"];
    if let Some(ns) = namespace {
        args.extend(["-n", ns]);
    }
    cluster.kubectl_ok(&args).unwrap().lines().map(str::to_owned).collect()
}

/// Uninstalls a release when dropped, also after a failed assertion, so that
/// its cluster-scoped objects (ClusterRoles and their bindings) never outlive
/// the test's namespace. Declared after the [`TestNamespace`], it is dropped
/// first.
struct ReleaseGuard {
    name: String,
    namespace: String,
}

impl Drop for ReleaseGuard {
    fn drop(&mut self) {
        let _ = helm(&["uninstall", &self.name, "-n", &self.namespace, "--ignore-not-found"]);
        let selector = format!("app.kubernetes.io/instance={}", self.name);
        let _ = Cluster::get().kubectl_run(&["delete", CLUSTER_KINDS, "-l", &selector, "--ignore-not-found"]);
    }
}

const NAMESPACED_KINDS: &str =
    "daemonsets,deployments,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets,connectionhealthpolicies";
const CLUSTER_KINDS: &str =
    "clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings";

#[test]
fn install_upgrade_uninstall_round_trip() {
    let cluster = Cluster::get();
    let ns = TestNamespace::new("chart-roundtrip");
    let release = format!("chr-{}", random_suffix());
    let full = format!("{release}-connhealth");
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    // crds.install=false: the harness owns the CRDs (server-side apply) and
    // other tests use them; a release must neither adopt nor remove them.
    // The pods must never run, even on a cluster that gains a kubelet and
    // scheduler (they would act cluster-wide): an image that cannot exist,
    // never pulled, and a node selector no node has.
    let dir = TempDir::new("chart-roundtrip");
    let values = dir.write(
        "values.yaml",
        &format!(
            "crds: {{install: false}}\n\
             image: {{registry: chart-test.invalid, pullPolicy: Never}}\n\
             agent: {{nodeSelector: {{connhealth.io/chart-test: no-such-node}}}}\n\
             operator: {{nodeSelector: {{connhealth.io/chart-test: no-such-node}}}}\n\
             defaultPolicy: {{enabled: true, namespaces: [{ns}]}}\n",
            ns = ns.name
        ),
    );
    let values = values.to_str().unwrap();

    let _guard = ReleaseGuard { name: release.clone(), namespace: ns.name.clone() };
    let installed = helm_ok(&["install", &release, chart, "-n", &ns.name, "-f", values]);
    for next_step in ["kubectl get connectionhealth -A", "kubectl get chp -A", &format!("daemonset/{full}-agent")] {
        assert!(installed.contains(next_step), "NOTES do not say {next_step:?}:\n{installed}");
    }
    let expected: BTreeSet<String> = [
        format!("daemonset.apps/{full}-agent"),
        format!("deployment.apps/{full}-operator"),
        format!("service/{full}-agent"),
        format!("service/{full}-operator"),
        format!("serviceaccount/{full}-agent"),
        format!("serviceaccount/{full}-operator"),
        format!("role.rbac.authorization.k8s.io/{full}-agent"),
        format!("role.rbac.authorization.k8s.io/{full}-operator"),
        format!("rolebinding.rbac.authorization.k8s.io/{full}-agent"),
        format!("rolebinding.rbac.authorization.k8s.io/{full}-operator"),
        format!("poddisruptionbudget.policy/{full}-operator"),
        "connectionhealthpolicy.connhealth.io/connhealth-default".to_owned(),
    ]
    .into();
    assert_eq!(release_objects(cluster, Some(&ns.name), NAMESPACED_KINDS, &release), expected);
    let expected_cluster: BTreeSet<String> = [
        format!("clusterrole.rbac.authorization.k8s.io/{full}-agent"),
        format!("clusterrole.rbac.authorization.k8s.io/{full}-operator"),
        format!("clusterrolebinding.rbac.authorization.k8s.io/{full}-agent"),
        format!("clusterrolebinding.rbac.authorization.k8s.io/{full}-operator"),
        format!("validatingadmissionpolicy.admissionregistration.k8s.io/{full}-agent-node-restriction"),
        format!("validatingadmissionpolicybinding.admissionregistration.k8s.io/{full}-agent-node-restriction"),
        format!("validatingadmissionpolicy.admissionregistration.k8s.io/{full}-agent-lease-restriction"),
        format!("validatingadmissionpolicybinding.admissionregistration.k8s.io/{full}-agent-lease-restriction"),
        format!("validatingadmissionpolicy.admissionregistration.k8s.io/{full}-agent-snapshot-restriction"),
        format!("validatingadmissionpolicybinding.admissionregistration.k8s.io/{full}-agent-snapshot-restriction"),
        format!("clusterrole.rbac.authorization.k8s.io/{full}-snapshot-requester"),
    ]
    .into();
    assert_eq!(release_objects(cluster, None, CLUSTER_KINDS, &release), expected_cluster);
    let get = |args: &[&str]| {
        let mut all = vec!["-n", ns.name.as_str(), "get"];
        all.extend_from_slice(args);
        cluster.kubectl_ok(&all).unwrap()
    };
    let scan_interval =
        "jsonpath={.spec.template.spec.containers[0].env[?(@.name==\"CONNHEALTH_SCAN_INTERVAL\")].value}";
    assert_eq!(get(&["daemonset", &format!("{full}-agent"), "-o", scan_interval]), "15s");
    assert_eq!(
        get(&["daemonset", &format!("{full}-agent"), "-o", "jsonpath={.spec.template.spec.containers[0].image}"]),
        format!("chart-test.invalid/connhealth-agent:{VERSION}")
    );

    // Upgrade: change values; they take.
    helm_ok(&[
        "upgrade",
        &release,
        chart,
        "-n",
        &ns.name,
        "--reuse-values",
        "--set",
        "agent.scanInterval=30s",
        "--set",
        "operator.replicas=3",
        "--set",
        "defaultPolicy.spec.closeWait.stuckCount=7",
    ]);
    assert_eq!(get(&["daemonset", &format!("{full}-agent"), "-o", scan_interval]), "30s");
    assert_eq!(get(&["deployment", &format!("{full}-operator"), "-o", "jsonpath={.spec.replicas}"]), "3");
    assert_eq!(get(&["chp", "connhealth-default", "-o", "jsonpath={.spec.closeWait.stuckCount}"]), "7");
    let status: Value = serde_json::from_str(&helm_ok(&["status", &release, "-n", &ns.name, "-o", "json"])).unwrap();
    assert_eq!((status["version"].as_i64(), status["info"]["status"].as_str()), (Some(2), Some("deployed")));

    // Uninstall: everything goes, cluster-scoped objects too; the CRDs stay.
    helm_ok(&["uninstall", &release, "-n", &ns.name]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut left = release_objects(cluster, Some(&ns.name), NAMESPACED_KINDS, &release);
        left.extend(release_objects(cluster, None, CLUSTER_KINDS, &release));
        // A policy may wait on the finalizer of an operator another test is
        // running (they watch every namespace); being deleted is gone enough,
        // and the finalizer is cleared so that the namespace can go.
        let policy = "connectionhealthpolicy.connhealth.io/connhealth-default";
        if left.contains(policy) {
            let deleting = get(&["chp", "connhealth-default", "-o", "jsonpath={.metadata.deletionTimestamp}"]);
            if !deleting.is_empty() {
                left.remove(policy);
                let _ = cluster.kubectl_run(&[
                    "-n",
                    &ns.name,
                    "patch",
                    "chp",
                    "connhealth-default",
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ]);
            }
        }
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left after helm uninstall: {left:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!helm(&["status", &release, "-n", &ns.name]).ok, "the release still exists");
    cluster
        .kubectl_ok(&["get", "crd", "connectionhealths.connhealth.io", "connectionhealthpolicies.connhealth.io"])
        .expect("the CRDs survive helm uninstall");
}

// ---------------------------------------------------------------------------
// Images

/// sha256 of a file, as `sha256:<hex>`.
fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    assert!(out.ok, "sha256sum {}: {}", path.display(), out.stderr);
    format!("sha256:{}", out.stdout.split_whitespace().next().unwrap())
}

/// The blob a descriptor points at, checked against its digest and size.
fn blob(layout: &Path, descriptor: &Value) -> PathBuf {
    let digest = descriptor["digest"].as_str().expect("descriptor digest");
    let (algorithm, hex) = digest.split_once(':').expect("algorithm:hex");
    assert_eq!(algorithm, "sha256");
    let path = layout.join("blobs").join(algorithm).join(hex);
    assert!(path.is_file(), "blob {digest} is missing");
    assert_eq!(sha256(&path), digest, "blob {digest} does not match its digest");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), descriptor["size"].as_u64().unwrap(), "size of {digest}");
    path
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether an ELF file asks for a dynamic loader (PT_INTERP).
fn has_interpreter(path: &Path) -> bool {
    let data = std::fs::read(path).unwrap();
    assert_eq!(&data[..4], b"\x7fELF", "{} is not ELF", path.display());
    assert_eq!((data[4], data[5]), (2, 1), "{} is not 64-bit little-endian", path.display());
    let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| u32::from_le_bytes(data[phoff + i * phentsize..][..4].try_into().unwrap()) == 3)
}

#[test]
fn build_image_writes_valid_oci_archives_the_chart_agrees_with() {
    let out_dir = TempDir::new("chart-images");
    let script = repo_root().join("scripts/build-image");
    let built = run(Command::new(&script).arg("--out").arg(&out_dir.0));
    assert!(built.ok, "scripts/build-image failed:\n{}", built.stderr);
    let printed = run(Command::new(&script).arg("--print").arg("--out").arg(&out_dir.0));
    assert!(printed.ok, "scripts/build-image --print failed:\n{}", printed.stderr);
    assert_eq!(printed.stdout, built.stdout, "--print describes something else than what was built");

    let docs = render("img", "ns", &[]);

    for (component, workload_kind) in [("agent", "DaemonSet"), ("operator", "Deployment")] {
        let name = format!("connhealth-{component}");
        let archive = out_dir.0.join(format!("{name}-{VERSION}.oci.tar"));
        assert!(archive.is_file(), "{} was not written", archive.display());
        assert!(printed.stdout.contains(archive.to_str().unwrap()));
        let layout = out_dir.0.join(format!("{component}-layout"));
        std::fs::create_dir_all(&layout).unwrap();
        let untar = run(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&layout));
        assert!(untar.ok, "tar -xf {}: {}", archive.display(), untar.stderr);

        // oci-layout -> index.json -> manifest -> config and layers.
        assert_eq!(read_json(&layout.join("oci-layout")), json!({"imageLayoutVersion": "1.0.0"}));
        let index = read_json(&layout.join("index.json"));
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        let entry = &entries[0];
        assert_eq!(entry["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(entry["platform"], json!({"architecture": "amd64", "os": "linux"}));
        let image_name = format!("docker.io/library/{name}:{VERSION}");
        assert_eq!(entry["annotations"]["io.containerd.image.name"], image_name.as_str());
        assert_eq!(entry["annotations"]["org.opencontainers.image.ref.name"], VERSION);
        assert!(printed.stdout.contains(entry["digest"].as_str().unwrap()));
        // The chart's default image reference is this image once imported
        // (`connhealth-agent:0.1.0` is short for docker.io/library/...).
        let workload = find(&docs, workload_kind, &format!("img-connhealth-{component}"));
        let image = workload["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap();
        assert_eq!(format!("docker.io/library/{image}"), image_name);
        // A released chart (scripts/release) names the registry and this
        // manifest's digest: the image is pulled by digest, tag unused.
        let digest = entry["digest"].as_str().unwrap();
        let released = render(
            "img",
            "ns",
            &[
                "--set",
                "image.registry=registry.example.com/connhealth",
                "--set",
                &format!("{component}.image.digest={digest}"),
            ],
        );
        let workload = find(&released, workload_kind, &format!("img-connhealth-{component}"));
        assert_eq!(
            workload["spec"]["template"]["spec"]["containers"][0]["image"],
            format!("registry.example.com/connhealth/{name}@{digest}").as_str()
        );

        let manifest = read_json(&blob(&layout, entry));
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
        let config = read_json(&blob(&layout, &manifest["config"]));
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
        let layer = blob(&layout, &layers[0]);
        let layer_tar = layout.join("layer.tar");
        let gunzip = run(Command::new("sh").arg("-c").arg(format!(
            "gzip -dc '{}' > '{}'",
            layer.display(),
            layer_tar.display()
        )));
        assert!(gunzip.ok, "gunzip layer: {}", gunzip.stderr);
        assert_eq!(config["rootfs"], json!({"type": "layers", "diff_ids": [sha256(&layer_tar)]}), "diff_ids");

        // Docker-style manifest.json points at the same blobs.
        let docker = read_json(&layout.join("manifest.json"));
        assert_eq!(
            docker[0]["Config"],
            format!("blobs/sha256/{}", &manifest["config"]["digest"].as_str().unwrap()[7..])
        );
        assert_eq!(docker[0]["RepoTags"], json!([format!("{name}:{VERSION}")]));

        // The image config.
        assert_eq!((config["os"].as_str(), config["architecture"].as_str()), (Some("linux"), Some("amd64")));
        let c = &config["config"];
        assert_eq!(c["User"], "65532:65532");
        assert_eq!(c["Entrypoint"], json!([format!("/usr/local/bin/{name}")]));
        assert_eq!(c["Cmd"], json!(["run"]));
        let labels = &c["Labels"];
        assert_eq!(labels["org.opencontainers.image.title"], name.as_str());
        assert_eq!(labels["org.opencontainers.image.version"], VERSION);
        assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
        for key in ["source", "revision", "created", "description", "url"] {
            assert!(
                labels[format!("org.opencontainers.image.{key}")].as_str().is_some_and(|v| !v.is_empty()),
                "label {key} missing"
            );
        }

        // The filesystem: a static binary that runs, and who 65532 is.
        let rootfs = layout.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let untar = run(Command::new("tar").arg("-xf").arg(&layer_tar).arg("-C").arg(&rootfs));
        assert!(untar.ok, "untar layer: {}", untar.stderr);
        let binary = rootfs.join("usr/local/bin").join(&name);
        assert!(!has_interpreter(&binary), "{name} in the image is dynamically linked");
        let version = run(Command::new(&binary).arg("--version"));
        assert!(
            version.ok && version.stdout.trim() == format!("{name} {VERSION}"),
            "{name} --version: {}{}",
            version.stdout,
            version.stderr
        );
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
        assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    }
}
