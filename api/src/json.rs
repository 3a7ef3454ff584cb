//! `ApiJson<T>`: axum's JSON extractor with its rejections turned into the API's error body.

use crate::ApiError;
use axum::extract::FromRequest;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde_json::json;

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
