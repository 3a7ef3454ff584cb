//! Rate limiting: a budget per client IP and a budget per signed-in user, for each route group,
//! counted over a sliding window.
//!
//! The window is a log of the accepted requests' times (not a fixed window that resets at a
//! boundary and lets twice the limit through across it): a request is accepted when fewer than
//! `limit` requests were accepted in the `window` before it. Refused requests are not counted, so
//! a client that backs off gets its budget back. Every limited response carries
//! `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (the Unix second at
//! which the whole budget is back) of the tighter of its two budgets; a refused one is a 429
//! with `Retry-After` and the error body, code `rate_limited`.
//!
//! Backends: in-process (one instance), or Redis, where one Lua script checks and records both
//! budgets atomically in one round trip (a sorted set per key, timed by the Redis server's
//! clock so that instances with skewed clocks still share one window). When Redis cannot be
//! reached within [`REDIS_TIMEOUT`], the request is let through (`fail_open`, the default) or
//! refused with 503, as configured; either way the failure is logged and counted in
//! `confab_rate_limit_backend_errors_total`, and the next request tries Redis again.
//!
//! Route groups, each with its own budgets: `auth` (sign-up and sign-in), `chat`
//! (`POST /api/chat`), `webhooks` (Stripe's deliveries) and `default` (every other route).
//! `/healthz`, `/readyz` and `/metrics` are not limited. The client IP is the connection's peer
//! address, or, when the peer is a trusted proxy, the nearest address in `X-Forwarded-For` that
//! is not itself a trusted proxy.

use crate::auth::bearer_or_cookie;
use crate::{ApiError, AppState};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest wait for Redis before the configured failure mode applies.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// A budget: `limit` requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests accepted per window.
    pub limit: u32,
    /// The window.
    pub window: Duration,
}

/// Why a rate setting does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a rate limit: write N/PERIOD such as 10/10s, 600/1m, 1000/1h or 5/500ms, or off"
)]
pub struct BadRate(pub String);

impl Rate {
    /// Parses `10/10s`, `600/1m`, `1000/1h`, `5/500ms`, `100/s`; `off` (or `none`, `0`) is `None`.
    pub fn parse(s: &str) -> Result<Option<Rate>, BadRate> {
        let t = s.trim().to_ascii_lowercase();
        if matches!(t.as_str(), "off" | "none" | "0" | "") {
            return Ok(None);
        }
        let bad = || BadRate(s.to_owned());
        let (n, period) = t.split_once('/').ok_or_else(bad)?;
        let limit: u32 = n.trim().parse().map_err(|_| bad())?;
        let period = period.trim();
        let split = period.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (count, unit) = period.split_at(split);
        let count: u64 = if count.is_empty() {
            1
        } else {
            count.parse().map_err(|_| bad())?
        };
        let unit_ms = match unit {
            "ms" => 1,
            "s" | "sec" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        if limit == 0 || count == 0 {
            return Err(bad());
        }
        Ok(Some(Rate {
            limit,
            window: Duration::from_millis(count.saturating_mul(unit_ms)),
        }))
    }

    fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }
}

/// The route groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// Every route not in another group.
    Default,
    /// `POST /api/auth/signup`, `POST /api/auth/signin`.
    Auth,
    /// `POST /api/chat`.
    Chat,
    /// `POST /api/webhooks/...`.
    Webhooks,
}

impl Group {
    /// All of them.
    pub const ALL: [Group; 4] = [Group::Default, Group::Auth, Group::Chat, Group::Webhooks];

    /// Its name in the configuration and in keys.
    pub fn name(self) -> &'static str {
        match self {
            Group::Default => "default",
            Group::Auth => "auth",
            Group::Chat => "chat",
            Group::Webhooks => "webhooks",
        }
    }

    /// The group of a request; `None` for the operational routes, which are not limited.
    pub fn of(method: &Method, path: &str) -> Option<Group> {
        if matches!(path, "/healthz" | "/readyz" | "/metrics") {
            return None;
        }
        Some(match (method, path) {
            (&Method::POST, "/api/auth/signup" | "/api/auth/signin") => Group::Auth,
            (&Method::POST, "/api/chat") => Group::Chat,
            (&Method::POST, p) if p.starts_with("/api/webhooks/") => Group::Webhooks,
            _ => Group::Default,
        })
    }
}

