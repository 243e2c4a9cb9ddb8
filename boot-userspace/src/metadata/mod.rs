//! The metadata service, for cloud-init and the worker: EC2-style paths as Hegel serves them
//! (`/2009-04-04/meta-data/...`, `/2009-04-04/user-data`) and a `/metadata` JSON document.
//!
//! Callers are identified by [`crate::identity`]: by source address and by token.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, FromRequestParts, Path, Query},
    http::request::Parts,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use serde_json::Value;
use workflow::resource::HardwareSpec;

use crate::{
    identity::{self, Refusal},
    machines::Machine,
    state::AppState,
};

/// The EC2 API version Hegel answers under.
const EC2_VERSION: &str = "2009-04-04";

/// The meta-data keys served, in the order `/meta-data/` lists them.
const META_DATA_KEYS: &[&str] = &[
    "hostname",
    "instance-id",
    "local-hostname",
    "local-ipv4",
    "mac",
];

pub struct Metadata {
    pub state: Arc<AppState>,
}

pub fn router(metadata: Arc<Metadata>) -> Router {
    Router::new()
        .route("/metadata", get(document))
        .route(&format!("/{EC2_VERSION}/meta-data/"), get(meta_data_index))
        .route(&format!("/{EC2_VERSION}/meta-data/{{key}}"), get(meta_data))
        .route(&format!("/{EC2_VERSION}/user-data"), get(user_data))
        .with_state(metadata)
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Who is asking, and their Hardware.
struct Caller {
    machine: Arc<Machine>,
    spec: HardwareSpec,
}

fn refuse(status: StatusCode, reason: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        reason + "\n",
    )
        .into_response()
}

impl Metadata {
    /// Identifies the caller by token (`Authorization: Bearer`, `X-Wisp-Token` or `?token=`) and
    /// by source address. When both name a machine they must name the same one.
    async fn caller(
        &self,
        source: SocketAddr,
        headers: &HeaderMap,
        query: &TokenQuery,
    ) -> Result<Caller, Response> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .or_else(|| {
                headers
                    .get("x-wisp-token")
                    .and_then(|value| value.to_str().ok())
            })
            .or(query.token.as_deref());
        let machine = identity::identify(
            &self.state.machines.current(),
            &self.state.tokens,
            self.state.machine_identity,
            source.ip(),
            presented,
        )
        .map_err(|refusal| {
            let status = match refusal {
                Refusal::Unknown(_) => StatusCode::NOT_FOUND,
                Refusal::TokenRequired => StatusCode::UNAUTHORIZED,
                _ => StatusCode::FORBIDDEN,
            };
            refuse(status, refusal.to_string())
        })?;
        let state = Arc::clone(&self.state);
        let key = machine.hardware.clone();
        let stored = tokio::task::spawn_blocking(move || state.catalog().store().get(&key))
            .await
            .map_err(|err| refuse(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?
            .map_err(|err| refuse(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?
            .ok_or_else(|| {
                refuse(
                    StatusCode::NOT_FOUND,
                    format!("{} is gone", machine.hardware),
                )
            })?;
        let spec = stored
            .spec()
            .map_err(|err| refuse(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?;
        Ok(Caller { machine, spec })
    }
}

/// Handlers take a `Caller`: identification (or its refusal) happens before they run.
impl FromRequestParts<Arc<Metadata>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        metadata: &Arc<Metadata>,
    ) -> Result<Caller, Response> {
        let ConnectInfo(source) = ConnectInfo::<SocketAddr>::from_request_parts(parts, metadata)
            .await
            .map_err(IntoResponse::into_response)?;
        let Query(query) = Query::<TokenQuery>::from_request_parts(parts, metadata)
            .await
            .map_err(IntoResponse::into_response)?;
        metadata.caller(source, &parts.headers, &query).await
    }
}

/// The Hardware's `spec.metadata`, as Tinkerbell's Hegel serves it at `/metadata`.
async fn document(caller: Caller) -> Response {
    Json(
        caller
            .spec
            .metadata
            .unwrap_or_else(|| Value::Object(Default::default())),
    )
    .into_response()
}

async fn meta_data_index(caller: Caller) -> Response {
    let keys: Vec<&str> = META_DATA_KEYS
        .iter()
        .copied()
        .filter(|key| meta_data_value(&caller, key).is_some())
        .collect();
    (keys.join("\n") + "\n").into_response()
}

async fn meta_data(caller: Caller, Path(key): Path<String>) -> Response {
    match meta_data_value(&caller, &key) {
        Some(value) => value.into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            format!("no meta-data {key:?} for this machine"),
        ),
    }
}

async fn user_data(caller: Caller) -> Response {
    match caller.spec.user_data {
        Some(user_data) => user_data.into_response(),
        None => refuse(StatusCode::NOT_FOUND, "this machine has no userData".into()),
    }
}

fn meta_data_value(caller: &Caller, key: &str) -> Option<String> {
    let instance = caller
        .spec
        .metadata
        .as_ref()
        .and_then(|m| m.get("instance"));
    let instance_field = |field: &str| {
        instance
            .and_then(|i| i.get(field))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let machine = &caller.machine;
    let hostname = || instance_field("hostname").or_else(|| machine.hostname.clone());
    match key {
        "hostname" | "local-hostname" => hostname(),
        "instance-id" => instance_field("id").or_else(|| Some(machine.hardware.name.clone())),
        "local-ipv4" => machine.address.map(|a| a.to_string()),
        "mac" => Some(machine.mac.to_string()),
        _ => None,
    }
}
