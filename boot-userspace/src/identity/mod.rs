//! Who is calling: a machine is identified by its per-boot token (`identity::token`), which its
//! iPXE script puts on the kernel command line (`wisp.token=`), and by its source address (the
//! address its Hardware reserves). Both the metadata service and the worker API ask this module,
//! so one machine can never read another's metadata or run or report another's actions.
pub mod token;

use std::{net::IpAddr, sync::Arc, time::SystemTime};

pub use token::MachineTokens;
use workflow::{resource::MacAddr, store::Boot};

use crate::machines::{Machine, MachineTable};

/// What identifies a machine to the worker API and the metadata service.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum MachineIdentity {
    /// The token of the machine's current boot, from its reserved address (from anywhere when
    /// its Hardware reserves none). A host that takes a machine's address gets nothing without
    /// it, and a token is no use from another address.
    Token,
    /// Its reserved address alone, as Tinkerbell's Hegel and tink-server trust it: for
    /// Tinkerbell's own agent, and for cloud-init reading metadata after the install. A token,
    /// when one is shown, must still be good.
    Address,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the token is not valid")]
    InvalidToken,
    #[error("the token has expired")]
    ExpiredToken,
    #[error("the token is from an earlier boot of this machine: it booted again since")]
    EarlierBoot,
    /// The token is good but its boot (the second field) ended: the machine has no more work.
    #[error("the token's boot has ended: the machine's workflow is over")]
    EndedBoot(MacAddr, Boot),
    #[error("the token does not belong to the machine at this address")]
    TokenMismatch,
    #[error("a token is required: the machine's iPXE script puts it on the kernel command line (wisp.token=)")]
    TokenRequired,
    #[error("no machine at {0}")]
    Unknown(IpAddr),
}

impl Refusal {
    /// Whether the caller showed no (good) credentials, as opposed to credentials for the
    /// wrong machine.
    pub fn unauthenticated(&self) -> bool {
        !matches!(self, Refusal::TokenMismatch | Refusal::Unknown(_))
    }
}

/// Identifies the caller by token and by source address. When both name a machine they must
/// name the same Hardware (any of its interfaces).
pub fn identify(
    machines: &MachineTable,
    tokens: &MachineTokens,
    policy: MachineIdentity,
    source: IpAddr,
    token: Option<&str>,
) -> Result<Arc<Machine>, Refusal> {
    let caller = source;
    let by_token = match token {
        Some(token) => Some(tokens.verify(token, SystemTime::now())?),
        None if policy == MachineIdentity::Token => return Err(Refusal::TokenRequired),
        None => None,
    };
    let by_token = by_token.and_then(|mac| machines.get(&mac));
    let source = match source {
        IpAddr::V4(source) => Some(source),
        IpAddr::V6(source) => source.to_ipv4_mapped(),
    };
    // The reserved address; without one, the address the machine's current boot fetched its
    // script from (its own DHCP's, another server's in proxy mode).
    let by_address = source.and_then(|source| {
        machines.by_address(source).or_else(|| {
            tokens
                .machine_at(source)
                .and_then(|mac| machines.get(&mac))
                .filter(|machine| machine.address.is_none())
        })
    });
    match (by_token, by_address) {
        (Some(token), Some(address)) if token.hardware != address.hardware => {
            Err(Refusal::TokenMismatch)
        }
        // A machine whose Hardware reserves an address calls from it: a token that leaked is no
        // use from anywhere else.
        (Some(token), None) if token.address.is_some() => Err(Refusal::TokenMismatch),
        (Some(machine), _) | (None, Some(machine)) => Ok(Arc::clone(machine)),
        (None, None) => Err(Refusal::Unknown(caller)),
    }
}
