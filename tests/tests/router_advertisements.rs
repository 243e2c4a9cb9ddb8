//! IPv6 router solicitations on a real interface, through the loaded XDP program: an owned
//! machine that netboots gets a router advertisement that configures nothing, sent to its MAC
//! alone; an owned machine that does not netboot, a stranger, and a solicitation that crossed
//! a router get none. The frames are sent and read with a packet socket on the client end of
//! the veth pair, which sees every frame the server sends, whoever it is addressed to.
use std::{
    net::Ipv6Addr,
    time::{Duration, Instant},
};

use etherparse::{
    icmpv6::RouterAdvertisementHeader, Icmpv6Type, LinkSlice, NetSlice, PacketBuilder,
    SlicedPacket, TransportSlice,
};
use socket2::{Domain, Protocol, Socket, Type};
use wisp_tests::{
    apply_ok, hardware_yaml, metric, netboot_hardware_yaml, require_root, Daemon, Lab, TempDir,
    CLIENT_IF, SERVER_IF,
};

const NETBOOTS: [u8; 6] = [0x52, 0x54, 0x00, 0x61, 0x00, 0x01];
const NO_NETBOOT: [u8; 6] = [0x52, 0x54, 0x00, 0x61, 0x00, 0x02];
const STRANGER: [u8; 6] = [0x52, 0x54, 0x00, 0x61, 0x00, 0x03];
const ETH_P_ALL: u16 = 0x0003;

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// The EUI-64 link-local address a host with `mac` solicits from, as iPXE does.
fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

/// A router solicitation from `mac` to all routers, with its source link-layer address option.
fn solicitation(mac: [u8; 6], hop_limit: u8) -> Vec<u8> {
    let all_routers: Ipv6Addr = "ff02::2".parse().unwrap();
    let mut option = vec![1, 1];
    option.extend_from_slice(&mac);
    let builder = PacketBuilder::ethernet2(mac, [0x33, 0x33, 0, 0, 0, 2])
        .ipv6(link_local(mac).octets(), all_routers.octets(), hop_limit)
        .icmpv6(Icmpv6Type::RouterSolicitation);
    let mut frame = Vec::new();
    builder.write(&mut frame, &option).unwrap();
    frame
}

/// A packet socket on the client end, seeing every frame that crosses it.
fn client_socket(lab: &Lab) -> Socket {
    lab.client.within(|| {
        let socket = Socket::new(
            Domain::PACKET,
            Type::RAW,
            Some(Protocol::from(i32::from(ETH_P_ALL.to_be()))),
        )
        .expect("a packet socket");
        let index = nix::net::if_::if_nametoindex(CLIENT_IF).expect("the client end");
        boot_userspace::net::bind_packet_socket(&socket, index, ETH_P_ALL)
            .expect("bound to the client end");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("a read timeout");
        socket
    })
}

/// The router advertisements that reach the client end within `window`, by destination MAC.
fn advertisements(socket: &Socket, window: Duration) -> Vec<([u8; 6], Vec<u8>)> {
    let mut seen = Vec::new();
    let end = Instant::now() + window;
    let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    while Instant::now() < end {
        let Ok(length) = socket.recv(&mut buffer) else {
            continue;
        };
        // SAFETY: recv initialised the first `length` bytes.
        let frame: Vec<u8> = buffer[..length]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        let Ok(packet) = SlicedPacket::from_ethernet(&frame) else {
            continue;
        };
        if let (Some(LinkSlice::Ethernet2(ethernet)), Some(TransportSlice::Icmpv6(icmp))) =
            (&packet.link, &packet.transport)
        {
            if matches!(icmp.icmp_type(), Icmpv6Type::RouterAdvertisement(_)) {
                seen.push((ethernet.destination(), frame.clone()));
            }
        }
    }
    seen
}

#[test]
fn only_owned_netbooting_machines_get_a_router_advertisement_and_it_configures_nothing() {
    require_root!();
    let lab = Lab::new("ndp");
    let data = TempDir::new("ndp");
    // The client end's own kernel would solicit too, from a MAC Wisp does not own.
    lab.client.exec_ok(
        "sysctl",
        &["-w", &format!("net.ipv6.conf.{CLIENT_IF}.disable_ipv6=1")],
    );
    let _daemon = Daemon::start(&lab.server, SERVER_IF, &data.join("data"), &[]);
    apply_ok(
        &lab.server,
        &netboot_hardware_yaml("netboots", &mac_text(NETBOOTS), "10.99.0.10"),
    );
    apply_ok(
        &lab.server,
        &hardware_yaml("no-netboot", &mac_text(NO_NETBOOT), "10.99.0.11"),
    );
    let socket = client_socket(&lab);

    for frame in [
        solicitation(STRANGER, 255),
        solicitation(NO_NETBOOT, 255),
        // Forwarded by a router on the way: RFC 4861 §6.1.1 says to drop it.
        solicitation(NETBOOTS, 64),
        solicitation(NETBOOTS, 255),
    ] {
        socket.send(&frame).expect("the solicitation goes out");
    }
    let seen = advertisements(&socket, Duration::from_secs(3));
    let destinations: Vec<String> = seen.iter().map(|(mac, _)| mac_text(*mac)).collect();
    assert_eq!(
        destinations,
        [mac_text(NETBOOTS)],
        "one advertisement, to the owned machine that netboots, and none to anyone else"
    );

    let packet = SlicedPacket::from_ethernet(&seen[0].1).expect("a frame");
    let Some(NetSlice::Ipv6(ipv6)) = &packet.net else {
        panic!("an IPv6 packet")
    };
    let Some(TransportSlice::Icmpv6(icmp)) = &packet.transport else {
        panic!("an ICMPv6 message")
    };
    let header = ipv6.header();
    assert_eq!(header.hop_limit(), 255, "RFC 4861 §6.1.2's hop limit");
    assert!(
        header.source_addr().is_unicast_link_local(),
        "from a link-local address: {}",
        header.source_addr()
    );
    assert_eq!(header.destination_addr(), link_local(NETBOOTS));
    assert!(
        icmp.is_checksum_valid(header.source(), header.destination()),
        "a valid ICMPv6 checksum"
    );
    assert_eq!(
        icmp.icmp_type(),
        Icmpv6Type::RouterAdvertisement(RouterAdvertisementHeader {
            cur_hop_limit: 0,
            managed_address_config: false,
            other_config: false,
            router_lifetime: 0,
        }),
        "not a default router, no DHCPv6"
    );
    assert!(
        !icmp
            .payload()
            .chunks(8)
            .skip(1)
            .any(|option| option[0] == 3),
        "no prefix information"
    );

    let counted = |outcome: &str| {
        metric(
            &lab.server,
            &format!("wisp_router_solicitations_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(counted("answered"), Some(1));
    assert_eq!(counted("not_owned"), Some(2));
    assert_eq!(counted("malformed"), Some(1));
}
