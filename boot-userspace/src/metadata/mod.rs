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

/// The EC2 API version Tinkerbell's Tootles answers under.
const EC2_VERSION: &str = "2009-04-04";

/// The meta-data keys, as Tootles lists them (`/` marks a directory), with Wisp's `mac`.
const META_DATA_KEYS: &[&str] = &[
    "facility",
    "hostname",
    "instance-id",
    "iqn",
    "local-hostname",
    "local-ipv4",
    "mac",
    "operating-system/",
    "plan",
    "public-ipv4",
    "public-ipv6",
    "public-keys",
    "tags",
];

const OPERATING_SYSTEM_KEYS: &[&str] = &[
    "distro",
    "image_tag",
    "license_activation/",
    "slug",
    "version",
];

pub struct Metadata {
    pub state: Arc<AppState>,
}

pub fn router(metadata: Arc<Metadata>) -> Router {
    let root = format!("/{EC2_VERSION}");
    let meta = format!("{root}/meta-data");
    let os = format!("{meta}/operating-system");
    let listing = |entries: &'static [&'static str]| move || async move { entries.join("\n") };
    let mut router = Router::new().route("/metadata", get(document));
    // Tootles answers each path with and without a trailing slash; listings need no caller.
    for (path, entries) in [
        (root.clone(), &["meta-data/", "user-data"][..]),
        (meta.clone(), META_DATA_KEYS),
        (os.clone(), OPERATING_SYSTEM_KEYS),
        (format!("{os}/license_activation"), &["state"][..]),
    ] {
        router = router
            .route(&path, get(listing(entries)))
            .route(&format!("{path}/"), get(listing(entries)));
    }
    router
        .route(&format!("{meta}/{{key}}"), get(meta_data))
        .route(&format!("{os}/{{key}}"), get(operating_system))
        .route(
            &format!("{os}/license_activation/state"),
            get(license_state),
        )
        .route(&format!("{root}/user-data"), get(user_data))
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

/// `/metadata` as Tootles serves it: the Hardware's storage layout under
/// `metadata.instance.storage`, every field present (Go's zero values), and nothing else.
async fn document(caller: Caller) -> Response {
    let storage = caller
        .spec
        .metadata
        .as_ref()
        .and_then(|metadata| metadata.pointer("/instance/storage"));
    let text = |value: Option<&Value>| {
        value
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let number = |value: Option<&Value>| value.and_then(Value::as_i64).unwrap_or_default();
    let list = |key: &str| storage.and_then(|s| s.get(key)).and_then(Value::as_array);
    let disks =
        list("disks").map(|disks| {
            disks
            .iter()
            .map(|disk| {
                let partitions = disk.get("partitions").and_then(Value::as_array).map(|parts| {
                    parts
                        .iter()
                        .map(|part| {
                            serde_json::json!({
                                "label": text(part.get("label")),
                                "number": number(part.get("number")),
                                "size": number(part.get("size")),
                            })
                        })
                        .collect::<Vec<_>>()
                });
                serde_json::json!({
                    "device": text(disk.get("device")),
                    "partitions": partitions,
                    "wipe_table": disk.get("wipe_table").and_then(Value::as_bool).unwrap_or(false),
                })
            })
            .collect::<Vec<_>>()
        });
    let filesystems = list("filesystems").map(|filesystems| {
        filesystems
            .iter()
            .map(|filesystem| {
                let mount = filesystem.get("mount");
                let field = |key: &str| mount.and_then(|m| m.get(key));
                serde_json::json!({"mount": {
                    "create": {"options": field("create").and_then(|c| c.get("options")).cloned()},
                    "device": text(field("device")),
                    "format": text(field("format")),
                    "point": text(field("point")),
                }})
            })
            .collect::<Vec<_>>()
    });
    Json(serde_json::json!({
        "metadata": {"instance": {"storage": {"disks": disks, "filesystems": filesystems}}}
    }))
    .into_response()
}

async fn meta_data(caller: Caller, Path(key): Path<String>) -> Response {
    match meta_data_value(&caller, &key) {
        Some(value) => value.into_response(),
        None => refuse(StatusCode::NOT_FOUND, format!("no meta-data {key:?}")),
    }
}

async fn operating_system(caller: Caller, Path(key): Path<String>) -> Response {
    if !["slug", "distro", "version", "image_tag"].contains(&key.as_str()) {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no operating-system {key:?}"),
        );
    }
    instance_text(&caller, &format!("/operating_system/{key}")).into_response()
}

/// Tootles never fills it in.
async fn license_state(_caller: Caller) -> Response {
    "".into_response()
}

/// `spec.userData`, empty when there is none, as Tootles serves it.
async fn user_data(caller: Caller) -> Response {
    caller.spec.user_data.unwrap_or_default().into_response()
}

/// A text field of `metadata.instance`, at a JSON pointer below it; empty when absent.
fn instance_text(caller: &Caller, pointer: &str) -> String {
    caller
        .spec
        .metadata
        .as_ref()
        .and_then(|metadata| metadata.pointer(&format!("/instance{pointer}")))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The meta-data values, as Tootles takes them from the Hardware. Where Tootles leaves one
/// empty and Wisp knows it, Wisp gives it: the hostname from DHCP, the instance id from the
/// Hardware's name (cloud-init needs one), the local address from the reservation, the SSH
/// keys (`metadata.instance.ssh_keys`, which Tootles never maps).
fn meta_data_value(caller: &Caller, key: &str) -> Option<String> {
    let metadata = caller.spec.metadata.as_ref();
    let field = |pointer: &str| {
        metadata
            .and_then(|m| m.pointer(pointer))
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
            .map(str::to_string)
    };
    let strings = |pointer: &str| {
        metadata
            .and_then(|m| m.pointer(pointer))
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    // `metadata.instance.ips`: the first of a family, public or not.
    let address = |family: i64, public: Option<bool>| {
        metadata
            .and_then(|m| m.pointer("/instance/ips"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|ip| {
                ip.get("family").and_then(Value::as_i64) == Some(family)
                    && public.is_none_or(|public| {
                        ip.get("public").and_then(Value::as_bool).unwrap_or(false) == public
                    })
            })
            .and_then(|ip| ip.get("address").and_then(Value::as_str))
            .map(str::to_string)
    };
    let machine = &caller.machine;
    Some(match key {
        "hostname" | "local-hostname" => field("/instance/hostname")
            .or_else(|| machine.hostname.clone())
            .unwrap_or_default(),
        "instance-id" => field("/instance/id").unwrap_or_else(|| machine.hardware.name.clone()),
        "iqn" => String::new(),
        "plan" => field("/facility/plan_slug").unwrap_or_default(),
        "facility" => field("/facility/facility_code").unwrap_or_default(),
        "tags" => strings("/instance/tags"),
        "public-keys" => strings("/instance/ssh_keys"),
        "public-ipv4" => address(4, Some(true)).unwrap_or_default(),
        "public-ipv6" => address(6, None).unwrap_or_default(),
        "local-ipv4" => address(4, Some(false))
            .or_else(|| machine.address.map(|a| a.to_string()))
            .unwrap_or_default(),
        "mac" => machine.mac.to_string(),
        _ => return None,
    })
}
