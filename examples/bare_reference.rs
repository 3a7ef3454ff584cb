//! The reference for the API benchmark (`bench/api.sh`): a bare axum handler that runs the same
//! SQL read as `GET /api/chats/{chatId}/messages` (via the same read-model function) on the same
//! database, with no authentication, middleware or validation. The ratio of the real route's
//! throughput to this one's is the cost of everything else the API does per request.
//!
//! `cargo run --release --example bare_reference -- <sqlite-file> <port>`

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use confab_projections::ReadDb;
use confab_projections::chats::{self, MessageFilter};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Deserialize)]
struct Q {
    owner: Uuid,
    page: Option<u32>,
    limit: Option<u32>,
}

async fn messages(
    State(db): State<ReadDb>,
    Path(chat): Path<Uuid>,
    Query(q): Query<Q>,
) -> Json<Value> {
    let limit = q.limit.unwrap_or(50);
    let page = q.page.unwrap_or(1);
    let filter = MessageFilter {
        chat_id: Some(chat),
        ..MessageFilter::default()
    };
    let (rows, total) = chats::find_messages(
        &db,
        q.owner,
        &filter,
        limit,
        u64::from(page - 1) * u64::from(limit),
    )
    .await
    .unwrap_or_default();
    let messages: Vec<Value> = rows
        .iter()
        .map(|m| {
            json!({ "id": m.id, "chatId": m.chat_id, "role": m.role, "content": m.content,
                    "type": m.kind, "userId": m.user_id, "createdAt": m.created_at,
                    "updatedAt": m.updated_at })
        })
        .collect();
    Json(json!({ "messages": messages, "total": total, "page": page, "limit": limit }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let file = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: bare_reference <sqlite-file> <port>"))?;
    let port: u16 = args.next().unwrap_or_else(|| "8090".into()).parse()?;
    let options = confab_eventstore::sqlite::connect_options(&format!("sqlite://{file}"))?;
    let pool = confab_eventstore::sqlite::read_pool(options).await?;
    let app = Router::new()
        .route("/ref/chats/{chat}/messages", get(messages))
        .with_state(ReadDb::Sqlite(pool));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
