//! The conformance suite against KurrentDB, when `KURRENTDB_URL` names a server, e.g.
//! `KURRENTDB_URL=kurrentdb://127.0.0.1:2113?tls=false cargo test -p confab-eventstore
//! --features kurrentdb --test conformance_kurrentdb -- --ignored --test-threads=1`. Without
//! `--ignored` every case is reported ignored, with the reason.
//! The cases share one server log, so they run one at a time.
#![cfg(feature = "kurrentdb")]

use async_trait::async_trait;
use confab_eventstore::conformance::Harness;
use confab_eventstore::kurrent::KurrentStore;
use confab_eventstore::{EventStore, Limits};
use std::sync::Arc;

struct Kurrent {
    url: String,
}

async fn harness() -> Option<Kurrent> {
    std::env::var("KURRENTDB_URL")
        .ok()
        .map(|url| Kurrent { url })
}

#[async_trait]
impl Harness for Kurrent {
    async fn open(&self) -> Arc<dyn EventStore> {
        Arc::new(KurrentStore::connect(&self.url, Limits::default()).expect("connect"))
    }
}

confab_eventstore::conformance_suite!(optional harness);
