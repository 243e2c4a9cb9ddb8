//! The DHCP decisions, as a pure function from a request and the facts to an outcome (RFC
//! 2131, PXE, RFC 4578). The socket layer in `dhcp/mod.rs` persists leases and sends;
//! everything here is testable alone. Layers: this module dispatches; [`reservation`] answers
//! each message type when Wisp hands out addresses, [`proxy`] when another server does;
//! [`reply`] builds replies and [`options`] reads and echoes raw options.
mod options;
mod proxy;
mod reply;
mod reservation;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr},
};

use boot_ebpf::{DHCP_SERVER_PORT, PXE_BOOT_SERVER_PORT};
use dhcproto::v4::{HType, Message, Opcode};
use workflow::{resource::MacAddr, store::Lease};

pub use self::options::raw_option;
use super::boot::BootConfig;
use crate::machines::Machine;

/// Which DHCP service Wisp provides.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Wisp hands out the reserved address of each machine it owns, with boot information.
    Reservation,
    /// Another server hands out addresses; Wisp sends PXE clients only boot information.
    Proxy,
}

/// The port a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// 67: DHCP itself.
    Dhcp,
    /// 4011: the PXE boot server, which UEFI firmware asks after a proxy offer.
    PxeBootServer,
}

impl Port {
    pub const ALL: [Port; 2] = [Port::Dhcp, Port::PxeBootServer];

    pub fn number(self) -> u16 {
        match self {
            Port::Dhcp => DHCP_SERVER_PORT,
            Port::PxeBootServer => PXE_BOOT_SERVER_PORT,
        }
    }
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
    /// Where the reply sends the client to boot.
    pub handoff: Handoff,
}

/// Where a reply sends a netbooting client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// Nowhere: no boot information.
    None,
    /// To an iPXE binary, whose own DHCP must next get the script.
    Binary,
    /// To its iPXE script: the script fetched next starts the machine's boot.
    Script,
}

impl Handoff {
    pub(crate) fn to(target: Option<&super::boot::BootTarget>) -> Handoff {
        match target {
            None => Handoff::None,
            Some(target) if target.is_binary() => Handoff::Binary,
            Some(_) => Handoff::Script,
        }
    }
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
    /// No reply, and why.
    Ignore(IgnoreReason),
}

/// Why a request got no reply. [`IgnoreReason::label`] is the `reason` label of
/// `wisp_dhcp_ignored_total`: stable, so that rewording a message breaks no dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IgnoreReason {
    NotBootRequest,
    NotEthernet,
    UnknownMac,
    NoMessageType,
    /// Reservation mode answers on port 67 only.
    WrongPort,
    NoReservedAddress,
    DeclinedRecently,
    AddressLeasedToAnother,
    NotOnRelaySubnet,
    NotTheReservedAddress,
    OtherServerChosen,
    SelectingWithoutAddress,
    RequestWithoutAddress,
    DeclineOfOtherAddress,
    ReleaseForOtherServer,
    ServerMessageType,
    NotPxeClient,
    PxeNotAllowed,
    /// proxyDHCP answers DISCOVER on 67 and REQUEST on 4011, nothing else.
    NotProxyExchange,
    NoBootBinary,
    /// Another appliance sharing the store answers DHCP on this segment now.
    Standby,
}

impl IgnoreReason {
    pub fn label(self) -> &'static str {
        use IgnoreReason::*;
        match self {
            NotBootRequest => "not_bootrequest",
            NotEthernet => "not_ethernet",
            UnknownMac => "unknown_mac",
            NoMessageType => "no_message_type",
            WrongPort => "wrong_port",
            NoReservedAddress => "no_reserved_address",
            DeclinedRecently => "declined_recently",
            AddressLeasedToAnother => "address_leased_to_another",
            NotOnRelaySubnet => "not_on_relay_subnet",
            NotTheReservedAddress => "not_the_reserved_address",
            OtherServerChosen => "other_server_chosen",
            SelectingWithoutAddress => "selecting_without_address",
            RequestWithoutAddress => "request_without_address",
            DeclineOfOtherAddress => "decline_of_other_address",
            ReleaseForOtherServer => "release_for_other_server",
            ServerMessageType => "server_message_type",
            NotPxeClient => "not_pxe_client",
            PxeNotAllowed => "pxe_not_allowed",
            NotProxyExchange => "not_proxy_exchange",
            NoBootBinary => "no_boot_binary",
            Standby => "standby",
        }
    }
}

impl fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use IgnoreReason::*;
        f.write_str(match self {
            NotBootRequest => "not a BOOTREQUEST",
            NotEthernet => "not an Ethernet client",
            UnknownMac => "no Hardware owns this MAC",
            NoMessageType => "BOOTP without a DHCP message type",
            WrongPort => "reservation mode answers on port 67 only",
            NoReservedAddress => "the Hardware reserves no address for this MAC",
            DeclinedRecently => "the client declined its reserved address recently",
            AddressLeasedToAnother => {
                "another MAC holds the reserved address on a lease that has not expired"
            }
            NotOnRelaySubnet => "the reserved address is not on the relay's subnet",
            NotTheReservedAddress => "ciaddr is not the machine's reserved address",
            OtherServerChosen => "the client chose another server",
            SelectingWithoutAddress => "SELECTING request without a requested address",
            RequestWithoutAddress => "REQUEST names no address",
            DeclineOfOtherAddress => "DECLINE of an address that is not this client's reservation",
            ReleaseForOtherServer => "RELEASE for another server",
            ServerMessageType => "a message type a server does not receive",
            NotPxeClient => "proxyDHCP answers only PXE clients",
            PxeNotAllowed => "netboot.allowPXE is false",
            NotProxyExchange => "proxyDHCP answers DISCOVER on 67 and REQUEST on 4011",
            NoBootBinary => "no iPXE binary for this client's architecture",
            Standby => "another appliance answers DHCP on this segment now",
        })
    }
}