/// The two budgets of a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budgets {
    /// Per client IP.
    pub per_ip: Option<Rate>,
    /// Per signed-in user.
    pub per_user: Option<Rate>,
}

/// What the limiter enforces.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Each group's budgets.
    pub groups: HashMap<Group, Budgets>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Let requests through when the backend is unreachable (otherwise 503).
    pub fail_open: bool,
}

impl Policy {
    /// No limits at all.
    pub fn off() -> Policy {
        Policy {
            groups: HashMap::new(),
            trusted_proxies: Vec::new(),
            fail_open: true,
        }
    }

    fn budgets(&self, group: Group) -> Budgets {
        self.groups.get(&group).copied().unwrap_or_default()
    }

    /// Whether any group limits anything.
    pub fn is_off(&self) -> bool {
        self.groups
            .values()
            .all(|b| b.per_ip.is_none() && b.per_user.is_none())
    }
}

/// Parses `CONFAB_TRUSTED_PROXIES`: addresses or CIDR ranges, comma-separated.
pub fn parse_proxies(s: &str) -> Result<Vec<IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            IpNet::from_str(p)
                .or_else(|_| IpAddr::from_str(p).map(IpNet::from))
                .map_err(|_| format!("{p:?} is neither an IP address nor a CIDR range"))
        })
        .collect()
}

/// One budget to check for a request.
#[derive(Debug, Clone)]
struct Check {
    key: String,
    rate: Rate,
}

/// The state of one budget after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Count {
    /// Accepted requests now in the window (including this one if it was accepted).
    used: u32,
    /// Time of the oldest and newest of them (ms since the epoch); `now` when none.
    oldest_ms: u64,
    newest_ms: u64,
}

/// The decision on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decision {
    allowed: bool,
    counts: Vec<Count>,
    now_ms: u64,
}

/// The in-process log: each key's accepted request times, oldest first, and its window.
#[derive(Debug, Default)]
struct Log {
    keys: HashMap<String, (u64, VecDeque<u64>)>,
}

impl Log {
    /// Checks every budget and records the request in all of them only if all accept it.
    fn decide(&mut self, checks: &[Check], now_ms: u64) -> Decision {
        let mut allowed = true;
        for c in checks {
            let window = c.rate.window_ms();
            let (w, times) = self
                .keys
                .entry(c.key.clone())
                .or_insert_with(|| (window, VecDeque::new()));
            *w = window;
            while times
                .front()
                .is_some_and(|&t| t.saturating_add(window) <= now_ms)
            {
                times.pop_front();
            }
            if times.len() >= c.rate.limit as usize {
                allowed = false;
            }
        }
        let counts = checks
            .iter()
            .map(|c| {
                let times = &mut self.keys.get_mut(&c.key).expect("entry made above").1;
                if allowed {
                    times.push_back(now_ms);
                }
                Count {
                    used: u32::try_from(times.len()).unwrap_or(u32::MAX),
                    oldest_ms: times.front().copied().unwrap_or(now_ms),
                    newest_ms: times.back().copied().unwrap_or(now_ms),
                }
            })
            .collect();
        Decision {
            allowed,
            counts,
            now_ms,
        }
    }

    /// Forgets keys with nothing left in their window.
    fn sweep(&mut self, now_ms: u64) {
        self.keys.retain(|_, (window, times)| {
            times
                .back()
                .is_some_and(|&t| t.saturating_add(*window) > now_ms)
        });
    }
}

/// Checks and records up to two budgets atomically, timed by the Redis server's clock.
/// KEYS: the budgets' keys. ARGV: a unique member, then limit and window (ms) per key.
/// Returns {allowed, now_ms, used1, oldest1, newest1, used2, oldest2, newest2}.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local allowed = 1
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= limit then allowed = 0 end
end
local out = {allowed, now}
for i, key in ipairs(KEYS) do
  local window = tonumber(ARGV[2 * i + 1])
  if allowed == 1 then
    redis.call('ZADD', key, now, ARGV[1])
    redis.call('PEXPIRE', key, window)
  end
  local used = redis.call('ZCARD', key)
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2] or now
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2] or now
  table.insert(out, used)
  table.insert(out, tonumber(oldest))
  table.insert(out, tonumber(newest))
end
return out
";

