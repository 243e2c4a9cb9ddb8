//! BMC power and boot control for Tinkerbell's `bmc.tinkerbell.org` kinds, in layers:
//! - [`provider`]: what a Task needs of a BMC, and errors that say whether retrying can help;
//! - [`ipmi`]: IPMI over LAN through `ipmitool`;
//! - [`redfish`]: Redfish over HTTPS;
//! - [`status`]: the status written for Machines, Jobs and Tasks, in Tinkerbell's shape;
//! - [`controller`]: polls Machines and runs Jobs and Tasks;
//! - [`boot_options`]: carries out Workflows' `bootOptions` with Jobs.
mod boot_options;
pub mod controller;
pub mod ipmi;
pub mod provider;
pub mod redfish;
pub mod status;
