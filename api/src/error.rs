//! The one error body every route answers with: `{"error": {"message", "code", "details"}}`,
//! and the one place application errors become HTTP statuses ([`From<AppError>`]).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use confab_application::{AppError, Problems};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

/// An API failure, mapped to its status and `code`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401 `unauthorized`.
    #[error("authentication required")]
    Unauthorized,
    /// 403 `forbidden`.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `not_found`: also for another user's resource.
    #[error("{0}")]
    NotFound(String),
    /// 400 `validation_error`, with the offending fields in `details`.
    #[error("{message}")]
    Validation {
        /// Summary.
        message: String,
        /// Field name to reason.
        details: Value,
    },
    /// 422 `validation_error`: `POST /api/chat`'s invalid body (seed 003).
    #[error("{message}")]
    Unprocessable {
        /// Summary.
        message: String,
        /// Field name to reason.
        details: Value,
    },
    /// 402 `insufficient_credits`.
    #[error("{message}")]
    InsufficientCredits {
        /// What was needed and what is available.
        message: String,
        /// `needed` and `available`.
        details: Value,
    },
    /// 409 `conflict`.
    #[error("{message}")]
    Conflict {
        /// What conflicts.
        message: String,
        /// Specifics (a document's status, say).
        details: Value,
    },
    /// 413 `payload_too_large`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415 `unsupported_media_type`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 405, reported as `not_found` of the method: the route exists, this method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 429 `rate_limited`; `Retry-After` is set by the rate limiter.
    #[error("{message}")]
    RateLimited {
        /// Which limit, and when to retry.
        message: String,
        /// `limit`, `windowSeconds`, `retryAfter`.
        details: Value,
    },
    /// 502 `bad_gateway`: an upstream service (Stripe) refused the request or could not be
    /// reached; `details` says which and why, never with secrets.
    #[error("{message}")]
    BadGateway {
        /// What failed.
        message: String,
        /// The upstream's status and error type, when it answered.
        details: Value,
    },
    /// 503 `unavailable`: not ready to serve.
    #[error("{message}")]
    Unavailable {
        /// What is not ready.
        message: String,
        /// Specifics.
        details: Value,
    },
    /// 503 `unavailable` with `Retry-After`: too much of this work is in progress (password
    /// hashing under a sign-in flood).
    #[error("{message}")]
    Busy {
        /// What is saturated.
        message: String,
        /// The `Retry-After` seconds.
        retry_after_secs: u64,
    },
    /// 202: the write is committed to the log, but the read model did not show it within the
    /// write timeout. Not an error: the answer says so, and an `Idempotency-Key` retry replays
    /// it rather than writing again.
    #[error("recorded at position {position}, not yet readable")]
    Recorded {
        /// The log position of the write.
        position: u64,
    },
    /// 500 `internal_error`: logged once here, with its cause chain, never described to the
    /// client.
    #[error("internal error: {0}")]
    Internal(#[from] anyhow::Error),
}

fn problems_json(p: &Problems) -> Value {
    Value::Object(
        p.iter()
            .map(|(field, reason)| (field.to_owned(), Value::from(reason)))
            .collect(),
    )
}

impl From<Problems> for ApiError {
    fn from(p: Problems) -> Self {
        ApiError::Validation {
            message: p.to_string(),
            details: problems_json(&p),
        }
    }
}

