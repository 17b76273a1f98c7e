//! Property tests ("fuzzing on the stable toolchain") of the duration syntax
//! of flags (`parse_duration`) and the short form durations are shown in
//! (`human_duration`).
//!
//! Each property runs a bounded number of cases so that the whole file takes
//! seconds. Failures are not persisted to `proptest-regressions/`: a minimal
//! input found once is kept as a plain `#[test]` below its property.

use std::time::Duration;

use connhealth_runtime::{human_duration, parse_duration};
use proptest::prelude::*;

/// Cases per property, and no failure files in the source tree.
/// `PROPTEST_CASES` (a long run, see CONTRIBUTING) overrides `cases`;
/// `PROPTEST_RNG_SEED` (set by `scripts/test`) makes a run repeatable.
fn config(cases: u32) -> ProptestConfig {
    let from_env = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { from_env.cases } else { cases };
    ProptestConfig { cases, failure_persistence: None, ..from_env }
}

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// `v % 10^prec` as Go's `fmtFrac` prints it (trailing zeros dropped, a dot
/// only if a digit remains), and `v / 10^prec`.
fn go_frac(mut v: u64, prec: u32) -> (String, u64) {
    let mut digits = String::new();
    let mut printed = false;
    for _ in 0..prec {
        let digit = v % 10;
        printed |= digit != 0;
        if printed {
            digits.insert(0, char::from(b'0' + digit as u8));
        }
        v /= 10;
    }
    (if printed { format!(".{digits}") } else { String::new() }, v)
}

/// Go's `time.Duration.String` for a non-negative duration of `ns`
/// nanoseconds: `0s`, `750ns`, `1.5µs`, `250ms`, `1m30s`, `2h45m30.5s`.
fn go_format(ns: u64) -> String {
    if ns == 0 {
        return "0s".to_owned();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        let (frac, int) = go_frac(ns, 3);
        return format!("{int}{frac}µs");
    }
    if ns < NANOS_PER_SEC {
        let (frac, int) = go_frac(ns, 6);
        return format!("{int}{frac}ms");
    }
    let (frac, mut rest) = go_frac(ns, 9);
    let mut out = format!("{}{frac}s", rest % 60);
    rest /= 60;
    if rest > 0 {
        out = format!("{}m{out}", rest % 60);
        rest /= 60;
        if rest > 0 {
            out = format!("{rest}h{out}");
        }
    }
    out
}

/// Go's largest duration, `math.MaxInt64` nanoseconds (about 292 years).
const GO_MAX_NANOS: u64 = i64::MAX as u64;

/// Below 2^23 seconds (about 97 days) every nanosecond survives the
/// parser's `f64` sum.
const EXACT_BELOW_NANOS: u64 = (1 << 23) * NANOS_PER_SEC;