enum Backend {
    Memory(Arc<Mutex<Log>>),
    Redis {
        connection: redis::aio::ConnectionManager,
        script: redis::Script,
    },
}

/// The rate limiter of one process.
#[derive(Clone)]
pub struct RateLimiter {
    policy: Arc<Policy>,
    backend: Arc<Backend>,
    /// When a backend failure was last logged (ms since the epoch): once per 10 s at most.
    logged_failure_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl RateLimiter {
    /// An in-process limiter (forgetting idle clients every minute).
    pub fn memory(policy: Policy) -> RateLimiter {
        let log = Arc::new(Mutex::new(Log::default()));
        let weak = Arc::downgrade(&log);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(log) = weak.upgrade() else { return };
                log.lock().expect("rate log").sweep(now_ms());
            }
        });
        RateLimiter {
            policy: Arc::new(policy),
            backend: Arc::new(Backend::Memory(log)),
            logged_failure_ms: Arc::default(),
        }
    }

    /// A limiter whose budgets live in Redis at `url`, shared by every instance using it. The
    /// connection is made on first use and remade after a failure, so a Redis that is down
    /// at start-up or restarts later is picked up on its own.
    pub fn redis(policy: Policy, url: &str) -> anyhow::Result<RateLimiter> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("CONFAB_REDIS_URL is not a Redis URL: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| anyhow::anyhow!("cannot set up the Redis connection: {e}"))?;
        Ok(RateLimiter {
            policy: Arc::new(policy),
            backend: Arc::new(Backend::Redis {
                connection,
                script: redis::Script::new(SCRIPT),
            }),
            logged_failure_ms: Arc::default(),
        })
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether a backend failure should be logged now (the first in 10 s).
    fn should_log_failure(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = now_ms();
        let last = self.logged_failure_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 10_000
            && self
                .logged_failure_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    async fn decide(&self, checks: &[Check]) -> Result<Decision, String> {
        match &*self.backend {
            Backend::Memory(log) => Ok(log.lock().expect("rate log").decide(checks, now_ms())),
            Backend::Redis { connection, script } => {
                let mut invocation = script.prepare_invoke();
                invocation.arg(uuid::Uuid::now_v7().simple().to_string());
                for c in checks {
                    invocation
                        .key(&c.key)
                        .arg(c.rate.limit)
                        .arg(c.rate.window_ms());
                }
                let mut connection = connection.clone();
                let reply: Vec<i64> = tokio::time::timeout(
                    REDIS_TIMEOUT * 2,
                    invocation.invoke_async(&mut connection),
                )
                .await
                .map_err(|_| "Redis did not answer in time".to_owned())?
                .map_err(|e| e.to_string())?;
                parse_reply(&reply, checks.len()).ok_or_else(|| {
                    format!("unexpected reply from the rate-limit script: {reply:?}")
                })
            }
        }
    }
}

fn parse_reply(reply: &[i64], n: usize) -> Option<Decision> {
    if reply.len() != 2 + 3 * n {
        return None;
    }
    let ms = |v: i64| u64::try_from(v).ok();
    let counts = (0..n)
        .map(|i| {
            let at = 2 + 3 * i;
            Some(Count {
                used: u32::try_from(reply[at]).ok()?,
                oldest_ms: ms(reply[at + 1])?,
                newest_ms: ms(reply[at + 2])?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Decision {
        allowed: reply[0] == 1,
        now_ms: ms(reply[1])?,
        counts,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The headers and, when refused, the wait, of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    limit: u32,
    remaining: u32,
    reset_unix: u64,
    /// Seconds to wait, when refused.
    retry_after: Option<u64>,
    window: Duration,
}

fn verdict(checks: &[Check], d: &Decision) -> Verdict {
    let per = checks.iter().zip(&d.counts).map(|(c, n)| {
        let window = c.rate.window_ms();
        let remaining = c.rate.limit.saturating_sub(n.used);
        // The whole budget is back once the newest counted request leaves the window.
        let reset_ms = n.newest_ms.saturating_add(window);
        // A refused request may go again once the oldest counted one leaves it.
        let wait_ms = if n.used >= c.rate.limit {
            n.oldest_ms.saturating_add(window).saturating_sub(d.now_ms)
        } else {
            0
        };
        (c, remaining, reset_ms, wait_ms)
    });
    let chosen = if d.allowed {
        per.min_by_key(|(c, remaining, ..)| (*remaining, c.rate.limit))
    } else {
        per.max_by_key(|(.., wait)| *wait)
    };
    let (c, remaining, reset_ms, wait_ms) = chosen.expect("at least one check");
    Verdict {
        limit: c.rate.limit,
        remaining,
        reset_unix: reset_ms.div_ceil(1000),
        retry_after: (!d.allowed).then(|| wait_ms.div_ceil(1000).max(1)),
        window: c.rate.window,
    }
}

/// The client's address: the peer, or, behind trusted proxies, the nearest untrusted address
/// they forwarded for.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = peer?;
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| IpAddr::from_str(s.trim()).ok())
        .collect();
    Some(
        forwarded
            .iter()
            .rev()
            .find(|ip| !is_trusted(ip))
            .or(forwarded.first())
            .copied()
            .unwrap_or(peer),
    )
}

fn set_headers(h: &mut HeaderMap, v: &Verdict) {
    let mut put = |name: &'static str, value: u64| {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            h.insert(name, v);
        }
    };
    put("x-ratelimit-limit", u64::from(v.limit));
    put("x-ratelimit-remaining", u64::from(v.remaining));
    put("x-ratelimit-reset", v.reset_unix);
    if let Some(wait) = v.retry_after {
        put("retry-after", wait);
    }
}

/// The middleware.
pub async fn layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let limiter = &state.rate_limiter;
    let Some(group) = Group::of(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let budgets = limiter.policy.budgets(group);
    let mut checks = Vec::with_capacity(2);
    if let Some(rate) = budgets.per_ip {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if let Some(ip) = client_ip(peer, req.headers(), &limiter.policy.trusted_proxies) {
            checks.push(Check {
                key: format!("confab:rl:{}:ip:{ip}", group.name()),
                rate,
            });
        }
    }
    if let Some(rate) = budgets.per_user
        && bearer_or_cookie(req.headers()).is_some()
    {
        // The session is resolved once here; the handler's `AuthUser` reuses it.
        match crate::auth::authenticate(&state, req.headers()).await {
            Ok(Some(found)) => {
                checks.push(Check {
                    key: format!("confab:rl:{}:user:{}", group.name(), found.id()),
                    rate,
                });
                req.extensions_mut().insert(found);
            }
            Ok(None) => {}
            Err(e) => return e.into_response(),
        }
    }
    if checks.is_empty() {
        return next.run(req).await;
    }
    let decision = match limiter.decide(&checks).await {
        Ok(d) => d,
        Err(why) => {
            metrics::counter!("confab_rate_limit_backend_errors_total").increment(1);
            let say = limiter.should_log_failure();
            if limiter.policy.fail_open {
                if say {
                    tracing::warn!(error = %why, "rate limiter unreachable; letting requests through (fail-open) until it answers");
                }
                return next.run(req).await;
            }
            if say {
                tracing::warn!(error = %why, "rate limiter unreachable; refusing requests (fail-closed) until it answers");
            }
            return ApiError::Unavailable {
                message: "the rate limiter is unavailable; retry shortly".into(),
                details: json!({}),
            }
            .into_response();
        }
    };
    let v = verdict(&checks, &decision);
    if !decision.allowed {
        metrics::counter!("confab_rate_limited_total", "group" => group.name()).increment(1);
        let wait = v.retry_after.unwrap_or(1);
        let mut r = ApiError::RateLimited {
            message: format!(
                "too many requests: at most {} per {}s; retry in {wait}s",
                v.limit,
                v.window.as_secs_f64()
            ),
            details: json!({
                "limit": v.limit,
                "windowSeconds": v.window.as_secs_f64(),
                "retryAfter": wait,
            }),
        }
        .into_response();
        set_headers(r.headers_mut(), &v);
        return r;
    }
    let mut r = next.run(req).await;
    set_headers(r.headers_mut(), &v);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: &str, limit: u32, window_ms: u64) -> Check {
        Check {
            key: key.into(),
            rate: Rate {
                limit,
                window: Duration::from_millis(window_ms),
            },
        }
    }

    #[test]
    fn rates_parse_and_bad_ones_say_how_to_write_them() {
        let r = |l, ms| {
            Some(Rate {
                limit: l,
                window: Duration::from_millis(ms),
            })
        };
        assert_eq!(Rate::parse("10/10s"), Ok(r(10, 10_000)));
        assert_eq!(Rate::parse("600/1m"), Ok(r(600, 60_000)));
        assert_eq!(Rate::parse("1000/1h"), Ok(r(1000, 3_600_000)));
        assert_eq!(Rate::parse("5/500ms"), Ok(r(5, 500)));
        assert_eq!(Rate::parse("100/s"), Ok(r(100, 1000)));
        assert_eq!(Rate::parse(" OFF "), Ok(None));
        for bad in ["10", "ten/10s", "10/10", "10/10y", "0/1s", "5/0s", "/1s"] {
            let e = Rate::parse(bad).unwrap_err();
            assert!(e.to_string().contains("10/10s"), "{e}");
        }
    }

    #[test]
    fn exactly_the_limit_is_accepted_in_any_window_and_the_edge_is_exact() {
        let mut log = Log::default();
        let c = [check("k", 10, 10_000)];
        // 10 requests spread over the first second: all accepted, the 11th refused.
        for i in 0..10 {
            assert!(log.decide(&c, 1_000 + i * 100).allowed, "request {i}");
        }
        let refused = log.decide(&c, 5_000);
        assert!(!refused.allowed);
        assert_eq!(refused.counts[0].used, 10);
        // Just before the first request leaves the window: still refused.
        assert!(!log.decide(&c, 10_999).allowed);
        // The moment it leaves (window is (now - 10s, now]): exactly one slot.
        assert!(log.decide(&c, 11_000).allowed);
        assert!(!log.decide(&c, 11_000).allowed);
        // A fixed window would let a burst of 10 at 9.9s and 10 more at 10.0s; a sliding one
        // lets no more than 10 through in any 10 s.
        let mut log = Log::default();
        let accepted = (0..40)
            .filter(|i| log.decide(&c, 9_900 + i * 10).allowed)
            .count();
        assert_eq!(accepted, 10);
    }

    #[test]
    fn a_request_counts_in_both_budgets_or_in_neither() {
        let mut log = Log::default();
        let both = [check("ip", 3, 1_000), check("user", 2, 1_000)];
        assert!(log.decide(&both, 0).allowed);
        assert!(log.decide(&both, 1).allowed);
        let third = log.decide(&both, 2);
        assert!(!third.allowed, "the user budget is spent");
        assert_eq!(
            third.counts[0].used, 2,
            "the refused request cost the IP nothing"
        );
        let v = verdict(&both, &third);
        assert_eq!(v.limit, 2);
        assert_eq!(v.remaining, 0);
        assert_eq!(v.retry_after, Some(1));
    }

    #[test]
    fn headers_report_the_tighter_budget() {
        let mut log = Log::default();
        let both = [check("ip", 10, 10_000), check("user", 100, 60_000)];
        let d = log.decide(&both, 1_000_000);
        let v = verdict(&both, &d);
        assert_eq!((v.limit, v.remaining), (10, 9));
        assert_eq!(v.reset_unix, 1_010);
        assert_eq!(v.retry_after, None);
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let mut log = Log::default();
        log.decide(&[check("a", 1, 1_000)], 0);
        log.decide(&[check("b", 1, 10_000)], 0);
        log.sweep(5_000);
        assert!(!log.keys.contains_key("a"));
        assert!(log.keys.contains_key("b"));
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted = parse_proxies("10.0.0.0/8, 127.0.0.1").unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.1.2.3"),
        );
        let ip = |s: &str| Some(IpAddr::from_str(s).unwrap());
        // From a trusted proxy: the nearest untrusted hop (a client cannot spoof past it).
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("203.0.113.7"));
        // From anyone else: the header is ignored.
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &trusted),
            ip("198.51.100.1")
        );
        // No header: the peer.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &HeaderMap::new(), &trusted),
            ip("127.0.0.1")
        );
        assert!(parse_proxies("10.0.0.0/8, nonsense").is_err());
    }

    #[test]
    fn script_replies_are_read_and_malformed_ones_refused() {
        let d = parse_reply(&[1, 5_000, 3, 4_000, 5_000], 1).unwrap();
        assert!(d.allowed);
        assert_eq!(
            d.counts,
            vec![Count {
                used: 3,
                oldest_ms: 4_000,
                newest_ms: 5_000
            }]
        );
        assert!(parse_reply(&[1, 5_000, 3], 1).is_none());
    }
}
