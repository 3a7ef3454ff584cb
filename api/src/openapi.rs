//! The OpenAPI 3.1 document, generated from the handlers' annotations and the resource types,
//! at `/openapi.json`, and a docs page at `/docs` that renders it.
//!
//! What every route shares is added here once ([`Conventions`]), so no handler can forget it:
//! the error statuses each kind of operation can answer (400 for unreadable input, 401 where a
//! session is needed, 413 and 415 for bodies, 429 where rate limits apply, 500, 503) with the
//! error body, and the rate-limit headers.

use crate::error::{ErrorBody, ErrorCode, ErrorDetail, RecordedBody};
use axum::Json;
use axum::response::Html;
use confab_domain::patterns;
use serde_json::Value;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi};

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("confab_session"))),
        );
        components.add_security_scheme(
            "cron",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("CRON_SECRET"))
                    .build(),
            ),
        );
    }
}

/// Paths never rate-limited (see `ratelimit::Group::of`).
fn unlimited(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/docs"
    ) || path.starts_with("/api/webhooks/")
}

fn error_response(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

/// The conventions every operation shares.
struct Conventions;

impl Conventions {
    fn apply(path: &str, write: bool, op: &mut Operation) {
        let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
        let params = op.parameters.as_ref().is_some_and(|ps| {
            ps.iter().any(|p| {
                matches!(
                    p.parameter_in,
                    ParameterIn::Path | ParameterIn::Query | ParameterIn::Header
                )
            })
        });
        let body = op.request_body.is_some();
        let responses = &mut op.responses.responses;
        if secured && write {
            responses.entry("202".to_owned()).or_insert_with(|| {
                ResponseBuilder::new()
                    .description(
                        "Recorded, but the read model did not show it in time: the change is \
                         committed (a retry with the same Idempotency-Key replays this answer); \
                         read it again shortly",
                    )
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("RecordedBody")))
                            .build(),
                    )
                    .build()
                    .into()
            });
        }
        let mut add = |status: &str, description: &str| {
            responses
                .entry(status.to_owned())
                .or_insert_with(|| error_response(description));
        };
        if body || params {
            add("400", "Invalid input: `details` names each offending field");
        }
        if secured {
            add("401", "Not signed in, or the session ended");
        }
        if body {
            add("413", "The body is too large");
            add("415", "The body is not of the declared content type");
        }
        if !unlimited(path) {
            add("429", "Rate limited: retry after `Retry-After` seconds");
        }
        add("500", "Internal error (logged; never described)");
        add(
            "503",
            "Unavailable: the store is unreachable or a setting is missing",
        );
        if !unlimited(path) {
            for response in op.responses.responses.values_mut() {
                if let RefOr::T(r) = response {
                    for (name, description) in [
                        (
                            "X-RateLimit-Limit",
                            "Requests allowed in the tighter window",
                        ),
                        ("X-RateLimit-Remaining", "Requests left in that window"),
                        (
                            "X-RateLimit-Reset",
                            "Unix second when the whole budget is back",
                        ),
                    ] {
                        r.headers.entry(name.to_owned()).or_insert_with(|| {
                            HeaderBuilder::new()
                                .schema(ObjectBuilder::new().schema_type(Type::Integer))
                                .description(Some(description))
                                .build()
                        });
                    }
                }
            }
        }
    }
}

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            for (write, op) in [
                (false, &mut item.get),
                (true, &mut item.put),
                (true, &mut item.post),
                (true, &mut item.delete),
                (true, &mut item.patch),
            ] {
                if let Some(op) = op {
                    Conventions::apply(path, write, op);
                }
            }
        }
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Confab", description = "The backend of an AI chat product."),
    paths(
        crate::health::healthz,
        crate::health::readyz,
        crate::health::metrics,
        crate::auth::signup,
        crate::auth::signin,
        crate::auth::signout,
        crate::auth::me,
        crate::auth::delete_me,
        crate::auth::export,
        crate::profile::update_profile,
        crate::images::upload,
        crate::images::serve,
        crate::settings::get_settings,
        crate::settings::put_settings,
        crate::ai::health,
        crate::ai::post_chat,
        crate::ai::resume,
        crate::ai::models,
        crate::ai::credit_history,
        crate::ai::reset_credits,
        crate::billing::checkout,
        crate::billing::portal,
        crate::billing::invoices,
        crate::billing::webhook,
        crate::chats::create_chat,
        crate::chats::list_chats,
        crate::chats::get_chat,
        crate::chats::rename_chat,
        crate::chats::delete_chat,
        crate::chats::list_messages,
        crate::chats::send_message,
        crate::chats::edit_message,
        crate::chats::delete_message,
        crate::chats::search_messages,
        crate::chats::restore_chat,
        crate::chats::restore_message,
        crate::chats::message_history,
        crate::documents::upload,
        crate::documents::list,
        crate::documents::get,
        crate::documents::delete,
        crate::documents::rag,
        crate::documents::sources,
        crate::conversations::create_conversation,
        crate::conversations::get_conversation,
        crate::conversations::create_message,
        crate::conversations::list_messages,
        crate::conversations::create_attachment,
        crate::conversations::list_attachments,
        crate::providers::create_provider,
        crate::providers::get_provider,
        crate::providers::set_user_config,
        crate::providers::get_user_config,
        crate::realtime::pusher::authorize,
        crate::realtime::pusher::websocket,
        crate::realtime::sse::events,
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        ErrorCode,
        RecordedBody,
        crate::resources::chats::DateOrDateTime
    )),
    modifiers(&Security, &Conventions),
    tags(
        (name = "auth", description = "Accounts and sessions"),
        (name = "profile", description = "Name, email and image"),
        (name = "settings", description = "Preferences"),
        (name = "chats", description = "Chats, messages and search"),
        (name = "seed-002", description = "Conversations, attachments and LLM providers (snake_case)"),
        (name = "operations", description = "Health and readiness"),
        (name = "ai", description = "AI chat and models"),
        (name = "documents", description = "Documents for retrieval: upload, processing, grounding answers"),
        (name = "billing", description = "Stripe checkout and portal, invoices, credits, the Stripe webhook"),
        (name = "realtime", description = "Live events: Pusher over WebSocket, channel authorization, Server-Sent Events"),
    )
)]
pub struct ApiDoc;