/// Text made of the pieces durations are made of, and others.
fn durationish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        "[0-9]{1,4}",
        "[0-9]{15,40}",
        prop::sample::select(vec![
            ".", "+", "-", "0", "ns", "us", "µs", "μs", "ms", "s", "m", "h", "d", " ", "e", "E", "inf", "NaN", "\u{0}",
        ])
        .prop_map(str::to_owned),
    ];
    prop::collection::vec(token, 0..10).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(config(256))]

    /// Any text: an answer, never a panic.
    #[test]
    fn parse_duration_never_panics(text in prop_oneof![any::<String>(), durationish()]) {
        if let Ok(d) = parse_duration(&text) {
            // Something accepted has a unit or is zero.
            let t = text.trim();
            prop_assert!(d.is_zero() || t.chars().any(|c| c.is_alphabetic()), "{text:?} -> {d:?}");
        }
    }

    /// What Go prints, read back, is the same duration, to the nanosecond,
    /// up to about 97 days.
    #[test]
    fn go_formatted_durations_round_trip(ns in prop_oneof![
        0u64..1_000,
        0u64..NANOS_PER_SEC,
        0u64..3_600 * NANOS_PER_SEC,
        0u64..EXACT_BELOW_NANOS,
        (0u64..EXACT_BELOW_NANOS / NANOS_PER_SEC).prop_map(|s| s * NANOS_PER_SEC),
    ]) {
        let text = go_format(ns);
        prop_assert_eq!(parse_duration(&text), Ok(Duration::from_nanos(ns)), "{}", text);
        // The same with a leading `+`, and with whitespace around it.
        prop_assert_eq!(parse_duration(&format!(" +{text}\n")), Ok(Duration::from_nanos(ns)), "{}", text);
    }

    /// The same over Go's whole range (up to 292 years): the parser sums the
    /// components as `f64` seconds, which loses nanoseconds beyond 2^23 s,
    /// while Go (and kube's parser, which sums `Duration`s) is exact.
    /// Fails now; see `regression_long_durations_lose_a_nanosecond`.
    #[test]
    fn go_formatted_durations_round_trip_over_gos_range(ns in prop_oneof![
        EXACT_BELOW_NANOS..=GO_MAX_NANOS,
        // Whole milliseconds, as people write them.
        (EXACT_BELOW_NANOS / 1_000_000..=GO_MAX_NANOS / 1_000_000).prop_map(|ms| ms * 1_000_000),
    ]) {
        let text = go_format(ns);
        prop_assert_eq!(parse_duration(&text), Ok(Duration::from_nanos(ns)), "{}", text);
    }

    /// Durations written as a sum of whole components in any order
    /// (`10s5m`, `1h1h`) are their sum.
    #[test]
    fn component_sums(parts in prop::collection::vec((0u64..10_000, 0usize..6), 1..5)) {
        const UNITS: [(&str, u64); 6] =
            [("ns", 1), ("us", 1_000), ("µs", 1_000), ("ms", 1_000_000), ("s", NANOS_PER_SEC), ("m", 60 * NANOS_PER_SEC)];
        let text: String = parts.iter().map(|(n, u)| format!("{n}{}", UNITS[*u].0)).collect();
        let ns: u64 = parts.iter().map(|(n, u)| n * UNITS[*u].1).sum();
        prop_assert_eq!(parse_duration(&text), Ok(Duration::from_nanos(ns)), "{}", text);
    }

    /// A bare number is refused (is `5` seconds or minutes?), however it is
    /// written; only `0` is allowed without a unit.
    #[test]
    fn bare_numbers_are_errors(
        sign in prop::sample::select(vec!["", "+", "-"]),
        number in "[0-9]{1,30}(\\.[0-9]{0,10})?|\\.[0-9]{1,10}",
    ) {
        let text = format!("{sign}{number}");
        if number == "0" {
            prop_assert_eq!(parse_duration(&text), Ok(Duration::ZERO));
        } else {
            prop_assert!(parse_duration(&text).is_err(), "{text:?} accepted");
        }
    }

    /// A negative duration is refused.
    #[test]
    fn negative_durations_are_errors(ns in 1u64..=GO_MAX_NANOS) {
        let text = format!("-{}", go_format(ns));
        prop_assert!(parse_duration(&text).unwrap_err().contains("negative"), "{}", text);
    }

    /// Huge numbers are errors, never an overflow panic; numbers that fit
    /// are accepted.
    #[test]
    fn huge_numbers_are_errors(
        zeros in 0usize..5,
        digits in "[1-9][0-9]{0,60}",
        fraction in prop::option::of("[0-9]{1,12}"),
        unit in 0usize..6,
    ) {
        const UNITS: [(&str, f64); 6] = [("ns", 1e-9), ("us", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)];
        let (name, secs_per_unit) = UNITS[unit];
        let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
        let text = format!("{}{digits}{fraction}{name}", "0".repeat(zeros));
        let got = parse_duration(&text);
        // The value lies in [10^(n-1), 10^n) units.
        let n = digits.len() as i32;
        let low = 10f64.powi(n - 1) * secs_per_unit;
        let high = 10f64.powi(n) * secs_per_unit;
        let max = u64::MAX as f64;
        if low >= max * 1.001 {
            prop_assert!(got.is_err(), "{text:?} -> {got:?}");
        } else if high < max * 0.999 {
            let d = got.unwrap();
            let want: f64 = format!("{digits}{fraction}").parse::<f64>().unwrap() * secs_per_unit;
            prop_assert!((d.as_secs_f64() - want).abs() <= want * 1e-9 + 1e-9, "{text:?} -> {d:?}");
        }
    }
}

