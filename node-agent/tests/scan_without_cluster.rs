//! `connhealth-agent scan` builds without Kubernetes: with the `cluster`
//! feature off, the agent's dependency tree holds the scanner but no kube
//! crate, no k8s-openapi and no async runtime; with it on (the default),
//! the client is there for `run`.

use connhealth_scan::testing::cargo_tree;

#[test]
fn scan_alone_compiles_no_kubernetes_client() {
    let scan_only = cargo_tree(
        env!("CARGO_MANIFEST_DIR"),
        &["-p", "connhealth-agent", "--no-default-features", "-e", "normal,build"],
    );
    assert!(scan_only.contains("connhealth-scan "), "cargo tree output looks wrong:\n{scan_only}");
    for forbidden in ["kube", "k8s-openapi", "tokio ", "hyper "] {
        assert!(!scan_only.contains(forbidden), "scan-only connhealth-agent depends on {forbidden}:\n{scan_only}");
    }
    let cluster = cargo_tree(env!("CARGO_MANIFEST_DIR"), &["-p", "connhealth-agent", "-e", "normal"]);
    assert!(cluster.contains("kube-client "), "cluster mode lost its client:\n{cluster}");
}