impl From<confab_domain::ValidationError> for ApiError {
    fn from(e: confab_domain::ValidationError) -> Self {
        Problems::from(e).into()
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Invalid(p) => p.into(),
            AppError::Unauthenticated(_) => ApiError::Unauthorized,
            AppError::Forbidden(m) => ApiError::Forbidden(m),
            e @ AppError::NotFound(_) => ApiError::NotFound(e.to_string()),
            AppError::Unrecoverable(m) => ApiError::NotFound(m),
            AppError::Conflict { message, details } => ApiError::Conflict {
                message,
                details: Value::Object(details),
            },
            e @ AppError::InsufficientCredits { needed, available } => {
                ApiError::InsufficientCredits {
                    message: e.to_string(),
                    details: json!({ "needed": needed, "available": available }),
                }
            }
            AppError::TooLarge(m) => ApiError::PayloadTooLarge(m),
            AppError::UnsupportedMedia(m) => ApiError::UnsupportedMediaType(m),
            AppError::Unavailable { message, details } => ApiError::Unavailable {
                message,
                details: Value::Object(details),
            },
            AppError::Busy {
                message,
                retry_after_secs,
            } => ApiError::Busy {
                message,
                retry_after_secs,
            },
            AppError::Upstream { message, details } => ApiError::BadGateway {
                message,
                details: Value::Object(details),
            },
            AppError::NotVisible(t) => {
                tracing::warn!(projection = %t.name, wanted = t.wanted, reached = t.reached,
                    "a write is committed but its read model is behind; answering 202");
                ApiError::Recorded { position: t.wanted }
            }
            e @ (AppError::Store(_) | AppError::ReadModel(_)) if database_down(&e) => {
                tracing::warn!(error = %e, "the database is unreachable; answering 503");
                ApiError::database_down()
            }
            e @ (AppError::Store(_)
            | AppError::Upcast(_)
            | AppError::ReadModel(_)
            | AppError::Internal { .. }) => ApiError::Internal(e.into()),
        }
    }
}

/// Whether `e` is, at its root, the database being out of reach (down, restarting, refusing
/// connections, no connection free in time) rather than a fault: a 503 to retry, not a 500.
pub fn database_down(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        // The event store keeps its database error behind an `Arc`, whose own `source` would
        // skip it.
        if let Some(shared) =
            c.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
        {
            cause = Some(&**shared);
            continue;
        }
        if let Some(sql) = c.downcast_ref::<sqlx::Error>() {
            return match sql {
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed => true,
                // PostgreSQL: connection exceptions (class 08), shutting down or starting up
                // (57P01-57P03), too many connections (53300). SQLite: busy or locked past
                // the busy timeout.
                sqlx::Error::Database(d) => d.code().is_some_and(|code| {
                    code.starts_with("08")
                        || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300" | "5" | "6")
                }),
                _ => false,
            };
        }
        cause = c.source();
    }
    false
}

impl ApiError {
    /// The database is out of reach: 503 with `Retry-After`, to retry shortly.
    pub fn database_down() -> Self {
        ApiError::Busy {
            message: "the database is unavailable; retry shortly".into(),
            retry_after_secs: 1,
        }
    }

    /// A database error met at the edge: 503 when the database is out of reach, else 500.
    pub fn database(e: sqlx::Error) -> Self {
        if database_down(&e) {
            tracing::warn!(error = %e, "the database is unreachable; answering 503");
            ApiError::database_down()
        } else {
            ApiError::Internal(e.into())
        }
    }

    /// A conflict without details.
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::Conflict {
            message: message.into(),
            details: json!({}),
        }
    }

    /// A validation error on one field.
    pub fn field(field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        ApiError::Validation {
            message: format!("{field}: {reason}"),
            details: json!({ field: reason }),
        }
    }

    /// A validation error on several fields: `problems` maps each to its reason.
    pub fn invalid(problems: serde_json::Map<String, Value>) -> Self {
        let fields: Vec<&str> = problems.keys().map(String::as_str).collect();
        ApiError::Validation {
            message: format!("invalid fields: {}", fields.join(", ")),
            details: Value::Object(problems),
        }
    }

    fn parts(&self) -> (StatusCode, ErrorCode) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::Validation { .. } => (StatusCode::BAD_REQUEST, ErrorCode::ValidationError),
            ApiError::Unprocessable { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::ValidationError)
            }
            ApiError::InsufficientCredits { .. } => {
                (StatusCode::PAYMENT_REQUIRED, ErrorCode::InsufficientCredits)
            }
            ApiError::Conflict { .. } => (StatusCode::CONFLICT, ErrorCode::Conflict),
            ApiError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
            }
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
            ),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed)
            }
            ApiError::BadGateway { .. } => (StatusCode::BAD_GATEWAY, ErrorCode::BadGateway),
            ApiError::Unavailable { .. } | ApiError::Busy { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
            }
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::InternalError),
            // Answered before `parts` is asked (not an error body).
            ApiError::Recorded { .. } => (StatusCode::ACCEPTED, ErrorCode::InternalError),
        }
    }
}

