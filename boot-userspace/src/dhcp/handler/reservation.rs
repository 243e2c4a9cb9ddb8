//! Reservation mode: Wisp hands each machine it owns its reserved address (RFC 2131), one
//! function per message type a server receives.
use std::net::Ipv4Addr;

use dhcproto::v4::{MessageType, OptionCode};
use workflow::{resource::MacAddr, store::Lease};

use super::{
    options::{requested_address, server_identifier},
    reply::{destination, lease_reply, nak},
    Destination, Facts, IgnoreReason, Outcome, Port, Request,
};
use crate::machines::Machine;

/// What every message type's answer is about: the client, its machine and its address.
struct Client<'a> {
    request: &'a Request<'a>,
    facts: &'a Facts<'a>,
    machine: &'a Machine,
    mac: MacAddr,
    address: Ipv4Addr,
}

pub(super) fn handle(
    request: &Request,
    facts: &Facts,
    machine: &Machine,
    mac: MacAddr,
    message_type: MessageType,
) -> Outcome {
    if request.port != Port::Dhcp {
        return Outcome::Ignore(IgnoreReason::WrongPort);
    }
    let Some(address) = machine.address else {
        return Outcome::Ignore(IgnoreReason::NoReservedAddress);
    };
    if facts.declined && matches!(message_type, MessageType::Discover | MessageType::Request) {
        // RFC 2131 3.1: after a DECLINE the address must not be offered again at once, or the
        // client loops DISCOVER/DECLINE while the conflict lasts.
        return Outcome::Ignore(IgnoreReason::DeclinedRecently);
    }
    if facts.address_held_by_another
        && matches!(message_type, MessageType::Discover | MessageType::Request)
    {
        // Two machines on one address is the failure DHCP exists to prevent: the address
        // waits until the other MAC's lease ends or is released.
        return Outcome::Ignore(IgnoreReason::AddressLeasedToAnother);
    }
    let relay = request.message.giaddr();
    // A relayed request comes from the relay's subnet; a reservation elsewhere is not for it.
    if !relay.is_unspecified() && !machine.same_subnet(relay) {
        return Outcome::Ignore(IgnoreReason::NotOnRelaySubnet);
    }
    let client = Client {
        request,
        facts,
        machine,
        mac,
        address,
    };
    match message_type {
        MessageType::Discover => on_discover(&client),
        MessageType::Request => on_request(&client),
        MessageType::Decline => on_decline(&client),
        MessageType::Release => on_release(&client),
        MessageType::Inform => on_inform(&client),
        _ => Outcome::Ignore(IgnoreReason::ServerMessageType),
    }
}

fn on_discover(client: &Client) -> Outcome {
    let mut offer = lease_reply(
        client.request,
        client.facts,
        client.machine,
        MessageType::Offer,
        client.address,
    );
    offer.destination = destination(client.request.message, client.address, client.mac);
    Outcome::Reply(Box::new(offer))
}

fn on_request(client: &Client) -> Outcome {
    let message = client.request.message;
    let server = client.facts.boot.server;
    let ciaddr = message.ciaddr();
    // RFC 2131 4.3.2: which state the client is in follows from what it filled in.
    let (asked_for, state) = match (server_identifier(message), requested_address(message)) {
        (Some(id), _) if id != server => return Outcome::Ignore(IgnoreReason::OtherServerChosen),
        (Some(_), Some(requested)) => (requested, "selecting"),
        (Some(_), None) => return Outcome::Ignore(IgnoreReason::SelectingWithoutAddress),
        (None, Some(requested)) => (requested, "init-reboot"),
        (None, None) if !ciaddr.is_unspecified() => (ciaddr, "renewing/rebinding"),
        (None, None) => return Outcome::Ignore(IgnoreReason::RequestWithoutAddress),
    };
    if asked_for != client.address {
        tracing::info!(client = %client.mac, %asked_for, reserved = %client.address, state, "NAK: not the reserved address");
        return Outcome::Reply(Box::new(nak(client.request, server)));
    }
    let mut ack = lease_reply(
        client.request,
        client.facts,
        client.machine,
        MessageType::Ack,
        client.address,
    );
    ack.destination = destination(message, client.address, client.mac);
    ack.lease = Some(Lease {
        mac: client.mac,
        address: client.address,
        expires_unix: client.facts.now + u64::from(client.machine.lease_secs),
        hostname: client.machine.hostname.clone(),
    });
    Outcome::Reply(Box::new(ack))
}

fn on_decline(client: &Client) -> Outcome {
    let message = client.request.message;
    let server = client.facts.boot.server;
    match requested_address(message) {
        Some(declined)
            if declined == client.address
                && server_identifier(message).is_none_or(|id| id == server) =>
        {
            Outcome::Decline {
                mac: client.mac,
                address: client.address,
            }
        }
        _ => Outcome::Ignore(IgnoreReason::DeclineOfOtherAddress),
    }
}

fn on_release(client: &Client) -> Outcome {
    match server_identifier(client.request.message) {
        Some(id) if id != client.facts.boot.server => {
            Outcome::Ignore(IgnoreReason::ReleaseForOtherServer)
        }
        _ => Outcome::Release(client.mac),
    }
}

/// The client has an address already: configuration only, no lease (RFC 2131 3.4).
fn on_inform(client: &Client) -> Outcome {
    let message = client.request.message;
    let ciaddr = message.ciaddr();
    if !ciaddr.is_unspecified() && ciaddr != client.address {
        // The ACK goes to ciaddr: only the machine's own address is one to send it to.
        return Outcome::Ignore(IgnoreReason::NotTheReservedAddress);
    }
    let mut ack = lease_reply(
        client.request,
        client.facts,
        client.machine,
        MessageType::Ack,
        Ipv4Addr::UNSPECIFIED,
    );
    let opts = ack.message.opts_mut();
    opts.remove(OptionCode::AddressLeaseTime);
    opts.remove(OptionCode::Renewal);
    opts.remove(OptionCode::Rebinding);
    let relay = message.giaddr();
    ack.destination = if !relay.is_unspecified() {
        Destination::Relay(relay)
    } else if message.ciaddr().is_unspecified() {
        Destination::Broadcast
    } else {
        Destination::Client(message.ciaddr())
    };
    Outcome::Reply(Box::new(ack))
}
