//! Property tests that feed arbitrary JSON values and bytes to the parser of every route's
//! body and query: none may panic, every refusal is a 4xx, and valid inputs come back intact.
//!
//! A short run (proptest's default case count) is part of `cargo test`; a long run is
//! `PROPTEST_CASES=1000000 cargo test --release --lib fuzz_` (see `docs/fuzzing.md`).

use std::time::Duration;

use axum::extract::Query;
use axum::http::Uri;
use base64::Engine;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::functions::{RegisterRequest, decode_base64, function_record};
use super::tasks::{InvokeQuery, wait_param};
use super::wait::{WaitRequest, parse_ids};
use super::{ApiError, FunctionDefaults, batch, mpcs, parse_json};

/// Numbers at and past every edge a field may have: zero, negatives, fractions, 2^32, 2^53,
/// 2^64, 1e20, 1e300, the extremes of f64.
fn edge_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            0.0,
            -1.0,
            1e-300,
            0.0005,
            1.5,
            86_400.0,
            86_400.001,
            4_294_967_296.0,
            9_007_199_254_740_993.0,
            18_446_744_073_709_551_616.0,
            1e20,
            1e300,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
        ])
        .prop_map(Value::from),
    ]
}

/// Texts that look like durations and sizes, and some that only nearly do.
fn edge_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,30}(ns|us|ms|s|m|h|d|w|y|B|KiB|MiB|GiB|M|G|)",
        "[0-9 .a-zA-Z-]{0,24}",
        any::<String>(),
    ]
}

