//! Root tests of `connhealth-agent scan` as a person runs it: the JSON
//! contract (documented in `node-agent/README.md`), ages growing under
//! `--watch`, the table, and the one-line message about a missing
//! capability. Without root they skip with a message; with `CI` set they
//! fail instead.

use std::process::Command;
use std::time::{Duration, Instant};

use connhealth_scan::sockdiag::TcpState;
use connhealth_scan::testing::*;

#[test]
fn cli_json_contract_and_watch_ages() {
    if !can_run_privileged_test("cli_json_contract_and_watch_ages") {
        return;
    }
    let ns = TestNetns::new("cli");
    let (l, cw, fw2) = ns.run(|| {
        let l = listen("127.0.0.1:7400");
        let (cw, fw2) = close_wait(&l);
        (l, cw, fw2)
    });
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_connhealth-agent"))
        .args(["scan", "--netns"])
        .arg(&ns.path)
        .args(["--output", "json", "--watch", "1s", "--count", "3", "--min-age", "1s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(30));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "one JSON document per sweep");
    let mut ages = Vec::new();
    for doc in &lines {
        let nss = doc["namespaces"].as_array().unwrap();
        assert_eq!(nss.len(), 1);
        let n = &nss[0];
        assert_eq!(n["inode"].as_u64(), Some(ns.id().ino));
        assert!(n["podUid"].is_null());
        assert_eq!(n["name"], ns.name.as_str());
        let states = n["states"].as_object().unwrap();
        // Every state under its key (the keys themselves are pinned by the
        // scanner's aggregation tests).
        for key in TcpState::ALL.map(TcpState::key) {
            assert!(states[key].is_u64(), "states.{key}");
        }
        assert_eq!(states.len(), 11);
        assert_eq!(n["states"]["closeWait"], 1);
        assert_eq!(n["closeWait"]["count"], 1);
        assert_eq!(n["closeWait"]["topPeers"][0]["endpoint"], "127.0.0.1");
        assert_eq!(n["closeWait"]["topLocalPorts"][0]["port"], 7400);
        assert!(n["timeWait"]["count"].is_u64());
        assert!(n["portPressure"]["ephemeralPorts"].is_u64());
        assert!(n["sysctls"]["ipLocalPortRange"].is_string());
        ages.push(n["closeWait"]["oldestAgeSeconds"].as_u64().unwrap());
        // When it was first seen: a whole second, at most now.
        let first_seen = &n["closeWait"]["firstSeen"];
        assert_eq!(first_seen.as_array().unwrap().len(), 1, "{first_seen}");
        assert_eq!(first_seen[0]["count"], 1);
        let since_ms = first_seen[0]["sinceUnixMs"].as_u64().unwrap();
        assert_eq!(since_ms % 1000, 0, "whole seconds");
        assert!(since_ms <= doc["observedAtUnixMs"].as_u64().unwrap() + 1000);
        assert!(doc["errors"].as_array().unwrap().is_empty());
    }
    // Sweeps start one second apart (less the time each took to start).
    assert_eq!(ages[0], 0);
    assert!(ages[0] <= ages[1] && ages[1] <= ages[2] && ages[2] >= 1, "ages grow: {ages:?}");
    assert_eq!(lines[2]["namespaces"][0]["closeWait"]["stuck"], 1);

    // The table names the namespace and its CLOSE_WAIT figures.
    let out =
        Command::new(env!("CARGO_BIN_EXE_connhealth-agent")).args(["scan", "--netns"]).arg(&ns.path).output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let header = table.lines().next().unwrap();
    for col in ["POD/PROCESS", "ESTAB", "CLOSE-WAIT", "STUCK", "OLDEST", "TIME-WAIT", "PORT-PRESSURE", "OWNER"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(table.contains(&format!("netns/{}", ns.name)), "{table}");
    drop((l, cw, fw2));
}

#[test]
fn unprivileged_scan_names_the_missing_capability_and_the_tracker_fallback_in_one_line_each() {
    if !can_run_privileged_test(
        "unprivileged_scan_names_the_missing_capability_and_the_tracker_fallback_in_one_line_each",
    ) {
        return;
    }
    let ns = TestNetns::new("unpriv");
    // As nobody, without capabilities.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_connhealth-agent"))
        .args(["scan", "--netns"])
        .arg(&ns.path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.contains("missing capabilities CAP_SYS_ADMIN"), "{stderr}");
    assert!(first.contains("CAP_SYS_PTRACE"), "{stderr}");
    assert!(!out.status.success(), "the namespace could not be scanned");
    // The report names the capability for the failed namespace too.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_connhealth-agent"))
        .args(["scan", "--output", "json", "--netns"])
        .arg(&ns.path)
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["errors"][0]["missingCapability"], "CAP_SYS_ADMIN");
    assert_eq!(doc["errors"][0]["category"], "NetnsEnter");

    // Without arguments it still scans its own namespace.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_connhealth-agent"))
        .args(["scan", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // One line for the capabilities, one for the tracker's fallback.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[1].starts_with("connhealth-agent: eBPF tracker not loaded ("), "{stderr}");
    assert!(lines[1].contains("CAP_BPF and CAP_PERFMON"), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["namespaces"].as_array().unwrap().len(), 1);
    assert_eq!(doc["tracker"]["requested"], "auto");
    assert_eq!(doc["tracker"]["mode"], "counters");
    assert!(doc["tracker"]["fallbackReason"].as_str().unwrap().contains("Operation not permitted"), "{doc}");
    assert_eq!(doc["trackerCounters"], serde_json::Value::Null);
    assert_eq!(doc["namespaces"][0]["source"]["reason"], "firstSweep");

    // `--tracker ebpf` makes the same failure an error, in one line.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_connhealth-agent"))
        .args(["scan", "--tracker", "ebpf", "--output", "json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("connhealth-agent: the eBPF tracker did not load (--tracker ebpf)")
            && last.contains("CAP_BPF and CAP_PERFMON"),
        "{stderr}"
    );

    // As root with every capability, `auto` runs it.
    let out = Command::new(env!("CARGO_BIN_EXE_connhealth-agent"))
        .args(["scan", "--output", "json", "--netns"])
        .arg(&ns.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["tracker"]["mode"], "ebpf", "{}", doc["tracker"]);
    assert_eq!(doc["tracker"]["fallbackReason"], serde_json::Value::Null);
}
