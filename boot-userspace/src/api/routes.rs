//! The API handlers. Writes go through the catalog (validation, one owner per MAC, one
//! transaction), then the gate's allowlist is brought in line before the reply.
use std::sync::Arc;

use axum::{
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use workflow::{
    catalog::ApplyError,
    manifest::Manifest,
    resource::{Kind, MacAddr, Resource, ResourceKey, WorkflowSpec},
    store::{Lease, StoreError},
};

use super::{
    auth::{require_token, ApiToken},
    ApplyRequest, ApplyResponse, DeleteResponse, ErrorBody, ResourceView,
};
use crate::state::AppState;

/// The largest manifest `wisp apply` may send: room for tens of thousands of Hardware.
const APPLY_BODY_LIMIT: usize = 256 << 20;

/// The API. Every route but `/healthz` needs the token; when the API listens on loopback,
/// `loopback_host` also refuses requests addressed to any other host.
pub fn router(state: Arc<AppState>, token: ApiToken, loopback_host: bool) -> Router {
    let api = Router::new()
        .route("/metrics", get(metrics))
        // A rack's Hardware in one manifest is megabytes of YAML, from whoever holds the token.
        .route(
            "/v1/apply",
            post(apply).layer(DefaultBodyLimit::max(APPLY_BODY_LIMIT)),
        )
        .route("/v1/gate", get(gate_stats))
        .route("/v1/events", get(events))
        .route("/v1/rack", get(super::rack::rows))
        .route("/v1/rack/stream", get(super::rack::stream))
        .route("/v1/session", post(super::rack::session))
        .route("/v1/leases", get(leases))
        .route("/v1/leases/{mac}", axum::routing::delete(delete_lease))
        .route("/v1/workflows/{namespace}/{name}/output", get(output))
        .route("/v1/{kind}", get(list))
        .route("/v1/{kind}/{namespace}/{name}", get(get_one).delete(delete))
        .layer(axum::middleware::from_fn_with_state(token, require_token))
        .with_state(state);
    // Liveness tells nothing, and a health check should not need the secret.
    // The rack page holds no data: it asks the API, with the token it is given.
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(super::rack::page))
        .merge(api);
    if loopback_host {
        router.layer(axum::middleware::from_fn(loopback_host_only))
    } else {
        router
    }
}

/// Refuses a request whose `Host` is not a loopback name or address. A web page that a local
/// browser opens can reach loopback through a name of its own that resolves there (DNS
/// rebinding); its requests then carry that name, and are refused here.
async fn loopback_host_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // HTTP/2 carries the host in the URI's authority, HTTP/1.1 in the Host header.
    let host = request
        .uri()
        .authority()
        .map(|authority| host_name(authority.host()))
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|host| host.to_str().ok())
                .map(host_name)
        });
    match host {
        Some(name) if is_loopback_name(name) => next.run(request).await,
        _ => ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "the API answers requests addressed to a loopback host, not {:?}",
                host.unwrap_or("(no Host)")
            ),
        )
        .into_response(),
    }
}

/// The host of a `Host` header, without its port (`[::1]:7480` → `::1`).
fn host_name(host: &str) -> &str {
    match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(bracketed),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    }
}

fn is_loopback_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

pub struct ApiError(StatusCode, ErrorBody);

impl ApiError {
    fn new(status: StatusCode, reason: &str, message: impl Into<String>) -> Self {
        ApiError(
            status,
            ErrorBody {
                reason: reason.into(),
                message: message.into(),
                details: Vec::new(),
            },
        )
    }

    fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {err}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            err.to_string(),
        )
    }

    fn not_found(key: &ResourceKey) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "{} \"{}\" not found in namespace \"{}\"",
                key.kind.plural(),
                key.name,
                key.namespace
            ),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "Conflict", err.to_string())
            }
            StoreError::Backend { .. } | StoreError::Decode { .. } => ApiError::internal(err),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

