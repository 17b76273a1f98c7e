//! Credentials other than the admin's: [`TokenKubeconfig`], a kubeconfig
//! holding a ServiceAccount's token (`kubectl create token`) and the
//! cluster's server URL and CA taken from the admin kubeconfig — never the
//! admin's client certificate — so that a component run with it has exactly
//! the ServiceAccount's permissions.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::{Cluster, random_suffix};

/// A kubeconfig file for one ServiceAccount, removed when dropped.
pub struct TokenKubeconfig {
    /// The file (mode 0600).
    pub path: PathBuf,
    /// `system:serviceaccount:<namespace>:<name>`.
    pub username: String,
    bin_dir: PathBuf,
}

impl TokenKubeconfig {
    /// Requests a token for ServiceAccount `namespace/name` (valid for an
    /// hour: `kubectl create token --duration=1h`) and writes a kubeconfig
    /// with it, the admin kubeconfig's server URL and CA, and nothing else.
    pub fn for_service_account(cluster: &Cluster, namespace: &str, name: &str) -> anyhow::Result<Self> {
        let token = cluster.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=1h"])?;
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
        Ok(TokenKubeconfig { path, username: user, bin_dir: cluster.bin_dir.clone() })
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
}

impl Drop for TokenKubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
