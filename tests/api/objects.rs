//! Uploads kept in an S3-compatible object store (`CONFAB_OBJECT_STORE_URL=s3://bucket/prefix`):
//! a profile image goes to the bucket under the prefix and is served back from it. The S3 side
//! is a real local server speaking the S3 wire protocol (moto's `moto_server`, from PyPI; the
//! test installs it with pip when it is not on the PATH).
//!
//! The server runs as the real `confab serve` process, configured as an operator would: by
//! `CONFAB_OBJECT_STORE_URL` and the standard AWS_* environment variables.

use crate::helpers::{Killed, confab_command, eventually, free_port, listening, png, spawn_quiet};
use reqwest::multipart::{Form, Part};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

fn moto_server_available() -> bool {
    Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn start_moto() -> (Killed, String) {
    if !moto_server_available() {
        let installed = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "moto[s3,server]"])
            .status()
            .expect("python3 is needed to install moto_server, the local S3 stand-in");
        assert!(
            installed.success() && moto_server_available(),
            "could not install moto_server: run `python3 -m pip install 'moto[s3,server]'`"
        );
    }
    let port = free_port();
    let moto =
        spawn_quiet(Command::new("moto_server").args(["-H", "127.0.0.1", "-p", &port.to_string()]));
    let endpoint = format!("http://127.0.0.1:{port}");
    assert!(
        listening(port).await,
        "moto_server did not start on {endpoint}"
    );
    (moto, endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn profile_images_are_kept_in_an_s3_compatible_bucket() {
    let (_moto, endpoint) = start_moto().await;
    let client = reqwest::Client::new();
    let created = client
        .put(format!("{endpoint}/confab-test"))
        .send()
        .await
        .expect("create bucket");
    assert!(created.status().is_success(), "{}", created.status());
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _server = spawn_quiet(
        confab_command()
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .env("CONFAB_DATA_DIR", dir.path())
            .env("CONFAB_OBJECT_STORE_URL", "s3://confab-test/uploads")
            .env("CONFAB_RATE_LIMIT_ENABLED", "false")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT", &endpoint)
            .env("AWS_ALLOW_HTTP", "true"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let health = format!("{base}/healthz");
    let (client_ref, health) = (&client, health.as_str());
    let healthy = move || async move {
        let r = client_ref.get(health).send().await;
        r.is_ok_and(|r| r.status().is_success())
    };
    let up = eventually(Duration::from_secs(15), Duration::from_millis(50), healthy).await;
    assert!(up, "confab serve did not start");
    let signup: serde_json::Value = client
        .post(format!("{base}/api/auth/signup"))
        .json(&json!({"email": "s3@example.com", "password": "a long password", "name": "S3"}))
        .send()
        .await
        .expect("signup")
        .json()
        .await
        .expect("json");
    let token = signup["token"].as_str().expect("token").to_owned();
    let bytes = png(32, 32);
    let part = Part::bytes(bytes.clone())
        .file_name("me.png")
        .mime_str("image/png")
        .expect("mime");
    let response = client
        .post(format!("{base}/api/profile/image"))
        .bearer_auth(&token)
        .multipart(Form::new().part("image", part))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    let url = body["imageUrl"].as_str().expect("imageUrl").to_owned();

    // The object is in the bucket, under the prefix.
    let listing = client
        .get(format!(
            "{endpoint}/confab-test?list-type=2&prefix=uploads/"
        ))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("listing");
    assert!(
        listing.contains("<Key>uploads/") && listing.contains(".png</Key>"),
        "{listing}"
    );
    // Served back from the bucket.
    let served = client
        .get(format!("{base}{url}"))
        .send()
        .await
        .expect("get image");
    assert_eq!(served.status().as_u16(), 200);
    assert_eq!(served.headers()["content-type"], "image/png");
    assert_eq!(served.bytes().await.expect("bytes").to_vec(), bytes);
    // Nothing went to the local data directory.
    assert!(!dir.path().join("objects").exists());
}