pub(super) type ApiResult<T> = Result<Json<T>, ApiError>;

fn parse_kind(text: &str) -> Result<Kind, ApiError> {
    Kind::from_user(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server doesn't have a resource type \"{text}\""),
        )
    })
}

/// Runs blocking store work (redb commits fsync) off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || work(&state))
        .await
        .map_err(ApiError::internal)?
}

async fn apply(
    State(state): State<Arc<AppState>>,
    Json(request): Json<ApplyRequest>,
) -> ApiResult<ApplyResponse> {
    let mut manifest = Manifest::default();
    for file in &request.files {
        manifest.parse(&file.name, &file.content);
    }
    let mut warnings: Vec<String> = manifest.warnings.iter().map(ToString::to_string).collect();
    if !manifest.errors.is_empty() {
        return Err(invalid(
            manifest.errors.iter().map(ToString::to_string).collect(),
        ));
    }
    if manifest.documents.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "no objects passed to apply",
        ));
    }
    let (applied, sync_warning) = blocking(&state, move |state| {
        let report = state
            .catalog()
            .apply(manifest.documents)
            .map_err(|err| match err {
                ApplyError::Invalid(problems) => {
                    invalid(problems.iter().map(ToString::to_string).collect())
                }
                ApplyError::Store(err) => err.into(),
            })?;
        // Every kind feeds the boot state (Hardware the gate and DHCP; Workflows and Templates
        // which machines have pending work). Synced in the same blocking task as the commit, so
        // that a client hanging up cannot leave the gate behind the store.
        Ok((report, sync_after_write(state)))
    })
    .await?;
    warnings.extend(applied.warnings.iter().map(ToString::to_string));
    let applied = applied.applied;
    warnings.extend(sync_warning);
    for entry in &applied {
        tracing::info!(resource = %entry.key, version = entry.version, outcome = ?entry.outcome, "applied");
    }
    Ok(Json(ApplyResponse { applied, warnings }))
}

fn invalid(details: Vec<String>) -> ApiError {
    let message = format!(
        "the manifest is invalid ({} error{}); nothing was applied",
        details.len(),
        if details.len() == 1 { "" } else { "s" }
    );
    ApiError(
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorBody {
            reason: "Invalid".into(),
            message,
            details,
        },
    )
}

#[derive(Deserialize)]
struct ListQuery {
    namespace: Option<String>,
    name: Option<String>,
    /// Secrets' values are shown only when asked for.
    #[serde(default)]
    reveal: bool,
}

#[derive(Deserialize)]
struct RevealQuery {
    #[serde(default)]
    reveal: bool,
}