/// The domain's patterns, by the placeholder the resource types name them with (`utoipa`
/// takes only string literals, and the patterns are built from shared pieces).
const PATTERNS: &[(&str, &str)] = &[
    ("patterns::TRIMMED_LINE", patterns::TRIMMED_LINE),
    ("patterns::NOT_BLANK", patterns::NOT_BLANK),
    ("patterns::NO_NUL", patterns::NO_NUL),
    ("patterns::TOKEN", patterns::TOKEN),
    ("patterns::EMAIL", patterns::EMAIL),
    ("patterns::SAFE_PATH", patterns::SAFE_PATH),
];

/// Replaces every pattern placeholder in the document with its pattern.
fn resolve_patterns(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "pattern"
                    && let Value::String(p) = child
                    && let Some((_, real)) = PATTERNS.iter().find(|(name, _)| name == p)
                {
                    *p = (*real).to_owned();
                } else {
                    resolve_patterns(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(resolve_patterns),
        _ => {}
    }
}

/// Bodies of which at least one of these fields must be given (`utoipa` has no attribute for
/// it).
const ONE_OF_REQUIRED: &[(&str, &[&str])] = &[
    ("EditBody", &["content", "type"]),
    ("ProfileBody", &["name", "email"]),
];

/// What the derive cannot say: the fields a body needs at least one of, and the media types of
/// the profile image's and the document upload's file fields.
fn complete(doc: &mut Value) {
    // One file field and nothing else.
    doc["components"]["schemas"]["ImageForm"]["additionalProperties"] = Value::Bool(false);
    doc["components"]["schemas"]["DocumentForm"]["additionalProperties"] = Value::Bool(false);
    for (schema, fields) in ONE_OF_REQUIRED {
        let choices: Vec<Value> = fields
            .iter()
            .map(|f| serde_json::json!({ "required": [f] }))
            .collect();
        doc["components"]["schemas"][*schema]["anyOf"] = Value::Array(choices);
    }
    if let Some(form) = doc["paths"]["/api/profile/image"]["post"]["requestBody"]["content"]
        .get_mut("multipart/form-data")
    {
        form["encoding"] = serde_json::json!({
            "image": { "contentType": "image/jpeg, image/png, image/gif" }
        });
    }
    if let Some(form) =
        doc["paths"]["/api/upload"]["post"]["requestBody"]["content"].get_mut("multipart/form-data")
    {
        form["encoding"] = serde_json::json!({
            "file": { "contentType": "application/pdf, text/plain, text/markdown, text/html, \
                application/vnd.openxmlformats-officedocument.wordprocessingml.document" }
        });
    }
}

/// The document as served.
pub fn json() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    resolve_patterns(&mut doc);
    complete(&mut doc);
    doc
}

