//! IPv6 router solicitations from the machines Wisp owns, answered so that their iPXE stops
//! waiting for IPv6 autoconfiguration.
//!
//! iPXE configures IPv4 (DHCP) and IPv6 (router solicitations) at once and goes on only when
//! both are done. On a LAN with no IPv6 router nobody answers, and each `ifconf` waits for its
//! solicitations to time out: about 13 s at the chainload and again at the script's DHCP. A
//! router advertisement ends that wait at once (iPXE's `ipv6conf_rx_router_advertisement`).
//! The one sent here says nothing: router lifetime 0 (RFC 4861 §4.2: "not a default router"),
//! no prefixes, neither M nor O, so the machine learns no address, route or DHCPv6 server
//! from it, and a real router's advertisements still apply as they arrive.
//!
//! Only owned machines that netboot are answered, and only them: the advertisement goes to the
//! soliciting MAC alone (Ethernet unicast), so the LAN's other hosts never see one. Layers:
//! [`solicitation`] reads a frame, [`advertisement`] writes the answer (both with etherparse,
//! checksums included), and [`serve`] is the packet socket between them.
use std::{net::Ipv6Addr, os::fd::AsRawFd as _, sync::Arc};

use anyhow::Context as _;
use etherparse::{
    icmpv6::{
        NdpOptionSlice, NdpOptionsIterator, RouterAdvertisementHeader, RouterAdvertisementPayload,
    },
    Icmpv6Type, LinkSlice, NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
};
use socket2::{Domain, SockFilter, Socket, Type};
use tokio::io::{unix::AsyncFd, Interest};
use workflow::resource::MacAddr;

use crate::{
    log_budget::LogBudget,
    machines::Machines,
    metrics::{Metrics, OutcomeLabels},
};

const ETH_P_IPV6: u16 = 0x86dd;
/// ICMPv6's next-header value.
const ICMPV6: u8 = 58;
/// RFC 4861 §6.1.1: a hop limit of 255 proves the packet was not forwarded by a router.
const NDP_HOP_LIMIT: u8 = 255;
/// RFC 4861 §4.6.1's Source Link-Layer Address option type.
const SOURCE_LINK_LAYER_ADDRESS: u8 = 1;

/// A router solicitation that passed RFC 4861 §6.1.1's checks.
#[derive(Debug, PartialEq)]
pub struct Solicitation {
    /// The frame's Ethernet source: the machine.
    pub mac: MacAddr,
    /// Its IPv6 source: a link-local address, or unspecified (`::`) before it has one.
    pub source: Ipv6Addr,
}

/// Why a frame is no router solicitation Wisp can answer; counted, and dropped.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Malformed {
    #[error("not an Ethernet/IPv6/ICMPv6 frame: {0}")]
    Framing(String),
    #[error("not a router solicitation")]
    NotASolicitation,
    #[error("hop limit {0}, not 255: it crossed a router (RFC 4861 §6.1.1)")]
    HopLimit(u8),
    #[error("ICMPv6 checksum does not match")]
    Checksum,
    #[error("code {0}, not 0")]
    Code(u8),
    #[error("an option of length 0, or one that runs past the end")]
    Options,
    #[error("a source link-layer address option from the unspecified address (RFC 4861 §6.1.1)")]
    UnspecifiedWithAddress,
}

/// Reads a frame as a router solicitation, with RFC 4861 §6.1.1's validity checks.
pub fn solicitation(frame: &[u8]) -> Result<Solicitation, Malformed> {
    let packet =
        SlicedPacket::from_ethernet(frame).map_err(|err| Malformed::Framing(err.to_string()))?;
    let Some(LinkSlice::Ethernet2(ethernet)) = &packet.link else {
        return Err(Malformed::Framing("no Ethernet II header".into()));
    };
    let Some(NetSlice::Ipv6(ipv6)) = &packet.net else {
        return Err(Malformed::Framing("no IPv6 header".into()));
    };
    let Some(TransportSlice::Icmpv6(icmp)) = &packet.transport else {
        return Err(Malformed::Framing("no ICMPv6 message".into()));
    };
    if icmp.icmp_type() != Icmpv6Type::RouterSolicitation {
        return Err(Malformed::NotASolicitation);
    }
    let header = ipv6.header();
    if header.hop_limit() != NDP_HOP_LIMIT {
        return Err(Malformed::HopLimit(header.hop_limit()));
    }
    if !icmp.is_checksum_valid(header.source(), header.destination()) {
        return Err(Malformed::Checksum);
    }
    if icmp.code_u8() != 0 {
        return Err(Malformed::Code(icmp.code_u8()));
    }
    let source = header.source_addr();
    let options = NdpOptionsIterator::from_slice(icmp.payload());
    for option in options {
        let option = option.map_err(|_| Malformed::Options)?;
        if source.is_unspecified() && matches!(option, NdpOptionSlice::SourceLinkLayerAddress(_)) {
            return Err(Malformed::UnspecifiedWithAddress);
        }
    }
    Ok(Solicitation {
        mac: MacAddr(ethernet.source()),
        source,
    })
}

