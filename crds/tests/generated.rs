//! The checked-in CRD YAML is exactly what the Rust types generate, and the
//! generated CRDs carry what `kubectl` users rely on: short names, category,
//! printer columns, status subresources, CEL rules, descriptions everywhere.

use std::collections::BTreeSet;

use connhealth_crds::{ConnectionHealth, ConnectionHealthPolicy, ConnectionHealthPolicySpec, generated_manifests};
use kube::CustomResourceExt;
use serde_json::Value;

#[test]
fn checked_in_yaml_matches_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, expected) in generated_manifests() {
        let path = dir.join(&name);
        let actual = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            actual == expected,
            "{} is stale or missing: the Rust types in crds/src changed. \
             Regenerate with `cargo run -p connhealth-crds --bin crdgen` and commit the result.",
            path.display()
        );
    }
}

fn as_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("serializable")
}

fn printer_columns(crd: &Value) -> Vec<(String, String)> {
    crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c["jsonPath"].as_str().unwrap().to_owned()))
        .collect()
}

/// All `x-kubernetes-validations` messages anywhere in a schema.
fn cel_messages(schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                for rule in rules {
                    assert!(rule["rule"].is_string(), "a CEL rule without a rule: {rule}");
                    out.insert(rule["message"].as_str().expect("every CEL rule has a message").to_owned());
                }
            }
            map.values().for_each(|v| cel_messages(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| cel_messages(v, out)),
        _ => {}
    }
}

/// Paths of object properties that have no description: `kubectl explain`
/// would print nothing for them.
fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let here = format!("{path}.{name}");
            // metadata and apiVersion/kind are Kubernetes' own.
            let standard = path.is_empty() && matches!(name.as_str(), "metadata" | "apiVersion" | "kind");
            if !standard && prop.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
                out.push(here.clone());
            }
            undocumented(prop, &here, out);
        }
    }
    if let Some(items) = schema.get("items") {
        undocumented(items, &format!("{path}[]"), out);
    }
}

#[test]
fn policy_crd_has_names_columns_status_and_rules() {
    let crd = as_json(&ConnectionHealthPolicy::crd());
    let names = &crd["spec"]["names"];
    assert_eq!(names["shortNames"], serde_json::json!(["chp"]));
    assert_eq!(names["categories"], serde_json::json!(["connhealth"]));
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));

    let columns = printer_columns(&crd);
    let column_names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(column_names, ["Matched", "Violating", "Ready", "Age"]);
    assert!(columns.contains(&("Ready".into(), ".status.conditions[?(@.type==\"Ready\")].status".into())));

    let schema = &version["schema"]["openAPIV3Schema"];
    let mut messages = BTreeSet::new();
    cel_messages(schema, &mut messages);
    for expected in [
        "at least one check (closeWait or portPressure) must be enabled",
        "at least one action (events or annotations) must be enabled",
        "must be a positive duration such as 30s, 5m or 1h30m",
    ] {
        assert!(messages.contains(expected), "missing CEL rule {expected:?}; have {messages:?}");
    }
    // Positive thresholds are enforced by the schema itself.
    let close_wait = &schema["properties"]["spec"]["properties"]["closeWait"]["properties"];
    assert_eq!(close_wait["warningCount"]["minimum"], 1.0);
    assert_eq!(close_wait["stuckCount"]["minimum"], 1.0);

    let conditions = &schema["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], serde_json::json!(["type"]));
}

#[test]
fn health_crd_has_names_columns_status_and_field_selector() {
    let crd = as_json(&ConnectionHealth::crd());
    let names = &crd["spec"]["names"];
    assert_eq!(names["shortNames"], serde_json::json!(["ch", "connhealth"]));
    assert_eq!(names["categories"], serde_json::json!(["connhealth"]));
    assert_eq!(names["plural"], "connectionhealths");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    assert_eq!(version["selectableFields"], serde_json::json!([{"jsonPath": ".spec.nodeName"}]));

    let columns = printer_columns(&crd);
    let expected = [
        ("Node", ".spec.nodeName"),
        ("Established", ".status.states.established"),
        ("Close-Wait", ".status.closeWait.count"),
        ("Stuck", ".status.closeWait.stuck"),
        ("Oldest", ".status.closeWait.oldestSince"),
        ("Time-Wait", ".status.states.timeWait"),
        ("Port-Pressure", ".status.portPressure.percent"),
        ("Owner", ".status.closeWait.owners[0].command"),
        ("Verdict", ".status.verdict.result"),
        ("Policy", ".status.verdict.policy"),
        ("Age", ".metadata.creationTimestamp"),
    ];
    let expected: Vec<(String, String)> = expected.iter().map(|(n, p)| (n.to_string(), p.to_string())).collect();
    assert_eq!(columns, expected);
}

#[test]
fn every_field_has_a_description() {
    for crd in connhealth_crds::crds() {
        let crd = as_json(&crd);
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        undocumented(schema, "", &mut missing);
        assert!(missing.is_empty(), "{}: fields without a description: {missing:?}", crd["metadata"]["name"]);
    }
}

/// The defaults the API server fills in (from the schema) are the defaults
/// the Rust types use when a field is absent, so the operator and a user
/// reading `kubectl get -o yaml` see the same policy.
#[test]
fn schema_defaults_equal_rust_defaults() {
    let from_rust: ConnectionHealthPolicySpec = serde_json::from_value(serde_json::json!({})).unwrap();
    let crd = as_json(&ConnectionHealthPolicy::crd());
    let spec_schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let rust = as_json(&from_rust);
    for field in ["closeWait", "portPressure", "actions", "podSelector"] {
        assert_eq!(spec_schema[field]["default"], rust[field], "default of spec.{field}");
    }
}

/// The API crate must stay light: no kube client, no controller runtime.
#[test]
fn api_crate_pulls_in_no_kube_runtime_or_client() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["tree", "--offline", "-p", "connhealth-crds", "-e", "normal", "--prefix", "none", "-f", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8(out.stdout).unwrap();
    assert!(tree.contains("kube-core"), "cargo tree output looks wrong:\n{tree}");
    for forbidden in ["kube-runtime", "kube-client", "tokio "] {
        assert!(!tree.contains(forbidden), "connhealth-crds depends on {forbidden}:\n{tree}");
    }
}
