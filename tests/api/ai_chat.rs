//! AI chat over HTTP against `confab-testkit`'s stand-in for OpenAI's chat-completions wire
//! format (server-sent events, usage in the last chunk, error statuses, hangs): replies streamed
//! by the worker, stored and charged; retries; timeouts; disconnects and resumes; the credit
//! ledger under concurrency; tiers; users' own keys; the monthly reset.

use crate::helpers::{
    Db, Killed, Queue, TestApp, assert_error, confab_command, error_message, on_both, parts, poll,
    spawn_app_on, spawn_app_with, spawn_quiet, test_config, with_admin,
};
use confab::Config;
use confab_domain::catalogue::{Catalogue, Model, Tier};
use confab_projections::ReadDb;
use confab_testkit::openai::{Act, OpenAiStandIn};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

on_both!(
    a_reply_is_streamed_stored_and_charged_by_its_usage,
    concurrent_requests_never_overdraw,
    an_account_that_cannot_be_reset_does_not_stop_the_others,
    a_keyed_chat_request_streams_and_its_replay_never_asks_the_model_again,
    a_reply_retried_after_its_first_tokens_finishes_from_them_without_calling_again,
    a_reply_whose_stream_completed_is_stored_whole_by_the_retry,
);

fn hello() -> Act {
    Act::reply(
        &["Hel", "lo, ", "world!"],
        (1000, 2000),
        Duration::from_millis(5),
    )
}

/// Config for the stand-in as the `openai` provider, called with the server's key.
fn openai_at(c: &mut Config, up: &OpenAiStandIn) {
    c.openai_base_url = Some(up.base_url().to_owned());
    c.openai_api_key = Some("server-key".to_owned().into());
}

/// The app with the stand-in as `openai` and short time limits.
async fn app_with(db: Db, up: &OpenAiStandIn, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with(db, |c| {
        openai_at(c, up);
        c.llm_first_token_timeout_ms = 700;
        c.llm_retries = 1;
        c.llm_backoff_ms = 20;
        c.cron_secret = Some("cron-secret".to_owned().into());
        tweak(c);
    })
    .await
}

/// Posts `body` to `/api/chat` → the response, its body still streaming.
async fn post_chat(app: &TestApp, token: Option<&str>, body: &Value) -> reqwest::Response {
    let r = app.request(Method::POST, "/api/chat", token).json(body);
    r.send().await.expect("post")
}

/// Posts `body` to `/api/chat` and reads the whole reply → (status, headers, text).
async fn chat(app: &TestApp, token: &str, body: &Value) -> (u16, HeaderMap, String) {
    let r = post_chat(app, Some(token), body).await;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.expect("text"))
}

/// Asks `text` in a new chat and expects the reply to start → (the streaming response, the
/// chat's id).
async fn start_chat(app: &TestApp, token: &str, text: &str) -> (reqwest::Response, String) {
    let r = post_chat(app, Some(token), &ask(text)).await;
    assert_eq!(r.status(), 200);
    let chat_id = r.headers()["x-chat-id"].to_str().unwrap().to_owned();
    (r, chat_id)
}

fn ask(text: &str) -> Value {
    json!({ "messages": [{ "role": "user", "content": text }] })
}

/// The rest of the chat's reply from byte `offset`, as a reconnecting client reads it.
async fn resume(app: &TestApp, token: &str, chat_id: &str, offset: usize) -> String {
    let r = app
        .request(
            Method::GET,
            &format!("/api/chat/{chat_id}/stream?offset={offset}"),
            Some(token),
        )
        .send()
        .await
        .expect("resume");
    assert_eq!(r.status(), 200);
    r.text().await.expect("rest")
}

async fn balance(app: &TestApp, token: &str) -> i64 {
    app.me(token).await["credits"].as_i64().expect("credits")
}

async fn messages(app: &TestApp, token: &str, chat: &str) -> Vec<Value> {
    let (s, m) = app
        .get(&format!("/api/chats/{chat}/messages"), Some(token))
        .await;
    assert_eq!(s, 200, "{m}");
    m["messages"].as_array().expect("messages").clone()
}

