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
        // The key the `confab` processes of the test use too.
        encryption_key: Some(crate::helpers::TEST_ENCRYPTION_KEY.to_owned().into()),
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

/// An auditor's view of the log: filtered listings, and `events verify` on a sound log and on
/// one edited behind Confab's back (an unreadable payload, missing positions, a version gap).
async fn auditors_filter_and_verify_the_log(db: Option<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let db = db.as_deref();
    let config = confab::Config {
        data_dir: data.clone(),
        database_url: db.map(|s| s.to_owned().into()),
        // The key the `confab` processes of the test use too.
        encryption_key: Some(crate::helpers::TEST_ENCRYPTION_KEY.to_owned().into()),
        ..confab::Config::default()
    };
    let chat = seed(&config).await;
    // One more chat, created by a known user (the seed's events name no actor).
    let backend = confab::backend::Backend::open(&config, confab::backend::Migrations::Apply)
        .await
        .expect("open");
    let (user, other_chat) = (Uuid::now_v7(), Uuid::now_v7());
    execute::<Chat>(
        &*backend.store,
        &other_chat,
        ChatCommand::Create {
            chat_id: other_chat,
            owner: user,
            title: ChatTitle::parse("Audited").expect("title"),
            at: Utc::now(),
        },
        EventMetadata {
            actor: Some(user),
            ..EventMetadata::default()
        },
    )
    .await
    .expect("create");
    let json_lines = |o: &Output| -> Vec<serde_json::Value> {
        assert!(o.status.success(), "{o:?}");
        stdout(o)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    let positions = |lines: &[serde_json::Value]| -> Vec<u64> {
        lines
            .iter()
            .map(|l| l["position"].as_u64().expect("position"))
            .collect()
    };

    let created = json_lines(&confab(&data, db, &["events", "--type", "chat.created"]));
    assert_eq!(positions(&created), vec![1, 27]);
    let window = json_lines(&confab(
        &data,
        db,
        &[
            "events", "--stream", "chat-*", "--after", "20", "--before", "24",
        ],
    ));
    assert_eq!(positions(&window), vec![21, 22, 23]);
    let one_stream = json_lines(&confab(
        &data,
        db,
        &[
            "events",
            "--stream",
            &format!("chat-{chat}"),
            "--type",
            "chat.message_sent",
        ],
    ));
    assert_eq!(one_stream.len(), 25);
    let theirs = json_lines(&confab(&data, db, &["events", "--user", &user.to_string()]));
    assert_eq!(positions(&theirs), vec![27]);
    let out = confab(
        &data,
        db,
        &["events", "--type", "chat.*", "--format", "table"],
    );
    assert!(out.status.success(), "{out:?}");
    let table = stdout(&out);
    assert_eq!(table.lines().count(), 1 + 27, "{table}");
    assert!(table.lines().next().unwrap().contains("position"));
    assert!(table.contains(&format!("chat-{other_chat}")) && table.contains(&user.to_string()));
    let out = confab(&data, db, &["events", "--since", "2999-01-01"]);
    assert!(out.status.success() && stdout(&out).is_empty(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no event matches"));
    let out = confab(&data, db, &["events", "--since", "last tuesday"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("RFC 3339"),
        "{out:?}"
    );

    let out = confab(&data, db, &["events", "verify"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("the log is sound: 27 events in 2 streams"),
        "{}",
        stdout(&out)
    );

    // Edited behind Confab's back: an unreadable payload at 28, nothing at 29 and 30, and a
    // stream that skips a version at 31.
    let stray = format!("chat-{}", Uuid::now_v7());
    let rows = [
        (28_i64, 1_i64, serde_json::json!({ "no": "such field" })),
        (31, 3, serde_json::json!({ "no": "such field either" })),
    ];
    let insert = "INSERT INTO events (position, event_id, stream, version, event_type, \
                  schema_version, payload, metadata, recorded_at) \
                  VALUES ($1, $2, $3, $4, 'chat.created', 1, $5, $6, $7)";
    let meta = serde_json::json!({});
    match &backend.db {
        confab_projections::ReadDb::Sqlite(p) => {
            for (pos, version, payload) in &rows {
                sqlx::query(insert)
                    .bind(pos)
                    .bind(Uuid::now_v7())
                    .bind(&stray)
                    .bind(version)
                    .bind(payload.to_string())
                    .bind(meta.to_string())
                    .bind(Utc::now())
                    .execute(p)
                    .await
                    .expect("insert");
            }
        }
        confab_projections::ReadDb::Postgres(p) => {
            for (pos, version, payload) in &rows {
                sqlx::query(insert)
                    .bind(pos)
                    .bind(Uuid::now_v7())
                    .bind(&stray)
                    .bind(version)
                    .bind(sqlx::types::Json(payload))
                    .bind(sqlx::types::Json(&meta))
                    .bind(Utc::now())
                    .execute(p)
                    .await
                    .expect("insert");
            }
            sqlx::query("UPDATE event_log_head SET position = 31")
                .execute(p)
                .await
                .expect("head");
        }
    }
    let out = confab(&data, db, &["events", "verify"]);
    assert!(!out.status.success(), "{out:?}");
    let report = stdout(&out);
    assert!(report.contains("position 28: chat.created"), "{report}");
    assert!(report.contains("cannot be read"), "{report}");
    assert!(
        report.contains("position 31: positions 29 to 30 are missing"),
        "{report}"
    );
    assert!(report.contains("jumps from version 1 to 3"), "{report}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing was changed"),
        "{out:?}"
    );
}

#[tokio::test]
async fn auditors_filter_and_verify_the_log_on_the_embedded_default() {
    auditors_filter_and_verify_the_log(None).await;
}

#[tokio::test]
async fn auditors_filter_and_verify_the_log_on_postgres() {
    auditors_filter_and_verify_the_log(Some(
        confab_eventstore::testing::fresh_postgres_database().await,
    ))
    .await;
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

/// `CONFAB_LOG_FORMAT=json`: every log line is one JSON object with its time, level, target
/// and fields; a format Confab does not know is refused, naming the variable.
#[test]
fn logs_are_json_lines_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = confab_command()
        .arg("--data-dir")
        .arg(dir.path())
        .arg("migrate")
        .env("CONFAB_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .output()
        .expect("run confab");
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines at debug");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(v.get(key).is_some(), "no {key} in {line}");
        }
    }

    let out = confab_command()
        .arg("--data-dir")
        .arg(dir.path())
        .arg("migrate")
        .env("CONFAB_LOG_FORMAT", "xml")
        .output()
        .expect("run confab");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CONFAB_LOG_FORMAT") && err.contains("json"),
        "{err}"
    );
}
