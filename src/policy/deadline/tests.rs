use super::*;

fn with(pairs: &[(&HeaderName, &'static str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append((*name).clone(), HeaderValue::from_static(value));
    }
    headers
}

fn grpc(value: &'static str) -> Option<Duration> {
    incoming(&with(&[(&GRPC_TIMEOUT, value)]))
}

#[test]
fn parses_every_grpc_unit() {
    assert_eq!(grpc("2H"), Some(Duration::from_secs(7_200)));
    assert_eq!(grpc("3M"), Some(Duration::from_secs(180)));
    assert_eq!(grpc("4S"), Some(Duration::from_secs(4)));
    assert_eq!(grpc("5m"), Some(Duration::from_millis(5)));
    assert_eq!(grpc("6u"), Some(Duration::from_micros(6)));
    assert_eq!(grpc("7n"), Some(Duration::from_nanos(7)));
    assert_eq!(grpc("0m"), Some(Duration::ZERO));
}

#[test]
fn grpc_value_takes_at_most_eight_digits() {
    assert_eq!(
        grpc("99999999H"),
        Some(Duration::from_secs(99_999_999 * 3_600))
    );
    assert_eq!(grpc("00000001S"), Some(Duration::from_secs(1)));
    assert_eq!(grpc("100000000n"), None);
}

#[test]
fn ignores_malformed_grpc_timeouts() {
    let bad = [
        "", "S", "10", "10s", "10 S", " 10S", "+10S", "-1S", "1.5S", "10SS", "1x", "ten",
    ];
    for value in bad {
        assert_eq!(grpc(value), None, "{value:?}");
    }
}

#[test]
fn ignores_malformed_request_timeouts() {
    let bad = [
        "",
        "+5",
        "-5",
        "5ms",
        "1.5",
        " 5",
        "0x10",
        "99999999999999999999999",
    ];
    for value in bad {
        assert_eq!(
            incoming(&with(&[(&X_REQUEST_TIMEOUT, value)])),
            None,
            "{value:?}"
        );
    }
}

#[test]
fn parses_request_timeout_milliseconds() {
    let headers = with(&[(&X_REQUEST_TIMEOUT, "1500")]);
    assert_eq!(incoming(&headers), Some(Duration::from_millis(1_500)));
    assert_eq!(
        incoming(&with(&[(&X_REQUEST_TIMEOUT, "0")])),
        Some(Duration::ZERO)
    );
}

#[test]
fn smallest_valid_budget_wins_when_several_are_present() {
    let both = with(&[(&GRPC_TIMEOUT, "2S"), (&X_REQUEST_TIMEOUT, "1500")]);
    assert_eq!(incoming(&both), Some(Duration::from_millis(1_500)));
    let one_bad = with(&[(&GRPC_TIMEOUT, "1x"), (&X_REQUEST_TIMEOUT, "1500")]);
    assert_eq!(incoming(&one_bad), Some(Duration::from_millis(1_500)));
    let repeated = with(&[(&GRPC_TIMEOUT, "3S"), (&GRPC_TIMEOUT, "900m")]);
    assert_eq!(incoming(&repeated), Some(Duration::from_millis(900)));
    assert_eq!(incoming(&HeaderMap::new()), None);
}

#[test]
fn effective_budget_is_the_smaller_present_one() {
    let (a, b) = (Duration::from_secs(1), Duration::from_secs(2));
    assert_eq!(effective(Some(a), Some(b)), Some(a));
    assert_eq!(effective(Some(b), Some(a)), Some(a));
    assert_eq!(effective(None, Some(b)), Some(b));
    assert_eq!(effective(Some(a), None), Some(a));
    assert_eq!(effective(None, None), None);
}

#[test]
fn grpc_value_uses_the_finest_unit_that_fits() {
    let cases = [
        (Duration::ZERO, "0n"),
        (Duration::from_nanos(1), "1n"),
        (Duration::from_nanos(99_999_999), "99999999n"),
        (Duration::from_nanos(100_000_001), "100000u"),
        (Duration::from_millis(1_500), "1500000u"),
        (Duration::from_secs(100), "100000m"),
        (Duration::from_secs(100_000), "100000S"),
        (Duration::from_secs(100_000_000 * 60), "1666666H"),
        (Duration::MAX, "99999999H"),
    ];
    for (d, want) in cases {
        assert_eq!(grpc_timeout_value(d), want, "{d:?}");
    }
}

#[test]
fn formatted_grpc_values_round_trip_without_gaining_time() {
    for nanos in [
        1,
        999,
        123_456_789,
        4_000_000_001,
        7_777_777_777_777,
        u64::MAX / 3,
    ] {
        let d = Duration::from_nanos(nanos);
        let value = grpc_timeout_value(d);
        let back = parse_grpc_timeout(value.as_bytes()).unwrap();
        assert!(back <= d && back > Duration::ZERO, "{d:?} -> {value:?}");
        // Eight digits of the chosen unit keep the error under one in 10^5.
        assert!(
            (d - back).as_nanos() * 100_000 <= d.as_nanos(),
            "{d:?} -> {value:?}"
        );
    }
}

#[test]
fn ms_value_rounds_down() {
    assert_eq!(ms_value(Duration::from_micros(1_999)), "1");
    assert_eq!(ms_value(Duration::from_micros(999)), "0");
    assert_eq!(ms_value(Duration::from_secs(2)), "2000");
}

#[test]
fn propagate_rewrites_only_the_headers_present() {
    let remaining = Duration::from_millis(750);
    let mut grpc_only = with(&[(&GRPC_TIMEOUT, "5S")]);
    propagate(&mut grpc_only, remaining);
    assert_eq!(grpc_only[&GRPC_TIMEOUT], "750000u");
    assert!(!grpc_only.contains_key(&X_REQUEST_TIMEOUT));

    let mut both = with(&[
        (&GRPC_TIMEOUT, "5S"),
        (&X_REQUEST_TIMEOUT, "5000"),
        (&X_REQUEST_TIMEOUT, "9"),
    ]);
    propagate(&mut both, remaining);
    assert_eq!(both[&GRPC_TIMEOUT], "750000u");
    let ms: Vec<_> = both.get_all(&X_REQUEST_TIMEOUT).iter().collect();
    assert_eq!(ms, ["750"]);

    let mut neither = HeaderMap::new();
    propagate(&mut neither, remaining);
    assert!(neither.is_empty());
}
