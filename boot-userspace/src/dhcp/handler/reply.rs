//! Building replies: the fields every reply shares, NAKs, OFFERs and ACKs with a machine's
//! configuration, and the boot information for netbooting clients.
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode};
use workflow::resource::MacAddr;

use super::{options::echo, Destination, Facts, Handoff, Mode, Reply, Request};
use crate::{
    dhcp::boot::{BootTarget, ClientKind},
    machines::Machine,
};

/// The sub-option of option 43 that carries the VLAN id, as Tinkerbell's iPXE reads it.
const VLAN_SUBOPTION: u8 = 116;

/// RFC 2131 4.1: relay first, then a configured client, then the broadcast bit, then unicast
/// to the address being assigned. ciaddr counts only when it is that address: anyone can fill
/// in ciaddr, and a reply unicast to whatever it says would be aimed at a host of the sender's
/// choosing.
pub(super) fn destination(message: &Message, yiaddr: Ipv4Addr, mac: MacAddr) -> Destination {
    if !message.giaddr().is_unspecified() {
        Destination::Relay(message.giaddr())
    } else if !message.ciaddr().is_unspecified() && message.ciaddr() == yiaddr {
        Destination::Client(message.ciaddr())
    } else if message.flags().broadcast() {
        Destination::Broadcast
    } else {
        Destination::Unicast {
            address: yiaddr,
            mac,
        }
    }
}

/// The fields every reply shares: the request's xid, flags, giaddr and chaddr, our server id,
/// and the options echoed from the request (61 and 82).
pub(super) fn reply_to(request: &Request, message_type: MessageType, server: Ipv4Addr) -> Message {
    let message = request.message;
    let mut reply = Message::new_with_id(
        message.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        message.giaddr(),
        message.chaddr(),
    );
    reply
        .set_opcode(Opcode::BootReply)
        .set_flags(message.flags());
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(message_type));
    opts.insert(DhcpOption::ServerIdentifier(server));
    echo(request.payload, &mut reply);
    reply
}

pub(super) fn nak(request: &Request, server: Ipv4Addr) -> Reply {
    let message = request.message;
    let mut nak = reply_to(request, MessageType::Nak, server);
    // A NAK goes to the relay with the broadcast bit set, or is broadcast (RFC 2131 4.1).
    nak.set_flags(Flags::default().set_broadcast());
    let destination = match message.giaddr().is_unspecified() {
        true => Destination::Broadcast,
        false => Destination::Relay(message.giaddr()),
    };
    Reply {
        message: nak,
        destination,
        lease: None,
        handoff: Handoff::None,
    }
}

