//! The `confab` binary as an operator runs it: migrate, projections status and rebuild, events
//! show and tail, on a fresh SQLite data directory and on PostgreSQL.

use crate::helpers::confab_command;
use chrono::Utc;
use confab_domain::chat::{Chat, ChatCommand};
use confab_domain::{ChatTitle, MessageContent, MessageKind, Role};
use confab_eventstore::EventMetadata;
use confab_eventstore::aggregate::execute;
use std::process::Output;
use uuid::Uuid;

fn confab(data_dir: &std::path::Path, db: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = confab_command();
    cmd.arg("--data-dir").arg(data_dir).args(args);
    if let Some(url) = db {
        cmd.env("CONFAB_DATABASE_URL", url);
    }
    cmd.output().expect("run confab")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn seed(config: &confab::Config) -> Uuid {
    let backend = confab::backend::Backend::open(config, confab::backend::Migrations::Apply)
        .await
        .expect("open");
    let owner = Uuid::now_v7();
    let chat = Uuid::now_v7();
    execute::<Chat>(
        &*backend.store,
        &chat,
        ChatCommand::Create {
            chat_id: chat,
            owner,
            title: ChatTitle::parse("Ops").expect("title"),
            at: Utc::now(),
        },
        EventMetadata::default(),
    )
    .await
    .expect("create");
    for i in 0..25 {
        execute::<Chat>(
            &*backend.store,
            &chat,
            ChatCommand::SendMessage {
                message_id: Uuid::now_v7(),
                actor: owner,
                role: Role::User,
                content: MessageContent::parse(&format!("hello {i}")).expect("content"),
                kind: MessageKind::Text,
                at: Utc::now(),
            },
            EventMetadata::default(),
        )
        .await
        .expect("send");
    }
    chat
}

async fn operator_commands(db: Option<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let db = db.as_deref();

    let out = confab(&data, db, &["migrate"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("up to date"));

    let config = confab::Config {
        data_dir: data.clone(),
        database_url: db.map(|s| s.to_owned().into()),
        ..confab::Config::default()
    };
    let chat = seed(&config).await;

    let out = confab(&data, db, &["projections", "status"]);
    assert!(out.status.success(), "{out:?}");
    let status = stdout(&out);
    assert!(status.contains("chats"), "{status}");
    assert!(status.contains(" 26 "), "head should be 26: {status}");

    let out = confab(&data, db, &["projections", "rebuild", "chats"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("rebuilt up to position 26"),
        "{}",
        stdout(&out)
    );
    let out = confab(&data, db, &["projections", "status"]);
    let line = stdout(&out)
        .lines()
        .find(|l| l.starts_with("chats"))
        .map(str::to_owned)
        .expect("chats line");
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols, vec!["chats", "26", "26", "0"]);

    let out = confab(&data, db, &["projections", "rebuild", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no projection named"));

    let stream = format!("chat-{chat}");
    let out = confab(&data, db, &["events", "show", &stream]);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 26);
    assert_eq!(lines[0]["eventType"], "chat.created");
    assert_eq!(lines[25]["version"], 26);

    let out = confab(&data, db, &["events", "tail", "-n", "5"]);
    assert!(out.status.success(), "{out:?}");
    let positions: Vec<u64> = stdout(&out)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["position"]
                .as_u64()
                .expect("pos")
        })
        .collect();
    assert_eq!(positions, vec![22, 23, 24, 25, 26]);

    let out = confab(&data, db, &["events", "show", "chat-missing"]);
    assert!(!out.status.success());
}

#[tokio::test]
async fn operator_commands_work_on_the_embedded_default() {
    operator_commands(None).await;
}

#[tokio::test]
async fn operator_commands_work_on_postgres() {
    operator_commands(Some(
        confab_eventstore::testing::fresh_postgres_database().await,
    ))
    .await;
}

#[test]
fn a_bad_database_url_is_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = confab(dir.path(), Some("mysql://nope"), &["migrate"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CONFAB_DATABASE_URL"), "{err}");
}