/// One received request and what is known about where it came from.
pub struct Request<'a> {
    pub message: &'a Message,
    /// The datagram as received, for options that must be echoed byte for byte.
    pub payload: &'a [u8],
    pub source: SocketAddr,
    pub port: Port,
}

/// What the server knows besides the request: the decision is a pure function of both.
pub struct Facts<'a> {
    pub mode: Mode,
    pub boot: &'a BootConfig,
    /// The machine that owns the client's MAC, if any.
    pub machine: Option<&'a Machine>,
    /// Seconds since the Unix epoch, for lease expiry.
    pub now: u64,
    /// Wisp handed this MAC an iPXE binary moments ago, in an earlier DHCP transaction (see
    /// `boot` on the chainload loop).
    pub chainloaded: bool,
    /// The client declined its reserved address moments ago: the address is in use.
    pub declined: bool,
    /// Another MAC holds the machine's reserved address on a lease that has not expired (its
    /// Hardware was deleted, or the address moved to this machine).
    pub address_held_by_another: bool,
}

/// The client's MAC, when the request is Ethernet with a 6-byte hardware address.
pub fn client_mac(message: &Message) -> Option<MacAddr> {
    if message.htype() != HType::Eth || message.hlen() != 6 {
        return None;
    }
    message.chaddr().try_into().ok().map(MacAddr)
}

/// Decoding and deciding, for the fuzz target (tests/fuzz): the datagram after a first byte
/// that picks the mode, the port and the facts, for a machine that owns the datagram's MAC
/// (so that every branch is reachable). A reply must encode.
///
/// dhcproto asserts on some malformed options, which the daemon contains with catch_unwind (see
/// `dhcp/mod.rs`), around decoding and deciding and around encoding: so does this.
#[cfg(fuzzing)]
pub fn fuzz_decide(bytes: &[u8]) {
    use dhcproto::{Decodable, Decoder, Encodable};
    let Some((&flags, payload)) = bytes.split_first() else {
        return;
    };
    let decoded = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(payload)));
    let Ok(Ok(message)) = decoded else {
        return;
    };
    let mac = client_mac(&message).unwrap_or(MacAddr([0x1c, 0x69, 0x7a, 0, 0, 1]));
    let machine = Machine {
        mac,
        address: (flags & 0x40 == 0).then_some(Ipv4Addr::new(10, 0, 0, 8)),
        netmask: Some(Ipv4Addr::new(255, 255, 255, 0)),
        gateway: Some(Ipv4Addr::new(10, 0, 0, 254)),
        name_servers: vec![Ipv4Addr::new(10, 0, 0, 53)],
        hostname: Some("machine".into()),
        domain: Some("lab".into()),
        lease_secs: 3600,
        allow_pxe: flags & 0x80 == 0,
        routes: vec![(
            Ipv4Addr::new(10, 20, 0, 0),
            16,
            Ipv4Addr::new(10, 0, 0, 254),
        )],
        vlan_id: (flags & 0x20 == 0).then(|| "30".into()),
        boot_server: (flags & 0x10 != 0).then(|| ("10.0.0.9".into(), "pxelinux.0".into())),
        ..Machine::example()
    };
    let boot = BootConfig {
        server: Ipv4Addr::new(10, 0, 0, 1),
        http_base: "http://10.0.0.1:8080".into(),
        binaries: vec![
            "undionly.kpxe".into(),
            "ipxe.efi".into(),
            "snponly.efi".into(),
        ],
    };
    let facts = Facts {
        mode: if flags & 1 == 0 {
            Mode::Reservation
        } else {
            Mode::Proxy
        },
        boot: &boot,
        machine: (flags & 0x20 == 0).then_some(&machine),
        now: 1_800_000_000,
        chainloaded: flags & 4 != 0,
        declined: flags & 8 != 0,
        address_held_by_another: flags & 16 != 0,
    };
    let request = Request {
        message: &message,
        payload,
        source: SocketAddr::from(([10, 0, 0, 77], 68)),
        port: if flags & 2 == 0 {
            Port::Dhcp
        } else {
            Port::PxeBootServer
        },
    };
    if let Outcome::Reply(reply) = handle(&request, &facts) {
        reply.message.to_vec().expect("a reply Wisp built encodes");
    }
}

pub fn handle(request: &Request, facts: &Facts) -> Outcome {
    let message = request.message;
    if message.opcode() != Opcode::BootRequest {
        return Outcome::Ignore(IgnoreReason::NotBootRequest);
    }
    let Some(mac) = client_mac(message) else {
        return Outcome::Ignore(IgnoreReason::NotEthernet);
    };
    let Some(machine) = facts.machine else {
        // Only reachable in discovery mode: the gate drops unknown MACs otherwise.
        return Outcome::Ignore(IgnoreReason::UnknownMac);
    };
    let Some(message_type) = message.opts().msg_type() else {
        return Outcome::Ignore(IgnoreReason::NoMessageType);
    };
    match facts.mode {
        Mode::Reservation => reservation::handle(request, facts, machine, mac, message_type),
        Mode::Proxy => proxy::handle(request, facts, machine, message_type),
    }
}
