//! How the plugin prints: aligned tables as kubectl prints them, JSON and
//! YAML for scripts, errors on one line, ages as kubectl writes them.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;

use crate::Output;

/// An error and its causes on one line, each cause once (kube repeats the
/// API server's message in its source).
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

/// A table: a header row and rows, columns separated by at least three
/// spaces, as `kubectl get` aligns them.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 3));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Prints `value` as JSON or YAML; `false` for a table (the caller prints it).
pub fn structured<T: Serialize>(value: &T, output: Output) -> anyhow::Result<bool> {
    match output {
        Output::Table => Ok(false),
        Output::Json => {
            println!("{}", serde_json::to_string_pretty(value)?);
            Ok(true)
        }
        Output::Yaml => {
            print!("{}", serde_yaml::to_string(value)?);
            Ok(true)
        }
    }
}

/// How long ago `t` was, as kubectl writes ages (`45s`, `3m20s`, `2d4h`).
pub fn age(t: &Time, now: Timestamp) -> String {
    let secs = now.duration_since(t.0).as_secs().max(0);
    connhealth_runtime::human_duration(Duration::from_secs(secs.unsigned_abs()))
}

/// A process in words with its fd budget, e.g. `java (pid 42) in container
/// api: 12 sockets, 900 of 1024 fds open` (`held` says what the sockets are).
pub fn process_words(
    command: &str,
    pid: i64,
    container: Option<&str>,
    held: &str,
    open_fds: i64,
    fd_limit: Option<i64>,
) -> String {
    let container = container.map(|c| format!(" in container {c}")).unwrap_or_default();
    let limit = fd_limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
    format!("{command} (pid {pid}){container}: {held}, {open_fds} of {limit} fds open")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_aligned_like_kubectl_get() {
        let out = table(&["NAME", "COUNT"], &[vec!["a".into(), "1".into()], vec!["longer".into(), "22".into()]]);
        assert_eq!(out, "NAME     COUNT\na        1\nlonger   22\n");
    }

    #[test]
    fn an_error_and_its_causes_fit_one_line() {
        let error = anyhow::anyhow!("pods \"x\" not found").context("reading pod shop/x");
        assert_eq!(one_line(&error), "reading pod shop/x: pods \"x\" not found");
    }
}