/// Found by `go_formatted_durations_round_trip_over_gos_range` (which
/// shrank to `ns = 23902437208640569`, i.e. `6639h33m57.208640569s`, read
/// as 23_902_437_208_640_568 ns); the smallest whole-millisecond case,
/// found by a linear search from 2^22 s: `2330h10m8.004s` (2^23 s + 4 ms) is
/// read as 8_388_608_004_000_001 ns, one nanosecond more. The components
/// are summed as `f64` seconds (8_388_000 + 600 + 8.004), whose resolution
/// at 2^23 is about 1.9 ns. Go and kube's parser (which sums `Duration`s)
/// give 8_388_608_004_000_000 ns. No whole-second duration below 3e7 s is
/// affected.
#[test]
fn regression_long_durations_lose_a_nanosecond() {
    let text = "2330h10m8.004s";
    #[cfg(feature = "client")]
    {
        let kube: kube::core::Duration = text.parse().unwrap();
        assert_eq!(Duration::from(kube), Duration::from_millis(8_388_608_004), "kube reads {text} exactly");
    }
    assert_eq!(parse_duration(text), Ok(Duration::from_millis(8_388_608_004)), "{text}");
}

/// What `human_duration` printed, read back: (seconds shown, seconds the
/// smaller unit leaves out at most).
fn read_human(text: &str) -> Option<(u64, u64)> {
    const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];
    let mut total = 0u64;
    let mut units = Vec::new();
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
        } else {
            let (_, secs) = UNITS.iter().find(|(u, _)| *u == c)?;
            total = total.checked_add(number.parse::<u64>().ok()?.checked_mul(*secs)?)?;
            number.clear();
            units.push(*secs);
        }
    }
    if !number.is_empty() || units.is_empty() || units.len() > 2 {
        return None;
    }
    // Two units must be neighbours, larger first.
    if let [big, small] = units[..] {
        let i = UNITS.iter().position(|(_, s)| *s == big)?;
        if UNITS.get(i + 1).map(|(_, s)| *s) != Some(small) {
            return None;
        }
    }
    // What is left out: everything below the smallest unit shown (or below
    // the neighbour of the single unit shown, which was zero).
    let smallest = *units.last()?;
    let i = UNITS.iter().position(|(_, s)| *s == units[0])?;
    let dropped = if units.len() == 2 { smallest } else { UNITS.get(i + 1).map_or(1, |(_, s)| *s) };
    Some((total, dropped))
}

proptest! {
    #![proptest_config(config(256))]

    /// Any duration: at most two neighbouring units, never more than the
    /// duration, and less only by what the smaller unit cannot show.
    #[test]
    fn human_durations_never_overstate(secs in prop_oneof![
        0u64..60,
        0u64..7_200,
        0u64..200_000,
        0u64..10_000_000,
        any::<u64>(),
    ], nanos in 0u32..1_000_000_000) {
        let d = Duration::new(secs, nanos);
        let text = human_duration(d);
        let (shown, dropped) = read_human(&text).ok_or_else(|| TestCaseError::fail(format!("unreadable {text:?}")))?;
        prop_assert!(shown <= secs, "{secs}s shown as {text}");
        prop_assert!(secs - shown < dropped, "{secs}s shown as {text}");
        if secs < 3_600 {
            // Minutes and seconds, or seconds: exact to the second.
            prop_assert_eq!(shown, secs, "{}", text);
        }
    }
}
