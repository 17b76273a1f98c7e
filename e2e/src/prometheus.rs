//! A real Prometheus for the e2e tier: the Go-built `prometheus` and
//! `promtool` (`e2e/cluster/build --prometheus`), the chart's alert rules
//! rendered by `helm`, and the HTTP API the tests read.
//!
//! Prometheus listens on loopback only, keeps its data in a directory of its
//! own, and is stopped (and the directory removed) when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::{random_suffix, repo_root};

/// The directory holding `prometheus` and `promtool`, building them (once,
/// cached by version) when missing.
pub fn bin_dir() -> PathBuf {
    let out = Command::new(repo_root().join("e2e/cluster/build"))
        .arg("--prometheus")
        .stderr(Stdio::inherit())
        .output()
        .expect("run e2e/cluster/build --prometheus");
    assert!(out.status.success(), "e2e/cluster/build --prometheus failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim())
}

/// The chart's PrometheusRule rendered with `helm template` (`values` as
/// `--set` pairs on top of `prometheusRule.enabled=true`), as a Prometheus
/// rule file: its `spec`.
pub fn chart_rules(helm: &Path, values: &[&str]) -> String {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "rules", "charts/connhealth", "--set", "prometheusRule.enabled=true"]);
    for v in values {
        cmd.args(["--set", v]);
    }
    let out = cmd.current_dir(repo_root()).output().expect("run helm template");
    assert!(out.status.success(), "helm template failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    // helm's output is several YAML documents, some of them empty.
    let rule = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| Value::deserialize(doc).ok())
        .find(|doc| doc["kind"] == "PrometheusRule")
        .expect("the chart renders a PrometheusRule");
    serde_yaml::to_string(&rule["spec"]).expect("rules as YAML")
}

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    /// `127.0.0.1:PORT` of its HTTP API.
    pub addr: String,
}

impl Prometheus {
    /// Starts Prometheus with `config` (its YAML) and `rules` (a rule file's
    /// YAML, referenced from the config as `rules.yml`), on a free loopback
    /// port; returns once it answers `/-/ready`.
    pub fn start(config: &str, rules: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("connhealth-prometheus-{}", random_suffix()));
        std::fs::create_dir_all(dir.join("data")).expect("create Prometheus' directory");
        std::fs::write(dir.join("prometheus.yml"), config).expect("write the config");
        std::fs::write(dir.join("rules.yml"), rules).expect("write the rules");
        // A port the kernel just handed out and nobody holds.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("create the log");
        let child = Command::new(bin_dir().join("prometheus"))
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus { child, dir, addr };
        for _ in 0..600 {
            if http_get(&prometheus.addr, "/-/ready").is_some_and(|(status, _)| status == 200) {
                return prometheus;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("Prometheus did not become ready:\n{}", prometheus.log());
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` on its API, parsed; panics on a transport error, returns
    /// the JSON error body as it is.
    pub fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(&self.addr, path)
            .unwrap_or_else(|| panic!("no answer from Prometheus to {path}:\n{}", self.log()));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: HTTP {status}, not JSON ({e}): {body}"))
    }

    /// An instant query: the API's whole answer (`status`, `data.result`, or
    /// `errorType` and `error`).
    pub fn query(&self, expr: &str) -> Value {
        self.api(&format!("/api/v1/query?query={}", percent_encode(expr)))
    }

    /// The result vector of an instant query that must succeed.
    pub fn vector(&self, expr: &str) -> Vec<Value> {
        let answer = self.query(expr);
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"].as_array().cloned().unwrap_or_else(|| panic!("no result list for {expr}: {answer}"))
    }

    /// Active alerts (pending and firing).
    pub fn alerts(&self) -> Vec<Value> {
        let answer = self.api("/api/v1/alerts");
        assert_eq!(answer["status"], "success", "/api/v1/alerts: {answer}");
        answer["data"]["alerts"].as_array().cloned().unwrap_or_else(|| panic!("no alert list in {answer}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes a query parameter (RFC 3986 unreserved characters stay).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An HTTP/1.0 GET (so the answer is never chunked): status and body, or
/// `None` when nothing listens.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encode("up{job=\"a b\"} > 0"), "up%7Bjob%3D%22a%20b%22%7D%20%3E%200");
        assert_eq!(percent_encode("a-b_c.d~9"), "a-b_c.d~9");
    }
}
