//! The DHCP decisions, as a pure function from a request to an outcome (RFC 2131, PXE, RFC 4578).
//! The socket layer in `mod.rs` persists leases and sends; everything here is testable alone.
use std::net::{Ipv4Addr, SocketAddr};

use dhcproto::v4::{
    DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use workflow::{resource::MacAddr, store::Lease};

use super::{
    boot::{BootConfig, BootTarget, ClientKind},
    reservation::Reservation,
};

/// Which DHCP service Wisp provides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Wisp hands out the reserved address of each machine it owns, with boot information.
    Reservation,
    /// Another server hands out addresses; Wisp sends PXE clients only boot information.
    Proxy,
}

/// Where a reply goes (RFC 2131 section 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The relay agent, at giaddr:67.
    Relay(Ipv4Addr),
    /// A client that has an address (renewing, INFORM): ciaddr:68.
    Client(Ipv4Addr),
    /// 255.255.255.255:68.
    Broadcast,
    /// yiaddr:68, to a client that cannot answer ARP yet: needs an ARP entry first.
    Unicast { address: Ipv4Addr, mac: MacAddr },
    /// Back to where the request came from (the PXE boot-server exchange on port 4011).
    Source(SocketAddr),
}

#[derive(Debug)]
pub struct Reply {
    pub message: Message,
    pub destination: Destination,
    /// A lease to make durable before the reply goes out (ACKs in reservation mode).
    pub lease: Option<Lease>,
    /// The reply hands the client an iPXE binary, whose DHCP must next get the script.
    pub handoff: bool,
}

#[derive(Debug)]
pub enum Outcome {
    Reply(Box<Reply>),
    /// The client gave its address back.
    Release(MacAddr),
    /// The client found its offered address in use.
    Decline {
        mac: MacAddr,
        address: Ipv4Addr,
    },
    /// No reply, and why (for logs and metrics).
    Ignore(&'static str),
}

/// One received request and what is known about where it came from.
pub struct Request<'a> {
    pub message: &'a Message,
    /// The datagram as received, for options that must be echoed byte for byte.
    pub payload: &'a [u8],
    pub source: SocketAddr,
    /// 67 (DHCP) or 4011 (PXE boot server).
    pub port: u16,
}

pub struct Context<'a> {
    pub mode: Mode,
    pub boot: &'a BootConfig,
    pub reservation: Option<&'a Reservation>,
    /// Seconds since the Unix epoch, for lease expiry.
    pub now: u64,
    /// Wisp handed this MAC an iPXE binary moments ago, in an earlier DHCP transaction (see
    /// `boot` on the chainload loop).
    pub chainloaded: bool,
    /// The client declined its reserved address moments ago: the address is in use.
    pub declined: bool,
}

/// The client's MAC, when the request is Ethernet with a 6-byte hardware address.
pub fn client_mac(message: &Message) -> Option<MacAddr> {
    if message.htype() != HType::Eth || message.hlen() != 6 {
        return None;
    }
    message.chaddr().try_into().ok().map(MacAddr)
}

pub fn handle(request: &Request, context: &Context) -> Outcome {
    let message = request.message;
    if message.opcode() != Opcode::BootRequest {
        return Outcome::Ignore("not a BOOTREQUEST");
    }
    let Some(mac) = client_mac(message) else {
        return Outcome::Ignore("not an Ethernet client");
    };
    let Some(reservation) = context.reservation else {
        // Only reachable in discovery mode: the gate drops unknown MACs otherwise.
        return Outcome::Ignore("no Hardware owns this MAC");
    };
    let Some(message_type) = message.opts().msg_type() else {
        return Outcome::Ignore("BOOTP without a DHCP message type");
    };
    match context.mode {
        Mode::Reservation => reservation_mode(request, context, reservation, mac, message_type),
        Mode::Proxy => proxy_mode(request, context, reservation, message_type),
    }
}