async fn a_reply_is_streamed_stored_and_charged_by_its_usage(db: Db) {
    let up = OpenAiStandIn::start().await;
    up.then(hello());
    let app = app_with(db, &up, |_| {}).await;
    let (token, _) = app.sign_up("ai@example.com").await;
    assert_eq!(
        balance(&app, &token).await,
        1000,
        "the free tier's starting credits"
    );

    let (status, headers, text) = chat(&app, &token, &ask("Say hello")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, "Hello, world!");
    let chat_id = headers["x-chat-id"].to_str().unwrap().to_owned();
    app.drained(Queue::Replies).await;

    let ms = messages(&app, &token, &chat_id).await;
    assert_eq!(ms.len(), 2, "{ms:?}");
    assert_eq!(ms[0]["role"], "user");
    assert_eq!(ms[0]["content"], "Say hello");
    assert_eq!(ms[1]["role"], "assistant");
    assert_eq!(ms[1]["content"], "Hello, world!");

    // gpt-4o-mini: 1 credit per 1k input, 4 per 1k output → 1 + 8.
    assert_eq!(balance(&app, &token).await, 1000 - 9);
    let h = app.credit_history(&token, "?type=usage").await;
    assert_eq!(h["total"], 1, "{h}");
    let t = &h["transactions"][0];
    assert_eq!(t["amount"], -9);
    assert_eq!(t["balanceAfter"], 991);
    assert_eq!(t["reference"]["chatId"], chat_id.as_str());
    assert_eq!(t["reference"]["model"], "gpt-4o-mini");
    let all = app.credit_history(&token, "").await;
    assert_eq!(all["total"], 2, "the opening and the usage: {all}");

    // The provider got the conversation, the server's key, the model and the output limit.
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization, "Bearer server-key");
    assert_eq!(seen[0].body["model"], "gpt-4o-mini");
    assert_eq!(seen[0].body["stream"], true);
    assert_eq!(seen[0].body["messages"][0]["content"], "Say hello");

    // A follow-up in the same chat.
    up.then(hello());
    let (status, headers, _) = chat(
        &app,
        &token,
        &json!({ "chatId": chat_id, "messages": [
            { "role": "user", "content": "Say hello" },
            { "role": "assistant", "content": "Hello, world!" },
            { "role": "user", "content": "Again" },
        ]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-chat-id"].to_str().unwrap(), chat_id);
    app.drained(Queue::Replies).await;
    assert_eq!(messages(&app, &token, &chat_id).await.len(), 4);
    app.shutdown().await;
}

async fn concurrent_requests_never_overdraw(db: Db) {
    let up = OpenAiStandIn::start().await;
    up.always(Act::reply(&["ok"], (5, 10), Duration::from_millis(1)));
    // One credit per output token, input free, at most 10 tokens a reply: each request
    // reserves exactly 10 and uses 10; 370 credits cover exactly 37 of them.
    let app = app_with(db, &up, |c| {
        // A hundred replies at once on a loaded machine can take longer than the short
        // first-token limit, and a retry would be one more provider request than replies.
        c.llm_first_token_timeout_ms = 30_000;
        c.catalogue = Catalogue {
            tiers: vec![Tier {
                name: "free".into(),
                starting_credits: 370,
                monthly_credits: 370,
            }],
            models: vec![Model {
                id: "tiny".into(),
                provider: "openai".into(),
                upstream_model: "tiny-upstream".into(),
                min_tier: "free".into(),
                input_price_per_1k: 0,
                output_price_per_1k: 1000,
                max_output_tokens: 10,
            }],
            default_model: "tiny".into(),
            embedding_models: vec![],
        };
    })
    .await;
    let (token, _) = app.sign_up("many@example.com").await;
    let app = Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (app, token) = (app.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            chat(&app, &token, &ask(&format!("question {i}"))).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let (status, _, body) = t.await.expect("join");
        match status {
            200 => {
                assert_eq!(body, "ok");
                ok += 1;
            }
            402 => {
                let v: Value = serde_json::from_str(&body).expect("json");
                assert_error(&v, "insufficient_credits");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ok, 37);
    let app = Arc::try_unwrap(app).ok().expect("sole owner");
    app.drained(Queue::Replies).await;
    assert_eq!(balance(&app, &token).await, 0);
    let h = app.credit_history(&token, "?type=usage&limit=100").await;
    assert_eq!(h["total"], 37, "{h}");
    let spent: i64 = h["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["amount"].as_i64().unwrap())
        .sum();
    assert_eq!(spent, -370);
    assert_eq!(
        up.requests().len(),
        37,
        "refused requests never reach the provider"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_is_retried_before_the_first_token() {
    let up = OpenAiStandIn::start().await;
    up.then(Act::Status(500)).then(hello());
    let app = app_with(Db::Sqlite, &up, |_| {}).await;
    let (token, _) = app.sign_up("retry@example.com").await;
    let (status, _, text) = chat(&app, &token, &ask("hi")).await;
    assert_eq!(status, 200);
    assert_eq!(text, "Hello, world!");
    assert_eq!(up.requests().len(), 2);
    app.drained(Queue::Replies).await;
    assert_eq!(balance(&app, &token).await, 991);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_provider_times_out_and_costs_nothing() {
    let up = OpenAiStandIn::start().await;
    up.always(Act::Hang);
    let app = app_with(Db::Sqlite, &up, |_| {}).await;
    let (token, _) = app.sign_up("hang@example.com").await;
    let (status, headers, text) = chat(&app, &token, &ask("hi")).await;
    assert_eq!(status, 200);
    assert!(text.starts_with("\n\n[reply interrupted: "), "{text:?}");
    assert!(text.contains("nothing within 700 ms"), "{text:?}");
    assert_eq!(up.requests().len(), 2, "one try and one retry");
    app.drained(Queue::Replies).await;
    assert_eq!(balance(&app, &token).await, 1000, "nothing consumed");
    assert_eq!(app.credit_history(&token, "?type=usage").await["total"], 0);
    let chat_id = headers["x-chat-id"].to_str().unwrap();
    let ms = messages(&app, &token, chat_id).await;
    assert_eq!(ms.len(), 1, "only the user's message: {ms:?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_broken_midway_keeps_the_partial_reply_marked() {
    let up = OpenAiStandIn::start().await;
    up.then(Act::broken(&["Part", "ial"]));
    let app = app_with(Db::Sqlite, &up, |_| {}).await;
    let (token, _) = app.sign_up("break@example.com").await;
    let (status, headers, text) = chat(&app, &token, &ask("hi")).await;
    assert_eq!(status, 200);
    assert!(
        text.starts_with("Partial\n\n[reply interrupted: "),
        "{text:?}"
    );
    assert_eq!(up.requests().len(), 1, "no retry after the first token");
    app.drained(Queue::Replies).await;
    let ms = messages(&app, &token, headers["x-chat-id"].to_str().unwrap()).await;
    assert_eq!(ms.len(), 2);
    let stored = ms[1]["content"].as_str().unwrap();
    assert!(
        stored.starts_with("Partial\n\n[reply interrupted"),
        "{stored}"
    );
    assert!(
        balance(&app, &token).await < 1000,
        "what was produced is charged"
    );
    app.shutdown().await;
}

/// A provider that goes silent mid-stream: the reply ends after the idle limit with the text
/// so far and a marker that says what happened, charged for what was produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_goes_silent_ends_at_the_idle_limit_and_says_so() {
    let up = OpenAiStandIn::start().await;
    up.then(Act::Stall(vec!["Half".into(), " way".into()]));
    let app = app_with(Db::Sqlite, &up, |c| c.llm_idle_timeout_ms = 500).await;
    let (token, _) = app.sign_up("silent@example.com").await;
    let (status, headers, text) = chat(&app, &token, &ask("hi")).await;
    assert_eq!(status, 200);
    assert_eq!(
        text, "Half way\n\n[reply interrupted: the provider sent nothing for 500 ms]",
        "{text:?}"
    );
    assert_eq!(up.requests().len(), 1, "no retry after the first token");
    app.drained(Queue::Replies).await;
    let ms = messages(&app, &token, headers["x-chat-id"].to_str().unwrap()).await;
    assert_eq!(ms[1]["content"], text.as_str());
    assert!(
        balance(&app, &token).await < 1000,
        "what was produced is charged"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_can_resume_and_the_reply_is_stored() {
    let up = OpenAiStandIn::start().await;
    let pieces = vec!["one ", "two ", "three ", "four ", "five ", "six"];
    up.then(Act::reply(&pieces, (10, 6), Duration::from_millis(150)));
    let app = app_with(Db::Sqlite, &up, |_| {}).await;
    let (token, _) = app.sign_up("resume@example.com").await;
    let (mut r, chat_id) = start_chat(&app, &token, "count").await;
    let first = r.chunk().await.expect("chunk").expect("some text");
    let got = String::from_utf8(first.to_vec()).unwrap();
    drop(r); // the client goes away mid-reply

    let rest = resume(&app, &token, &chat_id, got.len()).await;
    assert_eq!(format!("{got}{rest}"), pieces.concat());

    // Someone else cannot listen in.
    let (other, _) = app.sign_up("nosy@example.com").await;
    let (s, b) = app
        .get(&format!("/api/chat/{chat_id}/stream"), Some(&other))
        .await;
    assert_eq!(s, 404, "{b}");

    app.drained(Queue::Replies).await;
    let ms = messages(&app, &token, &chat_id).await;
    assert_eq!(ms[1]["content"], pieces.concat());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_of_the_route_are_enforced() {
    let up = OpenAiStandIn::start().await;
    up.always(hello());
    let app = app_with(Db::Sqlite, &up, |_| {}).await;
    let (token, _) = app.sign_up("rules@example.com").await;

    let (s, b) = app.get("/api/chat", None).await;
    assert_eq!((s, b), (200, json!({ "message": "Chat API is working" })));
    let s = post_chat(&app, None, &ask("hi")).await.status().as_u16();
    assert_eq!(s, 401);

    for bad in [
        json!({ "messages": [] }),
        json!({ "messages": [{ "role": "robot", "content": "hi" }] }),
        json!({ "messages": [{ "role": "user", "content": "  " }] }),
        json!({ "messages": [{ "role": "assistant", "content": "last is not the user's" }] }),
        json!({ "messages": [{ "role": "user", "content": "hi" }], "modelId": "gpt-99" }),
        json!({ "messages": "not a list" }),
        json!({ "nothing": true }),
    ] {
        let (s, _, body) = chat(&app, &token, &bad).await;
        assert_eq!(s, 422, "{bad} → {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_error(&v, "validation_error");
    }
    // Above the free tier.
    let (s, _, body) = chat(
        &app,
        &token,
        &json!({ "messages": [{ "role": "user", "content": "hi" }], "modelId": "gpt-4o" }),
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert_error(&serde_json::from_str(&body).unwrap(), "forbidden");
    // Someone else's chat.
    let (other, _) = app.sign_up("other@example.com").await;
    let (_, headers, _) = chat(&app, &other, &ask("mine")).await;
    let theirs = headers["x-chat-id"].to_str().unwrap();
    let (s, _, body) = chat(
        &app,
        &token,
        &json!({ "chatId": theirs, "messages": [{ "role": "user", "content": "hi" }] }),
    )
    .await;
    assert_eq!(s, 404, "{body}");
    // The models the free tier may use.
    let (s, m) = app.get("/api/models", Some(&token)).await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = m["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["gpt-4o-mini"]);
    assert_eq!(m["models"][0]["outputPricePer1k"], 4);
    // Credit history paging is validated.
    let (s, b) = app
        .get("/api/billing/credit-history?limit=101", Some(&token))
        .await;
    assert_eq!(s, 400);
    assert_error(&b, "validation_error");
    let (s, _) = app
        .get("/api/billing/credit-history?type=gift", Some(&token))
        .await;
    assert_eq!(s, 400);
    app.drained(Queue::Replies).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_provider_the_route_says_which_setting_to_set() {
    let app = spawn_app_with(Db::Sqlite, |_| {}).await;
    let (token, _) = app.sign_up("noprov@example.com").await;
    let (s, _, body) = chat(&app, &token, &ask("hi")).await;
    assert_eq!(s, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(error_message(&v).contains("OPENAI_API_KEY"), "{v}");
    assert_eq!(balance(&app, &token).await, 1000);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_own_key_is_used_for_their_provider() {
    let up = OpenAiStandIn::start().await;
    up.always(hello());
    let app = app_with(Db::Sqlite, &up, with_admin).await;
    let admin = app.sign_in_admin().await;
    let (s, provider) = app.add_provider(&admin, "OpenAI", up.base_url()).await;
    assert_eq!(s, 201, "{provider}");
    let (token, user) = app.sign_up("own@example.com").await;
    let (s, cfg) = app
        .add_user_key(&token, &user["id"], &provider["id"], "sk-user-own-key-1234")
        .await;
    assert_eq!(s, 201, "{cfg}");
    let (s, _, text) = chat(&app, &token, &ask("hi")).await;
    assert_eq!((s, text.as_str()), (200, "Hello, world!"));
    // Someone without a key of their own goes through the server's.
    let (plain, _) = app.sign_up("plain@example.com").await;
    let (s, _, _) = chat(&app, &plain, &ask("hi")).await;
    assert_eq!(s, 200);
    let seen = up.requests();
    assert_eq!(seen[0].authorization, "Bearer sk-user-own-key-1234");
    assert_eq!(seen[1].authorization, "Bearer server-key");
    app.drained(Queue::Replies).await;
    app.shutdown().await;
}

/// After a master key rotation (new `CONFAB_ENCRYPTION_KEY`, the old one as the previous key) a
/// user's own provider key still opens and is used. A stored key that opens under no key given is
/// an error the user sees, naming the provider; the call never falls back to the operator's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_key_that_cannot_be_decrypted_is_refused_not_replaced() {
    let up = OpenAiStandIn::start().await;
    up.always(hello());
    let app = app_with(Db::Sqlite, &up, with_admin).await;
    let admin = app.sign_in_admin().await;
    let (_, provider) = app.add_provider(&admin, "OpenAI", up.base_url()).await;
    let (token, user) = app.sign_up("rekeyed@example.com").await;
    let (s, cfg) = app
        .add_user_key(&token, &user["id"], &provider["id"], "sk-user-own-key-1234")
        .await;
    assert_eq!(s, 201, "{cfg}");
    let data_dir = app.data_dir.clone();
    let _kept = app.stop().await;
    let rekeyed = spawn_app_on(None, |c| {
        openai_at(c, &up);
        with_admin(c);
        c.data_dir = data_dir.clone();
        c.encryption_key = Some(
            "b3RoZXIta2V5LW90aGVyLWtleS1vdGhlci1rZXktMzI="
                .to_owned()
                .into(),
        );
        c.encryption_key_previous = Some(crate::helpers::TEST_ENCRYPTION_KEY.to_owned().into());
    })
    .await;
    // Rotated: the key sealed under the previous master key still opens, and is the one used.
    let (s, _, text) = chat(&rekeyed, &token, &ask("hi")).await;
    assert_eq!((s, text.as_str()), (200, "Hello, world!"));
    assert_eq!(
        up.requests()[0].authorization,
        "Bearer sk-user-own-key-1234"
    );
    rekeyed.drained(Queue::Replies).await;
    let before = balance(&rekeyed, &token).await;

    // A stored key sealed under a key this server does not hold.
    let id = |v: &Value| v.as_str().expect("id").parse::<uuid::Uuid>().expect("uuid");
    let scope = confab_application::providers::KeyScope {
        user: id(&user["id"]),
        provider: id(&provider["id"]),
    };
    let foreign = confab_application::providers::KeyCipher::new(&[9u8; 32])
        .encrypt("sk-user-own-key-1234", scope)
        .expect("seal");
    let ReadDb::Sqlite(pool) = rekeyed.read_db().await else {
        unreachable!("SQLite")
    };
    sqlx::query("UPDATE user_llm_configs SET encrypted_key = $1")
        .bind(&foreign)
        .execute(&pool)
        .await
        .expect("update");
    let (s, _, body) = chat(&rekeyed, &token, &ask("hi")).await;
    assert_eq!(s, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "unavailable");
    assert_eq!(v["error"]["details"]["provider"], "openai", "{v}");
    assert_eq!(up.requests().len(), 1, "no call with the operator's key");
    assert_eq!(balance(&rekeyed, &token).await, before, "nothing charged");
    rekeyed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_is_reset_once_by_the_schedule_or_the_route() {
    let up = OpenAiStandIn::start().await;
    // The schedule fires every second.
    let app = app_with(Db::Sqlite, &up, |c| {
        c.credit_reset_schedule = "* * * * * *".into();
    })
    .await;
    let (a, _) = app.sign_up("a@example.com").await;
    let (b, _) = app.sign_up("b@example.com").await;
    // Wait for the schedule to reset both accounts: it opens them (their starting grant) as
    // this month's reset.
    let resets = |token| app.credit_history(token, "?type=grant");
    let both = || async {
        resets(&a).await["total"].as_i64().unwrap() + resets(&b).await["total"].as_i64().unwrap()
    };
    let reset = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        both,
        |n| *n == 2,
    )
    .await;
    assert_eq!(reset, 2, "the schedule reset both accounts");
    let call = |secret: &'static str| {
        app.request(Method::GET, "/api/cron/reset-credits", None)
            .bearer_auth(secret)
            .send()
    };
    let r = call("cron-secret").await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({ "message": "Credit reset completed", "resetCount": 0 })
    );
    let r = call("wrong").await.unwrap();
    assert_eq!(r.status(), 401);
    let (s, body) = app.get("/api/cron/reset-credits", None).await;
    assert_eq!(s, 401);
    assert_error(&body, "unauthorized");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.credit_history(&a, "?type=grant").await["total"], 1);
    assert_eq!(app.credit_history(&a, "?type=reset").await["total"], 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_resets_accounts_the_schedule_has_not() {
    let up = OpenAiStandIn::start().await;
    let app = app_with(Db::Sqlite, &up, |_| {}).await;
    let (a, _) = app.sign_up("r1@example.com").await;
    app.sign_up("r2@example.com").await;
    let get = || {
        app.request(Method::GET, "/api/cron/reset-credits", None)
            .bearer_auth("cron-secret")
            .send()
    };
    let v: Value = get().await.unwrap().json().await.unwrap();
    assert_eq!(v["resetCount"], 2);
    let v: Value = get().await.unwrap().json().await.unwrap();
    assert_eq!(v["resetCount"], 0, "never twice in one month");
    // The reset opened the account: its starting grant is this month's reset.
    assert_eq!(app.credit_history(&a, "?type=grant").await["total"], 1);
    app.shutdown().await;
}

/// With an `Idempotency-Key`, a reply still streams as it is generated (its first piece
/// arrives alone), and a retry with the key replays that chat's reply without calling the
/// model again.
async fn a_keyed_chat_request_streams_and_its_replay_never_asks_the_model_again(db: Db) {
    let up = OpenAiStandIn::start().await;
    up.then(Act::reply(
        &["First, ", "then ", "last."],
        (10, 10),
        Duration::from_millis(300),
    ));
    let app = app_with(db, &up, |_| {}).await;
    let (token, _) = app.sign_up("keyed@example.com").await;
    let send = || {
        app.request(Method::POST, "/api/chat", Some(&token))
            .header("Idempotency-Key", "one-question")
            .json(&ask("Count to three"))
            .send()
    };
    let mut r = send().await.expect("chat");
    assert_eq!(r.status(), 200);
    let chat_id = r.headers()["x-chat-id"].to_str().unwrap().to_owned();
    let first = r.chunk().await.expect("read").expect("a first piece");
    assert_ne!(
        &first[..],
        b"First, then last.",
        "streamed, not buffered whole"
    );
    let mut text = String::from_utf8(first.to_vec()).unwrap();
    while let Some(piece) = r.chunk().await.expect("read") {
        text.push_str(std::str::from_utf8(&piece).unwrap());
    }
    assert_eq!(text, "First, then last.");

    let again = send().await.expect("replay");
    let headers = again.headers().clone();
    match again.status().as_u16() {
        200 => {
            assert_eq!(headers["idempotent-replayed"], "true");
            assert_eq!(headers["x-chat-id"].to_str().unwrap(), chat_id);
            assert_eq!(again.text().await.unwrap(), "First, then last.");
        }
        409 => {
            let (_, body) = parts(again).await;
            assert_eq!(body["error"]["details"]["chatId"], chat_id.as_str());
        }
        other => panic!("a replay answers 200 or 409, not {other}"),
    }
    assert_eq!(up.requests().len(), 1, "the model was asked once");
    app.drained(Queue::Replies).await;
    let ms = messages(&app, &token, &chat_id).await;
    assert_eq!(ms.len(), 2, "one question, one reply: {ms:?}");
    app.shutdown().await;
}

/// One account's ledger cannot be loaded (an event this code cannot read, as after a bad
/// deploy): the reset goes on with the others, retries it, reports it with a 503, and a call
/// again resets nobody twice.
async fn an_account_that_cannot_be_reset_does_not_stop_the_others(db: Db) {
    let up = OpenAiStandIn::start().await;
    let app = app_with(db, &up, |_| {}).await;
    let (a, _) = app.sign_up("first@example.com").await;
    let (_, b) = app.sign_up("broken@example.com").await;
    let (c, _) = app.sign_up("last@example.com").await;
    let broken = b["id"].as_str().unwrap();
    let store = app.store().await;
    store
        .append(
            &format!("credits-{broken}"),
            confab_eventstore::ExpectedVersion::Any,
            vec![confab_eventstore::NewEvent::new(
                "credits.written_by_a_newer_release",
                1,
                json!({}),
                confab_eventstore::EventMetadata::default(),
            )],
        )
        .await
        .expect("append");
    let call = || async {
        let r = app
            .request(Method::GET, "/api/cron/reset-credits", None)
            .bearer_auth("cron-secret")
            .send()
            .await
            .unwrap();
        parts(r).await
    };
    let (status, body) = call().await;
    assert_eq!(status, 503, "{body}");
    assert_error(&body, "unavailable");
    assert_eq!(body["error"]["details"]["resetCount"], 2);
    assert_eq!(body["error"]["details"]["failedCount"], 1);
    for token in [&a, &c] {
        assert_eq!(app.credit_history(token, "?type=grant").await["total"], 1);
    }
    let (status, body) = call().await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["details"]["resetCount"], 0, "nobody twice");
    assert_eq!(body["error"]["details"]["failedCount"], 1);
    app.shutdown().await;
}

/// Config for an API instance that runs no jobs, calling the stand-in.
fn api_only(c: &mut Config, up: &OpenAiStandIn) {
    openai_at(c, up);
    c.run_jobs = false;
}

/// Starts `confab work` (projections and job workers, no HTTP) on `database_url`.
fn spawn_work(
    database_url: &str,
    up: &OpenAiStandIn,
    dir: &std::path::Path,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let mut config = test_config(Some(database_url.to_owned()), dir);
    openai_at(&mut config, up);
    config.llm_first_token_timeout_ms = 700;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(confab::app::work(config, async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_run_in_a_work_process_and_reach_clients_of_any_instance() {
    let up = OpenAiStandIn::start().await;
    let pieces = vec!["one ", "two ", "three ", "four ", "five"];
    up.then(Act::reply(&pieces, (10, 5), Duration::from_millis(120)));
    let url = confab_eventstore::testing::fresh_postgres_database().await;
    // Two API instances that run no jobs, on one PostgreSQL database.
    let a = spawn_app_on(Some(url.clone()), |c| api_only(c, &up)).await;
    let b = spawn_app_on(Some(url.clone()), |c| api_only(c, &up)).await;
    let (token, _) = a.sign_up("split@example.com").await;
    let before = balance(&a, &token).await;

    // The request is taken while no worker runs: the job waits in the shared queue.
    let (mut r, chat_id) = start_chat(&a, &token, "count to five").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.requests().len(), 0, "no process has taken the job yet");
    assert_eq!(a.unfinished_jobs(Queue::Replies).await, 1);

    // A `work` process takes it; its text reaches the client on instance A ...
    let work_dir = tempfile::tempdir().expect("tempdir");
    let (stop_work, work) = spawn_work(&url, &up, work_dir.path());
    let first = tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .expect("the first piece arrives")
        .expect("chunk")
        .expect("some text");
    let got = String::from_utf8(first.to_vec()).unwrap();
    assert!(pieces.concat().starts_with(&got), "{got:?}");
    drop(r);

    // ... and a client that reconnects to instance B resumes where it left off.
    let rest = resume(&b, &token, &chat_id, got.len()).await;
    assert_eq!(format!("{got}{rest}"), pieces.concat());
    // Someone else cannot listen in on either instance.
    let (other, _) = b.sign_up("nosy-split@example.com").await;
    for app in [&a, &b] {
        let (s, body) = app
            .get(&format!("/api/chat/{chat_id}/stream"), Some(&other))
            .await;
        assert_eq!(s, 404, "{body}");
    }

    a.drained(Queue::Replies).await;
    assert_eq!(up.requests().len(), 1);
    for app in [&a, &b] {
        let ms = messages(app, &token, &chat_id).await;
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[1]["content"], pieces.concat());
        let h = app.credit_history(&token, "?type=usage").await;
        assert_eq!(h["total"], 1, "{h}");
    }
    assert!(balance(&b, &token).await < before);

    let _ = stop_work.send(());
    tokio::time::timeout(Duration::from_secs(15), work)
        .await
        .expect("work stops")
        .expect("join")
        .expect("work ran cleanly");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_jobs_needs_postgresql() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(None, dir.path());
    config.run_jobs = false;
    let err = confab::Application::build(config)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("CONFAB_RUN_JOBS=false needs PostgreSQL"),
        "{err:#}"
    );
}

/// Starts the `confab work` binary on `database_url` as a child process.
fn work_process(database_url: &str, up: &OpenAiStandIn, dir: &std::path::Path) -> Killed {
    spawn_quiet(
        confab_command()
            .arg("work")
            .env("CONFAB_DATABASE_URL", database_url)
            .env("CONFAB_DATA_DIR", dir)
            .env("OPENAI_BASE_URL", up.base_url())
            .env("OPENAI_API_KEY", "server-key")
            .env("RUST_LOG", "warn"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_whose_worker_dies_is_taken_up_by_another_and_stored_once() {
    let up = OpenAiStandIn::start().await;
    // The first worker gets a slow reply and is killed in the middle of it; the job's second
    // run (on the other worker) finishes it from what had been streamed, and would get
    // another reply if it called the provider again.
    up.then(Act::reply(
        &["slow "; 40],
        (10, 40),
        Duration::from_millis(250),
    ));
    up.then(Act::reply(
        &["second ", "run"],
        (10, 2),
        Duration::from_millis(5),
    ));
    let url = confab_eventstore::testing::fresh_postgres_database().await;
    let api = spawn_app_on(Some(url.clone()), |c| api_only(c, &up)).await;
    let (token, _) = api.sign_up("crash@example.com").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut doomed = work_process(&url, &up, dir.path());

    let (mut r, chat_id) = start_chat(&api, &token, "take your time").await;
    let first = tokio::time::timeout(Duration::from_secs(20), r.chunk())
        .await
        .expect("the doomed worker starts the reply")
        .expect("chunk")
        .expect("text");
    assert!(first.starts_with(b"slow"), "{first:?}");
    doomed.0.kill().expect("SIGKILL");
    doomed.0.wait().expect("reaped");
    drop(r);

    let mut survivor = work_process(&url, &up, dir.path());
    // Heartbeats every 5 s, dead after 3 missed: the job moves within about 20 s.
    let reply_stored = || messages(&api, &token, &chat_id);
    let patience = Duration::from_secs(40);
    let every = Duration::from_millis(250);
    let stored = poll(patience, every, reply_stored, |ms| ms.len() == 2).await;
    assert_eq!(stored.len(), 2, "the reply was stored: {stored:?}");
    let content = stored[1]["content"].as_str().expect("content");
    let (text, marker) = content.split_once("\n\n").expect("marked cut short");
    assert!(
        text.starts_with("slow ") && text.len() >= first.len(),
        "the text streamed before the crash: {content:?}"
    );
    assert!(text.split("slow ").all(str::is_empty), "{content:?}");
    assert!(marker.starts_with("[reply interrupted: "), "{content:?}");
    api.drained(Queue::Replies).await;
    assert_eq!(up.requests().len(), 1, "the provider was called once");
    let usage = api.credit_history(&token, "?type=usage").await;
    assert_eq!(usage["total"], 1, "charged once: {usage}");
    // The resumed stream serves the reply as stored.
    let resumed = api
        .request(
            Method::GET,
            &format!("/api/chat/{chat_id}/stream"),
            Some(&token),
        )
        .send()
        .await
        .expect("resume");
    assert_eq!(resumed.status(), 200);
    assert_eq!(resumed.text().await.expect("text"), content);

    survivor.0.kill().expect("stop");
    survivor.0.wait().expect("reaped");
    api.shutdown().await;
}

/// A reply job as `POST /api/chat` queues it, for `user` in `chat`, with its credits held:
/// tests run its attempts by hand.
async fn held_reply_job(
    app: &TestApp,
    user: &Value,
    chat: &str,
) -> confab_application::jobs::GenerateReply {
    use confab_application::ai::llm::Turn;
    let user: uuid::Uuid = user["id"].as_str().unwrap().parse().unwrap();
    let chat_id: uuid::Uuid = chat.parse().unwrap();
    let reply_id = uuid::Uuid::now_v7();
    confab_application::credits::run(
        &app.svc,
        user,
        confab_domain::credits::CreditAction::Reserve {
            reservation_id: reply_id,
            amount: 100,
            chat_id,
            model: "gpt-4o-mini".into(),
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
        },
        confab_application::metadata(Some(user), None),
    )
    .await
    .expect("reserved");
    confab_application::jobs::GenerateReply {
        reply_id,
        chat_id,
        user,
        model: "gpt-4o-mini".into(),
        turns: vec![Turn {
            role: "user".into(),
            content: "What is two and two?".into(),
        }],
        correlation_id: None,
        sources: Vec::new(),
        embedding_model: None,
    }
}

/// What the relay of `app` kept of reply `id`, once `done` holds of it.
async fn kept(
    app: &TestApp,
    id: uuid::Uuid,
    done: impl Fn(&confab_application::ai::relay::Draft) -> bool,
) -> confab_application::ai::relay::Draft {
    let draft = || async {
        app.svc
            .relay
            .draft(id)
            .await
            .expect("draft")
            .unwrap_or_default()
    };
    poll(
        Duration::from_secs(10),
        Duration::from_millis(20),
        draft,
        done,
    )
    .await
}

/// A job attempt that got past its first token and then stopped (the worker died: here its
/// task is dropped mid-stream, then the whole app restarted on the same data) is finished by
/// the next attempt from the text the user saw, marked as cut short: the provider is called
/// once, the user charged once, and the stored text is what was streamed.
async fn a_reply_retried_after_its_first_tokens_finishes_from_them_without_calling_again(db: Db) {
    let up = OpenAiStandIn::start().await;
    up.then(Act::Stall(vec!["Two and two ".into(), "make four".into()]));
    let app = app_with(db, &up, |c| c.llm_idle_timeout_ms = 60_000).await;
    let (token, user) = app.sign_up("retried@example.com").await;
    let chat = app.new_chat(&token, "Sums").await;
    let job = held_reply_job(&app, &user, &chat).await;

    let first = tokio::spawn({
        let (svc, job) = (app.svc.clone(), job.clone());
        async move { confab_application::ai::generate_reply(&svc, &job).await }
    });
    let streamed = "Two and two make four";
    let seen = kept(&app, job.reply_id, |d| d.text == streamed).await;
    assert_eq!(seen.text, streamed, "the first attempt streamed");
    first.abort();
    assert!(first.await.is_err(), "the first attempt never finished");

    // Its process is gone: the next attempt runs elsewhere, from the durable record only.
    let data_dir = app.data_dir.clone();
    let database_url = app.database_url.clone();
    let _kept_dir = app.stop().await;
    let again = spawn_app_on(database_url, |c| {
        openai_at(c, &up);
        c.data_dir = data_dir.clone();
    })
    .await;
    kept(&again, job.reply_id, |d| d.text == streamed).await;
    confab_application::ai::generate_reply(&again.svc, &job)
        .await
        .expect("the second attempt");
    assert_eq!(up.requests().len(), 1, "one call to the provider in all");
    let stored = messages(&again, &token, &chat).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let content = stored[0]["content"].as_str().expect("content");
    assert!(
        content.starts_with(&format!("{streamed}\n\n[reply interrupted: ")),
        "the stored reply is what was streamed, marked cut short: {content:?}"
    );
    let usage = again.credit_history(&token, "?type=usage").await;
    assert_eq!(usage["total"], 1, "{usage}");
    let charge = &usage["transactions"][0];
    assert_eq!(
        charge["reference"]["outputTokens"],
        (streamed.len() as u64).div_ceil(4),
        "charged for what was generated: {charge}"
    );
    let after = balance(&again, &token).await;
    assert!(after < 1000, "charged: {after}");

    // A third run (the queue lost track of the second's end) changes nothing.
    confab_application::ai::generate_reply(&again.svc, &job)
        .await
        .expect("a third attempt");
    assert_eq!(up.requests().len(), 1);
    assert_eq!(messages(&again, &token, &chat).await.len(), 1);
    assert_eq!(
        again.credit_history(&token, "?type=usage").await["total"],
        1
    );
    assert_eq!(balance(&again, &token).await, after);
    again.shutdown().await;
}

/// An attempt whose provider stream completed but that failed before the reply was stored is
/// finished by the next attempt exactly as it streamed: whole, charged by the provider's
/// counts, without another call.
async fn a_reply_whose_stream_completed_is_stored_whole_by_the_retry(db: Db) {
    use confab_application::ai::llm::Usage;
    use confab_application::ai::relay::StreamOutcome;
    let up = OpenAiStandIn::start().await;
    let app = app_with(db, &up, |_| {}).await;
    let (token, user) = app.sign_up("completed@example.com").await;
    let chat = app.new_chat(&token, "Sums").await;
    let job = held_reply_job(&app, &user, &chat).await;
    // The first attempt, up to the point where it stores the reply.
    let mut writer = app.svc.relay.writer(job.reply_id, job.chat_id, job.user);
    writer.restart();
    writer.push("Four, ");
    writer.push("of course.");
    writer.streamed(&StreamOutcome::Complete(Some(Usage {
        input: 1000,
        output: 2000,
    })));
    drop(writer);
    kept(&app, job.reply_id, |d| d.outcome.is_some()).await;

    confab_application::ai::generate_reply(&app.svc, &job)
        .await
        .expect("the retry");
    assert!(up.requests().is_empty(), "the provider is not called again");
    let stored = messages(&app, &token, &chat).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["content"], "Four, of course.");
    let usage = app.credit_history(&token, "?type=usage").await;
    assert_eq!(usage["total"], 1, "{usage}");
    assert_eq!(usage["transactions"][0]["reference"]["inputTokens"], 1000);
    assert_eq!(usage["transactions"][0]["reference"]["outputTokens"], 2000);
    app.shutdown().await;
}
