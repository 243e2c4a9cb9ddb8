//! The Wisp appliance. One layer a module:
//!
//! - [`state`]: what every service shares: the engine and its catalog, the machine table, the
//!   gate, the leases and the metrics;
//! - [`machines`]: the machine table, the boot path's one view of the Hardware;
//! - [`boot_files`]: the iPXE binaries, loaded once, for TFTP, boot HTTP and DHCP;
//! - [`gate`]: the XDP DHCP gate (loader, allowlist sync, counters) and its userspace fallback;
//! - [`dhcp`]: the DHCP receive path on ports 67 and 4011, behind the gate;
//! - [`tftp`]: the read-only TFTP server for the iPXE binaries;
//! - [`ndp`]: IPv6 router solicitations from owned machines, answered so that iPXE stops
//!   waiting for IPv6 autoconfiguration;
//! - [`http`]: the boot HTTP server: iPXE scripts, iPXE binaries and boot assets;
//! - [`metadata`]: the metadata service (EC2 paths, `/metadata`), on the boot HTTP server;
//! - [`worker_api`]: the gRPC worker API (Tinkerbell's `WorkflowService`) over the workflow engine,
//!   and Wisp's `ActionOutput` beside it;
//! - [`events`], [`action_output`]: each machine's events and each action's output, kept in
//!   bounded [`journal`]s;
//! - [`identity`]: which machine is calling, by address and token;
//! - [`api`]: the HTTP/JSON API the `wisp` CLI talks to, and its wire types;
//! - [`metrics`]: Prometheus metrics;
//! - [`config`]: `wisp serve`'s settings, from flags, `WISP_*` variables and a TOML file;
//! - [`daemon`]: `wisp serve`, which wires them together.
pub mod action_output;
pub mod api;
pub mod bmc;
pub mod boot_files;
pub mod config;
pub mod daemon;
pub mod dhcp;
pub mod events;
pub mod gate;
pub mod http;
pub mod identity;
pub mod journal;
pub mod log_budget;
pub mod machines;
pub mod metadata;
pub mod metrics;
pub mod ndp;
pub mod net;
pub mod rack;
pub mod state;
pub mod tftp;
pub mod worker_api;