fn reservation_mode(
    request: &Request,
    context: &Context,
    reservation: &Reservation,
    mac: MacAddr,
    message_type: MessageType,
) -> Outcome {
    let message = request.message;
    let server = context.boot.server;
    if request.port != 67 {
        return Outcome::Ignore("reservation mode answers on port 67 only");
    }
    let Some(address) = reservation.address else {
        return Outcome::Ignore("the Hardware reserves no address for this MAC");
    };
    if context.declined && matches!(message_type, MessageType::Discover | MessageType::Request) {
        // RFC 2131 3.1: after a DECLINE the address must not be offered again at once, or the
        // client loops DISCOVER/DECLINE while the conflict lasts.
        return Outcome::Ignore("the client declined its reserved address recently");
    }
    let relay = message.giaddr();
    // A relayed request comes from the relay's subnet; a reservation elsewhere is not for it.
    if !relay.is_unspecified() && !reservation.same_subnet(relay) {
        return Outcome::Ignore("the reserved address is not on the relay's subnet");
    }
    let requested = match message.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(requested)) => Some(*requested),
        _ => None,
    };
    let server_id = match message.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(id)) => Some(*id),
        _ => None,
    };
    match message_type {
        MessageType::Discover => {
            let mut offer = lease_reply(request, context, reservation, MessageType::Offer, address);
            offer.destination = destination(message, address, mac);
            Outcome::Reply(Box::new(offer))
        }
        MessageType::Request => {
            let ciaddr = message.ciaddr();
            // RFC 2131 4.3.2: which state the client is in follows from what it filled in.
            let (asked_for, state) = match (server_id, requested) {
                (Some(id), _) if id != server => {
                    return Outcome::Ignore("the client chose another server")
                }
                (Some(_), Some(requested)) => (requested, "selecting"),
                (Some(_), None) => {
                    return Outcome::Ignore("SELECTING request without a requested address")
                }
                (None, Some(requested)) => (requested, "init-reboot"),
                (None, None) if !ciaddr.is_unspecified() => (ciaddr, "renewing/rebinding"),
                (None, None) => return Outcome::Ignore("REQUEST names no address"),
            };
            if asked_for != address {
                tracing::info!(client = %mac, %asked_for, reserved = %address, state, "NAK: not the reserved address");
                return Outcome::Reply(Box::new(nak(request, server)));
            }
            let mut ack = lease_reply(request, context, reservation, MessageType::Ack, address);
            ack.destination = destination(message, address, mac);
            ack.lease = Some(Lease {
                mac,
                address,
                expires_unix: context.now + u64::from(reservation.lease_secs),
                hostname: reservation.hostname.clone(),
            });
            Outcome::Reply(Box::new(ack))
        }
        MessageType::Decline => match requested {
            Some(declined) if declined == address && server_id.is_none_or(|id| id == server) => {
                Outcome::Decline { mac, address }
            }
            _ => Outcome::Ignore("DECLINE of an address that is not this client's reservation"),
        },
        MessageType::Release => match server_id {
            Some(id) if id != server => Outcome::Ignore("RELEASE for another server"),
            _ => Outcome::Release(mac),
        },
        MessageType::Inform => {
            // The client has an address already: configuration only, no lease (RFC 2131 3.4).
            let mut ack = lease_reply(
                request,
                context,
                reservation,
                MessageType::Ack,
                Ipv4Addr::UNSPECIFIED,
            );
            let opts = ack.message.opts_mut();
            opts.remove(OptionCode::AddressLeaseTime);
            opts.remove(OptionCode::Renewal);
            opts.remove(OptionCode::Rebinding);
            ack.destination = if !relay.is_unspecified() {
                Destination::Relay(relay)
            } else if message.ciaddr().is_unspecified() {
                Destination::Broadcast
            } else {
                Destination::Client(message.ciaddr())
            };
            Outcome::Reply(Box::new(ack))
        }
        _ => Outcome::Ignore("a message type a server does not receive"),
    }
}

/// RFC 2131 4.1: relay first, then a configured client, then the broadcast bit, then unicast
/// to the address being assigned.
fn destination(message: &Message, yiaddr: Ipv4Addr, mac: MacAddr) -> Destination {
    if !message.giaddr().is_unspecified() {
        Destination::Relay(message.giaddr())
    } else if !message.ciaddr().is_unspecified() {
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
/// the client identifier (61, RFC 6842) and the relay agent information (82, RFC 3046), both
/// echoed byte for byte.
fn reply_to(request: &Request, message_type: MessageType, server: Ipv4Addr) -> Message {
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
    for code in [CLIENT_IDENTIFIER, RELAY_AGENT_INFORMATION] {
        // Re-encoding a parsed option would reorder or drop sub-options; the RFCs want the
        // client's bytes back.
        if let Some(raw) = raw_option(request.payload, code) {
            opts.insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(code),
                raw.to_vec(),
            )));
        }
    }
    reply
}

const CLIENT_IDENTIFIER: u8 = 61;
const RELAY_AGENT_INFORMATION: u8 = 82;

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

fn nak(request: &Request, server: Ipv4Addr) -> Reply {
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
        handoff: false,
    }
}

