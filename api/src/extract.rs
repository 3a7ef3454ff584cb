//! Path and query extractors whose rejections are the API's error body (400), never axum's
//! plain text: a non-UUID id or a mistyped parameter names what was wrong.

use crate::ApiError;
use axum::extract::FromRequestParts;
use axum::extract::rejection::{PathRejection, QueryRejection};
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
