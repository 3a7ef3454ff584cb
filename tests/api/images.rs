//! `POST /api/profile/image` and serving the image back, on SQLite and PostgreSQL: the type is
//! judged by the bytes, the size and dimensions are bounded, and bad uploads change nothing.

use crate::helpers::{Db, TestApp, assert_error, on_both, parts, png, spawn_app};
use reqwest::Method;
use reqwest::multipart::{Form, Part};

on_both!(
    an_image_is_stored_served_and_linked_from_the_profile,
    uploads_that_lie_or_exceed_the_limits_are_refused,
);

fn gif(w: u16, h: u16) -> Vec<u8> {
    let mut v = b"GIF89a".to_vec();
    v.extend(w.to_le_bytes());
    v.extend(h.to_le_bytes());
    v.extend([0, 0, 0, 0x3b]);
    v
}

async fn upload(
    app: &TestApp,
    token: Option<&str>,
    field: &str,
    bytes: Vec<u8>,
    mime: &str,
) -> (u16, serde_json::Value) {
    let part = Part::bytes(bytes)
        .file_name("upload.bin")
        .mime_str(mime)
        .expect("mime");
    let form = Form::new().part(field.to_owned(), part);
    parts(
        app.request(Method::POST, "/api/profile/image", token)
            .multipart(form)
            .send()
            .await
            .expect("upload"),
    )
    .await
}

async fn an_image_is_stored_served_and_linked_from_the_profile(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("pic@example.com").await;
    let bytes = png(64, 48);
    let (status, body) = upload(&app, Some(&token), "image", bytes.clone(), "image/png").await;
    assert_eq!(status, 200, "{body}");
    let url = body["imageUrl"].as_str().expect("imageUrl").to_owned();
    assert!(url.ends_with(".png") && body["updatedAt"].is_string());
    let (_, me) = app.get("/api/me", Some(&token)).await;
    assert_eq!(me["user"]["imageUrl"], url.as_str());
    let r = app
        .request(Method::GET, &url, None)
        .send()
        .await
        .expect("get image");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.bytes().await.expect("bytes").to_vec(), bytes);

    // The client's content type does not matter: the bytes say GIF.
    let (status, body) = upload(&app, Some(&token), "image", gif(2048, 2048), "text/plain").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["imageUrl"].as_str().expect("url").ends_with(".gif"));
    let (status, _) = app.get(&url.replace(".png", ".exe"), None).await;
    assert_eq!(status, 404);
    app.shutdown().await;
}

async fn uploads_that_lie_or_exceed_the_limits_are_refused(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("liar@example.com").await;
    let svg = b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>".to_vec();
    let (status, body) = upload(&app, Some(&token), "image", svg, "image/png").await;
    assert_eq!(status, 415, "{body}");
    assert_error(&body, "unsupported_media_type");
    let (status, body) = upload(&app, Some(&token), "image", png(4096, 10), "image/png").await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "validation_error");
    let mut huge = png(100, 100);
    huge.resize(5 * 1024 * 1024 + 10, 0);
    let (status, body) = upload(&app, Some(&token), "image", huge, "image/png").await;
    assert_eq!(status, 413, "{body}");
    assert_error(&body, "payload_too_large");
    let (status, body) = upload(&app, Some(&token), "avatar", png(10, 10), "image/png").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = upload(&app, None, "image", png(10, 10), "image/png").await;
    assert_eq!(status, 401, "{body}");
    let (_, me) = app.get("/api/me", Some(&token)).await;
    assert!(me["user"]["imageUrl"].is_null(), "nothing was stored: {me}");
    app.shutdown().await;
}