/// An OFFER or ACK carrying the reservation and, for netbooting clients, boot information.
fn lease_reply(
    request: &Request,
    context: &Context,
    reservation: &Reservation,
    message_type: MessageType,
    address: Ipv4Addr,
) -> Reply {
    let message = request.message;
    let mut reply = reply_to(request, message_type, context.boot.server);
    reply.set_yiaddr(address);
    if message_type == MessageType::Ack && !message.ciaddr().is_unspecified() {
        reply.set_ciaddr(message.ciaddr());
    }
    let lease = reservation.lease_secs;
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::AddressLeaseTime(lease));
    // T1 at half the lease, T2 at seven eighths (RFC 2131 4.4.5).
    opts.insert(DhcpOption::Renewal(lease / 2));
    opts.insert(DhcpOption::Rebinding((u64::from(lease) * 7 / 8) as u32));
    if let Some(mask) = reservation.netmask {
        opts.insert(DhcpOption::SubnetMask(mask));
    }
    if let Some(gateway) = reservation.gateway {
        opts.insert(DhcpOption::Router(vec![gateway]));
    }
    if !reservation.name_servers.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(
            reservation.name_servers.clone(),
        ));
    }
    if !reservation.time_servers.is_empty() {
        opts.insert(DhcpOption::NtpServers(reservation.time_servers.clone()));
    }
    if let Some(hostname) = &reservation.hostname {
        opts.insert(DhcpOption::Hostname(hostname.clone()));
    }
    if let Some(domain) = &reservation.domain {
        opts.insert(DhcpOption::DomainName(domain.clone()));
    }
    let client = ClientKind::of(message);
    let mut handoff = false;
    if reservation.allow_pxe && client.netbooting() {
        let target = add_boot_information(&mut reply, context, reservation, &client);
        handoff = target.is_some_and(|t| t.is_binary());
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
fn add_boot_information(
    reply: &mut Message,
    context: &Context,
    reservation: &Reservation,
    client: &ClientKind,
) -> Option<BootTarget> {
    let boot = context.boot;
    let script_url = reservation
        .ipxe_url
        .clone()
        .unwrap_or_else(|| boot.script_url(&reservation.mac.to_string()));
    let target = boot.choose(client, context.chainloaded, script_url)?;
    let (file, vendor_class): (&str, Option<&[u8]>) = match &target {
        // UEFI HTTP boot requires `HTTPClient` in the reply.
        BootTarget::HttpBinary { url } => (url, Some(b"HTTPClient")),
        // A proxy offer is one because of `PXEClient`. In a full DHCP offer, OVMF would read
        // `PXEClient` without option 43 as "ask the boot server on port 4011", so firmware
        // gets a plain offer with a boot file, which every PXE ROM boots.
        BootTarget::Tftp { file } => (
            file,
            (context.mode == Mode::Proxy).then_some(b"PXEClient".as_slice()),
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

/// proxyDHCP (PXE specification 2.1): no address, only boot information, and only to PXE
/// clients. Firmware sends its DISCOVER to port 67 and, unless option 43 says to skip it, a
/// REQUEST to the boot server on port 4011.
fn proxy_mode(
    request: &Request,
    context: &Context,
    reservation: &Reservation,
    message_type: MessageType,
) -> Outcome {
    let message = request.message;
    let client = ClientKind::of(message);
    if !client.netbooting() {
        return Outcome::Ignore("proxyDHCP answers only PXE clients");
    }
    if !reservation.allow_pxe {
        return Outcome::Ignore("netboot.allowPXE is false");
    }
    let reply_type = match (request.port, message_type) {
        (67, MessageType::Discover) => MessageType::Offer,
        (4011, MessageType::Request) => MessageType::Ack,
        _ => return Outcome::Ignore("proxyDHCP answers DISCOVER on 67 and REQUEST on 4011"),
    };
    let mut reply = reply_to(request, reply_type, context.boot.server);
    // Echo the client's GUID (option 97), as PXE clients check it.
    if let Some(guid) = message.opts().get(OptionCode::ClientMachineIdentifier) {
        reply.opts_mut().insert(guid.clone());
    }
    let Some(target) = add_boot_information(&mut reply, context, reservation, &client) else {
        return Outcome::Ignore("no iPXE binary for this client's architecture");
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
        4011 => Destination::Source(request.source),
        _ if !message.giaddr().is_unspecified() => Destination::Relay(message.giaddr()),
        _ => Destination::Broadcast,
    };
    let handoff = target.is_binary();
    Outcome::Reply(Box::new(Reply {
        message: reply,
        destination,
        lease: None,
        handoff,
    }))
}

#[cfg(test)]
mod tests {
    use dhcproto::v4::{Architecture, Flags};
    use workflow::resource::{hardware::Osie, Kind, ResourceKey};

    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const RESERVED: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 8);
    const MAC: [u8; 6] = [0x1c, 0x69, 0x7a, 0x11, 0x22, 0x33];

    fn reservation(allow_pxe: bool) -> Reservation {
        Reservation {
            hardware: ResourceKey {
                kind: Kind::Hardware,
                namespace: "lab".into(),
                name: "nuc".into(),
            },
            mac: MacAddr(MAC),
            address: Some(RESERVED),
            netmask: Some([255, 255, 255, 0].into()),
            gateway: Some([10, 0, 0, 254].into()),
            name_servers: vec![[1, 1, 1, 1].into()],
            time_servers: vec![],
            hostname: Some("nuc".into()),
            domain: None,
            lease_secs: 800,
            allow_pxe,
            allow_workflow: true,
            workflow_bound: true,
            ipxe_url: None,
            ipxe_script: None,
            osie: Osie::default(),
        }
    }

    fn boot() -> BootConfig {
        BootConfig {
            server: SERVER,
            http_base: "http://10.0.0.1:8080".into(),
            binaries: vec!["undionly.kpxe".into(), "snponly.efi".into()],
        }
    }

    fn message(message_type: MessageType, configure: impl FnOnce(&mut Message)) -> Message {
        let mut message = Message::default();
        message.set_chaddr(&MAC).set_xid(7);
        message
            .opts_mut()
            .insert(DhcpOption::MessageType(message_type));
        configure(&mut message);
        message
    }

    fn pxe(message: &mut Message) {
        message.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
        ));
        message
            .opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(0)));
    }

    fn run(
        message: &Message,
        mode: Mode,
        port: u16,
        allow_pxe: bool,
        chainloaded: bool,
    ) -> Outcome {
        run_with(
            message,
            mode,
            port,
            &reservation(allow_pxe),
            chainloaded,
            false,
        )
    }

    fn run_with(
        message: &Message,
        mode: Mode,
        port: u16,
        reservation: &Reservation,
        chainloaded: bool,
        declined: bool,
    ) -> Outcome {
        let boot = boot();
        let context = Context {
            mode,
            boot: &boot,
            reservation: Some(reservation),
            now: 1000,
            chainloaded,
            declined,
        };
        let payload = encode(message);
        let request = Request {
            message,
            payload: &payload,
            source: "10.0.0.99:68".parse().unwrap(),
            port,
        };
        handle(&request, &context)
    }

    fn encode(message: &Message) -> Vec<u8> {
        let mut bytes = Vec::new();
        dhcproto::Encodable::encode(message, &mut dhcproto::Encoder::new(&mut bytes)).unwrap();
        bytes
    }

    fn reply(outcome: Outcome) -> Reply {
        match outcome {
            Outcome::Reply(reply) => *reply,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn option(reply: &Reply, code: OptionCode) -> Option<&DhcpOption> {
        reply.message.opts().get(code)
    }

    #[test]
    fn discover_gets_the_reservation_with_lease_times() {
        let offer = reply(run(
            &message(MessageType::Discover, |_| {}),
            Mode::Reservation,
            67,
            false,
            false,
        ));
        assert_eq!(offer.message.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(offer.message.yiaddr(), RESERVED);
        assert_eq!(
            option(&offer, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(
            option(&offer, OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(800))
        );
        assert_eq!(
            option(&offer, OptionCode::Renewal),
            Some(&DhcpOption::Renewal(400))
        );
        assert_eq!(
            option(&offer, OptionCode::Rebinding),
            Some(&DhcpOption::Rebinding(700))
        );
        assert_eq!(
            option(&offer, OptionCode::Router),
            Some(&DhcpOption::Router(vec![[10, 0, 0, 254].into()]))
        );
        assert!(offer.lease.is_none(), "an OFFER records no lease");
        // No broadcast bit and no address yet: unicast to the offered address (RFC 2131 4.1).
        assert_eq!(
            offer.destination,
            Destination::Unicast {
                address: RESERVED,
                mac: MacAddr(MAC)
            }
        );
        let broadcast = message(MessageType::Discover, |m| {
            m.set_flags(Flags::default().set_broadcast());
        });
        assert_eq!(
            reply(run(&broadcast, Mode::Reservation, 67, false, false)).destination,
            Destination::Broadcast
        );
    }

    #[test]
    fn request_states_follow_rfc_2131() {
        let selecting = message(MessageType::Request, |m| {
            m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
            m.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(RESERVED));
        });
        let ack = reply(run(&selecting, Mode::Reservation, 67, false, false));
        assert_eq!(ack.message.opts().msg_type(), Some(MessageType::Ack));
        let lease = ack.lease.expect("an ACK records its lease");
        assert_eq!((lease.address, lease.expires_unix), (RESERVED, 1800));

        let elsewhere = message(MessageType::Request, |m| {
            m.opts_mut()
                .insert(DhcpOption::ServerIdentifier([10, 0, 0, 2].into()));
            m.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(RESERVED));
        });
        assert!(matches!(
            run(&elsewhere, Mode::Reservation, 67, false, false),
            Outcome::Ignore(_)
        ));

        let init_reboot_wrong = message(MessageType::Request, |m| {
            m.opts_mut()
                .insert(DhcpOption::RequestedIpAddress([10, 0, 0, 9].into()));
        });
        let nak = reply(run(&init_reboot_wrong, Mode::Reservation, 67, false, false));
        assert_eq!(nak.message.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(nak.destination, Destination::Broadcast);

        let renewing = message(MessageType::Request, |m| {
            m.set_ciaddr(RESERVED);
        });
        let renewed = reply(run(&renewing, Mode::Reservation, 67, false, false));
        assert_eq!(renewed.message.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(
            renewed.destination,
            Destination::Client(RESERVED),
            "a renewing client is unicast at ciaddr"
        );
    }

    #[test]
    fn release_decline_and_inform() {
        assert!(matches!(
            run(
                &message(MessageType::Release, |_| {}),
                Mode::Reservation,
                67,
                false,
                false
            ),
            Outcome::Release(_)
        ));
        let decline = message(MessageType::Decline, |m| {
            m.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(RESERVED));
        });
        assert!(matches!(
            run(&decline, Mode::Reservation, 67, false, false),
            Outcome::Decline {
                address: RESERVED,
                ..
            }
        ));
        let inform = message(MessageType::Inform, |m| {
            m.set_ciaddr(RESERVED);
        });
        let ack = reply(run(&inform, Mode::Reservation, 67, false, false));
        assert_eq!(ack.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(
            option(&ack, OptionCode::AddressLeaseTime).is_none(),
            "INFORM gets no lease"
        );
        assert_eq!(ack.destination, Destination::Client(RESERVED));
    }

    #[test]
    fn boot_information_only_for_allowed_netbooting_clients() {
        let firmware = message(MessageType::Discover, pxe);
        assert!(
            reply(run(&firmware, Mode::Reservation, 67, false, false))
                .message
                .fname()
                .is_none(),
            "allowPXE false"
        );
        let offer = reply(run(&firmware, Mode::Reservation, 67, true, false));
        assert_eq!(offer.message.fname_str().unwrap().unwrap(), "undionly.kpxe");
        assert_eq!(offer.message.siaddr(), SERVER);
        assert!(offer.handoff);
        assert!(
            option(&offer, OptionCode::ClassIdentifier).is_none(),
            "a plain offer, as OVMF needs"
        );
        let ipxe = message(MessageType::Discover, |m| {
            pxe(m);
            m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        });
        let script = reply(run(&ipxe, Mode::Reservation, 67, true, true));
        assert_eq!(
            script.message.fname_str().unwrap().unwrap(),
            "http://10.0.0.1:8080/ipxe/1c:69:7a:11:22:33/auto.ipxe"
        );
        assert_eq!(
            option(&script, OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert!(!script.handoff);
    }

    #[test]
    fn proxy_mode_gives_boot_information_and_no_address() {
        let firmware = message(MessageType::Discover, pxe);
        let offer = reply(run(&firmware, Mode::Proxy, 67, true, false));
        assert_eq!(offer.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(option(&offer, OptionCode::AddressLeaseTime).is_none());
        assert_eq!(
            option(&offer, OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert_eq!(
            option(&offer, OptionCode::VendorExtensions),
            Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
        );
        assert!(
            matches!(
                run(
                    &message(MessageType::Discover, |_| {}),
                    Mode::Proxy,
                    67,
                    true,
                    false
                ),
                Outcome::Ignore(_)
            ),
            "not a PXE client"
        );
        assert!(
            matches!(
                run(&firmware, Mode::Proxy, 67, false, false),
                Outcome::Ignore(_)
            ),
            "allowPXE false"
        );
        let boot_server = message(MessageType::Request, |m| {
            pxe(m);
            m.opts_mut()
                .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(7)));
        });
        let ack = reply(run(&boot_server, Mode::Proxy, 4011, true, false));
        assert_eq!(ack.message.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.message.fname_str().unwrap().unwrap(), "snponly.efi");
        assert_eq!(
            ack.destination,
            Destination::Source("10.0.0.99:68".parse().unwrap())
        );
    }

    #[test]
    fn options_61_and_82_are_echoed_byte_for_byte() {
        // Sub-options out of order (2 before 1): a parse and re-encode would sort them.
        let relay_info = vec![2, 3, b'r', b'i', b'd', 1, 2, b'p', b'7'];
        let discover = message(MessageType::Discover, |m| {
            m.set_giaddr([10, 0, 0, 2]);
            m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(82),
                relay_info.clone(),
            )));
            m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(61),
                vec![1, 0x1c, 0x69, 0x7a, 0x11, 0x22, 0x33],
            )));
        });
        assert_eq!(
            raw_option(&encode(&discover), 82),
            Some(relay_info.as_slice())
        );
        let offer = reply(run(&discover, Mode::Reservation, 67, false, false));
        let sent = encode(&offer.message);
        assert_eq!(raw_option(&sent, 82), Some(relay_info.as_slice()));
        assert_eq!(
            raw_option(&sent, 61),
            Some([1, 0x1c, 0x69, 0x7a, 0x11, 0x22, 0x33].as_slice())
        );
        assert_eq!(offer.destination, Destination::Relay([10, 0, 0, 2].into()));
        assert_eq!(
            raw_option(&[0u8; 100], 82),
            None,
            "a truncated message has no options"
        );
    }

    #[test]
    fn overrides_long_urls_and_http_boot() {
        let ipxe = message(MessageType::Discover, |m| {
            pxe(m);
            m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        });
        let mut custom = reservation(true);
        custom.ipxe_url = Some("http://scripts.example/boot.ipxe".into());
        let offer = reply(run_with(&ipxe, Mode::Reservation, 67, &custom, true, false));
        assert_eq!(
            offer.message.fname_str().unwrap().unwrap(),
            "http://scripts.example/boot.ipxe"
        );
        // A URL longer than the 128-byte `file` field goes in option 67 alone, without panicking.
        let long = format!("http://scripts.example/{}", "x".repeat(200));
        custom.ipxe_url = Some(long.clone());
        let offer = reply(run_with(&ipxe, Mode::Reservation, 67, &custom, true, false));
        assert!(offer.message.fname().is_none());
        assert_eq!(
            option(&offer, OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(long.into_bytes()))
        );
        // UEFI HTTP boot: option 60 HTTPClient and an HTTP URL.
        let http_boot = message(MessageType::Discover, |m| {
            m.opts_mut().insert(DhcpOption::ClassIdentifier(
                b"HTTPClient:Arch:00016:UNDI:003001".to_vec(),
            ));
            m.opts_mut()
                .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(16)));
        });
        let offer = reply(run(&http_boot, Mode::Reservation, 67, true, false));
        assert_eq!(
            option(&offer, OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
        );
        assert_eq!(
            offer.message.fname_str().unwrap().unwrap(),
            "http://10.0.0.1:8080/ipxe/snponly.efi"
        );
    }

    #[test]
    fn declines_ports_and_inform_without_ciaddr() {
        let other = message(MessageType::Decline, |m| {
            m.opts_mut()
                .insert(DhcpOption::RequestedIpAddress([10, 0, 0, 99].into()));
        });
        assert!(
            matches!(
                run(&other, Mode::Reservation, 67, false, false),
                Outcome::Ignore(_)
            ),
            "not its reservation"
        );
        let discover = message(MessageType::Discover, |_| {});
        assert!(
            matches!(
                run_with(
                    &discover,
                    Mode::Reservation,
                    67,
                    &reservation(false),
                    false,
                    true
                ),
                Outcome::Ignore(_)
            ),
            "declined recently"
        );
        assert!(
            matches!(
                run(&discover, Mode::Reservation, 4011, false, false),
                Outcome::Ignore(_)
            ),
            "4011 is proxy mode's"
        );
        let inform = message(MessageType::Inform, |_| {});
        assert_eq!(
            reply(run(&inform, Mode::Reservation, 67, false, false)).destination,
            Destination::Broadcast
        );
    }
}
