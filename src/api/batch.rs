//! Batch invoke: `POST /v1/functions/{name}/batch` takes many payloads in one request and
//! queues them all at once, in one group commit.
//!
//! The body is a JSON array, or with `Content-Type: application/x-ndjson` one JSON value per
//! line (blank lines ignored). Each element is a string (the payload is its UTF-8 bytes) or an
//! object `{"payload_base64": "..."}` (standard base64).

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::{Extension, Json};
use base64::Engine;
use bytes::Bytes;
use serde_json::Value;

use super::functions::validate_name;
use super::idempotency::{self, Once};
use super::tasks::VersionQuery;
use super::{ApiError, AppState, read_body};

/// The content type of a newline-delimited body.
const NDJSON: &str = "application/x-ndjson";

/// `POST /v1/functions/{name}/batch` (`?version=N` pins a kept version): 202 `{"task_ids": [...]}` in input order, once every
/// task's QUEUED record is durable; all or none are taken. A repeat with the same
/// `Idempotency-Key` answers the first request's ids.
pub async fn submit(
    State(state): State<AppState>,
    Extension(caller): Extension<crate::auth::Caller>,
    Path(name): Path<String>,
    query: Result<Query<VersionQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    validate_name(&name)?;
    super::functions::check_invoke(&state, &caller, &name)?;
    super::functions::check_task_function(&state, &name)?;
    let pin = super::tasks::pin(&state, &name, query.version).await?;
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(NDJSON));
    let body = read_body(body, state.max_body_bytes).await?;
    let payloads = if ndjson {
        parse_ndjson(&body)?
    } else {
        parse_array(&body)?
    };
    let request = idempotency::Request {
        function: &name,
        route: "batch",
        payload_hash: crate::store::payload_hash(payloads.iter().map(|p| p.as_ref())),
    };
    let submitted = idempotency::once(&state, &caller, &headers, request, |key| async {
        let records = state
            .broker
            .submit_batch_keyed(
                &name,
                payloads,
                caller.user,
                crate::broker::Extras { pin, key },
            )
            .await?;
        Ok(records.iter().map(|r| r.id).collect())
    })
    .await?;
    let (Once::Fresh(ids) | Once::Repeat(ids)) = submitted;
    let ids: Vec<String> = ids
        .into_iter()
        .map(|id| uuid::Uuid::from_u128(id).to_string())
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "task_ids": ids })),
    ))
}

/// The payloads of a JSON array body, in order.
pub(super) fn parse_array(body: &[u8]) -> Result<Vec<Bytes>, ApiError> {
    let elements: Vec<Value> = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!(
            "a batch body is a JSON array of strings or {{\"payload_base64\": \"...\"}} objects \
             (or NDJSON with Content-Type: {NDJSON}): {e}"
        ))
    })?;
    if elements.is_empty() {
        return Err(empty());
    }
    elements
        .into_iter()
        .enumerate()
        .map(|(index, element)| payload(index, element, None))
        .collect()
}

/// The payloads of an NDJSON body: one JSON value per non-blank line, in order.
pub(super) fn parse_ndjson(body: &[u8]) -> Result<Vec<Bytes>, ApiError> {
    let lines = body
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.trim_ascii().is_empty());
    let mut payloads = Vec::new();
    for (index, (line_index, line)) in lines.enumerate() {
        let line_number = line_index + 1;
        let element: Value = serde_json::from_slice(line).map_err(|e| {
            ApiError::invalid(format!(
                "batch element {index} (line {line_number}) is not JSON: {e}"
            ))
            .with("index", serde_json::json!(index))
        })?;
        payloads.push(payload(index, element, Some(line_number))?);
    }
    if payloads.is_empty() {
        return Err(empty());
    }
    Ok(payloads)
}

fn empty() -> ApiError {
    ApiError::invalid("the batch is empty: give at least one payload")
}

