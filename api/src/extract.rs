//! Extractors whose rejections are the API's error body, never axum's plain text: a JSON body
//! (400, 413 or 415), path parameters (a non-UUID id) and query parameters (400).

use crate::ApiError;
use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use serde_json::json;

/// Path parameters.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Query parameters.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::Validation {
            message: "invalid path parameter: ids are UUIDs".into(),
            details: json!({ "path": r.body_text() }),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::Validation {
            message: "invalid query parameters".into(),
            details: json!({ "query": r.body_text() }),
        }
    }
}

/// A JSON request body; a malformed, mistyped, oversized or wrongly labelled body is answered
/// with the error body (400, 413 or 415), never axum's plain-text default.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "expected a JSON body with `Content-Type: application/json`".into(),
            ),
            JsonRejection::JsonSyntaxError(e) => ApiError::Validation {
                message: "malformed JSON".into(),
                details: json!({ "body": e.body_text() }),
            },
            JsonRejection::JsonDataError(e) => ApiError::Validation {
                message: "invalid request body".into(),
                details: json!({ "body": e.body_text() }),
            },
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("request body too large".into())
            }
            other => ApiError::Validation {
                message: "unreadable request body".into(),
                details: json!({ "body": other.body_text() }),
            },
        }
    }
}