/// The 202 body of a write that is committed but not yet readable.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordedBody {
    /// `accepted`.
    pub status: String,
    /// What to do: read the resource again shortly.
    pub message: String,
    /// The log position of the write.
    pub position: u64,
}

/// The error body every route answers with.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Human-readable; never internals.
    pub message: String,
    /// What kind of error.
    pub code: ErrorCode,
    /// For validation errors, each offending field and why; other specifics otherwise.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// The error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 400 or 422.
    ValidationError,
    /// 429.
    RateLimited,
    /// 402.
    InsufficientCredits,
    /// 409.
    Conflict,
    /// 413.
    PayloadTooLarge,
    /// 415.
    UnsupportedMediaType,
    /// 502.
    BadGateway,
    /// 503.
    Unavailable,
    /// 500.
    InternalError,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Recorded { position } = self {
            let body = RecordedBody {
                status: "accepted".into(),
                message: "the change is recorded but not yet readable; read it again shortly"
                    .into(),
                position,
            };
            return (StatusCode::ACCEPTED, Json(body)).into_response();
        }
        let (status, code) = self.parts();
        let (message, details) = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "request failed");
                ("internal server error".to_owned(), json!({}))
            }
            ApiError::Validation { message, details }
            | ApiError::Conflict { message, details }
            | ApiError::Unprocessable { message, details }
            | ApiError::InsufficientCredits { message, details } => {
                (message.clone(), details.clone())
            }
            ApiError::Unavailable { message, details }
            | ApiError::RateLimited { message, details }
            | ApiError::BadGateway { message, details } => (message.clone(), details.clone()),
            ApiError::Busy {
                message,
                retry_after_secs,
            } => (message.clone(), json!({ "retryAfter": retry_after_secs })),
            other => (other.to_string(), json!({})),
        };
        let retry_after = match &self {
            ApiError::Busy {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                message,
                code,
                details,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: ApiError) -> (StatusCode, Value) {
        let r = e.into_response();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_database_out_of_reach_is_a_503_to_retry_a_fault_is_a_500() {
        use confab_eventstore::StoreError;
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for down in [
            AppError::ReadModel(sqlx::Error::PoolTimedOut),
            AppError::ReadModel(sqlx::Error::Io(refused())),
            AppError::Store(StoreError::database(sqlx::Error::PoolTimedOut)),
            AppError::Store(StoreError::database(sqlx::Error::Io(refused()))),
        ] {
            let (status, body) = body(down.into()).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(body["error"]["code"], "unavailable");
        }
        for fault in [
            AppError::ReadModel(sqlx::Error::RowNotFound),
            AppError::Store(StoreError::database(sqlx::Error::ColumnNotFound(
                "x".into(),
            ))),
        ] {
            let (status, _) = body(fault.into()).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        }
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let (status, v) = body(ApiError::Internal(anyhow::anyhow!("password=hunter2"))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(v["error"]["code"], "internal_error");
        assert!(!v.to_string().contains("hunter2"));
    }

    #[tokio::test]
    async fn busy_is_a_503_that_says_when_to_retry() {
        let r = ApiError::from(AppError::Busy {
            message: "too many sign-ins".into(),
            retry_after_secs: 1,
        })
        .into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[axum::http::header::RETRY_AFTER], "1");
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], "unavailable");
        assert_eq!(v["error"]["details"]["retryAfter"], 1);
    }

    #[tokio::test]
    async fn validation_errors_name_the_field() {
        let (status, v) = body(ApiError::field("title", "must not be empty")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"]["code"], "validation_error");
        assert_eq!(v["error"]["details"]["title"], "must not be empty");
    }
}
