//! Wisp's resources and their storage.
//!
//! - [`resource`]: Hardware, Template and Workflow, in Tinkerbell's `tinkerbell.org/v1alpha1`
//!   shape, so that Tinkerbell users' YAML applies unchanged.
//! - [`manifest`]: multi-document YAML in, validated resources out, with errors that name the
//!   file, document, field path and problem.
//! - [`store`]: the crash-safe store behind a trait (redb embedded; etcd can follow).
//! - [`catalog`]: the rules that span resources (one owner per MAC, workflow bindings);
//! - [`template`]: rendering Tinkerbell's Go templates for a machine.
//! - [`agent`]: the worker agent of the provisioning OS (`wisp-worker`) and its native actions.
//! - [`engine`]: the workflow state machine: which action runs next, reports, timeouts.
pub mod agent;
pub mod catalog;
pub mod engine;
pub mod manifest;
/// Tinkerbell's worker API (`proto.WorkflowService`), generated from `proto/`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("proto");
}
pub mod resource;
pub mod store;
pub mod template;