/// Any JSON value, with edge numbers and texts at its leaves.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        edge_number(),
        edge_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(edge_text(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A registration whose known fields take arbitrary values (each maybe absent).
fn registration() -> impl Strategy<Value = Value> {
    let field = || prop::option::of(json_value());
    let fields = [
        "timeout",
        "idle_timeout",
        "memory",
        "concurrency",
        "queue_limit",
        "max_attempts",
        "min_warm",
        "warm",
        "runtime",
        "env",
        "entry",
        "allow_net",
        "http_port",
        "http_concurrency",
        "record_requests",
    ];
    (prop::collection::vec(field(), fields.len()), any::<bool>()).prop_map(move |(values, name)| {
        let mut body = json!({"name": if name { "f" } else { "F!" }, "code": "ZWNobw=="});
        for (key, value) in fields.iter().zip(values) {
            if let Some(value) = value {
                body[*key] = value;
            }
        }
        body
    })
}

/// Asserts that a refusal is a client error, never a 5xx.
fn assert_client_error(err: &ApiError) {
    assert!(err.status().is_client_error(), "{err:?}");
}

/// Parses and checks a registration body as `POST /v1/functions` does; what it accepts must
/// stay within every documented range.
fn check_registration(body: &[u8]) {
    let req: RegisterRequest = match parse_json(body, "registration JSON") {
        Ok(req) => req,
        Err(e) => return assert_client_error(&e),
    };
    let code = match decode_base64(&req.code_text()) {
        Ok(code) => code,
        Err(e) => return assert_client_error(&e),
    };
    match function_record(req, &code, &FunctionDefaults::default(), None) {
        Ok(f) => {
            assert!((1..=86_400_000).contains(&f.timeout_ms), "{f:?}");
            assert!((1..=1000).contains(&f.max_attempts), "{f:?}");
            assert_ne!(f.concurrency, Some(0));
            if let Some(m) = f.isolation.memory_bytes {
                assert!(((4 << 20)..=(1 << 40)).contains(&m), "{f:?}");
            }
            if let Some(w) = f.warm {
                assert!((1..=86_400_000).contains(&w.idle_timeout_ms), "{f:?}");
            }
        }
        Err(e) => assert_client_error(&e),
    }
}

proptest! {
    #[test]
    fn fuzz_registration_fields(body in registration()) {
        check_registration(body.to_string().as_bytes());
    }

    #[test]
    fn fuzz_registration_any_json(body in json_value()) {
        check_registration(body.to_string().as_bytes());
    }

    #[test]
    fn fuzz_registration_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        check_registration(&body);
    }

    #[test]
    fn fuzz_registration_round_trips(
        millis in 1u64..=86_400_000,
        as_text in any::<bool>(),
        queue_limit in any::<u32>(),
        max_attempts in 1u32..=1000,
        memory in (4u64 << 20)..=(1 << 40),
    ) {
        let timeout = if as_text { json!(format!("{millis}ms")) } else { json!(millis as f64 / 1000.0) };
        let body = json!({
            "name": "f", "code": "ZWNobw==", "timeout": timeout, "queue_limit": queue_limit,
            "max_attempts": max_attempts, "memory": memory,
        });
        let req: RegisterRequest = parse_json(body.to_string().as_bytes(), "registration")
            .expect("a valid registration");
        let f = function_record(req, b"echo", &FunctionDefaults::default(), None)
            .expect("valid settings");
        // Seconds as a float may lose the last millisecond to rounding.
        prop_assert!(f.timeout_ms.abs_diff(millis) <= 1, "{} vs {millis}", f.timeout_ms);
        prop_assert_eq!(
            (f.queue_limit, f.max_attempts, f.isolation.memory_bytes),
            (queue_limit, max_attempts, Some(memory))
        );
    }

    #[test]
    fn fuzz_invoke_and_status_queries(query in any::<String>()) {
        let _ = wait_param(&query);
        let encoded: String = query.bytes().map(|b| format!("%{b:02X}")).collect();
        for uri in [format!("/x?async={encoded}"), format!("/x?{encoded}")] {
            let uri: Uri = uri.parse().expect("percent-encoded query");
            let _ = Query::<InvokeQuery>::try_from_uri(&uri);
        }
    }

    #[test]
    fn fuzz_batch_bodies(body in prop::collection::vec(any::<u8>(), 0..256), value in json_value()) {
        for body in [body, value.to_string().into_bytes()] {
            for parsed in [batch::parse_array(&body), batch::parse_ndjson(&body)] {
                if let Err(e) = parsed {
                    assert_client_error(&e);
                }
            }
        }
    }

    #[test]
    fn fuzz_batch_round_trips(payloads in prop::collection::vec(any::<Vec<u8>>(), 1..8)) {
        let b64 = base64::engine::general_purpose::STANDARD;
        let body: Vec<Value> = payloads
            .iter()
            .map(|p| match String::from_utf8(p.clone()) {
                Ok(text) => Value::from(text),
                Err(_) => json!({"payload_base64": b64.encode(p)}),
            })
            .collect();
        let parsed = batch::parse_array(Value::from(body).to_string().as_bytes())
            .expect("a valid batch");
        let parsed: Vec<Vec<u8>> = parsed.iter().map(|b| b.to_vec()).collect();
        prop_assert_eq!(parsed, payloads);
    }

    #[test]
    fn fuzz_wait_bodies(ids in prop::collection::vec(json_value(), 0..4), wait in prop::option::of(json_value()), raw in prop::collection::vec(any::<u8>(), 0..128)) {
        let mut body = json!({"ids": ids});
        if let Some(wait) = wait {
            body["wait"] = wait;
        }
        for body in [body.to_string().into_bytes(), raw] {
            match parse_json::<WaitRequest>(&body, "wait request") {
                Ok(request) => {
                    if let Some(w) = &request.wait {
                        match w.duration() {
                            Ok(d) => assert!(d <= Duration::from_secs(60)),
                            Err(e) => assert_client_error(&e),
                        }
                    }
                    let mut unknown = Vec::new();
                    let (ids, texts) = parse_ids(request.ids, &mut unknown);
                    assert_eq!(ids.len(), texts.len());
                }
                Err(e) => assert_client_error(&e),
            }
        }
    }

    #[test]
    fn fuzz_mpcs_bodies(value in json_value(), payload in any::<Vec<u8>>(), raw in prop::collection::vec(any::<u8>(), 0..128)) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&payload);
        let shaped = json!({"name": value.clone(), "function_id": value, "payload": b64});
        for body in [shaped.to_string().into_bytes(), raw] {
            for parsed in [
                mpcs::parse_fields(&body, ["name", "payload"]),
                mpcs::parse_fields(&body, ["function_id", "payload"]),
            ] {
                match parsed {
                    Ok([_, payload]) => match decode_base64(&payload) {
                        Ok(code) => {
                            let _ = mpcs::check_pickle(&code);
                        }
                        Err(e) => assert_client_error(&e),
                    },
                    Err(e) => assert_client_error(&e),
                }
            }
        }
    }
}
