//! Credentials other than the admin's: [`TokenKubeconfig`], a kubeconfig
//! holding a ServiceAccount's token (`kubectl create token`) and the
//! cluster's server URL and CA taken from the admin kubeconfig — never the
//! admin's client certificate — so that a component run with it has exactly
//! the ServiceAccount's permissions. [`TokenKubeconfig::bound_to_node`]
//! gives the token a DaemonSet pod on a node has (bound to a Pod object on
//! that node, so the API server names the node in the user's extra info),
//! which the chart's node restriction requires of the agent.
//! [`chart_rbac`] and [`apply_rbac`]: one component's RBAC and
//! ServiceAccount as the chart renders them, applied for a test (its
//! cluster-scoped roles deleted with the returned [`ClusterScoped`]), so
//! that the component runs with exactly the chart's permissions.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::{Cluster, random_suffix, repo_root};

/// Cluster-scoped objects (`kind/name`) a test created: printed when the
/// test fails, deleted when dropped (a test namespace's deletion does not
/// take them).
pub struct ClusterScoped(pub Vec<String>);

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        let cluster = Cluster::get();
        if std::thread::panicking() && !self.0.is_empty() {
            let mut args = vec!["get", "-o", "yaml", "--ignore-not-found"];
            args.extend(self.0.iter().map(String::as_str));
            let (_, stdout, stderr) = cluster.kubectl_run(&args);
            eprintln!("==== cluster-scoped objects of the test ====\n{stdout}{stderr}");
        }
        for object in &self.0 {
            let _ = cluster.kubectl_run(&["delete", object, "--ignore-not-found"]);
        }
    }
}

/// The chart's rendered RBAC (and ServiceAccount) of one component
/// (`agent` or `operator`), for release `release` in `namespace`, as YAML
/// documents.
pub fn chart_rbac(release: &str, namespace: &str, component: &str) -> Vec<Value> {
    let chart = repo_root().join("charts/connhealth");
    let (ok, stdout, stderr) = Cluster::get().helm_run(&[
        "template",
        release,
        chart.to_str().unwrap(),
        "-n",
        namespace,
        "--set",
        "crds.install=false",
        "--show-only",
        &format!("templates/{component}/rbac.yaml"),
        "--show-only",
        &format!("templates/{component}/serviceaccount.yaml"),
    ]);
    assert!(ok, "helm template failed:\n{stdout}{stderr}");
    serde_yaml::Deserializer::from_str(&stdout)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Applies the documents of [`chart_rbac`] (admin) and returns a guard
/// deleting the cluster-scoped ones, and the ServiceAccount's name.
pub fn apply_rbac(docs: &[Value]) -> (ClusterScoped, String) {
    let cluster = Cluster::get();
    let guard = ClusterScoped(
        docs.iter()
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding")
            .map(|d| {
                format!("{}/{}", d["kind"].as_str().unwrap().to_lowercase(), d["metadata"]["name"].as_str().unwrap())
            })
            .collect(),
    );
    let yaml: String = docs.iter().map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap())).collect();
    let (ok, _, stderr) = cluster.kubectl_stdin(&["apply", "-f", "-"], &yaml);
    assert!(ok, "apply RBAC: {stderr}");
    let sa = docs.iter().find(|d| d["kind"] == "ServiceAccount").expect("a ServiceAccount");
    (guard, sa["metadata"]["name"].as_str().unwrap().to_owned())
}

/// A kubeconfig file for one ServiceAccount, removed when dropped (with
/// the Pod its token is bound to, if any).
pub struct TokenKubeconfig {
    /// The file (mode 0600).
    pub path: PathBuf,
    /// `system:serviceaccount:<namespace>:<name>`.
    pub username: String,
    bin_dir: PathBuf,
    /// `(namespace, name)` of the Pod the token is bound to.
    bound_pod: Option<(String, String)>,
}

impl TokenKubeconfig {
    /// Requests a token for ServiceAccount `namespace/name` (valid for an
    /// hour: `kubectl create token --duration=1h`) and writes a kubeconfig
    /// with it, the admin kubeconfig's server URL and CA, and nothing else.
    pub fn for_service_account(cluster: &Cluster, namespace: &str, name: &str) -> anyhow::Result<Self> {
        Self::with_token(cluster, namespace, name, &[])
    }

