//! Operational routes: liveness, readiness, and the error bodies for unknown routes.

use crate::error::ErrorBody;
use crate::resources::operations::{Health, ProjectionProgress, Readiness};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use serde_json::json;

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// `GET /readyz`: the store answers and every projection is within the allowed lag.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "Store reachable, projections within the allowed lag", body = Readiness), (status = 503, description = "Not ready: the projections behind, or the store unreachable", body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    // Answered within two seconds whatever the database does: a probe that hangs is no probe.
    let unreachable = || ApiError::Unavailable {
        message: "event store or read model database unreachable".into(),
        details: json!({}),
    };
    let statuses = tokio::time::timeout(std::time::Duration::from_secs(2), state.engine.status())
        .await
        .map_err(|_| {
            tracing::warn!("readiness check: the store did not answer within 2 s");
            unreachable()
        })?
        .map_err(|e| {
            tracing::warn!(error = %e, "readiness check cannot read the store");
            unreachable()
        })?;
    let projections: Vec<ProjectionProgress> = statuses
        .iter()
        .map(|s| ProjectionProgress {
            name: s.name.to_owned(),
            position: s.position,
            head: s.head,
            lag: s.lag(),
        })
        .collect();
    let halted: Vec<String> = statuses
        .iter()
        .filter_map(|s| {
            s.halted
                .map(|p| format!("{} halted at position {p}", s.name))
        })
        .collect();
    if !halted.is_empty() {
        return Err(ApiError::Unavailable {
            message: format!(
                "{}: an event it cannot apply; `confab projections parked` shows why, \
                 `confab projections retry` or `skip` resumes",
                halted.join(", ")
            ),
            details: json!({ "projections": projections, "halted": halted }),
        });
    }
    let behind: Vec<&str> = statuses
        .iter()
        .filter(|s| s.lag() > state.readiness_max_lag)
        .map(|s| s.name)
        .collect();
    if !behind.is_empty() {
        return Err(ApiError::Unavailable {
            message: format!("projections catching up: {}", behind.join(", ")),
            details: json!({ "projections": projections, "maxLag": state.readiness_max_lag }),
        });
    }
    Ok(Json(Readiness {
        status: "ready".into(),
        projections,
    }))
}

/// Any unknown route.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// A known route with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The process's Prometheus recorder, installed on first use (one per process, however many
/// apps it serves).
pub fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        // Latencies are histograms with fixed buckets (aggregatable across instances), not
        // the exporter's default per-process summaries.
        const SECONDS: &[f64] = &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0,
        ];
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                SECONDS,
            )
            .expect("the latency buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (an embedding program's); ours then only
        // renders what it records through `handle`, which stays valid.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// `GET /metrics`: Prometheus text: what the process recorded (rate limiter, request latency
/// per route group, projection apply latency, job latency per queue), and, read now, each
/// projection's position, lag in events and seconds and parked events, and each job queue's
/// depth.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    use std::fmt::Write;
    let mut text = prometheus().render();
    match state.engine.status().await {
        Ok(statuses) => {
            let now = chrono::Utc::now();
            let gauges = [
                (
                    "confab_projection_position",
                    "The projection's checkpoint in the log.",
                ),
                (
                    "confab_projection_lag",
                    "Events the projection has not applied yet.",
                ),
                (
                    "confab_projection_lag_seconds",
                    "Age of the oldest event the projection has not applied yet.",
                ),
                ("confab_projection_parked", "Events the projection parked."),
            ];
            for (i, (name, help)) in gauges.into_iter().enumerate() {
                let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge");
                for s in &statuses {
                    let value = match i {
                        0 => s.position.to_string(),
                        1 => s.lag().to_string(),
                        2 => s.lag_seconds(now).to_string(),
                        _ => s.parked.to_string(),
                    };
                    let _ = writeln!(text, "{name}{{projection=\"{}\"}} {value}", s.name);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the projections' status for /metrics"),
    }
    let depths = state.app.jobs.depths().await;
    if !depths.is_empty() {
        text.push_str(
            "# HELP confab_job_queue_depth Jobs waiting, running, or failed with attempts left.\n\
             # TYPE confab_job_queue_depth gauge\n",
        );
        for (queue, n) in depths {
            let _ = writeln!(text, "confab_job_queue_depth{{queue=\"{queue}\"}} {n}");
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
