//! What connhealth's two binaries share at run time, so neither writes it
//! again: logging setup ([`logging`]) and the small HTTP endpoint that
//! serves `/metrics`, `/healthz` and `/readyz` ([`endpoint`]).

pub mod endpoint;
pub mod logging;