/// The payload of element `index`: a string's UTF-8 bytes, or the decoded `payload_base64`.
fn payload(index: usize, element: Value, line: Option<usize>) -> Result<Bytes, ApiError> {
    let at = match line {
        Some(n) => format!("batch element {index} (line {n})"),
        None => format!("batch element {index}"),
    };
    let bad = |why: String| {
        ApiError::invalid(format!("{at} {why}")).with("index", serde_json::json!(index))
    };
    match element {
        Value::String(text) => Ok(Bytes::from(text.into_bytes())),
        Value::Object(mut map) if map.len() == 1 => match map.remove("payload_base64") {
            Some(Value::String(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map(Bytes::from)
                .map_err(|e| bad(format!("has invalid base64 in payload_base64: {e}"))),
            Some(_) => Err(bad("has a payload_base64 that is not a string".into())),
            None => Err(bad(shape_hint())),
        },
        _ => Err(bad(shape_hint())),
    }
}

fn shape_hint() -> String {
    "must be a string or an object {\"payload_base64\": \"...\"}".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorCode;

    fn payloads(result: Result<Vec<Bytes>, ApiError>) -> Vec<Vec<u8>> {
        result
            .expect("a valid batch")
            .into_iter()
            .map(|b| b.to_vec())
            .collect()
    }

    /// Checks that `result` is a 400 naming element `index`.
    fn refused_at(result: Result<Vec<Bytes>, ApiError>, index: usize) -> String {
        let err = result.expect_err("a bad batch");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.code(), &ErrorCode::InvalidRequest);
        let named = format!("batch element {index}");
        assert!(err.message().contains(&named), "{}", err.message());
        err.message().to_owned()
    }

    #[test]
    fn an_array_of_strings_gives_their_utf8_bytes_in_order() {
        let got = payloads(parse_array(br#"["a", "", "caf\u00e9"]"#));
        assert_eq!(got, [b"a".to_vec(), Vec::new(), "café".as_bytes().to_vec()]);
    }

    #[test]
    fn an_array_of_objects_gives_the_decoded_base64() {
        let got = payloads(parse_array(
            br#"[{"payload_base64": "AAH/"}, {"payload_base64": ""}]"#,
        ));
        assert_eq!(got, [vec![0, 1, 255], Vec::new()]);
    }

    #[test]
    fn strings_and_objects_may_be_mixed() {
        let got = payloads(parse_array(br#"["x", {"payload_base64": "eQ=="}, "z"]"#));
        assert_eq!(got, [b"x".to_vec(), b"y".to_vec(), b"z".to_vec()]);
    }

    #[test]
    fn ndjson_gives_one_payload_per_line_and_skips_blank_lines() {
        let body = b"\"a\"\n\n{\"payload_base64\": \"Yg==\"}\r\n  \n\"c\"";
        assert_eq!(
            payloads(parse_ndjson(body)),
            [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
    }

    #[test]
    fn bad_base64_is_refused_naming_its_index() {
        let message = refused_at(
            parse_array(br#"["ok", "ok", {"payload_base64": "not base64!"}]"#),
            2,
        );
        assert!(message.contains("base64"), "{message}");
        let message = refused_at(parse_ndjson(b"\"ok\"\n\n{\"payload_base64\": \"@@\"}\n"), 1);
        assert!(message.contains("line 3"), "{message}");
    }

    #[test]
    fn elements_of_another_shape_are_refused_naming_their_index() {
        refused_at(parse_array(br#"["ok", 5]"#), 1);
        refused_at(parse_array(br#"[{"payload": "eA=="}]"#), 0);
        refused_at(
            parse_array(br#"[{"payload_base64": "eA==", "extra": 1}]"#),
            0,
        );
        refused_at(parse_array(br#"["ok", {"payload_base64": 7}]"#), 1);
        refused_at(parse_ndjson(b"\"ok\"\nnot json\n"), 1);
    }

    #[test]
    fn an_empty_batch_is_refused() {
        for result in [
            parse_array(b"[]"),
            parse_ndjson(b""),
            parse_ndjson(b"\n  \n"),
        ] {
            let err = result.expect_err("empty");
            assert_eq!(err.code(), &ErrorCode::InvalidRequest);
            assert!(err.message().contains("empty"), "{}", err.message());
        }
    }

    #[test]
    fn a_body_that_is_not_an_array_is_refused() {
        let err = parse_array(br#"{"payload_base64": "eA=="}"#).expect_err("not an array");
        assert_eq!(err.code(), &ErrorCode::InvalidRequest);
        assert!(err.message().contains("JSON array"), "{}", err.message());
    }
}
