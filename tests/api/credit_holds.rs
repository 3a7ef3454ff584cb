//! Credit holds that nothing settles (a crash between reserving and queuing a reply, a reply
//! job out of attempts): they expire, and the sweeper releases them through the ledger, visibly
//! in the credit history, once.

use crate::helpers::{Db, TestApp, on_both, poll, spawn_app_with};
use chrono::Utc;
use confab_application::{AppError, credits};
use confab_domain::credits::CreditAction;
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

on_both!(
    an_expired_hold_is_released_once_by_the_sweep_and_shows_in_the_history,
    the_schedule_releases_expired_holds_by_itself,
);

/// A schedule that does not fire while a test runs (midnight on the 1st of January).
const NEVER: &str = "0 0 0 1 1 *";

/// Holds `amount` of `user`'s credits for a reply that is never queued, lapsing in `ttl`.
async fn strand(app: &TestApp, user: Uuid, amount: i64, ttl: chrono::Duration) -> Uuid {
    let reservation_id = Uuid::now_v7();
    credits::run(
        &app.svc,
        user,
        CreditAction::Reserve {
            reservation_id,
            amount,
            chat_id: Uuid::now_v7(),
            model: "gpt-4o-mini".into(),
            expires_at: Utc::now() + ttl,
        },
        confab_application::metadata(Some(user), None),
    )
    .await
    .expect("reserved");
    reservation_id
}

/// Whether `user` could hold `amount` more now (then gives it back at once).
async fn can_hold(app: &TestApp, user: Uuid, amount: i64) -> bool {
    let id = Uuid::now_v7();
    let meta = confab_application::metadata(Some(user), None);
    let reserve = CreditAction::Reserve {
        reservation_id: id,
        amount,
        chat_id: Uuid::now_v7(),
        model: "gpt-4o-mini".into(),
        expires_at: Utc::now() + chrono::Duration::hours(1),
    };
    match credits::run(&app.svc, user, reserve, meta.clone()).await {
        Ok(_) => {
            let release = CreditAction::Release { reservation_id: id };
            credits::run(&app.svc, user, release, meta)
                .await
                .expect("released");
            true
        }
        Err(AppError::InsufficientCredits { .. }) => false,
        Err(e) => panic!("reserving failed: {e}"),
    }
}

fn user_id(user: &Value) -> Uuid {
    user["id"].as_str().expect("id").parse().expect("uuid")
}

async fn an_expired_hold_is_released_once_by_the_sweep_and_shows_in_the_history(db: Db) {
    let app = spawn_app_with(db, |c| c.credit_sweep_schedule = NEVER.into()).await;
    let (token, user) = app.sign_up("stranded@example.com").await;
    let user = user_id(&user);
    // The whole starting balance is held by a reply that never ran.
    let reservation = strand(&app, user, 1000, chrono::Duration::milliseconds(800)).await;
    assert!(
        !can_hold(&app, user, 1).await,
        "held credits cannot be used"
    );

    // Not yet expired: the sweep leaves it.
    let early = credits::sweep_expired_holds(&app.svc).await.expect("sweep");
    assert_eq!(early.released, 0, "{early:?}");
    assert!(!can_hold(&app, user, 1).await);

    tokio::time::sleep(Duration::from_millis(900)).await;
    let swept = credits::sweep_expired_holds(&app.svc).await.expect("sweep");
    assert_eq!((swept.expired, swept.released, swept.failed), (1, 1, 0));
    assert!(
        can_hold(&app, user, 1000).await,
        "the credits are free again"
    );
    assert_eq!(app.me(&token).await["credits"], 1000, "nothing was taken");
    let released = app.credit_history(&token, "?type=release").await;
    assert_eq!(released["total"], 1, "{released}");
    let t = &released["transactions"][0];
    assert_eq!(t["type"], "release");
    assert_eq!(t["amount"], 0, "a hold never took credits: {t}");
    assert_eq!(t["balanceAfter"], 1000);
    assert_eq!(t["reference"]["released"], 1000, "{t}");
    assert_eq!(t["reference"]["model"], "gpt-4o-mini");
    // The whole history still sums to the balance.
    let all = app.credit_history(&token, "").await;
    let sum: i64 = all["transactions"]
        .as_array()
        .expect("transactions")
        .iter()
        .map(|t| t["amount"].as_i64().expect("amount"))
        .sum();
    assert_eq!(sum, 1000, "{all}");

    // Sweeping again changes nothing.
    let again = credits::sweep_expired_holds(&app.svc).await.expect("sweep");
    assert_eq!((again.expired, again.released), (0, 0), "{again:?}");
    assert_eq!(
        app.credit_history(&token, "?type=release").await["total"],
        1
    );

    // The reply finishes after all: charged once, from what is free, never twice.
    let consume = || CreditAction::Consume {
        reservation_id: reservation,
        used: 30,
        input_tokens: 100,
        output_tokens: 200,
    };
    let meta = confab_application::metadata(Some(user), None);
    credits::run(&app.svc, user, consume(), meta.clone())
        .await
        .expect("charged");
    credits::run(&app.svc, user, consume(), meta)
        .await
        .expect("idempotent");
    let charged = poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || app.credit_history(&token, "?type=usage"),
        |h| h["total"] == 1,
    )
    .await;
    assert_eq!(charged["total"], 1, "{charged}");
    assert_eq!(charged["transactions"][0]["amount"], -30, "{charged}");
    assert_eq!(charged["transactions"][0]["balanceAfter"], 970, "{charged}");
    assert_eq!(app.me(&token).await["credits"], 970);
    app.shutdown().await;
}

async fn the_schedule_releases_expired_holds_by_itself(db: Db) {
    let app = spawn_app_with(db, |c| {
        c.credit_sweep_schedule = "* * * * * *".into();
    })
    .await;
    let (token, user) = app.sign_up("swept@example.com").await;
    let user = user_id(&user);
    strand(&app, user, 400, chrono::Duration::milliseconds(500)).await;
    let released = poll(
        Duration::from_secs(15),
        Duration::from_millis(200),
        || app.credit_history(&token, "?type=release"),
        |h| h["total"] == 1,
    )
    .await;
    assert_eq!(released["total"], 1, "the sweeper ran: {released}");
    assert_eq!(released["transactions"][0]["reference"]["released"], 400);
    assert!(can_hold(&app, user, 1000).await);
    // Later ticks release nothing more.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        app.credit_history(&token, "?type=release").await["total"],
        1
    );
    app.shutdown().await;
}
