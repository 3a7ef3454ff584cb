//! Configuration: one typed struct from defaults, an optional TOML file, `CONFAB_*` environment
//! variables and command-line flags, in that order of precedence (last wins).

use confab_application::ai::llm::ProviderSpec;
use confab_domain::billing::Price;
use confab_domain::catalogue::Catalogue;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything Confab can be told.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    /// Address the HTTP server listens on (`CONFAB_BIND`).
    pub bind: SocketAddr,
    /// Where the embedded database and uploads live (`CONFAB_DATA_DIR`); created on first run.
    pub data_dir: PathBuf,
    /// `sqlite:` or `postgres:` URL of the database (`CONFAB_DATABASE_URL`); by default the
    /// SQLite file `confab.db` in the data directory. Holds the event log (unless
    /// `event_store_url` is set), projection checkpoints and read models.
    #[serde(serialize_with = "expose_opt")]
    pub database_url: Option<SecretString>,
    /// A `kurrentdb://` (or `esdb://`) URL to keep the event log in KurrentDB instead
    /// (`CONFAB_EVENT_STORE_URL`; needs the `kurrentdb` build feature).
    #[serde(serialize_with = "expose_opt")]
    pub event_store_url: Option<SecretString>,
    /// Redis, for shared rate limits and queues across instances (`CONFAB_REDIS_URL`).
    #[serde(serialize_with = "expose_opt")]
    pub redis_url: Option<SecretString>,
    /// Largest event (payload plus metadata), in bytes (`CONFAB_MAX_EVENT_BYTES`).
    pub max_event_bytes: usize,
    /// Most events a projection may lag while `/readyz` still answers ready
    /// (`CONFAB_READINESS_MAX_LAG`).
    pub readiness_max_lag: u64,
    /// Whether `serve` runs the projections itself (`CONFAB_RUN_PROJECTIONS`); turn off when
    /// dedicated `confab work` processes run them.
    pub run_projections: bool,
    /// What a projection does with an event it cannot apply after its retries
    /// (`CONFAB_PROJECTION_ON_ERROR`): `halt` (default: it stops there and `/readyz` names it)
    /// or `park` (the event goes to the dead letters and the projection goes on).
    pub projection_on_error: String,
    /// Whether `serve` applies pending migrations on PostgreSQL at start-up
    /// (`CONFAB_AUTO_MIGRATE`); SQLite is always migrated.
    pub auto_migrate: bool,
    /// An admin to create at start-up if no account has this email (`CONFAB_ADMIN_EMAIL`).
    pub admin_email: Option<String>,
    /// That admin's password (`CONFAB_ADMIN_PASSWORD`).
    #[serde(serialize_with = "expose_opt")]
    pub admin_password: Option<SecretString>,
    /// The 256-bit key that encrypts users' provider keys, base64 (`CONFAB_ENCRYPTION_KEY`).
    /// Without it, a key is generated once and kept in `<data dir>/encryption.key`; several
    /// instances must share one, so set it when scaling out.
    #[serde(serialize_with = "expose_opt")]
    pub encryption_key: Option<SecretString>,
    /// The master key used before the current one, base64 (`CONFAB_ENCRYPTION_KEY_PREVIOUS`):
    /// data keys wrapped under it still unwrap, until `confab keys rotate` has rewrapped them
    /// under `CONFAB_ENCRYPTION_KEY`.
    #[serde(serialize_with = "expose_opt")]
    pub encryption_key_previous: Option<SecretString>,
    /// Hosts a provider endpoint may name although private, and over http, comma-separated
    /// (`CONFAB_PROVIDER_HOSTS_ALLOWLIST`, e.g. `127.0.0.1,ollama.lan`).
    pub provider_hosts_allowlist: String,
    /// How long a sign-in session lasts, in hours (`CONFAB_SESSION_TTL_HOURS`).
    pub session_ttl_hours: u32,
    /// How long a write waits for its effect to be readable before answering, in milliseconds
    /// (`CONFAB_WRITE_TIMEOUT_MS`).
    pub write_timeout_ms: u64,
    /// Where uploads (profile images) are kept (`CONFAB_OBJECT_STORE_URL`): unset for the
    /// `objects` directory in the data directory, `file:///path` for another directory, or
    /// `s3://bucket/optional/prefix` for S3 or an S3-compatible service (MinIO, R2, ...), with
    /// credentials, region and endpoint from the standard `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` (and `AWS_ALLOW_HTTP=true` for a
    /// plain-http endpoint).
    pub object_store_url: Option<String>,
    /// The default OpenAI provider's key (`OPENAI_API_KEY`).
    #[serde(serialize_with = "expose_opt")]
    pub openai_api_key: Option<SecretString>,
    /// The default OpenAI provider's base URL (`OPENAI_BASE_URL`, default
    /// `https://api.openai.com/v1`); set it alone for a keyless OpenAI-compatible server
    /// (Ollama, vLLM, llama.cpp).
    pub openai_base_url: Option<String>,
    /// The Anthropic provider's key (`ANTHROPIC_API_KEY`), used through Anthropic's
    /// OpenAI-compatible endpoint.
    #[serde(serialize_with = "expose_opt")]
    pub anthropic_api_key: Option<SecretString>,
    /// The Anthropic provider's base URL (`ANTHROPIC_BASE_URL`, default
    /// `https://api.anthropic.com/v1`).
    pub anthropic_base_url: Option<String>,
    /// More OpenAI-compatible providers (config file: `[[providers]]` with `name`, `base_url`
    /// and optionally `api_key`).
    pub providers: Vec<ProviderSpec>,
    /// Models and tiers (config file: `[catalogue]`, `[[catalogue.tiers]]`,
    /// `[[catalogue.models]]`); the default holds the seed's five models and the free and pro
    /// tiers.
    pub catalogue: Catalogue,
    /// The secret `GET /api/cron/reset-credits` must present as a Bearer token (`CRON_SECRET`);
    /// the route refuses every call while it is unset.
    #[serde(serialize_with = "expose_opt")]
    pub cron_secret: Option<SecretString>,
    /// When the workers run the monthly credit reset, as a cron expression with seconds
    /// (`CONFAB_CREDIT_RESET_SCHEDULE`, default `0 0 0 1 * *`: midnight UTC on the 1st).
    pub credit_reset_schedule: String,
    /// How long a reply's credit hold lasts, in seconds (`CONFAB_CREDIT_HOLD_TTL_SECS`,
    /// default 3600): past it, a hold nothing settled (a crash before its job was queued, a
    /// job out of attempts) is released by the sweeper. Keep it above the longest reply.
    pub credit_hold_ttl_secs: u64,
    /// How long after its deletion a chat or message may still be restored, in days
    /// (`CONFAB_RESTORE_WINDOW_DAYS`, default 30; 0 allows no restoration).
    pub restore_window_days: u32,
    /// When the workers release expired credit holds, as a cron expression with seconds
    /// (`CONFAB_CREDIT_SWEEP_SCHEDULE`, default `0 * * * * *`: every minute).
    pub credit_sweep_schedule: String,
    /// Longest wait for a provider's first token, per attempt (`CONFAB_LLM_FIRST_TOKEN_TIMEOUT_MS`).
    pub llm_first_token_timeout_ms: u64,
    /// Longest silence between two chunks of a reply (`CONFAB_LLM_IDLE_TIMEOUT_MS`).
    pub llm_idle_timeout_ms: u64,
    /// Retries of a provider call that failed before its first token (`CONFAB_LLM_RETRIES`).
    pub llm_retries: u32,
    /// Delay before the first retry, doubled after each (`CONFAB_LLM_BACKOFF_MS`).
    pub llm_backoff_ms: u64,
    /// Replies one process generates at once (`CONFAB_WORKER_CONCURRENCY`).
    pub worker_concurrency: usize,
    /// Kinds of document accepted for retrieval, judged by the bytes, comma-separated from
    /// pdf, txt, md, html, docx (`CONFAB_UPLOAD_TYPES`, default all five).
    pub upload_types: String,
    /// Largest document upload, in bytes (`CONFAB_UPLOAD_MAX_BYTES`, default 10 MB).
    pub upload_max_bytes: usize,
    /// The embedding model (`CONFAB_EMBEDDING_MODEL`, default `text-embedding-3-small`).
    pub embedding_model: String,
    /// The provider (by name) whose OpenAI-compatible endpoint embeds
    /// (`CONFAB_EMBEDDING_PROVIDER`, default `openai`).
    pub embedding_provider: String,
    /// Texts per embeddings request (`CONFAB_EMBEDDING_BATCH`, default 64).
    pub embedding_batch: usize,
    /// Most tokens in a document chunk (`CONFAB_CHUNK_TOKENS`, default 512).
    pub chunk_tokens: usize,
    /// Tokens neighbouring chunks share (`CONFAB_CHUNK_OVERLAP`, default 64).
    pub chunk_overlap: usize,
    /// Chunks retrieval puts into a reply's context (`CONFAB_RAG_TOP_K`, default 5).
    pub rag_top_k: usize,
    /// Document jobs (parsing, embedding) one process runs at once
    /// (`CONFAB_DOCUMENT_WORKER_CONCURRENCY`, default 2): the cap on embeddings calls in flight.
    pub document_worker_concurrency: usize,
    /// Memory the in-memory vector index of retrieval may keep, in MiB
    /// (`CONFAB_VECTOR_CACHE_MB`): the sign bits of documents' vectors, about 250 bytes a
    /// chunk at 1,536 dimensions.
    pub vector_cache_mb: usize,
    /// pgvector on PostgreSQL (`CONFAB_PGVECTOR`): `auto` (default) uses it when the `vector`
    /// extension is installed or can be created, `on` refuses to start without it, `off`
    /// keeps the in-memory index and exact re-ranking.
    pub pgvector: String,
    /// Whether `serve` runs the job workers (LLM replies, the credit reset) itself
    /// (`CONFAB_RUN_JOBS`); on PostgreSQL, turn off when dedicated `confab work` processes run
    /// them. The embedded SQLite default always runs them in `serve`.
    pub run_jobs: bool,
    /// Whether requests are rate-limited at all (`CONFAB_RATE_LIMIT_ENABLED`); the budgets
    /// below apply only while it is on.
    pub rate_limit_enabled: bool,
    /// Requests per client IP per window, for every route group without its own
    /// (`CONFAB_RATE_LIMIT_PER_IP`): `10/10s`, `600/1m`, ... or `off`.
    pub rate_limit_per_ip: String,
    /// Requests per signed-in user per window, likewise (`CONFAB_RATE_LIMIT_PER_USER`).
    pub rate_limit_per_user: String,
    /// Where budgets are counted (`CONFAB_RATE_LIMIT_BACKEND`): `memory` (this process) or
    /// `redis` (shared by every instance using `CONFAB_REDIS_URL`).
    pub rate_limit_backend: String,
    /// With the Redis backend, whether requests go through while Redis is unreachable
    /// (`CONFAB_RATE_LIMIT_FAIL_OPEN`); otherwise they get 503.
    pub rate_limit_fail_open: bool,
    /// Per route group (`auth`, `chat`, `webhooks`, `default`), budgets that replace the two
    /// above (`[rate_limit_groups.auth]` with `per_ip` and `per_user` in the config file).
    pub rate_limit_groups: std::collections::BTreeMap<String, GroupLimits>,
    /// Proxies whose `X-Forwarded-For` gives the client IP: addresses or CIDR ranges,
    /// comma-separated (`CONFAB_TRUSTED_PROXIES`).
    pub trusted_proxies: String,
    /// Stripe's secret API key (`STRIPE_SECRET_KEY`); checkout and the billing portal answer
    /// 503 while it is unset.
    #[serde(serialize_with = "expose_opt")]
    pub stripe_secret_key: Option<SecretString>,
    /// The signing secret of the Stripe webhook endpoint (`STRIPE_WEBHOOK_SECRET`); the webhook
    /// answers 503 while it is unset.
    #[serde(serialize_with = "expose_opt")]
    pub stripe_webhook_secret: Option<SecretString>,
    /// Stripe's API base URL (`CONFAB_STRIPE_API_BASE`); tests point it at a local stand-in.
    pub stripe_api_base: String,
    /// What is sold and where Stripe sends buyers back (config file: `[billing]` and
    /// `[[billing.prices]]`).
    pub billing: BillingConfig,
    /// The Pusher app key realtime clients connect with, at `/app/{key}` (`CONFAB_PUSHER_KEY`);
    /// realtime over WebSocket is off while it or the secret is unset.
    pub pusher_key: Option<String>,
    /// The Pusher app secret that signs channel subscriptions (`CONFAB_PUSHER_SECRET`).
    #[serde(serialize_with = "expose_opt")]
    pub pusher_secret: Option<SecretString>,
    /// Realtime events kept in memory for clients that resume with `Last-Event-ID`
    /// (`CONFAB_REALTIME_REPLAY_WINDOW`).
    pub realtime_replay_window: usize,
    /// Idle seconds after which an SSE stream sends a keep-alive comment
    /// (`CONFAB_REALTIME_KEEPALIVE_SECS`).
    pub realtime_keepalive_secs: u64,
    /// How often, in seconds, an open realtime connection re-checks that its session is live
    /// (`CONFAB_REALTIME_SESSION_CHECK_SECS`); a sign-out closes it at once regardless.
    pub realtime_session_check_secs: u64,
}

