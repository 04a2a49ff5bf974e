//! The admin API of a running dataflow (`tideflow run --admin ADDRESS`):
//! its status, its model versions, and promotions and rollbacks of them.
//!
//! It binds a loopback address unless told otherwise (`--admin-public`).
//! When `TIDEFLOW_ADMIN_TOKEN` is set, anything that changes state takes
//! `Authorization: Bearer TOKEN`; reading does not.
//!
//! - `GET /metrics`: the metrics, as `--metrics` serves them.
//! - `GET /`: the status page, charts of `/status` polled once a second:
//!   throughput, lag per partition, latency percentiles, the model
//!   versions and their rows, drift.
//! - `GET /status`: the run's counts, partitions (progress, lag,
//!   watermarks), latency percentiles, newest checkpoint, models (versions,
//!   rows by version, shadows, canary) and the drift of its columns
//!   against a reference.
//! - `GET /models`: the registry's versions, the schedule (which version
//!   scores rows from which event time), the version scoring new rows.
//! - `POST /models/promote` with `{"version": N}`: checks version N and
//!   switches to it from the event time after every row scored so far;
//!   answers with the recorded promotion, or 409 with why it was refused.
//! - `POST /models/rollback`: promotes the version in effect before the
//!   newest switch.
//! - `POST /models/prepare` with `{"version": N}`, then `POST
//!   /models/commit` with `{"version": N, "from_ms": T}` (or `POST
//!   /models/abort`): a cluster's promotion, every process prepared (its
//!   scoring held, its newest event time scored returned) before any is
//!   committed at the event time after the newest of them all.

use crate::run::Shared;
use crate::{Error, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value as Json_, json};
use std::net::SocketAddr;
use std::sync::Arc;

/// The environment variable holding the bearer token for changes.
pub const TOKEN_VARIABLE: &str = "TIDEFLOW_ADMIN_TOKEN";

/// Where and how to serve the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminOptions {
    /// The address to bind.
    pub address: SocketAddr,
    /// The bearer token changes need, if any.
    pub token: Option<String>,
}

impl AdminOptions {
    /// Options for `address`, which must be a loopback address unless
    /// `public`, with the token from the environment.
    pub fn new(address: SocketAddr, public: bool) -> Result<AdminOptions> {
        if !address.ip().is_loopback() && !public {
            return Err(Error::Runtime(format!(
                "--admin {address} is not a loopback address; the admin API changes the running models, so pass --admin-public to serve it beyond this machine (and set {TOKEN_VARIABLE})"
            )));
        }
        Ok(AdminOptions {
            address,
            token: std::env::var(TOKEN_VARIABLE)
                .ok()
                .filter(|token| !token.is_empty()),
        })
    }
}

/// An HTTP server on a thread of its own (a current-thread tokio runtime):
/// the admin API, or the metrics alone. Stops when dropped.
#[derive(Debug)]
pub struct HttpServer {
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `address` and serves `app`; `what` names it in errors.
    pub fn start(address: SocketAddr, app: Router, what: &str) -> Result<HttpServer> {
        let fail = |error: std::io::Error| Error::Runtime(format!("{what} on {address}: {error}"));
        let listener = std::net::TcpListener::bind(address).map_err(fail)?;
        let address = listener.local_addr().map_err(fail)?;
        listener.set_nonblocking(true).map_err(fail)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(fail)?;
        let thread = std::thread::Builder::new()
            .name("tideflow-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let shutdown = async {
                        let _ = stopped.await;
                    };
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await;
                });
            })
            .map_err(fail)?;
        Ok(HttpServer {
            address,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address served.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The admin server of a run; stops when dropped.
pub type AdminServer = HttpServer;

#[derive(Clone)]
struct Admin {
    shared: Arc<Shared>,
    token: Option<Arc<str>>,
    /// A promotion prepared by `/models/prepare`, awaiting its commit.
    pending: Arc<std::sync::Mutex<Option<crate::models::Prepared>>>,
}

/// Starts the admin API of `shared`'s run at `options.address`.
pub fn start(options: &AdminOptions, shared: Arc<Shared>) -> Result<AdminServer> {
    let admin = Admin {
        shared,
        token: options.token.as_deref().map(Arc::from),
        pending: Arc::default(),
    };
    // Every change passes the token check first, in one place.
    let changes = Router::new()
        .route("/models/promote", post(promote))
        .route("/models/rollback", post(rollback))
        .route("/models/prepare", post(prepare))
        .route("/models/commit", post(commit))
        .route("/models/abort", post(abort))
        .route_layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            require_token,
        ));
    let app = Router::new()
        .route("/", get(page))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/models", get(models))
        .merge(changes)
        .with_state(admin);
    HttpServer::start(options.address, app, "--admin")
}

