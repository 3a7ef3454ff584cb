//! `PUT /api/profile` and admin creation (start-up variables and `confab admin create`), on
//! SQLite and PostgreSQL.

use crate::helpers::{
    ADMIN_PASSWORD, Db, PASSWORD, assert_error, confab_command, on_both, spawn_app, spawn_app_with,
};
use reqwest::Method;
use serde_json::json;

const PROFILE: &str = "/api/profile";

on_both!(
    profile_changes_name_and_email_and_frees_the_old_address,
    profile_refuses_taken_and_invalid_input,
    the_startup_admin_is_created_once_and_can_sign_in,
);

async fn profile_changes_name_and_email_and_frees_the_old_address(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("old@example.com").await;
    let (status, body) = app
        .put(
            PROFILE,
            &token,
            &json!({ "name": "New Name", "email": "New@Example.com" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["name"], "New Name");
    assert_eq!(body["user"]["email"], "new@example.com");
    assert!(body["user"]["updatedAt"].is_string());
    let (_, me) = app.get("/api/me", Some(&token)).await;
    assert_eq!(me["user"]["email"], "new@example.com");
    let (status, _) = app.try_sign_in("new@example.com", PASSWORD).await;
    assert_eq!(status, 200);
    let (status, _) = app.try_sign_in("old@example.com", PASSWORD).await;
    assert_eq!(status, 401);
    // The old address is free again.
    app.sign_up("old@example.com").await;
    let (status, body) = app
        .put(PROFILE, &token, &json!({ "name": "Only Name" }))
        .await;
    assert_eq!(
        (status, body["user"]["email"].as_str()),
        (200, Some("new@example.com"))
    );
    app.shutdown().await;
}

async fn profile_refuses_taken_and_invalid_input(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("me@example.com").await;
    app.sign_up("taken@example.com").await;
    let (status, body) = app
        .put(PROFILE, &token, &json!({ "email": "TAKEN@example.com" }))
        .await;
    assert_eq!(status, 409);
    assert_error(&body, "conflict");
    let (status, body) = app
        .put(PROFILE, &token, &json!({ "name": "", "email": "nope" }))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["details"]["name"].is_string()
            && body["error"]["details"]["email"].is_string()
    );
    let (status, _) = app.put(PROFILE, &token, &json!({})).await;
    assert_eq!(status, 400);
    let r = app
        .request(Method::PUT, "/api/profile", None)
        .json(&json!({ "name": "x" }))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status().as_u16(), 401);
    let (_, me) = app.get("/api/me", Some(&token)).await;
    assert_eq!(me["user"]["email"], "me@example.com", "nothing changed");
    app.shutdown().await;
}

async fn the_startup_admin_is_created_once_and_can_sign_in(db: Db) {
    let app = spawn_app_with(db, |c| {
        c.admin_email = Some("root@example.com".into());
        c.admin_password = Some(ADMIN_PASSWORD.to_owned().into());
    })
    .await;
    let (_, admin) = app.sign_in("root@example.com", ADMIN_PASSWORD).await;
    assert_eq!(admin["role"], "admin");
    let (status, body) = app
        .try_sign_up(
            &json!({ "email": "root@example.com", "password": "another one!", "name": "X" }),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    app.shutdown().await;
}

#[tokio::test]
async fn confab_admin_create_makes_an_admin_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let run = |email: &str| {
        confab_command()
            .arg("--data-dir")
            .arg(&data)
            .args(["admin", "create", "--email", email])
            .env("CONFAB_NEW_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .output()
            .expect("run confab")
    };
    let out = run("ops@example.com");
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(ADMIN_PASSWORD));
    let again = run("ops@example.com");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let bad = run("not-an-email");
    assert!(!bad.status.success());

    let app = spawn_app_with(Db::Sqlite, |c| c.data_dir = data.clone()).await;
    let (_, admin) = app.sign_in("ops@example.com", ADMIN_PASSWORD).await;
    assert_eq!(admin["role"], "admin");
    app.shutdown().await;
}
