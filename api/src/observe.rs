//! Request latency per route group, for `/metrics`: `confab_http_request_duration_seconds`
//! labelled by route group (the first path segments a route family shares, never a raw path,
//! so the label stays bounded however many ids and unknown paths arrive), method and status
//! class.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// The route families; a path is in the longest one it starts with, or in `other`.
const GROUPS: &[&str] = &[
    "/api/auth",
    "/api/billing",
    "/api/chat",
    "/api/chats",
    "/api/cron",
    "/api/documents",
    "/api/events",
    "/api/me",
    "/api/messages",
    "/api/models",
    "/api/profile",
    "/api/rag",
    "/api/realtime",
    "/api/settings",
    "/api/upload",
    "/api/webhooks",
    "/app",
    "/chat/attachments",
    "/chat/conversations",
    "/chat/llm-providers",
    "/chat/messages",
    "/chat/user-llm-configs",
    "/docs",
    "/healthz",
    "/metrics",
    "/openapi.json",
    "/readyz",
];

/// The route group of `path`: a member of [`GROUPS`], or `other`.
pub fn route_group(path: &str) -> &'static str {
    GROUPS
        .iter()
        .filter(|g| {
            path.strip_prefix(**g)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|g| g.len())
        .copied()
        .unwrap_or("other")
}

/// Records how long each request took, from its arrival to its response head (a streamed
/// body goes on after).
pub async fn layer(req: Request, next: Next) -> Response {
    let group = route_group(req.uri().path());
    let method = req.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let status = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::histogram!(
        "confab_http_request_duration_seconds",
        "group" => group,
        "method" => method,
        "status" => status
    )
    .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::OpenApi;

    #[test]
    fn paths_fall_in_their_family_and_never_in_a_raw_label() {
        assert_eq!(route_group("/api/chats/0190/messages/0191"), "/api/chats");
        assert_eq!(route_group("/api/chat"), "/api/chat");
        assert_eq!(route_group("/api/chat/abc/stream"), "/api/chat");
        assert_eq!(route_group("/api/chatsy"), "other");
        assert_eq!(
            route_group("/chat/conversations/1/messages"),
            "/chat/conversations"
        );
        assert_eq!(route_group("/etc/passwd"), "other");
        assert_eq!(route_group("/"), "other");
    }

    #[test]
    fn every_documented_route_has_a_group() {
        let doc = crate::openapi::ApiDoc::openapi();
        for path in doc.paths.paths.keys() {
            assert_ne!(route_group(path), "other", "{path} has no route group");
        }
    }
}