/// The run's metrics, as `--metrics` serves them.
async fn metrics(State(admin): State<Admin>) -> impl axum::response::IntoResponse {
    crate::metrics::exposition(&admin.shared.metrics)
}

type Answer = (StatusCode, Json<Json_>);

fn refused(status: StatusCode, message: impl Into<String>) -> Answer {
    (status, Json(json!({ "error": message.into() })))
}

/// Whether a request that changes state carries the token, when one is set.
fn authorized(admin: &Admin, headers: &HeaderMap) -> std::result::Result<(), Answer> {
    let Some(token) = &admin.token else {
        return Ok(());
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if given == Some(token.as_ref()) {
        Ok(())
    } else {
        Err(refused(
            StatusCode::UNAUTHORIZED,
            format!("changes need Authorization: Bearer <{TOKEN_VARIABLE}>"),
        ))
    }
}

/// Lets a request that changes state through only with the token, when
/// one is set.
async fn require_token(
    State(admin): State<Admin>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match authorized(&admin, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(answer) => answer.into_response(),
    }
}

async fn status(State(admin): State<Admin>) -> Answer {
    (StatusCode::OK, Json(status_json(&admin.shared)))
}

/// The status page: charts of `/status`, polled once a second.
async fn page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("status.html"))
}

/// The run as `/status` gives it.
fn status_json(shared: &Shared) -> Json_ {
    let counts = shared.stats.snapshot();
    let metrics = &shared.metrics;
    let partitions: Vec<Json_> = metrics
        .partitions
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .map(|(partition, status)| {
            json!({
                "partition": partition,
                "done": status.done,
                "total": status.total,
                "lag": status.lag,
                "watermark_ms": status.watermark,
            })
        })
        .collect();
    let latency = &metrics.event_to_output_seconds;
    // Past the largest bucket, the figure is a bound: "> 60000".
    let milliseconds = |q: f64| match latency.quantile(q) {
        Some(seconds) if seconds.is_finite() => json!(seconds * 1000.0),
        Some(_) => json!(format!("> {}", latency.largest_bound() * 1000.0)),
        None => Json_::Null,
    };
    let checkpoint = metrics
        .checkpoint
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .map(|checkpoint| {
            json!({
                "id": checkpoint.id,
                "age_s": checkpoint.at.elapsed().as_secs_f64(),
                "duration_s": checkpoint.duration.as_secs_f64(),
                "bytes": checkpoint.bytes,
            })
        });
    json!({
        "name": shared.plan.name,
        "source": crate::operators::source::origin(&shared.plan.source),
        "elapsed_s": shared.started.get().map_or(0.0, |started| started.elapsed().as_secs_f64()),
        "records_in": counts.records_in,
        "rows_out": counts.rows_out,
        "dead_letters": counts.dead,
        "late": counts.late,
        "batches": counts.batches,
        "watermark_ms": shared.watermarks.slowest(),
        "partitions": partitions,
        "latency_ms": {
            "p50": milliseconds(0.5),
            "p99": milliseconds(0.99),
        },
        "checkpoint": checkpoint,
        "models": models_json(shared),
        "drift": shared.drift.as_ref().map(|drift| {
            drift.psi().into_iter().map(|(column, psi)| json!({
                "column": column,
                "psi": psi,
            })).collect::<Vec<_>>()
        }),
    })
}

async fn models(State(admin): State<Admin>) -> Answer {
    (StatusCode::OK, Json(models_json(&admin.shared)))
}

fn models_json(shared: &Shared) -> Json_ {
    let Some(versions) = &shared.models else {
        return Json_::Null;
    };
    let schedule = versions.schedule();
    let current = versions.current();
    json!({
        "name": versions.plan().name,
        "registry": versions.plan().registry.as_ref().map(|registry| registry.dir.display().to_string()),
        "available": versions.available().unwrap_or_default(),
        "current": current.identity,
        "device": current.device,
        "base_version": schedule.base,
        "switches": schedule.switches.iter().map(|(from_ms, version)| json!({
            "from_ms": from_ms,
            "version": version,
        })).collect::<Vec<_>>(),
        "rows_by_version": versions.rows_by_version().into_iter().map(|(version, rows)| json!({
            "version": version,
            "rows": rows,
        })).collect::<Vec<_>>(),
        "shadows": versions.shadow_stats().into_iter().map(|(label, stats)| json!({
            "label": label,
            "stats": stats,
        })).collect::<Vec<_>>(),
        "canary": versions.plan().canary.as_ref().map(|canary| json!({
            "version": canary.version,
            "fraction": canary.buckets as f64 / crate::plan::CANARY_BUCKETS as f64,
        })),
    })
}