/// This appliance on the served interface.
#[derive(Clone, Copy, Debug)]
pub struct Us {
    pub mac: [u8; 6],
    /// The source of every advertisement: RFC 4861 §6.1.2 wants a link-local one.
    pub link_local: Ipv6Addr,
}

/// The answer to `to`: a router advertisement that configures nothing, Ethernet unicast to
/// the machine. It goes to the machine's address, or to all nodes (ff02::1) when it solicited
/// from the unspecified address (RFC 4861 §6.2.6); the frame reaches that one machine either
/// way.
pub fn advertisement(us: Us, to: &Solicitation) -> Vec<u8> {
    let destination = match to.source.is_unspecified() {
        true => Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        false => to.source,
    };
    let header = RouterAdvertisementHeader {
        cur_hop_limit: 0,
        managed_address_config: false,
        other_config: false,
        router_lifetime: 0,
    };
    let mut payload = RouterAdvertisementPayload {
        reachable_time: 0,
        retrans_timer: 0,
    }
    .to_bytes()
    .to_vec();
    payload.extend_from_slice(&[SOURCE_LINK_LAYER_ADDRESS, 1]);
    payload.extend_from_slice(&us.mac);
    let builder = PacketBuilder::ethernet2(us.mac, to.mac.0)
        .ipv6(us.link_local.octets(), destination.octets(), NDP_HOP_LIMIT)
        .icmpv6(Icmpv6Type::RouterAdvertisement(header));
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, &payload)
        .expect("a router advertisement of fixed size always fits");
    frame
}

/// The socket's classic BPF filter: frames that arrive (not this host's own, which a packet
/// socket sees too), are IPv6, have ICMPv6 as next header (no extension headers, which a
/// solicitation has no use for) and ICMPv6 type 133. Everything else stays in the kernel.
fn only_router_solicitations() -> [SockFilter; 10] {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const LD_H_ABS: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
    const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const ETHERTYPE: u32 = 12;
    const NEXT_HEADER: u32 = 14 + 6;
    const ICMP_TYPE: u32 = 14 + 40;
    const PACKET_TYPE: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32;
    [
        SockFilter::new(LD_W_ABS, 0, 0, PACKET_TYPE),
        SockFilter::new(JEQ_K, 7, 0, libc::PACKET_OUTGOING as u32),
        SockFilter::new(LD_H_ABS, 0, 0, ETHERTYPE),
        SockFilter::new(JEQ_K, 0, 5, ETH_P_IPV6 as u32),
        SockFilter::new(LD_B_ABS, 0, 0, NEXT_HEADER),
        SockFilter::new(JEQ_K, 0, 3, ICMPV6 as u32),
        SockFilter::new(LD_B_ABS, 0, 0, ICMP_TYPE),
        SockFilter::new(JEQ_K, 0, 1, 133),
        SockFilter::new(RET_K, 0, 0, u16::MAX as u32),
        SockFilter::new(RET_K, 0, 0, 0),
    ]
}

/// A packet socket on `interface` that receives only router solicitations. It is created
/// bound to no protocol, so that nothing queues before the filter is in place.
fn solicitation_socket(index: u32) -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::PACKET, Type::RAW, None).context("opening a packet socket")?;
    socket
        .attach_filter(&only_router_solicitations())
        .context("attaching the router solicitation filter")?;
    crate::net::bind_packet_socket(&socket, index, ETH_P_IPV6)
        .context("binding the packet socket")?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// The interface's MAC and link-local address; when it has none (IPv6 off), the EUI-64 one
