//! What connhealth's two binaries share at run time, so neither writes it
//! again: logging setup ([`logging`]), the duration syntax of flags
//! ([`parse_duration`]), the short form durations are shown in
//! ([`human_duration`]) and the one-line form of an error and its causes
//! ([`error_chain`]); with the `client` feature (cluster mode) also the
//! Kubernetes client with a deadline on every call (`apiclient`), the
//! small HTTP endpoint that serves `/metrics`, `/healthz` and `/readyz`
//! (`endpoint`) and the shutdown signal (`shutdown_signal`).

#[cfg(feature = "client")]
pub mod apiclient;
#[cfg(feature = "client")]
pub mod endpoint;
#[cfg(feature = "client")]
pub mod error;
pub mod logging;

#[cfg(feature = "client")]
pub use error::Error;

use std::time::Duration;

/// Completes on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
#[cfg(feature = "client")]
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

/// Parses a duration of a flag in Go's syntax, the one the CRDs and the
/// chart use: decimal numbers, each with a unit (`ns`, `us`, `µs`, `ms`,
/// `s`, `m`, `h`), e.g. `500ms`, `30s`, `1.5h`, `1h30m`; `0` alone is
/// allowed. Every duration flag of both binaries takes it. A bare number is
/// refused with a hint (is `5` seconds or minutes?), and so is a negative
/// duration. Written here rather than taken from kube so that
/// `connhealth-agent scan` needs no Kubernetes crate; a test checks it
/// against kube's parser.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let nanos = duration_nanos(s)?;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| format!("{:?} is too long", s.trim()))?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// What [`parse_duration`] reads, as whole nanoseconds (a fraction is
/// truncated, as Go does), saturating at `u128::MAX` instead of refusing a
/// duration as too long: for callers with a bound of their own (the API
/// types refuse what Kubernetes durations cannot hold).
pub fn duration_nanos(s: &str) -> Result<u128, String> {
    let text = s.trim();
    let unsigned = text.strip_prefix('+').unwrap_or(text);
    if unsigned.starts_with('-') && unsigned != "-0" {
        return Err(format!("{text:?} is negative"));
    }
    let mut rest = unsigned.strip_prefix('-').unwrap_or(unsigned);
    if rest == "0" {
        return Ok(0);
    }
    if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{text:?} has no unit: write e.g. {rest}s or {rest}m (units: ms, s, m, h)"));
    }
    let invalid = || format!("{text:?} is not a duration like 30s or 5m (units: ns, us, ms, s, m, h)");
    if rest.is_empty() {
        return Err(invalid());
    }
    // Exact integer arithmetic in nanoseconds, as Go does.
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let whole = whole.trim_start_matches('0');
        // More digits than a u128 holds: longer than anything, saturate.
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().unwrap_or(u128::MAX) };
        // Digits past the 20th are far below a nanosecond in any unit (an
        // hour is 3.6e12 ns), and 20 digits times an hour fit in a u128.
        let fraction = &fraction[..fraction.len().min(20)];
        let fraction_ns = if fraction.is_empty() {
            0
        } else {
            let digits: u128 = fraction.parse().map_err(|_| invalid())?;
            digits * unit_ns / 10u128.pow(fraction.len() as u32)
        };
        total_ns = whole.saturating_mul(unit_ns).saturating_add(fraction_ns).saturating_add(total_ns);
        rest = tail;
    }
    Ok(total_ns)
}

/// A duration as people read it, in whole seconds and at most two units:
/// `42s`, `2m`, `5m3s`, `3h`, `3h2m`, `2d`, `2d1h`. Used wherever a
/// duration is shown: Event notes, the `scan` table.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, minutes, seconds) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let pair = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 { format!("{big}{big_unit}") } else { format!("{big}{big_unit}{small}{small_unit}") }
    };
    if days > 0 {
        pair(days, "d", hours, "h")
    } else if hours > 0 {
        pair(hours, "h", minutes, "m")
    } else if minutes > 0 {
        pair(minutes, "m", seconds, "s")
    } else {
        format!("{seconds}s")
    }
}

/// One line for logs, Events and exit messages: `error` and its causes,
/// joined by `: `, each said once. A cause whose text the message before it
/// already contains is skipped: kube's errors (and kube-runtime's) print
/// their cause in their own message as well as returning it as `source`.
/// Line breaks inside a message become spaces.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut previous = line.clone();
    let mut cause = error.source();
    while let Some(source) = cause {
        let text = source.to_string();
        if !previous.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        previous = text;
        cause = source.source();
    }
    line.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_go_syntax_and_refuse_bare_numbers() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
        assert!(parse_duration("5x").unwrap_err().contains("not a duration"));
        assert!(parse_duration("").is_err());
        assert_eq!(parse_duration("5").unwrap_err(), "\"5\" has no unit: write e.g. 5s or 5m (units: ms, s, m, h)");
        // Exact to the nanosecond (no float rounding), fractions truncated.
        assert_eq!(parse_duration("2330h10m8.004s"), Ok(Duration::new(8_388_608, 4_000_000)));
        assert_eq!(parse_duration("1.0000000009s"), Ok(Duration::new(1, 0)));
        assert_eq!(
            parse_duration(&format!("1.{}h", "9".repeat(40))),
            Ok(Duration::from_secs(7200) - Duration::from_nanos(1))
        );
        // Too long for any clock: an error that says so, never a panic.
        assert_eq!(parse_duration("100000000000000000000s").unwrap_err(), "\"100000000000000000000s\" is too long");
    }

    /// The CRDs' durations are parsed by kube (Go's syntax): flags must
    /// read every one of these the same way.
    #[cfg(feature = "client")]
    #[test]
    fn durations_parse_as_kube_parses_them() {
        for text in ["0", "30s", "1h30m", "1.5h", "500ms", "2h45m30.5s", "1us", "100ns", "90m", "0.5s", "+5s", "10s5m"]
        {
            let kube: kube::core::Duration = text.parse().unwrap_or_else(|e| panic!("kube refuses {text}: {e}"));
            let ours = parse_duration(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(ours.as_nanos(), Duration::from(kube).as_nanos(), "{text}");
        }
        for text in ["s", "5x", "1..5s", "m5", "five seconds", "1h 30m"] {
            assert!(text.parse::<kube::core::Duration>().is_err(), "kube accepts {text:?}");
            assert!(parse_duration(text).is_err(), "we accept {text:?}");
        }
    }

    #[test]
    fn human_durations() {
        let s = Duration::from_secs;
        let cases = [
            (0, "0s"),
            (42, "42s"),
            (120, "2m"),
            (303, "5m3s"),
            (3600, "1h"),
            (3 * 3600 + 120, "3h2m"),
            (3 * 3600 + 59, "3h"),
            (86_400, "1d"),
            (2 * 86_400 + 3600, "2d1h"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(s(secs)), want, "{secs}s");
        }
        assert_eq!(human_duration(Duration::from_millis(1999)), "1s", "rounded down: never overstated");
    }
}
