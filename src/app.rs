//! `Application::build(config)`: the wiring of one `serve` process.

use crate::backend::{Backend, Migrations};
use crate::config::Config;
use anyhow::Context;
use axum::serve::ListenerExt;
use confab_api::AppState;
use confab_application::Services;
use confab_workers::Workers;
use std::future::Future;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A built, not yet running, server.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    workers: Option<Workers>,
    jobs: Option<apalis::prelude::Monitor>,
    realtime: confab_api::realtime::Realtime,
    db: confab_projections::ReadDb,
    services: Services,
    port: u16,
    upgrade: Upgrade,
}

/// The read models built by another version of their projection than this code's. One that
/// has data is rebuilt online, side by side, while the old one serves, and swapped in when it
/// is complete (`/readyz` stays ready); one that never had data is rebuilt at once.
#[derive(Default)]
pub(crate) struct Upgrade {
    online: Vec<std::sync::Arc<dyn confab_projections::Projection>>,
    store: Option<std::sync::Arc<dyn confab_eventstore::EventStore>>,
    db: Option<confab_projections::ReadDb>,
}

impl Upgrade {
    /// Rebuilds at once the outdated read models that are empty; returns the others.
    pub(crate) async fn plan(
        backend: &Backend,
        engine: &confab_projections::Engine,
    ) -> anyhow::Result<Upgrade> {
        let mut online = Vec::new();
        for (name, stored, code) in engine.outdated().await? {
            let at = crate::audit::checkpoint(&backend.db, name).await?;
            if at == 0 {
                match engine.rebuild(name, |_, _| {}).await {
                    Ok(_) | Err(confab_projections::ProjectionError::Halted { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                continue;
            }
            tracing::info!(
                projection = name,
                stored,
                code,
                "read model built by another version; rebuilding it online while it serves"
            );
            if let Some(p) = confab_projections::all()
                .into_iter()
                .find(|p| p.name() == name)
            {
                online.push(p);
            }
        }
        Ok(Upgrade {
            online,
            store: Some(backend.store.clone()),
            db: Some(backend.db.clone()),
        })
    }

    /// Runs the online rebuilds one after the other until done or `stop`.
    pub(crate) fn spawn(self, stop: watch::Receiver<bool>) -> Option<tokio::task::JoinHandle<()>> {
        let (Some(store), Some(db)) = (self.store, self.db) else {
            return None;
        };
        if self.online.is_empty() {
            return None;
        }
        Some(tokio::spawn(async move {
            for p in self.online {
                let name = p.name();
                match crate::rebuild::online(store.clone(), &db, p, false, Some(stop.clone())).await
                {
                    Ok(done) => tracing::info!(
                        projection = name,
                        position = done.position,
                        events = done.events,
                        rows = done.rows,
                        seconds = done.seconds,
                        "read model rebuilt online and swapped in"
                    ),
                    Err(e) => tracing::error!(
                        projection = name,
                        error = format!("{e:#}"),
                        "online rebuild failed; the old read model still serves: rebuild it \
                         with `confab projections rebuild NAME --online`"
                    ),
                }
                if *stop.borrow() {
                    break;
                }
            }
        }))
    }
}

impl Application {
    /// Opens the storage, migrates the embedded default, binds the listener (port 0 picks a free
    /// one) and prepares the routes and the background work.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let migrations = if config.auto_migrate {
            Migrations::Apply
        } else {
            Migrations::Require
        };
        let backend = Backend::open(&config, migrations).await?;
        match (&config.admin_email, &config.admin_password) {
            (Some(email), Some(password)) => {
                use secrecy::ExposeSecret;
                let outcome =
                    crate::admin::ensure(&*backend.store, email, password.expose_secret(), "Admin")
                        .await
                        .context("CONFAB_ADMIN_EMAIL / CONFAB_ADMIN_PASSWORD")?;
                if let crate::admin::Outcome::Created(_) = outcome {
                    tracing::info!("created the admin account from CONFAB_ADMIN_EMAIL");
                }
            }
            (None, None) => {}
            _ => anyhow::bail!(
                "set both CONFAB_ADMIN_EMAIL and CONFAB_ADMIN_PASSWORD to create an admin, or neither"
            ),
        }
        let engine = backend
            .engine()
            .with_on_error(config.projection_on_error()?);
        let mut upgrade = Upgrade::default();
        if config.run_projections {
            // Serve nothing stale: bring every read model up to the log as it is now (events
            // appended while the server was down, by `confab admin create`, say) before the
            // first request. With dedicated workers, /readyz reports their lag instead. A read
            // model built by another version of its projection is rebuilt side by side while
            // the old one serves (see `Upgrade`).
            upgrade = Upgrade::plan(&backend, &engine).await?;
            for name in engine.names() {
                match engine.catch_up(name, |_, _| {}).await {
                    Ok(at) => {
                        tracing::debug!(projection = name, position = at, "caught up at start-up")
                    }
                    // Logged where it halted; /readyz names it until an operator acts.
                    Err(confab_projections::ProjectionError::Halted { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let jobs = Jobs::open(&config, &backend, &engine).await?;
        if !config.run_jobs && matches!(jobs.queue, confab_workers::queue::ReplyQueue::Sqlite(_)) {
            anyhow::bail!(
                "CONFAB_RUN_JOBS=false needs PostgreSQL: on the embedded SQLite default, `serve` \
                 runs the job workers itself (replies are relayed in memory); set \
                 CONFAB_DATABASE_URL to PostgreSQL to run them in `confab work` processes"
            );
        }
        // Stripe events are queued in this process's own file, so its worker runs here
        // whether or not the other jobs do.
        let stripe = stripe_queue(&config).await?;
        let documents = document_queue(&config, &backend).await?;
        // On SQLite the document queue is this process's own file, so its worker runs here
        // whatever CONFAB_RUN_JOBS says; on PostgreSQL it is shared and runs with the others.
        let documents_here = config.run_jobs
            || matches!(
                documents,
                confab_workers::documents::OpenedDocumentQueue::Sqlite(_)
            );
        let app = jobs.services(
            &config,
            &backend,
            &engine,
            Some(stripe.queue.clone()),
            Some(documents.queue()),
        )?;
        let app = with_pgvector(&config, &backend, app).await?;
        // Events recorded whose job was lost (a crash between the two, a removed queue file).
        confab_application::billing::requeue_unprocessed(&app)
            .await
            .context("queuing unprocessed Stripe events again")?;
        confab_application::documents::requeue_processing(&app)
            .await
            .context("queuing documents still processing again")?;
        let monitor = if config.run_jobs {
            jobs.monitor(&config, app.clone())?
        } else {
            apalis::prelude::Monitor::new()
        };
        let monitor = confab_workers::billing::register(
            monitor,
            stripe,
            app.clone(),
            config.billing.worker_concurrency,
        );
        let monitor = if documents_here {
            confab_workers::documents::register(
                monitor,
                documents,
                app.clone(),
                config.document_worker_concurrency,
            )
        } else {
            monitor
        };
        let realtime = realtime_for(&config, &backend).await?;
        let services = app.clone();
        let state = AppState {
            app: app.clone(),
            engine: engine.clone(),
            readiness_max_lag: config.readiness_max_lag,
            cron_secret: config
                .cron_secret
                .as_ref()
                .map(|s| std::sync::Arc::from(secrecy::ExposeSecret::expose_secret(s))),
            stripe_webhook_secret: config
                .stripe_webhook_secret
                .clone()
                .map(std::sync::Arc::new),
            rate_limiter: config.rate_limiter()?,
            realtime: realtime.clone(),
        };
        let listener = TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("cannot listen on {} (CONFAB_BIND / --bind)", config.bind))?;
        let port = listener.local_addr()?.port();
        Ok(Application {
            listener,
            router: confab_api::router(state),
            workers: config.run_projections.then(|| Workers::new(engine)),
            upgrade,
            jobs: Some(monitor),
            realtime,
            db: backend.db.clone(),
            services,
            port,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The services its use cases run with: for tests and tools that drive the application
    /// layer of this very process (a use case without its HTTP edge, a job body by hand).
    pub fn services(&self) -> Services {
        self.services.clone()
    }

    /// Serves until `shutdown` resolves, then drains connections and stops the workers.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let workers = self.workers.map(|w| tokio::spawn(w.run(stopped.clone())));
        let upgrade = self.upgrade.spawn(stopped.clone());
        let jobs = self.jobs.map(|m| spawn_monitor(m, stopped.clone()));
        let tailer = self.realtime.spawn_tailer();
        let purge = tokio::spawn(confab_api::idempotency::purge_periodically(
            self.db,
            stopped.clone(),
        ));
        let mut server_stop = stopped;
        // Replies stream in small writes: send each at once rather than waiting on the
        // client's delayed ACK (Nagle's algorithm costs a streamed reply tens of milliseconds).
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let service = self
            .router
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        let server = axum::serve(listener, service).with_graceful_shutdown(async move {
            let _ = server_stop.wait_for(|s| *s).await;
        });
        let server = tokio::spawn(async move { server.await });
        shutdown.await;
        tracing::info!("shutting down");
        // Realtime streams never end by themselves: close them so the server can drain.
        self.realtime.close();
        let _ = stop.send(true);
        server.await??;
        tailer.await?;
        purge.await?;
        if let Some(jobs) = jobs {
            jobs.await?;
        }
        if let Some(w) = workers {
            w.await?;
        }
        if let Some(u) = upgrade {
            u.await?;
        }
        Ok(())
    }
}

/// Realtime for `serve`: following the log from its head, with Pusher over WebSocket when
/// both its key and secret are set.
async fn realtime_for(
    config: &Config,
    backend: &Backend,
) -> anyhow::Result<confab_api::realtime::Realtime> {
    use confab_api::realtime::{Realtime, RealtimeConfig};
    let pusher = match (&config.pusher_key, &config.pusher_secret) {
        (Some(key), Some(secret)) if !key.trim().is_empty() => {
            tracing::info!(key = %key, "realtime: Pusher WebSocket protocol at /app/{{key}}");
            Some((key.trim().to_owned(), secret.clone()))
        }
        (None, None) => {
            tracing::info!(
                "realtime over WebSocket is off: set CONFAB_PUSHER_KEY and CONFAB_PUSHER_SECRET \
                 to turn it on (Server-Sent Events at /api/events are on)"
            );
            None
        }
        _ => anyhow::bail!(
            "set both CONFAB_PUSHER_KEY and CONFAB_PUSHER_SECRET for realtime over WebSocket, or neither"
        ),
    };
    let realtime = Realtime::new(
        backend.store.clone(),
        RealtimeConfig {
            pusher,
            replay_window: config.realtime_replay_window,
            keepalive: std::time::Duration::from_secs(config.realtime_keepalive_secs),
            session_check: std::time::Duration::from_secs(config.realtime_session_check_secs),
        },
    )
    .await
    .context("realtime: reading the head of the event log")?;
    Ok(realtime)
}

/// The job side of a process: the reply queue and relay, and how to build the services the
/// use cases run with.
pub(crate) struct Jobs {
    pub(crate) queue: confab_workers::queue::ReplyQueue,
    relay: confab_application::ai::relay::Relay,
    opened: confab_workers::queue::OpenedQueue,
}

impl Jobs {
    /// Opens the queue and the reply relay for `backend`'s database: on SQLite, `jobs.db` in
    /// the data directory and the in-memory relay; on PostgreSQL, the shared `apalis` queue and
    /// the relay through `reply_chunks` and notifications.
    pub(crate) async fn open(
        config: &Config,
        backend: &Backend,
        _engine: &confab_projections::Engine,
    ) -> anyhow::Result<Jobs> {
        use confab_application::ai::relay::{PgRelay, Relay};
        use confab_application::ai::replies::ReplyHub;
        use confab_workers::queue::ReplyQueue;
        let (opened, relay) = match &backend.db {
            confab_projections::ReadDb::Sqlite(_) => {
                std::fs::create_dir_all(&config.data_dir).with_context(|| {
                    format!(
                        "cannot create the data directory {}",
                        config.data_dir.display()
                    )
                })?;
                let opened = ReplyQueue::open(&config.data_dir.join("jobs.db"))
                    .await
                    .context("the job queue (jobs.db in CONFAB_DATA_DIR)")?;
                (
                    opened,
                    Relay::Local(ReplyHub::new(), Some(backend.db.clone())),
                )
            }
            confab_projections::ReadDb::Postgres(pool) => {
                let opened = ReplyQueue::open_postgres(pool, config.worker_concurrency.max(1))
                    .await
                    .context("the job queue (schema apalis in CONFAB_DATABASE_URL)")?;
                let relay = PgRelay::start(pool.clone(), ReplyHub::new())
                    .await
                    .context("the reply relay (LISTEN confab_replies in CONFAB_DATABASE_URL)")?;
                (opened, Relay::Postgres(relay))
            }
        };
        config
            .catalogue
            .validate()
            .context("the model catalogue ([catalogue] in the config file)")?;
        Ok(Jobs {
            queue: opened.queue.clone(),
            relay,
            opened,
        })
    }

    /// The services the use cases run with in this process; `stripe` and `documents` are the
    /// Stripe and document queues of a process that serves the webhook and uploads.
    pub(crate) fn services(
        &self,
        config: &Config,
        backend: &Backend,
        engine: &confab_projections::Engine,
        stripe: Option<confab_workers::billing::StripeQueue>,
        documents: Option<confab_workers::documents::DocumentQueue>,
    ) -> anyhow::Result<Services> {
        use std::sync::Arc;
        use std::time::Duration;
        confab_domain::billing::validate_prices(&config.billing.prices, &config.catalogue)
            .context("the prices ([[billing.prices]] in the config file)")?;
        let stripe_client = confab_application::billing::stripe_client(
            config.stripe_secret_key.as_ref(),
            &config.stripe_api_base,
        )
        .context(
            "cannot configure the Stripe client (STRIPE_SECRET_KEY, CONFAB_STRIPE_API_BASE)",
        )?;
        let billing = confab_application::billing::BillingSettings::new(
            stripe_client,
            Arc::new(config.billing.prices.clone()),
            confab_application::billing::ReturnUrls {
                success: config.billing.success_url.clone(),
                cancel: config.billing.cancel_url.clone(),
                portal_return: config.billing.portal_return_url.clone(),
            },
        );
        Ok(Services {
            store: backend.store.clone(),
            vault: backend.vault.clone(),
            commands: confab_eventstore::aggregate::CommandExecutor::new(backend.store.clone()),
            db: backend.db.clone(),
            positions: engine.positions(),
            write_timeout: Duration::from_millis(config.write_timeout_ms),
            session_ttl: chrono::Duration::hours(i64::from(config.session_ttl_hours)),
            hold_ttl: config.credit_hold_ttl()?,
            restore_window: chrono::Duration::days(i64::from(config.restore_window_days)),
            catalogue: Arc::new(config.catalogue.clone()),
            llm: Arc::new(confab_application::ai::LlmSettings {
                providers: config.llm_providers(),
                policy: confab_application::ai::llm::CallPolicy {
                    first_token_timeout: Duration::from_millis(config.llm_first_token_timeout_ms),
                    idle_timeout: Duration::from_millis(config.llm_idle_timeout_ms),
                    retries: config.llm_retries,
                    backoff: Duration::from_millis(config.llm_backoff_ms),
                },
            }),
            cipher: key_cipher(config)?,
            provider_hosts_allowlist: config.provider_hosts().into(),
            objects: object_store_for(config)?,
            relay: self.relay.clone(),
            jobs: Arc::new(confab_workers::Queues {
                replies: self.queue.clone(),
                stripe,
                documents,
            }),
            billing,
            documents: Arc::new(config.document_settings()?),
            vectors: Arc::new(confab_application::documents::index::VectorIndex::new(
                config.vector_cache_mb.saturating_mul(1024 * 1024),
            )),
        })
    }

    /// The job workers: replies, the credit reset and the sweep of expired credit holds.
    pub(crate) fn monitor(
        self,
        config: &Config,
        app: Services,
    ) -> anyhow::Result<apalis::prelude::Monitor> {
        confab_workers::queue::monitor(
            self.opened,
            app,
            config.worker_concurrency.max(1),
            &config.credit_reset_schedule,
            &config.credit_sweep_schedule,
        )
    }
}

/// Runs `monitor` until `stop` turns true.
pub(crate) fn spawn_monitor(
    monitor: apalis::prelude::Monitor,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stopped = monitor.run_with_signal(async move {
            let _ = stop.wait_for(|s| *s).await;
            Ok(())
        });
        if let Err(e) = stopped.await {
            tracing::warn!(error = %e, "the job workers stopped with an error");
        }
    })
}

/// Runs the background work of a `confab work` process until `shutdown` resolves: the
/// projections, and on PostgreSQL the job workers on the shared queue.
pub async fn work(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let backend = Backend::open(&config, Migrations::Require).await?;
    let engine = backend
        .engine()
        .with_on_error(config.projection_on_error()?);
    // A read model built by another version of its projection is rebuilt from the log, side
    // by side while the old one serves.
    let upgrade = Upgrade::plan(&backend, &engine).await?;
    let jobs = Jobs::open(&config, &backend, &engine).await?;
    let (stop, stopped) = watch::channel(false);
    let on_postgres = matches!(jobs.queue, confab_workers::queue::ReplyQueue::Postgres(_));
    let monitor = if on_postgres {
        let documents = document_queue(&config, &backend).await?;
        let app = jobs.services(&config, &backend, &engine, None, Some(documents.queue()))?;
        let app = with_pgvector(&config, &backend, app).await?;
        let monitor = jobs.monitor(&config, app.clone())?;
        let monitor = confab_workers::documents::register(
            monitor,
            documents,
            app,
            config.document_worker_concurrency,
        );
        tracing::info!(
            "confab work: projections and job workers (replies, credit reset, documents) running"
        );
        Some(spawn_monitor(monitor, stopped.clone()))
    } else {
        tracing::info!(
            "confab work: projections running; on the embedded SQLite default the job \
             workers run in `serve`"
        );
        None
    };
    let upgrading = upgrade.spawn(stopped.clone());
    let workers = tokio::spawn(Workers::new(engine).run(stopped));
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    workers.await?;
    if let Some(u) = upgrading {
        u.await?;
    }
    if let Some(m) = monitor {
        m.await?;
    }
    Ok(())
}

/// The Stripe job queue of this process: its own file in the data directory.
/// `svc` with pgvector turned on when the database is PostgreSQL, `CONFAB_PGVECTOR` is not
/// `off` and the extension is installed or can be created; then the vectors stored before it
/// was are copied into its index.
async fn with_pgvector(
    config: &Config,
    backend: &Backend,
    mut svc: Services,
) -> anyhow::Result<Services> {
    let mode = config.pgvector.trim().to_ascii_lowercase();
    if !matches!(mode.as_str(), "auto" | "on" | "off") {
        anyhow::bail!(
            "CONFAB_PGVECTOR is {:?}; use auto, on or off",
            config.pgvector
        );
    }
    let confab_projections::ReadDb::Postgres(pool) = &backend.db else {
        if mode == "on" {
            anyhow::bail!("CONFAB_PGVECTOR=on needs PostgreSQL (CONFAB_DATABASE_URL)");
        }
        return Ok(svc);
    };
    if mode == "off" {
        tracing::info!("pgvector off (CONFAB_PGVECTOR=off): vectors ranked by the in-memory index");
        return Ok(svc);
    }
    let enabled = confab_projections::pgvector::enable(pool)
        .await
        .context("checking for the pgvector extension")?;
    if !enabled {
        if mode == "on" {
            anyhow::bail!(
                "CONFAB_PGVECTOR=on but the vector extension is not installed in PostgreSQL"
            );
        }
        tracing::info!(
            "pgvector is not installed: vectors ranked by the in-memory index and exact re-ranking"
        );
        return Ok(svc);
    }
    let copied = confab_projections::pgvector::backfill(pool)
        .await
        .context("copying stored vectors into the pgvector index")?;
    tracing::info!(
        copied,
        "pgvector on: vectors ranked by HNSW indexes (cosine)"
    );
    let mut settings = (*svc.documents).clone();
    settings.pgvector = true;
    svc.documents = std::sync::Arc::new(settings);
    Ok(svc)
}

/// The document queue of a process: on SQLite its own file (`document-jobs.db` in the data
/// directory), on PostgreSQL the `process_document` queue shared by every process.
async fn document_queue(
    config: &Config,
    backend: &Backend,
) -> anyhow::Result<confab_workers::documents::OpenedDocumentQueue> {
    use confab_workers::documents::OpenedDocumentQueue;
    match &backend.db {
        confab_projections::ReadDb::Sqlite(_) => {
            std::fs::create_dir_all(&config.data_dir).with_context(|| {
                format!(
                    "cannot create the data directory {}",
                    config.data_dir.display()
                )
            })?;
            OpenedDocumentQueue::sqlite(&config.data_dir.join("document-jobs.db"))
                .await
                .context("the document job queue (document-jobs.db in CONFAB_DATA_DIR)")
        }
        confab_projections::ReadDb::Postgres(pool) => {
            OpenedDocumentQueue::postgres(pool, config.document_worker_concurrency.max(1))
                .await
                .context("the document job queue (schema apalis in CONFAB_DATABASE_URL)")
        }
    }
}

async fn stripe_queue(
    config: &Config,
) -> anyhow::Result<confab_workers::billing::OpenedStripeQueue> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    confab_workers::billing::StripeQueue::open(&config.data_dir.join("stripe-jobs.db"))
        .await
        .context("the Stripe job queue (stripe-jobs.db in CONFAB_DATA_DIR)")
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The object store for uploads: a directory in the data directory.
pub(crate) fn object_store_for(
    config: &Config,
) -> anyhow::Result<std::sync::Arc<dyn object_store::ObjectStore>> {
    use object_store::path::Path as ObjectPath;
    use object_store::prefix::PrefixStore;
    let local =
        |dir: std::path::PathBuf| -> anyhow::Result<std::sync::Arc<dyn object_store::ObjectStore>> {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create the upload directory {}", dir.display()))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .with_context(|| format!("cannot use {} as the object store", dir.display()))?;
            Ok(std::sync::Arc::new(store))
        };
    let Some(raw) = config
        .object_store_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    else {
        return local(config.data_dir.join("objects"));
    };
    let url = url::Url::parse(raw).with_context(|| {
        format!("CONFAB_OBJECT_STORE_URL is not a URL (expected file:///dir or s3://bucket/prefix): {raw:?}")
    })?;
    match url.scheme() {
        "file" => {
            let dir = url.to_file_path().map_err(|()| {
                anyhow::anyhow!("CONFAB_OBJECT_STORE_URL: {raw:?} names no local directory")
            })?;
            local(dir)
        }
        "s3" | "s3a" => {
            let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| {
                anyhow::anyhow!(
                    "CONFAB_OBJECT_STORE_URL: {raw:?} names no bucket (s3://bucket/prefix)"
                )
            })?;
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .context(
                    "cannot configure the S3 object store: set AWS_ACCESS_KEY_ID, \
                     AWS_SECRET_ACCESS_KEY and AWS_REGION (and AWS_ENDPOINT for an \
                     S3-compatible service)",
                )?;
            let prefix = url.path().trim_matches('/');
            if prefix.is_empty() {
                Ok(std::sync::Arc::new(store))
            } else {
                Ok(std::sync::Arc::new(PrefixStore::new(
                    store,
                    ObjectPath::from(prefix),
                )))
            }
        }
        other => anyhow::bail!(
            "CONFAB_OBJECT_STORE_URL scheme {other:?} is not supported: use file:///dir or s3://bucket/prefix"
        ),
    }
}

/// The cipher of users' provider keys: the current master key (`CONFAB_ENCRYPTION_KEY`), and
/// the previous one (`CONFAB_ENCRYPTION_KEY_PREVIOUS`) so that keys sealed under it still open
/// until `confab keys rotate` has resealed them.
pub fn key_cipher(config: &Config) -> anyhow::Result<confab_application::providers::KeyCipher> {
    let cipher = confab_application::providers::KeyCipher::new(&config.encryption_key()?);
    Ok(match config.encryption_key_previous()? {
        Some(previous) => cipher.with_previous(&previous),
        None => cipher,
    })
}