async fn list(
    State(state): State<Arc<AppState>>,
    Path(kind): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Vec<ResourceView>> {
    let kind = parse_kind(&kind)?;
    let views = blocking(&state, move |state| {
        let resources = state.catalog().store().list(kind)?;
        resources
            .into_iter()
            .filter(|r| {
                query
                    .namespace
                    .as_ref()
                    .is_none_or(|ns| *ns == r.key.namespace)
            })
            .filter(|r| query.name.as_ref().is_none_or(|name| *name == r.key.name))
            .map(|resource| view(state, resource, query.reveal))
            .collect()
    })
    .await?;
    Ok(Json(views))
}

/// `/v1/{kind}/{namespace}/{name}`.
type KeyPath = Path<(String, String, String)>;

fn resource_key(Path((kind, namespace, name)): KeyPath) -> Result<ResourceKey, ApiError> {
    Ok(ResourceKey {
        kind: parse_kind(&kind)?,
        namespace,
        name,
    })
}

async fn get_one(
    State(state): State<Arc<AppState>>,
    path: KeyPath,
    Query(query): Query<RevealQuery>,
) -> ApiResult<ResourceView> {
    let key = resource_key(path)?;
    let found = blocking(&state, move |state| {
        match state.catalog().store().get(&key)? {
            Some(resource) => view(state, resource, query.reveal),
            None => Err(ApiError::not_found(&key)),
        }
    })
    .await?;
    Ok(Json(found))
}

async fn delete(State(state): State<Arc<AppState>>, path: KeyPath) -> ApiResult<DeleteResponse> {
    let key = resource_key(path)?;
    let (removed, sync_warning) =
        blocking(&state, move |state| match state.catalog().delete(&key)? {
            Some(removed) => {
                state.engine.forget(&removed.key);
                let warnings = sync_after_write(state);
                Ok((removed, warnings))
            }
            None => Err(ApiError::not_found(&key)),
        })
        .await?;
    tracing::info!(resource = %removed.key, "deleted");
    Ok(Json(DeleteResponse {
        key: removed.key,
        version: removed.version,
        warnings: sync_warning,
    }))
}

/// Syncs the machine table and the gate's allowlist after a write, and says what the write
/// leaves waiting: a failed sync (the daemon's periodic reconcile retries it), or a reserved
/// address that another MAC still holds.
fn sync_after_write(state: &AppState) -> Vec<String> {
    if let Err(err) = state.sync_hardware() {
        let warning =
            format!("stored, but the gate and the DHCP server could not be updated yet: {err:#}");
        tracing::error!("{warning}");
        return vec![warning];
    }
    match state.lease_conflicts() {
        Ok(conflicts) => conflicts,
        Err(err) => vec![format!(
            "stored, but the leases could not be checked: {err}"
        )],
    }
}

/// A resource as the API shows it: a workflow with its binding and run, a BMC kind with the
/// status Wisp keeps, a Secret with its values redacted unless `reveal`.
fn view(state: &AppState, resource: Resource, reveal: bool) -> Result<ResourceView, ApiError> {
    let mut object = resource.object.clone();
    let (binding, run) = match resource.key.kind {
        Kind::Workflow => {
            let spec: WorkflowSpec = resource.spec().map_err(ApiError::internal)?;
            let run = state.engine.run_or_preview(&resource.key, &spec)?;
            // What its bootOptions did (conditions, jobs), beside the run.
            if let (Some(status), Some(map)) = (
                state.catalog().store().status(&resource.key)?,
                object.as_object_mut(),
            ) {
                map.insert("status".into(), status);
            }
            (Some(state.catalog().binding(&resource)?), run)
        }
        Kind::Machine | Kind::Job | Kind::Task => {
            if let (Some(status), Some(map)) = (
                state.catalog().store().status(&resource.key)?,
                object.as_object_mut(),
            ) {
                map.insert("status".into(), status);
            }
            (None, None)
        }
        Kind::Secret if !reveal => {
            workflow::resource::secret::redact(&mut object);
            (None, None)
        }
        _ => (None, None),
    };
    Ok(ResourceView {
        key: resource.key,
        version: resource.version,
        object,
        binding,
        run,
    })
}

#[derive(serde::Deserialize)]
struct LeasesQuery {
    /// One machine's lease only.
    mac: Option<MacAddr>,
}

async fn leases(
    State(state): State<Arc<AppState>>,
    Query(query): Query<LeasesQuery>,
) -> ApiResult<Vec<Lease>> {
    let mut leases = blocking(&state, |state| Ok(state.leases.leases()?)).await?;
    if let Some(mac) = query.mac {
        leases.retain(|lease| lease.mac == mac);
    }
    Ok(Json(leases))
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    /// A MAC, or the name of a Hardware (`name` or `namespace/name`); every machine's if absent.
    machine: Option<String>,
    /// The last this many events.
    limit: Option<usize>,
}

/// Machines' recent events, oldest first.
async fn events(
    State(state): State<Arc<AppState>>,
    axum::extract::Query(query): axum::extract::Query<EventsQuery>,
) -> ApiResult<Vec<crate::events::Event>> {
    let limit = query.limit.unwrap_or(crate::events::PER_MACHINE);
    let mac = match &query.machine {
        None => None,
        Some(machine) => Some(machine_mac(&state, machine)?),
    };
    Ok(Json(state.events.events(mac, limit)))
}

#[derive(serde::Deserialize)]
struct OutputQuery {
    /// One action's, by index; every action's if absent.
    action: Option<u32>,
    /// Lines from this index on (of each action).
    #[serde(default)]
    after: u64,
}

/// What a workflow's actions printed, and how far its running actions are.
async fn output(
    State(state): State<Arc<AppState>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<OutputQuery>,
) -> ApiResult<super::OutputView> {
    let key = ResourceKey {
        kind: Kind::Workflow,
        namespace,
        name,
    };
    let view = blocking(&state, move |state| {
        if state.catalog().store().get(&key)?.is_none() {
            return Err(ApiError::not_found(&key));
        }
        let workflow = format!("{}/{}", key.namespace, key.name);
        Ok(super::OutputView {
            lines: state.outputs.lines(&workflow, query.action, query.after),
            progress: state.outputs.progress_of(&workflow),
        })
    })
    .await?;
    Ok(Json(view))
}

/// The MAC that `machine` names: a MAC, or a Hardware Wisp serves, by `name` (in any
/// namespace, if only one has it) or `namespace/name`.
fn machine_mac(state: &AppState, machine: &str) -> Result<MacAddr, ApiError> {
    if let Ok(mac) = machine.parse::<MacAddr>() {
        return Ok(mac);
    }
    let table = state.machines.current();
    let named: std::collections::BTreeSet<(String, MacAddr)> = table
        .iter()
        .filter(|m| {
            let key = &m.hardware;
            key.name == machine || format!("{}/{}", key.namespace, key.name) == machine
        })
        .map(|m| {
            (
                format!("{}/{}", m.hardware.namespace, m.hardware.name),
                m.mac,
            )
        })
        .collect();
    let hardware: std::collections::BTreeSet<&String> = named.iter().map(|(key, _)| key).collect();
    match (hardware.len(), named.first()) {
        (1, Some((_, mac))) => Ok(*mac),
        (0, _) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no machine is named {machine:?}: give a MAC, or a Hardware's name"),
        )),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "{machine:?} names Hardware in several namespaces ({}): give namespace/name",
                hardware.into_iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// Deletes a MAC's lease: its address is free for another machine at once. For the lease of a
/// machine whose Hardware is gone, whose RELEASE the gate now drops.
async fn delete_lease(
    State(state): State<Arc<AppState>>,
    Path(mac): Path<String>,
) -> ApiResult<Lease> {
    let mac: MacAddr = mac.parse().map_err(|err| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("{mac:?} is not a MAC address: {err}"),
        )
    })?;
    let removed = blocking(&state, move |state| Ok(state.leases.remove_lease(&mac)?)).await?;
    let Some(lease) = removed else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no lease for {mac}"),
        ));
    };
    state.holders.let_go(mac);
    tracing::info!(client = %mac, address = %lease.address, "lease deleted");
    Ok(Json(lease))
}

async fn gate_stats(State(state): State<Arc<AppState>>) -> ApiResult<crate::gate::GateStats> {
    state.gate.stats().map(Json).map_err(ApiError::internal)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let text = state.metrics.encode().map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_pass() {
        for host in [
            "127.0.0.1:7480",
            "localhost:7480",
            "[::1]:7480",
            "127.0.0.2",
            "LOCALHOST",
        ] {
            assert!(is_loopback_name(host_name(host)), "{host}");
        }
        for host in [
            "evil.example:7480",
            "10.0.0.1:7480",
            "[fe80::1]:7480",
            "localhost.evil.example",
        ] {
            assert!(!is_loopback_name(host_name(host)), "{host}");
        }
    }
}
