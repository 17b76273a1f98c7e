//! What connhealth's two binaries share at run time, so neither writes it
//! again: logging setup ([`logging`]), the Kubernetes client with a
//! deadline on every call ([`apiclient`]), the small HTTP endpoint that
//! serves `/metrics`, `/healthz` and `/readyz` ([`endpoint`]), the shutdown
//! signal ([`shutdown_signal`]), the duration syntax of flags
//! ([`parse_duration`]) and the rule for root-only tests
//! ([`can_run_privileged_test`]).

pub mod apiclient;
pub mod endpoint;
pub mod logging;

/// Completes on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

/// Parses a Go-style duration as Kubernetes writes them (`30s`, `5m`,
/// `1h30m`), for flags; negative durations are refused.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d: kube::core::Duration = s.parse().map_err(|e| format!("{s:?} is not a duration like 30s or 5m: {e}"))?;
    if d.is_negative() {
        return Err(format!("{s:?} is negative"));
    }
    Ok(d.into())
}

/// Whether a root-only test may run: true as root. Otherwise it prints why
/// it skips — or, when `CI` is set, panics, so CI can never skip silently.
pub fn can_run_privileged_test(test: &str) -> bool {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|u| u.parse::<u32>().ok());
    if euid == Some(0) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: needs root (network namespaces, setns, cgroups) and CI is set: refusing to skip (euid {euid:?})"
    );
    eprintln!("skipping {test}: needs root (network namespaces, setns, cgroups); euid {euid:?}");
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("1m30s"), Ok(std::time::Duration::from_secs(90)));
        assert!(super::parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(super::parse_duration("soon").unwrap_err().contains("not a duration"));
    }
}