    /// A token for ServiceAccount `namespace/name` bound to a new Pod object
    /// of that account placed on `node` — what the kubelet mounts into a
    /// DaemonSet pod there: the API server puts the node's name into the
    /// user's extra info (`authentication.kubernetes.io/node-name`). The pod
    /// never runs (no kubelet serves it); it is deleted with the kubeconfig,
    /// which ends the token.
    pub fn bound_to_node(cluster: &Cluster, namespace: &str, name: &str, node: &str) -> anyhow::Result<Self> {
        let pod = format!("{name}-token-{}", random_suffix());
        let manifest = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": pod, "namespace": namespace },
            "spec": {
                "serviceAccountName": name,
                "nodeName": node,
                "automountServiceAccountToken": false,
                "containers": [{ "name": "token-holder", "image": "token-holder.invalid/none:0" }],
            },
        });
        let (ok, stdout, stderr) = cluster.kubectl_stdin(&["create", "-f", "-"], &manifest.to_string());
        if !ok {
            bail!("create the Pod {namespace}/{pod} to bind a token to: {stdout}{stderr}");
        }
        let bound = Self::with_token(
            cluster,
            namespace,
            name,
            &["--bound-object-kind=Pod", &format!("--bound-object-name={pod}")],
        );
        match bound {
            Ok(mut kubeconfig) => {
                kubeconfig.bound_pod = Some((namespace.to_owned(), pod));
                Ok(kubeconfig)
            }
            Err(error) => {
                cluster.delete_pod_now(namespace, &pod);
                Err(error)
            }
        }
    }

    fn with_token(cluster: &Cluster, namespace: &str, name: &str, token_args: &[&str]) -> anyhow::Result<Self> {
        let mut args = vec!["create", "token", name, "-n", namespace, "--duration=1h"];
        args.extend_from_slice(token_args);
        let token = cluster.kubectl_ok(&args)?;
        let token = token.trim();
        if token.is_empty() {
            bail!("kubectl create token {name} -n {namespace} printed no token");
        }
        let admin: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(&cluster.kubeconfig)
                .with_context(|| format!("read {}", cluster.kubeconfig.display()))?,
        )
        .context("parse the admin kubeconfig")?;
        let current = admin["current-context"].as_str().context("admin kubeconfig: no current-context")?;
        let context = admin["contexts"]
            .as_sequence()
            .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some(current)))
            .context("admin kubeconfig: the current context is not defined")?;
        let cluster_name =
            context["context"]["cluster"].as_str().context("admin kubeconfig: context without cluster")?;
        let entry = admin["clusters"]
            .as_sequence()
            .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some(cluster_name)))
            .context("admin kubeconfig: the context's cluster is not defined")?;
        let server = entry["cluster"]["server"].as_str().context("admin kubeconfig: cluster without server")?;
        let mut cluster_entry = json!({ "server": server });
        // The CA, as data or as a file path, whichever the admin's has.
        for key in ["certificate-authority-data", "certificate-authority"] {
            if let Some(value) = entry["cluster"][key].as_str() {
                cluster_entry[key] = json!(value);
            }
        }
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "connhealth-e2e", "cluster": cluster_entry }],
            "users": [{ "name": user, "user": { "token": token } }],
            "contexts": [{ "name": "sa", "context": { "cluster": "connhealth-e2e", "user": user } }],
            "current-context": "sa",
        });
        let path = std::env::temp_dir().join(format!("sa-{namespace}-{name}-{}.kubeconfig", random_suffix()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        file.write_all(serde_yaml::to_string(&config)?.as_bytes())?;
        Ok(TokenKubeconfig { path, username: user, bin_dir: cluster.bin_dir.clone(), bound_pod: None })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs kubectl with this kubeconfig; returns (success, stdout, stderr).
    pub fn kubectl_run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(self.bin_dir.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.path)
            .args(args)
            .output()
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Who the API server says this kubeconfig authenticates as
    /// (`kubectl auth whoami`), or kubectl's error.
    pub fn whoami(&self) -> Result<String, String> {
        let (ok, stdout, stderr) = self.kubectl_run(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
        if ok { Ok(stdout.trim().to_owned()) } else { Err(stderr) }
    }

    /// The node the API server finds in this kubeconfig's token (the user's
    /// extra `authentication.kubernetes.io/node-name`): `Ok(None)` when it
    /// names none, kubectl's error when whoami fails.
    pub fn token_node(&self) -> Result<Option<String>, String> {
        let (ok, stdout, stderr) = self.kubectl_run(&["auth", "whoami", "-o", "json"]);
        if !ok {
            return Err(stderr);
        }
        let review: serde_json::Value = serde_json::from_str(&stdout).map_err(|e| format!("{e}: {stdout}"))?;
        let nodes = &review["status"]["userInfo"]["extra"]["authentication.kubernetes.io/node-name"];
        match nodes.as_array().map(Vec::as_slice) {
            None => Ok(None),
            Some([node]) => {
                Ok(Some(node.as_str().ok_or_else(|| format!("node name not a string: {review}"))?.to_owned()))
            }
            Some(_) => Err(format!("not exactly one node name: {review}")),
        }
    }
}

impl Drop for TokenKubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some((namespace, pod)) = &self.bound_pod {
            Cluster::get().delete_pod_now(namespace, pod);
        }
    }
}
