//! Wisp's resources and their storage.
//!
//! - [`resource`]: Hardware, Template and Workflow, in Tinkerbell's `tinkerbell.org/v1alpha1`
//!   shape, so that Tinkerbell users' YAML applies unchanged.
//! - [`manifest`]: multi-document YAML in, validated resources out, with errors that name the
//!   file, document, field path and problem.
//! - [`store`]: the crash-safe store behind a trait (redb embedded; etcd can follow).
//! - [`catalog`]: the rules that span resources (one owner per MAC, workflow bindings);
//! - [`template`]: rendering Tinkerbell's Go templates for a machine.
//! - [`run`]: a workflow's run: its plan and each action's status, as pure data and rules.
//! - [`engine`]: the workflow engine: which action runs next, reports, timeouts.
pub mod catalog;
pub mod engine;
pub mod manifest;
pub mod resource;
pub mod run;
pub mod store;
pub mod template;
