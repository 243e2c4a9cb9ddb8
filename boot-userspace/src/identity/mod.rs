//! Who is calling: a machine is identified by its source address (the address its Hardware
//! reserves) and by a per-machine token that its iPXE script puts on the kernel command line
//! (`wisp.token=`). Both the metadata service and the worker API ask this module, so one
//! machine can never read another's metadata or run or report another's actions.
pub mod token;

use std::{net::IpAddr, sync::Arc};

pub use token::MachineTokens;

use crate::machines::{Machine, MachineTable};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the token is not valid")]
    InvalidToken,
    #[error("the token does not belong to the machine at this address")]
    TokenMismatch,
    #[error("no machine at {0}")]
    Unknown(IpAddr),
}

/// Identifies the caller by token and by source address. When both name a machine they must
/// name the same Hardware (any of its interfaces).
pub fn identify(
    machines: &MachineTable,
    tokens: &MachineTokens,
    source: IpAddr,
    token: Option<&str>,
) -> Result<Arc<Machine>, Refusal> {
    let by_token = match token {
        Some(token) => Some(tokens.verify(token).ok_or(Refusal::InvalidToken)?),
        None => None,
    };
    let by_token = by_token.and_then(|mac| machines.get(&mac));
    let by_address = match source {
        IpAddr::V4(source) => machines.by_address(source),
        IpAddr::V6(source) => source
            .to_ipv4_mapped()
            .and_then(|source| machines.by_address(source)),
    };
    match (by_token, by_address) {
        (Some(token), Some(address)) if token.hardware != address.hardware => {
            Err(Refusal::TokenMismatch)
        }
        (Some(machine), _) | (None, Some(machine)) => Ok(Arc::clone(machine)),
        (None, None) => Err(Refusal::Unknown(source)),
    }
}
