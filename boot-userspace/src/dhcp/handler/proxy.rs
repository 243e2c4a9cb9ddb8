//! proxyDHCP and the PXE boot server on port 4011: boot information beside another DHCP
//! server, which hands out the addresses.
use dhcproto::v4::{DhcpOption, MessageType, OptionCode};

use super::{
    reply::{add_boot_information, reply_to},
    Destination, Facts, Handoff, IgnoreReason, Outcome, Port, Reply, Request,
};
use crate::{
    dhcp::boot::{BootTarget, ClientKind},
    machines::Machine,
};

/// proxyDHCP (PXE specification 2.1): no address, only boot information, and only to PXE
/// clients. Firmware sends its DISCOVER to port 67 and, unless option 43 says to skip it, a
/// REQUEST to the boot server on port 4011.
pub(super) fn handle(
    request: &Request,
    facts: &Facts,
    machine: &Machine,
    message_type: MessageType,
) -> Outcome {
    let message = request.message;
    let relay = message.giaddr();
    if !relay.is_unspecified() && machine.netmask.is_some() && !machine.same_subnet(relay) {
        // The reply goes to giaddr, which the sender fills in: where the Hardware gives the
        // machine's subnet, a relay elsewhere is not the machine's. (Relays send from their
        // server-facing address, so the sender's address says nothing about giaddr.)
        return Outcome::Ignore(IgnoreReason::NotOnRelaySubnet);
    }
    let client = ClientKind::of(message);
    if !client.netbooting() {
        return Outcome::Ignore(IgnoreReason::NotPxeClient);
    }
    if !machine.allow_pxe {
        return Outcome::Ignore(IgnoreReason::PxeNotAllowed);
    }
    let reply_type = match (request.port, message_type) {
        (Port::Dhcp, MessageType::Discover) => MessageType::Offer,
        (Port::PxeBootServer, MessageType::Request) => MessageType::Ack,
        _ => return Outcome::Ignore(IgnoreReason::NotProxyExchange),
    };
    let mut reply = reply_to(request, reply_type, facts.boot.server);
    // Echo the client's GUID (option 97), as PXE clients check it.
    if let Some(guid) = message.opts().get(OptionCode::ClientMachineIdentifier) {
        reply.opts_mut().insert(guid.clone());
    }
    let Some(target) = add_boot_information(&mut reply, facts, machine, &client) else {
        return Outcome::Ignore(IgnoreReason::NoBootBinary);
    };
    // BIOS PXE ROMs boot the file at once with discovery control 8 (option 43, sub-option 6).
    // UEFI firmware ignores proxy offers that try to skip discovery, so it gets none and asks
    // the boot server on port 4011 instead (the exchange Pixiecore found works everywhere).
    let bios = matches!(target, BootTarget::Tftp { .. }) && client.arch.unwrap_or(0) == 0;
    if bios && reply_type == MessageType::Offer {
        reply
            .opts_mut()
            .insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    }
    let destination = match request.port {
        Port::PxeBootServer => Destination::Source(request.source),
        _ if !message.giaddr().is_unspecified() => Destination::Relay(message.giaddr()),
        _ => Destination::Broadcast,
    };
    let handoff = Handoff::to(Some(&target));
    Outcome::Reply(Box::new(Reply {
        message: reply,
        destination,
        lease: None,
        handoff,
    }))
}
