//! The HTTP/JSON API between the daemon and the `wisp` CLI: wire types here, handlers in
//! [`routes`].
pub mod auth;
mod rack;
pub mod routes;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use workflow::{catalog::Binding, resource::ResourceKey, run::WorkflowStatus, store::Applied};

/// The address the daemon listens on and the CLI talks to unless told otherwise.
macro_rules! default_api_address {
    () => {
        "127.0.0.1:7480"
    };
}
pub const DEFAULT_LISTEN: &str = default_api_address!();
pub const DEFAULT_SERVER: &str = concat!("http://", default_api_address!());

#[derive(Debug, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Shown in errors: `hardware.yaml doc 1: ...`.
    pub name: String,
    pub content: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub applied: Vec<Applied>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ResourceView {
    pub key: ResourceKey,
    pub version: u64,
    pub object: Value,
    /// For workflows: whether their template and hardware exist.
    pub binding: Option<Binding>,
    /// For workflows: their run (or, before it starts, its actions, all pending).
    #[serde(default)]
    pub run: Option<WorkflowStatus>,
}

/// A workflow's output (`GET /v1/workflows/NAMESPACE/NAME/output`): the lines its actions
/// printed that Wisp keeps, and how far its running actions are.
#[derive(Debug, Serialize, Deserialize)]
pub struct OutputView {
    pub lines: Vec<crate::action_output::OutputLine>,
    pub progress: std::collections::BTreeMap<u32, crate::action_output::Progress>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DeleteResponse {
    pub key: ResourceKey,
    pub version: u64,
    pub warnings: Vec<String>,
}

/// Every error the API returns, kubectl-style: a reason, a message, and per-field details.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `Invalid`, `NotFound`, `Conflict`, `BadRequest` or `Internal`.
    pub reason: String,
    pub message: String,
    #[serde(default)]
    pub details: Vec<String>,
}
