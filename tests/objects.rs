//! Uploads kept in an S3-compatible object store (`CONFAB_OBJECT_STORE_URL=s3://bucket/prefix`):
//! a profile image goes to the bucket under the prefix and is served back from it. The S3 side
//! is a real local server speaking the S3 wire protocol (moto's `moto_server`, from PyPI; the
//! test installs it with pip when it is not on the PATH).
//!
//! The server runs as the real `confab serve` process, configured as an operator would: by
//! `CONFAB_OBJECT_STORE_URL` and the standard AWS_* environment variables.

use reqwest::multipart::{Form, Part};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process, killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let moto = Killed(child);
    let endpoint = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(&endpoint).send().await.is_ok() {
            return (moto, endpoint);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("moto_server did not start on {endpoint}");
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    v.extend(w.to_be_bytes());
    v.extend(h.to_be_bytes());
    v.extend([8, 2, 0, 0, 0, 0, 0, 0, 0]);
    v.extend(b"\0\0\0\0IEND\xaeB`\x82");
    v
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let server = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("CONFAB_DATA_DIR", dir.path())
        .env("CONFAB_OBJECT_STORE_URL", "s3://confab-test/uploads")
        .env("CONFAB_RATE_LIMIT_ENABLED", "false")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT", &endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start confab serve");
    let _server = Killed(server);
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..300 {
        if client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