/// The parts of the document this deployment's configuration decides: which prices are sold
/// (and how each is bought) and which models exist, so that a client knows the accepted
/// values before it asks.
fn configured(mut doc: Value, app: &confab_application::Services) -> Value {
    use confab_domain::billing::PurchaseMode;
    let schemas = &mut doc["components"]["schemas"];
    let prices = app.billing.prices();
    if !prices.is_empty() {
        let choices: Vec<Value> = prices
            .iter()
            .map(|p| {
                let mode = match p.mode() {
                    PurchaseMode::Subscription => "subscription",
                    PurchaseMode::OneTime => "one-time",
                };
                serde_json::json!({ "properties": {
                    "priceId": { "const": p.id },
                    "mode": { "const": mode },
                } })
            })
            .collect();
        schemas["CheckoutBody"]["oneOf"] = Value::Array(choices);
    }
    let models: Vec<Value> = app
        .catalogue
        .models
        .iter()
        .map(|m| Value::from(m.id.clone()))
        .collect();
    if let Some(model) = schemas["ChatBody"]["properties"].get_mut("modelId") {
        model["enum"] = Value::Array(models);
    }
    doc
}

/// `GET /openapi.json`.
pub async fn document(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
) -> Json<Value> {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    Json(configured(DOC.get_or_init(json).clone(), &state.app))
}

/// `GET /docs`: renders `/openapi.json` in the browser (the viewer's script comes from a CDN,
/// fetched by the browser, not the server).
pub async fn docs() -> Html<&'static str> {
    Html(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Confab API</title></head>
<body><script id="api-reference" data-url="/openapi.json"></script>
<script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script></body></html>"#,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_placeholder_is_resolved() {
        let text = json().to_string();
        assert!(
            !text.contains("patterns::"),
            "an unresolved pattern placeholder"
        );
        assert!(
            text.contains("\\u3000"),
            "the whitespace classes are in the document"
        );
    }

    /// A body that takes either field or both says so with `anyOf` alone: no property count
    /// (utoipa writes `min_properties` as `maxProperties`, which refused a body with both).
    #[test]
    fn bodies_of_optional_fields_take_any_of_them() {
        let doc = json();
        for (schema, fields) in ONE_OF_REQUIRED {
            let s = &doc["components"]["schemas"][*schema];
            assert_eq!(s["anyOf"].as_array().map(Vec::len), Some(fields.len()));
            for count in ["minProperties", "maxProperties"] {
                assert!(s.get(count).is_none(), "{schema} has {count}");
            }
            for field in *fields {
                assert!(s["properties"].get(*field).is_some(), "{schema}.{field}");
            }
        }
    }
}
