//! Sign-up, sign-in, sign-out and `GET /api/me` over HTTP, on SQLite and PostgreSQL: the happy
//! paths, every documented error, bad bodies, and concurrent sign-ups racing for one address.

use crate::helpers::{Db, PASSWORD, assert_error, on_both, parts, spawn_app};
use reqwest::Method;
use serde_json::json;

on_both!(
    signing_up_returns_the_user_and_a_working_token,
    a_taken_email_is_a_conflict_whatever_its_case,
    bad_sign_up_bodies_name_the_offending_fields,
    malformed_or_mislabelled_bodies_get_the_error_body,
    sign_in_accepts_the_password_and_refuses_anything_else,
    signing_out_revokes_the_token_at_once,
    concurrent_sign_ups_for_one_email_let_exactly_one_in,
    the_session_cookie_authenticates_too,
);

async fn signing_up_returns_the_user_and_a_working_token(db: Db) {
    let app = spawn_app(db).await;
    let r = app
        .request(Method::POST, "/api/auth/signup", None)
        .json(&json!({ "email": " Ann@Example.com ", "password": PASSWORD, "name": " Ann " }))
        .send()
        .await
        .expect("request");
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Secure") && cookie.contains("SameSite")
    );
    let (status, body) = parts(r).await;
    assert_eq!(status, 201, "{body}");
    let user = &body["user"];
    assert_eq!(user["email"], "ann@example.com");
    assert_eq!(user["name"], "Ann");
    assert_eq!(user["role"], "user");
    assert_eq!(user["tier"], "free");
    assert!(user["credits"].is_i64());
    assert!(user["imageUrl"].is_null());
    assert!(
        !body.to_string().contains("argon2"),
        "the hash must never be returned"
    );
    let token = body["token"].as_str().expect("token");

    // Read-your-writes: the token works on the very next request.
    let (status, me) = app.get("/api/me", Some(token)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"], *user);
    let (status, body) = app.get("/api/me", None).await;
    assert_eq!(status, 401);
    assert_error(&body, "unauthorized");
    let (status, body) = app.get("/api/me", Some("not-a-token")).await;
    assert_eq!(status, 401);
    assert_error(&body, "unauthorized");
    app.shutdown().await;
}

async fn a_taken_email_is_a_conflict_whatever_its_case(db: Db) {
    let app = spawn_app(db).await;
    app.sign_up("bob@example.com").await;
    let (status, body) = app
        .try_sign_up(
            &json!({ "email": "BOB@example.com", "password": "another password", "name": "Bob 2" }),
        )
        .await;
    assert_eq!(status, 409);
    assert_error(&body, "conflict");
    app.shutdown().await;
}

async fn bad_sign_up_bodies_name_the_offending_fields(db: Db) {
    let app = spawn_app(db).await;
    let (status, body) = app
        .try_sign_up(&json!({ "email": "not-an-email", "password": "short", "name": "  " }))
        .await;
    assert_eq!(status, 400);
    assert_error(&body, "validation_error");
    for field in ["email", "password", "name"] {
        assert!(
            body["error"]["details"][field].is_string(),
            "{field}: {body}"
        );
    }
    let (status, body) = app.try_sign_up(&json!({ "email": "x@example.com" })).await;
    assert_eq!(status, 400);
    assert_error(&body, "validation_error");
    let (status, body) = app
        .try_sign_up(&json!({ "email": "x@example.com", "password": "p".repeat(129), "name": "X" }))
        .await;
    assert_eq!(status, 400);
    assert!(body["error"]["details"]["password"].is_string(), "{body}");
    // Nothing was stored by the refused attempts: the address is still free.
    app.sign_up("x@example.com").await;
    app.shutdown().await;
}

async fn malformed_or_mislabelled_bodies_get_the_error_body(db: Db) {
    let app = spawn_app(db).await;
    let send = |body: String, content_type: &'static str| {
        app.post_raw("/api/auth/signup", None, content_type, body)
    };
    let (status, body) = send("{\"email\": ".into(), "application/json").await;
    assert_eq!(status, 400);
    assert_error(&body, "validation_error");
    let (status, body) = send("[1, 2]".into(), "application/json").await;
    assert_eq!(status, 400);
    assert_error(&body, "validation_error");
    let (status, body) = send("email=a".into(), "text/plain").await;
    assert_eq!(status, 415);
    assert_error(&body, "unsupported_media_type");
    let huge = format!("{{\"email\": \"{}\"}}", "a".repeat(3 * 1024 * 1024));
    let (status, body) = send(huge, "application/json").await;
    assert_eq!(status, 413);
    assert_error(&body, "payload_too_large");
    app.shutdown().await;
}

async fn sign_in_accepts_the_password_and_refuses_anything_else(db: Db) {
    let app = spawn_app(db).await;
    let (first, user) = app.sign_up("cat@example.com").await;
    let (second, signed_in) = app.sign_in("CAT@example.com", PASSWORD).await;
    assert_eq!(signed_in["id"], user["id"]);
    assert_ne!(second, first);
    assert_eq!(app.get("/api/me", Some(&second)).await.0, 200);
    assert_eq!(app.get("/api/me", Some(&first)).await.0, 200);

    for (email, password) in [
        ("cat@example.com", "wrong password!"),
        ("nobody@example.com", PASSWORD),
        ("not an email", PASSWORD),
    ] {
        let (status, body) = app.try_sign_in(email, password).await;
        assert_eq!(status, 401, "{email}");
        assert_error(&body, "unauthorized");
    }
    app.shutdown().await;
}

async fn signing_out_revokes_the_token_at_once(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("dan@example.com").await;
    let (other, _) = app.sign_in("dan@example.com", PASSWORD).await;
    assert_eq!(app.sign_out(&token).await, 204);
    let (status, body) = app.get("/api/me", Some(&token)).await;
    assert_eq!(status, 401, "the revoked token still worked: {body}");
    assert_eq!(
        app.get("/api/me", Some(&other)).await.0,
        200,
        "only that session ends"
    );
    assert_eq!(app.sign_out(&token).await, 401);
    app.shutdown().await;
}

async fn concurrent_sign_ups_for_one_email_let_exactly_one_in(db: Db) {
    let app = spawn_app(db).await;
    let bodies: Vec<_> = (0..8)
        .map(|i| json!({ "email": "race@example.com", "password": PASSWORD, "name": format!("R{i}") }))
        .collect();
    let attempts = bodies.iter().map(|b| app.try_sign_up(b));
    let results = futures::future::join_all(attempts).await;
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    let conflicts = results.iter().filter(|(s, _)| *s == 409).count();
    assert_eq!((created, conflicts), (1, 7), "{results:?}");
    app.shutdown().await;
}

async fn the_session_cookie_authenticates_too(db: Db) {
    let app = spawn_app(db).await;
    let (token, user) = app.sign_up("eve@example.com").await;
    let r = app
        .request(Method::GET, "/api/me", None)
        .header("cookie", format!("theme=dark; confab_session={token}"))
        .send()
        .await
        .expect("me");
    let (status, body) = parts(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], user["id"]);
    app.shutdown().await;
}