#[derive(serde::Deserialize)]
struct PromoteRequest {
    version: u64,
}

async fn promote(State(admin): State<Admin>, Json(request): Json<PromoteRequest>) -> Answer {
    promote_version(&admin, request.version).await
}

async fn rollback(State(admin): State<Admin>) -> Answer {
    let Some(versions) = &admin.shared.models else {
        return refused(StatusCode::CONFLICT, "the dataflow has no model");
    };
    let schedule = versions.schedule();
    let before = match schedule.switches.len() {
        0 => {
            return refused(
                StatusCode::CONFLICT,
                "no promotion to roll back: one version scores every row",
            );
        }
        1 => schedule.base,
        switches => schedule.switches[switches - 2].1,
    };
    promote_version(&admin, before).await
}

/// Runs `work` off the async thread (it opens and probes models, and
/// waits for batches in flight) and answers with its JSON, or 409 with
/// the reason it failed.
async fn blocking(work: impl FnOnce() -> Result<Json_> + Send + 'static) -> Answer {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(answer)) => (StatusCode::OK, Json(answer)),
        Ok(Err(error)) => refused(StatusCode::CONFLICT, error.to_string()),
        Err(error) => refused(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

#[derive(serde::Deserialize)]
struct CommitRequest {
    version: u64,
    from_ms: i64,
}

/// The first phase of a cluster's promotion: checks the version, holds
/// scoring, and answers with the newest event time scored and the slowest
/// watermark.
async fn prepare(State(admin): State<Admin>, Json(request): Json<PromoteRequest>) -> Answer {
    let shared = admin.shared.clone();
    let pending = admin.pending.clone();
    blocking(move || {
        let versions = shared
            .models
            .as_ref()
            .ok_or_else(|| Error::Runtime("the dataflow has no model".into()))?;
        let mut pending = pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if pending.is_some() {
            return Err(Error::Runtime(
                "another promotion is prepared; commit or abort it".into(),
            ));
        }
        let prepared = versions.prepare(request.version)?;
        let answer = json!({
            "version": request.version,
            "scored_up_to_ms": prepared.scored_up_to(),
            "watermark_ms": shared.watermarks.slowest(),
        });
        *pending = Some(prepared);
        Ok(answer)
    })
    .await
}

/// The second phase: records the prepared promotion from `from_ms` and
/// lets scoring go on with it.
async fn commit(State(admin): State<Admin>, Json(request): Json<CommitRequest>) -> Answer {
    let pending = admin.pending.clone();
    blocking(move || {
        let prepared = pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .ok_or_else(|| Error::Runtime("no promotion is prepared".into()))?;
        if prepared.version() != request.version {
            return Err(Error::Runtime(format!(
                "the promotion prepared is of version {}, not {}; it is let go",
                prepared.version(),
                request.version
            )));
        }
        Ok(json!(prepared.commit(request.from_ms)?))
    })
    .await
}

/// Lets a prepared promotion go: scoring goes on unchanged.
async fn abort(State(admin): State<Admin>) -> Answer {
    let had = admin
        .pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
        .is_some();
    (StatusCode::OK, Json(json!({ "aborted": had })))
}

/// Promotes `version` off the async thread (it opens and probes the
/// model, and waits for batches in flight).
async fn promote_version(admin: &Admin, version: u64) -> Answer {
    let shared = admin.shared.clone();
    if shared.in_cluster {
        return refused(
            StatusCode::CONFLICT,
            "a cluster's processes are promoted together: name every process's admin API, `tideflow models promote SPEC VERSION --admin HOST:PORT,HOST:PORT,...` (it prepares them all, then commits them all at one event time)",
        );
    }
    blocking(move || {
        let versions = shared
            .models
            .as_ref()
            .ok_or_else(|| Error::Runtime("the dataflow has no model".into()))?;
        Ok(json!(
            versions.promote(version, shared.watermarks.slowest())?
        ))
    })
    .await
}
