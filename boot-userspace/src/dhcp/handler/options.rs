//! Reading options from a request, and the options echoed back byte for byte.
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, OptionCode, UnknownOption};

/// Option 61, the client identifier (echoed, RFC 6842).
const CLIENT_IDENTIFIER: u8 = 61;
/// Option 82, the relay agent information (echoed, RFC 3046).
const RELAY_AGENT_INFORMATION: u8 = 82;

/// Option 50, the address the client asks for.
pub(super) fn requested_address(message: &Message) -> Option<Ipv4Addr> {
    match message.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(requested)) => Some(*requested),
        _ => None,
    }
}

/// Option 54, the server the client chose (or addresses).
pub(super) fn server_identifier(message: &Message) -> Option<Ipv4Addr> {
    match message.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(id)) => Some(*id),
        _ => None,
    }
}

/// Adds the options every reply echoes from the request, as the client's own bytes:
/// re-encoding a parsed option would reorder or drop sub-options, and the RFCs want the
/// client's bytes back.
pub(super) fn echo(payload: &[u8], reply: &mut Message) {
    let echoed = [CLIENT_IDENTIFIER, RELAY_AGENT_INFORMATION]
        .into_iter()
        .filter_map(|code| {
            let raw = raw_option(payload, code)?;
            let option = DhcpOption::Unknown(UnknownOption::new(code.into(), raw.to_vec()));
            Some((OptionCode::from(code), option))
        });
    // Keyed by hand: `insert` keys an unknown option `OptionCode::Unknown(82)`, which dhcproto
    // encodes in order and then again last, where RFC 3046 wants option 82, because it looks
    // it up as `RelayAgentInformation` and its keys compare as numbers. The reply carried
    // option 82 twice (found through dhcrelay). Under its own code it goes last, once.
    let options: Vec<_> = reply
        .opts()
        .iter()
        .map(|(code, option)| (*code, option.clone()))
        .chain(echoed)
        .collect();
    *reply.opts_mut() = options.into_iter().collect();
}

/// The bytes of option `code` in a raw DHCP message, if present (options start after the
/// 236-byte header and the 4-byte magic cookie; 0 is padding, 255 the end).
pub fn raw_option(payload: &[u8], code: u8) -> Option<&[u8]> {
    let mut rest = payload.get(240..)?;
    while let Some((&option, tail)) = rest.split_first() {
        match option {
            0 => rest = tail,
            255 => return None,
            _ => {
                let (&length, tail) = tail.split_first()?;
                let value = tail.get(..usize::from(length))?;
                if option == code {
                    return Some(value);
                }
                rest = &tail[usize::from(length)..];
            }
        }
    }
    None
}
