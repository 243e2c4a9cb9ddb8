//! Frame and DHCP message builders for the tests. DHCP messages come from dhcproto (a real
//! codec); the Ethernet/VLAN/IPv4/UDP framing is built by hand because the tests need to make
//! it lie (bad IHL, lengths, truncation).
use std::net::Ipv4Addr;

use dhcproto::{v4, Encodable, Encoder};

/// A DHCPDISCOVER from a PXE client with MAC `chaddr`; with `relay`, as forwarded by a relay
/// agent at that address, with option 82 (circuit id "port7").
pub fn discover(chaddr: [u8; 6], relay: Option<Ipv4Addr>) -> Vec<u8> {
    pxe_discover(chaddr, 0x5749_5350, None, relay)
}

/// The DISCOVER (transaction `xid`) of an iPXE (user class `iPXE`) that a firmware DISCOVER
/// ([`discover`]) answered moments before made Wisp chainload: Wisp answers it with the
/// machine's script URL.
pub fn ipxe_discover(chaddr: [u8; 6], xid: u32) -> Vec<u8> {
    pxe_discover(chaddr, xid, Some(b"iPXE"), None)
}

fn pxe_discover(
    chaddr: [u8; 6],
    xid: u32,
    user_class: Option<&[u8]>,
    relay: Option<Ipv4Addr>,
) -> Vec<u8> {
    let mut message = wisp_simulated_rack::pxe_discover(&chaddr, xid, user_class);
    if let Some(relay) = relay {
        message.set_giaddr(relay).set_hops(1);
        let mut info = v4::relay::RelayAgentInformation::default();
        info.insert(v4::relay::RelayInfo::AgentCircuitId(b"port7".to_vec()));
        message
            .opts_mut()
            .insert(v4::DhcpOption::RelayAgentInformation(info));
    }
    let mut bytes = Vec::new();
    message
        .encode(&mut Encoder::new(&mut bytes))
        .expect("a DISCOVER encodes");
    bytes
}

/// How to frame a UDP payload, including the ways a frame can lie.
#[derive(Clone, Debug)]
pub struct Framing {
    pub eth_src: [u8; 6],
    /// TPIDs of the VLAN tags, outermost first.
    pub vlan_tpids: Vec<u16>,
    pub ethertype: u16,
    pub version: u8,
    /// IPv4 option bytes (a multiple of 4, at most 40).
    pub ip_options: usize,
    /// Written into the IHL field instead of the true value.
    pub ihl_override: Option<u8>,
    pub protocol: u8,
    /// The flags/fragment-offset field.
    pub fragment: u16,
    pub total_len_delta: i32,
    pub dest_port: u16,
    pub udp_len_delta: i32,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            eth_src: [0x02, 0, 0, 0, 0, 0x99],
            vlan_tpids: Vec::new(),
            ethertype: 0x0800,
            version: 4,
            ip_options: 0,
            ihl_override: None,
            protocol: 17,
            fragment: 0,
            total_len_delta: 0,
            dest_port: 67,
            udp_len_delta: 0,
        }
    }
}

fn lie(value: usize, delta: i32) -> u16 {
    (value as i64 + i64::from(delta)).clamp(0, 0xffff) as u16
}

impl Framing {
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(64 + payload.len());
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&self.eth_src);
        for &tpid in &self.vlan_tpids {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&[0x00, 0x07]); // VLAN 7
        }
        frame.extend_from_slice(&self.ethertype.to_be_bytes());
        let ihl = 5 + self.ip_options / 4;
        let udp_len = 8 + payload.len();
        let total_len = ihl * 4 + udp_len;
        frame.push((self.version << 4) | self.ihl_override.unwrap_or(ihl as u8));
        frame.push(0);
        frame.extend_from_slice(&lie(total_len, self.total_len_delta).to_be_bytes());
        frame.extend_from_slice(&[0x12, 0x34]);
        frame.extend_from_slice(&self.fragment.to_be_bytes());
        frame.extend_from_slice(&[64, self.protocol, 0, 0]);
        frame.extend_from_slice(&[0, 0, 0, 0, 255, 255, 255, 255]);
        frame.extend(std::iter::repeat_n(1u8, self.ip_options)); // NOP options
        frame.extend_from_slice(&68u16.to_be_bytes());
        frame.extend_from_slice(&self.dest_port.to_be_bytes());
        frame.extend_from_slice(&lie(udp_len, self.udp_len_delta).to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(payload);
        frame
    }
}

/// A relayed DHCP message as a relay agent at `relay` forwards it: giaddr set, hops 1, and
/// option 82 with the given circuit id.
pub fn relayed(
    message_type: v4::MessageType,
    chaddr: [u8; 6],
    relay: Ipv4Addr,
    requested: Option<Ipv4Addr>,
    server: Option<Ipv4Addr>,
    circuit: &[u8],
) -> Vec<u8> {
    let mut message = v4::Message::default();
    message
        .set_chaddr(&chaddr)
        .set_xid(0x5749_0001)
        .set_giaddr(relay)
        .set_hops(1);
    let opts = message.opts_mut();
    opts.insert(v4::DhcpOption::MessageType(message_type));
    if let Some(requested) = requested {
        opts.insert(v4::DhcpOption::RequestedIpAddress(requested));
    }
    if let Some(server) = server {
        opts.insert(v4::DhcpOption::ServerIdentifier(server));
    }
    let mut info = v4::relay::RelayAgentInformation::default();
    info.insert(v4::relay::RelayInfo::AgentCircuitId(circuit.to_vec()));
    opts.insert(v4::DhcpOption::RelayAgentInformation(info));
    let mut bytes = Vec::new();
    message
        .encode(&mut Encoder::new(&mut bytes))
        .expect("a relayed message encodes");
    bytes
}
