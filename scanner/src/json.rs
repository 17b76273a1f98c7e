//! How the JSON contract of `connhealth-agent scan --output json` spells
//! values serde has no single spelling for: times as milliseconds since the
//! Unix epoch, paths as (lossy) UTF-8 strings. Used through
//! `#[serde(serialize_with = "…")]`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serializer;

fn millis(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().and_then(|d| u64::try_from(d.as_millis()).ok())
}

/// A time as milliseconds since the epoch (0 for a time before it).
pub fn unix_ms<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(millis(*t).unwrap_or(0))
}

/// An optional time as milliseconds since the epoch; `null` when unknown or
/// before the epoch.
pub fn optional_unix_ms<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t.and_then(millis) {
        Some(ms) => s.serialize_some(&ms),
        None => s.serialize_none(),
    }
}

/// A path as a string, invalid UTF-8 replaced.
pub fn lossy_path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// Paths as a list of strings, invalid UTF-8 replaced.
pub fn lossy_paths<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(paths.iter().map(|p| p.to_string_lossy()))
}
