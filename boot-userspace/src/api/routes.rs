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
    resource::{Kind, Resource, ResourceKey, WorkflowSpec},
    store::{Lease, StoreError},
};

use super::{ApplyRequest, ApplyResponse, DeleteResponse, ErrorBody, ResourceView};
use crate::state::AppState;

/// The largest manifest `wisp apply` may send: room for tens of thousands of Hardware.
const APPLY_BODY_LIMIT: usize = 256 << 20;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        // A rack's Hardware in one manifest is megabytes of YAML; the API is loopback-only.
        .route(
            "/v1/apply",
            post(apply).layer(DefaultBodyLimit::max(APPLY_BODY_LIMIT)),
        )
        .route("/v1/gate", get(gate_stats))
        .route("/v1/leases", get(leases))
        .route("/v1/{kind}", get(list))
        .route("/v1/{kind}/{namespace}/{name}", get(get_one).delete(delete))
        .with_state(state)
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

type ApiResult<T> = Result<Json<T>, ApiError>;

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
async fn blocking<T: Send + 'static>(
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
        let applied = state
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
        Ok((applied, hardware_sync_warning(state)))
    })
    .await?;
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
            .map(|resource| view(state, resource))
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

async fn get_one(State(state): State<Arc<AppState>>, path: KeyPath) -> ApiResult<ResourceView> {
    let key = resource_key(path)?;
    let found = blocking(&state, move |state| {
        match state.catalog().store().get(&key)? {
            Some(resource) => view(state, resource),
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
                let warning = hardware_sync_warning(state);
                Ok((removed, warning))
            }
            None => Err(ApiError::not_found(&key)),
        })
        .await?;
    tracing::info!(resource = %removed.key, "deleted");
    Ok(Json(DeleteResponse {
        key: removed.key,
        version: removed.version,
        warnings: sync_warning.into_iter().collect(),
    }))
}

/// Syncs the gate's allowlist and the DHCP reservations after a write; a failure is reported,
/// and the daemon's periodic reconcile retries it.
fn hardware_sync_warning(state: &AppState) -> Option<String> {
    let err = state.sync_hardware().err()?;
    let warning =
        format!("stored, but the gate and the DHCP server could not be updated yet: {err:#}");
    tracing::error!("{warning}");
    Some(warning)
}

fn view(state: &AppState, resource: Resource) -> Result<ResourceView, ApiError> {
    let (binding, run) = match resource.key.kind {
        Kind::Workflow => {
            let spec: WorkflowSpec = resource.spec().map_err(ApiError::internal)?;
            let run = state.engine.run_or_preview(&resource.key, &spec)?;
            (Some(state.catalog().binding(&resource)?), run)
        }
        _ => (None, None),
    };
    Ok(ResourceView {
        key: resource.key,
        version: resource.version,
        object: resource.object,
        binding,
        run,
    })
}

async fn leases(State(state): State<Arc<AppState>>) -> ApiResult<Vec<Lease>> {
    let leases = blocking(&state, |state| Ok(state.leases.leases()?)).await?;
    Ok(Json(leases))
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