/// its MAC gives (RFC 4291 appendix A).
fn us_on(interface: &str) -> anyhow::Result<Us> {
    let mut mac = None;
    let mut link_local = None;
    for entry in nix::ifaddrs::getifaddrs().context("listing the interfaces' addresses")? {
        if entry.interface_name != interface {
            continue;
        }
        let Some(address) = entry.address else {
            continue;
        };
        if let Some(link) = address.as_link_addr().and_then(|link| link.addr()) {
            mac = Some(link);
        }
        if let Some(ip) = address.as_sockaddr_in6().map(|a| a.ip()) {
            if ip.is_unicast_link_local() {
                link_local = Some(ip);
            }
        }
    }
    let mac = mac.with_context(|| format!("{interface} has no MAC address"))?;
    let link_local = link_local.unwrap_or_else(|| {
        let m = mac;
        Ipv6Addr::new(
            0xfe80,
            0,
            0,
            0,
            u16::from_be_bytes([m[0] ^ 0x02, m[1]]),
            u16::from_be_bytes([m[2], 0xff]),
            u16::from_be_bytes([0xfe, m[3]]),
            u16::from_be_bytes([m[4], m[5]]),
        )
    });
    Ok(Us { mac, link_local })
}

/// Answers the router solicitations of owned, netbooting machines on `interface`, until an
/// error on the socket.
pub async fn serve(
    interface: String,
    machines: Arc<Machines>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let index = nix::net::if_::if_nametoindex(interface.as_str())
        .with_context(|| format!("no interface {interface}"))?;
    let us = us_on(&interface)?;
    // SAFETY: the socket owns its descriptor, and the AsyncFd owns the socket until it drops.
    let socket = unsafe { AsyncFd::register(solicitation_socket(index)?) }
        .map_err(|err| err.into_parts().1)
        .context("registering the packet socket")?;
    tracing::info!(interface, link_local = %us.link_local, "answering owned machines' IPv6 router solicitations");
    // Anyone on the LAN can send solicitations as fast as the link allows.
    let log = LogBudget::new("ndp", &metrics.log_lines_suppressed);
    let count = |outcome: &'static str| {
        metrics
            .router_solicitations
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    };
    let mut buffer = vec![0u8; 2048];
    loop {
        let length = socket
            .async_io(Interest::READABLE, |socket| {
                nix::sys::socket::recv(
                    socket.as_raw_fd(),
                    &mut buffer,
                    nix::sys::socket::MsgFlags::MSG_TRUNC,
                )
                .map_err(std::io::Error::from)
            })
            .await
            .context("receiving router solicitations")?;
        let Some(frame) = buffer.get(..length) else {
            count("malformed");
            continue;
        };
        let solicited = match solicitation(frame) {
            Ok(solicited) => solicited,
            Err(err) => {
                count("malformed");
                tracing::debug!("router solicitation dropped: {err}");
                continue;
            }
        };
        let netboots = machines
            .current()
            .get(&solicited.mac)
            .is_some_and(|machine| machine.allow_pxe);
        if !netboots {
            count("not_owned");
            continue;
        }
        let answer = advertisement(us, &solicited);
        match nix::sys::socket::send(
            socket.as_raw_fd(),
            &answer,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(_) => {
                count("answered");
                if log.allow(solicited.mac) {
                    tracing::info!(client = %solicited.mac, "router solicitation answered: not a router, nothing to configure");
                }
            }
            Err(err) => {
                count("send_failed");
                if log.allow(solicited.mac) {
                    tracing::warn!(client = %solicited.mac, "cannot send a router advertisement: {err}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACHINE: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const US: Us = Us {
        mac: [0x02, 0, 0, 0, 0, 1],
        link_local: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
    };

    /// A solicitation as iPXE sends it: from its link-local address to all routers, with its
    /// MAC in a source link-layer address option.
    fn solicit(source: Ipv6Addr, hop_limit: u8, options: &[u8]) -> Vec<u8> {
        let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
        let builder = PacketBuilder::ethernet2(MACHINE, [0x33, 0x33, 0, 0, 0, 2])
            .ipv6(source.octets(), all_routers.octets(), hop_limit)
            .icmpv6(Icmpv6Type::RouterSolicitation);
        let mut frame = Vec::new();
        builder.write(&mut frame, options).unwrap();
        frame
    }

    fn link_local() -> Ipv6Addr {
        "fe80::5054:ff:fe12:3456".parse().unwrap()
    }

    fn slla() -> Vec<u8> {
        let mut option = vec![SOURCE_LINK_LAYER_ADDRESS, 1];
        option.extend_from_slice(&MACHINE);
        option
    }

    #[test]
    fn reads_ipxes_solicitation() {
        assert_eq!(
            solicitation(&solicit(link_local(), 255, &slla())),
            Ok(Solicitation {
                mac: MacAddr(MACHINE),
                source: link_local()
            })
        );
    }

    #[test]
    fn rejects_what_rfc_4861_says_to_drop() {
        assert_eq!(
            solicitation(&solicit(link_local(), 64, &slla())),
            Err(Malformed::HopLimit(64))
        );
        assert_eq!(
            solicitation(&solicit(Ipv6Addr::UNSPECIFIED, 255, &slla())),
            Err(Malformed::UnspecifiedWithAddress)
        );
        assert_eq!(
            solicitation(&solicit(
                link_local(),
                255,
                &[SOURCE_LINK_LAYER_ADDRESS, 0, 0, 0, 0, 0, 0, 0]
            )),
            Err(Malformed::Options)
        );
        let mut corrupted = solicit(link_local(), 255, &slla());
        *corrupted.last_mut().unwrap() ^= 1;
        assert_eq!(solicitation(&corrupted), Err(Malformed::Checksum));
        assert!(matches!(
            solicitation(&corrupted[..30]),
            Err(Malformed::Framing(_))
        ));
        let advertised = advertisement(
            US,
            &Solicitation {
                mac: MacAddr(MACHINE),
                source: link_local(),
            },
        );
        assert_eq!(solicitation(&advertised), Err(Malformed::NotASolicitation));
    }

    #[test]
    fn the_advertisement_configures_nothing_and_goes_to_the_machine_alone() {
        let frame = advertisement(
            US,
            &Solicitation {
                mac: MacAddr(MACHINE),
                source: link_local(),
            },
        );
        let packet = SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(LinkSlice::Ethernet2(ethernet)) = &packet.link else {
            panic!("Ethernet")
        };
        assert_eq!(ethernet.destination(), MACHINE);
        assert_eq!(ethernet.source(), US.mac);
        let Some(NetSlice::Ipv6(ipv6)) = &packet.net else {
            panic!("IPv6")
        };
        assert_eq!(ipv6.header().hop_limit(), 255);
        assert_eq!(ipv6.header().source_addr(), US.link_local);
        assert_eq!(ipv6.header().destination_addr(), link_local());
        let Some(TransportSlice::Icmpv6(icmp)) = &packet.transport else {
            panic!("ICMPv6")
        };
        assert!(icmp.is_checksum_valid(ipv6.header().source(), ipv6.header().destination()));
        let Icmpv6Type::RouterAdvertisement(header) = icmp.icmp_type() else {
            panic!("a router advertisement")
        };
        // Not a default router, no DHCPv6, no hop limit of its own.
        assert_eq!(header.router_lifetime, 0);
        assert!(!header.managed_address_config && !header.other_config);
        assert_eq!(header.cur_hop_limit, 0);
        // Reachable time and retransmission timer unspecified, then our MAC and nothing else.
        assert_eq!(icmp.payload(), [&[0u8; 8][..], &[1, 1], &US.mac].concat());

        let from_nowhere = advertisement(
            US,
            &Solicitation {
                mac: MacAddr(MACHINE),
                source: Ipv6Addr::UNSPECIFIED,
            },
        );
        let packet = SlicedPacket::from_ethernet(&from_nowhere).unwrap();
        let Some(NetSlice::Ipv6(ipv6)) = &packet.net else {
            panic!("IPv6")
        };
        assert_eq!(
            ipv6.header().destination_addr(),
            "ff02::1".parse::<Ipv6Addr>().unwrap()
        );
    }
}
