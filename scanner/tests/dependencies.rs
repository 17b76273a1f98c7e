//! The scanner knows nothing of Kubernetes, and Cargo enforces it: no kube
//! crate (nor k8s-openapi, nor the runtime's client) anywhere in its
//! dependency tree, dev-dependencies included.

use connhealth_scan::testing::cargo_tree;

#[test]
fn no_kubernetes_crate_in_the_scanners_dependency_tree() {
    let tree = cargo_tree(env!("CARGO_MANIFEST_DIR"), &["-p", "connhealth-scan", "-e", "normal,build,dev"]);
    assert!(tree.contains("libc "), "cargo tree output looks wrong:\n{tree}");
    for forbidden in ["kube", "k8s-openapi", "connhealth-crds", "tokio ", "hyper "] {
        assert!(!tree.contains(forbidden), "connhealth-scan depends on {forbidden}:\n{tree}");
    }
}