/// A route group's own budgets; an absent one falls back to the global setting.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct GroupLimits {
    /// Per client IP, e.g. `5/1m`, or `off`.
    pub per_ip: Option<String>,
    /// Per signed-in user.
    pub per_user: Option<String>,
}

/// The `[billing]` table of the config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct BillingConfig {
    /// The prices sold (`[[billing.prices]]`, each with `id` and either `tier` for a
    /// subscription or `credits` for a one-time top-up).
    pub prices: Vec<Price>,
    /// Where Stripe Checkout sends the user after paying.
    pub success_url: String,
    /// Where Stripe Checkout sends the user who gives up.
    pub cancel_url: String,
    /// Where the billing portal's "return" link goes.
    pub portal_return_url: String,
    /// Stripe events one process applies at once.
    pub worker_concurrency: usize,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig {
            prices: Vec::new(),
            success_url: "http://localhost:3000/billing?checkout=success".into(),
            cancel_url: "http://localhost:3000/billing?checkout=cancelled".into(),
            portal_return_url: "http://localhost:3000/billing".into(),
            worker_concurrency: 8,
        }
    }
}

fn expose_opt<S: serde::Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(secret) => s.serialize_some(secret.expose_secret()),
        None => s.serialize_none(),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            event_store_url: None,
            redis_url: None,
            max_event_bytes: 1024 * 1024,
            readiness_max_lag: 10_000,
            run_projections: true,
            projection_on_error: "halt".into(),
            auto_migrate: false,
            admin_email: None,
            encryption_key: None,
            encryption_key_previous: None,
            provider_hosts_allowlist: String::new(),
            admin_password: None,
            session_ttl_hours: 24 * 30,
            write_timeout_ms: 5_000,
            object_store_url: None,
            openai_api_key: None,
            openai_base_url: None,
            anthropic_api_key: None,
            anthropic_base_url: None,
            providers: Vec::new(),
            catalogue: Catalogue::default(),
            cron_secret: None,
            credit_reset_schedule: "0 0 0 1 * *".into(),
            credit_hold_ttl_secs: 3600,
            restore_window_days: 30,
            credit_sweep_schedule: "0 * * * * *".into(),
            llm_first_token_timeout_ms: 60_000,
            llm_idle_timeout_ms: 60_000,
            llm_retries: 2,
            llm_backoff_ms: 500,
            worker_concurrency: 8,
            upload_types: "pdf,txt,md,html,docx".into(),
            upload_max_bytes: 10 * 1024 * 1024,
            embedding_model: "text-embedding-3-small".into(),
            embedding_provider: "openai".into(),
            embedding_batch: 64,
            chunk_tokens: 512,
            chunk_overlap: 64,
            rag_top_k: 5,
            document_worker_concurrency: 2,
            vector_cache_mb: 512,
            pgvector: "auto".into(),
            run_jobs: true,
            rate_limit_enabled: true,
            rate_limit_per_ip: "10/10s".into(),
            rate_limit_per_user: "60/10s".into(),
            rate_limit_backend: "memory".into(),
            rate_limit_fail_open: true,
            rate_limit_groups: [
                (
                    "auth".to_owned(),
                    GroupLimits {
                        per_ip: Some("10/1m".into()),
                        per_user: None,
                    },
                ),
                (
                    "chat".to_owned(),
                    GroupLimits {
                        per_ip: None,
                        per_user: Some("20/1m".into()),
                    },
                ),
                (
                    "webhooks".to_owned(),
                    GroupLimits {
                        per_ip: Some("off".into()),
                        per_user: Some("off".into()),
                    },
                ),
            ]
            .into(),
            trusted_proxies: String::new(),
            stripe_secret_key: None,
            stripe_webhook_secret: None,
            stripe_api_base: "https://api.stripe.com".into(),
            billing: BillingConfig::default(),
            pusher_key: None,
            pusher_secret: None,
            realtime_replay_window: 1000,
            realtime_keepalive_secs: 15,
            realtime_session_check_secs: 60,
        }
    }
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A configuration that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value has the wrong type.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    /// The database URL has an unknown scheme.
    #[error(
        "CONFAB_DATABASE_URL must start with sqlite: or postgres: (got a URL starting with {0:?})"
    )]
    UnknownDatabase(String),
}

