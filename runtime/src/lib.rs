//! What connhealth's two binaries share at run time, so neither writes it
//! again: logging setup ([`logging`]) and the small HTTP endpoint that
//! serves `/metrics`, `/healthz` and `/readyz` ([`endpoint`]), and the
//! shutdown signal ([`shutdown_signal`]).

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