/// An OFFER or ACK carrying the reservation and, for netbooting clients, boot information.
pub(super) fn lease_reply(
    request: &Request,
    facts: &Facts,
    machine: &Machine,
    message_type: MessageType,
    address: Ipv4Addr,
) -> Reply {
    let message = request.message;
    let mut reply = reply_to(request, message_type, facts.boot.server);
    reply.set_yiaddr(address);
    if message_type == MessageType::Ack && !message.ciaddr().is_unspecified() {
        reply.set_ciaddr(message.ciaddr());
    }
    let lease = machine.lease_secs;
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::AddressLeaseTime(lease));
    // T1 at half the lease, T2 at seven eighths (RFC 2131 4.4.5).
    opts.insert(DhcpOption::Renewal(lease / 2));
    opts.insert(DhcpOption::Rebinding((u64::from(lease) * 7 / 8) as u32));
    if let Some(mask) = machine.netmask {
        opts.insert(DhcpOption::SubnetMask(mask));
    }
    if let Some(gateway) = machine.gateway {
        opts.insert(DhcpOption::Router(vec![gateway]));
    }
    if !machine.name_servers.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(machine.name_servers.clone()));
    }
    if !machine.time_servers.is_empty() {
        opts.insert(DhcpOption::NtpServers(machine.time_servers.clone()));
    }
    if let Some(hostname) = &machine.hostname {
        opts.insert(DhcpOption::Hostname(hostname.clone()));
    }
    if let (Some(address), Some(mask)) = (machine.address, machine.netmask) {
        opts.insert(DhcpOption::BroadcastAddr(Ipv4Addr::from(
            u32::from(address) | !u32::from(mask),
        )));
    }
    if let Some(domain) = &machine.domain {
        opts.insert(DhcpOption::DomainName(domain.clone()));
        // Smee's search list is the domain itself (RFC 3397).
        if let Ok(name) = dhcproto::Name::from_ascii(domain) {
            opts.insert(DhcpOption::DomainSearch(vec![name]));
        }
    }
    if !machine.routes.is_empty() {
        // RFC 3442; the routes were checked when the Hardware was applied.
        let routes = machine
            .routes
            .iter()
            .filter_map(|(network, prefix, router)| {
                Some((ipnet::Ipv4Net::new(*network, *prefix).ok()?, *router))
            })
            .collect();
        opts.insert(DhcpOption::ClasslessStaticRoute(routes));
    }
    if let Some(vlan) = &machine.vlan_id {
        // Option 43, sub-option 116: the VLAN Tinkerbell's iPXE joins (`${43.116:string}`).
        let mut vendor = vec![VLAN_SUBOPTION, vlan.len() as u8];
        vendor.extend_from_slice(vlan.as_bytes());
        vendor.push(255);
        opts.insert(DhcpOption::VendorExtensions(vendor));
    }
    let client = ClientKind::of(message);
    let mut handoff = Handoff::None;
    if let Some((server, file)) = &machine.boot_server {
        // The Hardware names its own boot server and file (options 66 and 67): Smee then
        // sends those and none of its own boot information, and so does Wisp.
        opts.insert(DhcpOption::TFTPServerName(server.as_bytes().to_vec()));
        opts.insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
        if file.len() < 128 {
            reply.set_fname_str(file);
        }
    } else if machine.allow_pxe && client.netbooting() {
        let target = add_boot_information(&mut reply, facts, machine, &client);
        handoff = Handoff::to(target.as_ref());
    }
    Reply {
        message: reply,
        destination: Destination::Broadcast,
        lease: None,
        handoff,
    }
}

/// siaddr and the boot file name (in `file` and option 67), and option 60 where a
/// specification asks the server to echo it. Returns what the client was sent to.
pub(super) fn add_boot_information(
    reply: &mut Message,
    facts: &Facts,
    machine: &Machine,
    client: &ClientKind,
) -> Option<BootTarget> {
    let boot = facts.boot;
    let script_url = machine
        .ipxe_url
        .clone()
        .unwrap_or_else(|| boot.script_url(&machine.mac.to_string()));
    let target = boot.choose(client, facts.chainloaded, script_url)?;
    let (file, vendor_class): (&str, Option<&[u8]>) = match &target {
        // UEFI HTTP boot requires `HTTPClient` in the reply.
        BootTarget::HttpBinary { url } => (url, Some(b"HTTPClient")),
        // A proxy offer is one because of `PXEClient`. In a full DHCP offer, OVMF would read
        // `PXEClient` without option 43 as "ask the boot server on port 4011", so firmware
        // gets a plain offer with a boot file, which every PXE ROM boots.
        BootTarget::Tftp { file } => (
            file,
            (facts.mode == Mode::Proxy).then_some(b"PXEClient".as_slice()),
        ),
        // iPXE waits about 3 s for a proxy offer unless the reply says `PXEClient`.
        BootTarget::Script { url } => (url, Some(b"PXEClient")),
    };
    reply.set_siaddr(boot.server);
    // The BOOTP `file` field holds 128 bytes with its terminator; a longer URL (a presigned
    // one, say) goes in option 67 alone.
    if file.len() < 128 {
        reply.set_fname_str(file);
    }
    let opts = reply.opts_mut();
    if let Some(class) = vendor_class {
        opts.insert(DhcpOption::ClassIdentifier(class.to_vec()));
    }
    opts.insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    Some(target)
}