impl Config {
    /// What projections do with an event they cannot apply.
    pub fn projection_on_error(&self) -> anyhow::Result<confab_projections::OnError> {
        self.projection_on_error
            .parse()
            .map_err(|e| anyhow::anyhow!("CONFAB_PROJECTION_ON_ERROR: {e}"))
    }

    /// How long a reply's credit hold lasts: at least a second.
    pub fn credit_hold_ttl(&self) -> anyhow::Result<chrono::Duration> {
        if self.credit_hold_ttl_secs == 0 {
            anyhow::bail!("CONFAB_CREDIT_HOLD_TTL_SECS must be at least 1 (seconds)");
        }
        let secs = i64::try_from(self.credit_hold_ttl_secs)
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .ok_or_else(|| anyhow::anyhow!("CONFAB_CREDIT_HOLD_TTL_SECS is too large"))?;
        Ok(secs)
    }

    /// The provider-key encryption key: the configured one, or on the embedded default the one
    /// kept in the data directory (created on first use, readable by its owner only). On
    /// PostgreSQL it must be configured: an error says so.
    pub fn encryption_key(&self) -> anyhow::Result<[u8; 32]> {
        use base64::Engine as _;
        let decode = |text: &str, from: &str| -> anyhow::Result<[u8; 32]> {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| anyhow::anyhow!("{from} is not base64"))?;
            bytes.try_into().map_err(|_| {
                anyhow::anyhow!("{from} must hold exactly 32 bytes (base64 of 32 bytes)")
            })
        };
        if let Some(k) = &self.encryption_key {
            return decode(k.expose_secret(), "CONFAB_ENCRYPTION_KEY");
        }
        let path = self.data_dir.join("encryption.key");
        if self.database_kind()? == DatabaseKind::Postgres {
            // Several processes share one PostgreSQL: a key made by each would leave users'
            // keys undecryptable on the others.
            anyhow::bail!(
                "CONFAB_ENCRYPTION_KEY is not set: on PostgreSQL every process must use the same \
                 key. Set it to the base64 of 32 random bytes (`openssl rand -base64 32`) in every \
                 process; if this process made one before, it is in {}",
                path.display()
            );
        }
        if let Ok(text) = std::fs::read_to_string(&path) {
            return decode(&text, &path.display().to_string());
        }
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        std::fs::create_dir_all(&self.data_dir)?;
        let text = base64::engine::general_purpose::STANDARD.encode(key);
        write_private(&path, &text)?;
        Ok(key)
    }

    /// The previous master key (`CONFAB_ENCRYPTION_KEY_PREVIOUS`), if set.
    pub fn encryption_key_previous(&self) -> anyhow::Result<Option<[u8; 32]>> {
        use base64::Engine as _;
        let Some(k) = &self.encryption_key_previous else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(k.expose_secret().trim())
            .map_err(|_| anyhow::anyhow!("CONFAB_ENCRYPTION_KEY_PREVIOUS is not base64"))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            anyhow::anyhow!("CONFAB_ENCRYPTION_KEY_PREVIOUS must hold exactly 32 bytes")
        })?;
        Ok(Some(key))
    }

    /// The master keys of payload encryption: the current one and the previous one, if set.
    pub fn master_keys(&self) -> anyhow::Result<confab_eventstore::sealed::MasterKeys> {
        let current = self.encryption_key()?;
        let previous: Vec<[u8; 32]> = self.encryption_key_previous()?.into_iter().collect();
        Ok(confab_eventstore::sealed::MasterKeys::new(
            &current, &previous,
        ))
    }

    /// The rate-limit policy these settings describe; errors name the setting to fix.
    pub fn rate_limit_policy(&self) -> anyhow::Result<confab_api::ratelimit::Policy> {
        use confab_api::ratelimit::{Budgets, Group, Policy, Rate, parse_proxies};
        if !self.rate_limit_enabled {
            return Ok(Policy::off());
        }
        let parse =
            |setting: &str, v: &str| Rate::parse(v).map_err(|e| anyhow::anyhow!("{setting}: {e}"));
        let per_ip = parse("CONFAB_RATE_LIMIT_PER_IP", &self.rate_limit_per_ip)?;
        let per_user = parse("CONFAB_RATE_LIMIT_PER_USER", &self.rate_limit_per_user)?;
        if let Some(unknown) = self
            .rate_limit_groups
            .keys()
            .find(|k| !Group::ALL.iter().any(|g| g.name() == k.as_str()))
        {
            anyhow::bail!(
                "[rate_limit_groups.{unknown}]: no such route group (auth, chat, webhooks, default)"
            );
        }
        let mut groups = std::collections::HashMap::new();
        for g in Group::ALL {
            let own = self.rate_limit_groups.get(g.name());
            let pick = |own: Option<&String>, field: &str, global: Option<Rate>| match own {
                Some(v) => parse(&format!("[rate_limit_groups.{}] {field}", g.name()), v),
                None => Ok(global),
            };
            groups.insert(
                g,
                Budgets {
                    per_ip: pick(own.and_then(|o| o.per_ip.as_ref()), "per_ip", per_ip)?,
                    per_user: pick(own.and_then(|o| o.per_user.as_ref()), "per_user", per_user)?,
                },
            );
        }
        Ok(Policy {
            groups,
            trusted_proxies: parse_proxies(&self.trusted_proxies)
                .map_err(|e| anyhow::anyhow!("CONFAB_TRUSTED_PROXIES: {e}"))?,
            fail_open: self.rate_limit_fail_open,
        })
    }

    /// The rate limiter these settings describe.
    pub fn rate_limiter(&self) -> anyhow::Result<confab_api::ratelimit::RateLimiter> {
        use confab_api::ratelimit::RateLimiter;
        let policy = self.rate_limit_policy()?;
        match self.rate_limit_backend.trim().to_ascii_lowercase().as_str() {
            "memory" => Ok(RateLimiter::memory(policy)),
            "redis" => {
                let url = self.redis_url.as_ref().ok_or_else(|| {
                    anyhow::anyhow!(
                        "CONFAB_RATE_LIMIT_BACKEND=redis needs CONFAB_REDIS_URL (redis://host:6379)"
                    )
                })?;
                RateLimiter::redis(policy, url.expose_secret())
            }
            other => anyhow::bail!(
                "CONFAB_RATE_LIMIT_BACKEND {other:?} is not a backend: use memory or redis"
            ),
        }
    }

    /// The document settings: accepted kinds, size limit, chunking, embedding, retrieval.
    pub fn document_settings(
        &self,
    ) -> anyhow::Result<confab_application::documents::DocumentSettings> {
        use confab_application::documents::chunk::ChunkSizing;
        use confab_application::documents::parse::DocType;
        let mut types = Vec::new();
        for name in self
            .upload_types
            .split(',')
            .filter(|n| !n.trim().is_empty())
        {
            let kind = DocType::parse(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "CONFAB_UPLOAD_TYPES names {name:?}; the kinds are pdf, txt, md, html, docx"
                )
            })?;
            if !types.contains(&kind) {
                types.push(kind);
            }
        }
        if types.is_empty() {
            anyhow::bail!(
                "CONFAB_UPLOAD_TYPES names no kind; use some of pdf, txt, md, html, docx"
            );
        }
        let sizing = ChunkSizing {
            tokens: self.chunk_tokens,
            overlap: self.chunk_overlap,
        }
        .validate()
        .map_err(|e| anyhow::anyhow!("CONFAB_CHUNK_TOKENS / CONFAB_CHUNK_OVERLAP: {e}"))?;
        if self.upload_max_bytes == 0 {
            anyhow::bail!("CONFAB_UPLOAD_MAX_BYTES must be at least 1");
        }
        if self.rag_top_k == 0 {
            anyhow::bail!("CONFAB_RAG_TOP_K must be at least 1");
        }
        Ok(confab_application::documents::DocumentSettings {
            types,
            max_bytes: self.upload_max_bytes,
            embedding_model: self.embedding_model.clone(),
            embedding_provider: self.embedding_provider.clone(),
            sizing,
            top_k: self.rag_top_k,
            batch: self.embedding_batch.max(1),
            pgvector: false,
        })
    }

    /// The allow-listed provider hosts.
    pub fn provider_hosts(&self) -> Vec<String> {
        self.provider_hosts_allowlist
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect()
    }

    /// Loads defaults, then `file` if given (it must exist), then `CONFAB_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::figment(file)
            .extract()
            .map_err(|e| Box::new(e).into())
    }

    /// The layered sources, so callers can merge command-line flags on top.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            f = f.merge(Toml::file_exact(path));
        }
        f.merge(Env::raw().only(&[
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_BASE_URL",
            "CRON_SECRET",
            "STRIPE_SECRET_KEY",
            "STRIPE_WEBHOOK_SECRET",
        ]))
        .merge(Env::prefixed("CONFAB_").ignore(&["config"]))
    }

    /// The providers in force: `openai` when its key or base URL is set, `anthropic` when its
    /// key is set, then those of the config file (which win over a default of the same name).
    pub fn llm_providers(&self) -> Vec<ProviderSpec> {
        let mut out: Vec<ProviderSpec> = Vec::new();
        let key = |k: &Option<SecretString>| k.as_ref().map(|k| k.expose_secret().to_owned());
        if self.openai_api_key.is_some() || self.openai_base_url.is_some() {
            out.push(ProviderSpec {
                name: "openai".into(),
                base_url: self
                    .openai_base_url
                    .clone()
                    .unwrap_or_else(|| "https://api.openai.com/v1".into()),
                api_key: key(&self.openai_api_key),
            });
        }
        if self.anthropic_api_key.is_some() {
            out.push(ProviderSpec {
                name: "anthropic".into(),
                base_url: self
                    .anthropic_base_url
                    .clone()
                    .unwrap_or_else(|| "https://api.anthropic.com/v1".into()),
                api_key: key(&self.anthropic_api_key),
            });
        }
        for p in &self.providers {
            out.retain(|d| d.name != p.name);
            out.push(p.clone());
        }
        out
    }

    /// The database URL in force: the configured one, or the SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose_secret().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("confab.db").display()),
        }
    }

    /// Which database `database_url()` names.
    pub fn database_kind(&self) -> Result<DatabaseKind, ConfigError> {
        let url = self.database_url();
        if url.starts_with("sqlite:") {
            Ok(DatabaseKind::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(DatabaseKind::Postgres)
        } else {
            Err(ConfigError::UnknownDatabase(url.chars().take(12).collect()))
        }
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn postgres_needs_a_configured_encryption_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = Config {
            data_dir: dir.path().to_path_buf(),
            database_url: Some("postgres://postgres@127.0.0.1/none".to_owned().into()),
            ..Config::default()
        };
        let err = c.encryption_key().expect_err("refused").to_string();
        assert!(err.contains("CONFAB_ENCRYPTION_KEY"), "{err}");
        assert!(
            !dir.path().join("encryption.key").exists(),
            "no key is made"
        );
        c.encryption_key = Some(
            "Y29uZmFiLXRlc3QtZW5jcnlwdGlvbi1rZXktMzJieXQ="
                .to_owned()
                .into(),
        );
        assert!(c.encryption_key().is_ok());
        // The embedded default makes one and keeps it.
        let embedded = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let made = embedded.encryption_key().expect("made");
        assert_eq!(embedded.encryption_key().expect("kept"), made);
    }

    #[test]
    fn defaults_use_the_embedded_database_in_the_data_dir() {
        figment::Jail::expect_with(|_| {
            let c = Config::load(None).expect("load");
            assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
            assert_eq!(c.database_kind().expect("kind"), DatabaseKind::Sqlite);
            assert!(c.database_url().ends_with("data/confab.db"));
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "confab.toml",
                "bind = \"0.0.0.0:9000\"\nreadiness_max_lag = 5\n",
            )?;
            jail.set_env("CONFAB_READINESS_MAX_LAG", "7");
            jail.set_env("CONFAB_DATABASE_URL", "postgres://u:hunter2@db/confab");
            jail.set_env("OPENAI_API_KEY", "sk-hunter3");
            jail.set_env("CRON_SECRET", "hunter4");
            jail.set_env("STRIPE_SECRET_KEY", "sk_test_hunter5");
            jail.set_env("STRIPE_WEBHOOK_SECRET", "whsec_hunter6");
            jail.set_env("CONFAB_STRIPE_API_BASE", "http://127.0.0.1:12111");
            jail.set_env("CONFAB_PUSHER_KEY", "app-key");
            jail.set_env("CONFAB_PUSHER_SECRET", "hunter7");
            jail.set_env("CONFAB_REALTIME_REPLAY_WINDOW", "50");
            let c = Config::load(Some(Path::new("confab.toml"))).expect("load");
            assert_eq!(c.stripe_api_base, "http://127.0.0.1:12111");
            assert!(c.stripe_secret_key.is_some() && c.stripe_webhook_secret.is_some());
            assert_eq!(c.bind.port(), 9000);
            assert_eq!(c.readiness_max_lag, 7);
            assert_eq!(c.database_kind().expect("kind"), DatabaseKind::Postgres);
            assert_eq!(c.pusher_key.as_deref(), Some("app-key"));
            assert_eq!(c.realtime_replay_window, 50);
            for secret in [
                "hunter2", "hunter3", "hunter4", "hunter5", "hunter6", "hunter7",
            ] {
                assert!(!format!("{c:?}").contains(secret), "secrets must not print");
            }
            let providers = c.llm_providers();
            assert_eq!(providers.len(), 1);
            assert_eq!(providers[0].name, "openai");
            assert_eq!(providers[0].base_url, "https://api.openai.com/v1");
            assert_eq!(providers[0].api_key.as_deref(), Some("sk-hunter3"));
            assert!(!format!("{providers:?}").contains("hunter3"));
            Ok(())
        });
    }

    #[test]
    fn prices_come_from_the_billing_table_of_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "confab.toml",
                r#"
[billing]
success_url = "https://app.example.com/done"

[[billing.prices]]
id = "price_pro_monthly"
tier = "pro"

[[billing.prices]]
id = "price_topup_5000"
credits = 5000
"#,
            )?;
            let c = Config::load(Some(Path::new("confab.toml"))).expect("load");
            assert_eq!(c.billing.prices.len(), 2);
            assert_eq!(c.billing.prices[0].tier.as_deref(), Some("pro"));
            assert_eq!(c.billing.prices[1].credits, Some(5000));
            assert_eq!(c.billing.success_url, "https://app.example.com/done");
            assert_eq!(c.stripe_api_base, "https://api.stripe.com");
            confab_domain::billing::validate_prices(&c.billing.prices, &c.catalogue)
                .expect("valid");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_database_scheme_is_explained() {
        let c = Config {
            database_url: Some("mysql://x".to_owned().into()),
            ..Config::default()
        };
        let e = c.database_kind().expect_err("mysql");
        assert!(e.to_string().contains("CONFAB_DATABASE_URL"));
    }
}
