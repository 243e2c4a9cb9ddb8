//! The reference classifier: the specification of the XDP gate, in plain Rust.
//!
//! The kernel program in `main.rs` must make exactly the decision [`classify_frame`] makes for
//! every frame; a differential test runs generated frames through both. When XDP cannot be used,
//! the daemon applies [`classify_bootp`] to what its DHCP socket receives, with the same meaning.
//!
//! The rules, in the order they are applied:
//!
//! 1. Ethernet, then up to [`MAX_VLAN_TAGS`] 802.1Q (0x8100) or 802.1ad (0x88a8) tags. A frame
//!    too short for these headers, with a third tag, or not IPv4 is **other** traffic.
//! 2. IPv4: fewer than 20 header bytes in the frame, a version other than 4, or a protocol other
//!    than UDP is **other** traffic (the kernel's own checks deal with it).
//! 3. A UDP datagram with an IHL below 5 is **malformed**: its ports cannot be located, and a
//!    header that lies about its length must not reach the DHCP server either.
//! 4. Non-first IPv4 fragments (offset ≠ 0) carry no UDP header, so they are **other** traffic.
//!    They are harmless: without the first fragment, which the gate judged, they never
//!    reassemble.
//! 5. A frame that ends before the UDP destination port is **other** traffic, and so is a
//!    destination port other than 67 (DHCP) or 4011 (PXE boot server).
//! 6. From here on the packet is DHCP to us. It is **malformed** when: it is a first fragment
//!    (more-fragments set; real DHCP clients never fragment, and a datagram whose first
//!    fragment is dropped never reassembles), the frame ends inside the UDP header, the IPv4
//!    total length is shorter than the headers
//!    or longer than the frame, the UDP length is below 8 or longer than the IPv4 payload, the
//!    BOOTP payload is shorter than the 236-byte fixed header, or htype/hlen are not Ethernet
//!    (1/6).
//! 7. The client is `chaddr` (not the Ethernet source, which is the relay's MAC for relayed
//!    DHCP). In the allowlist: **known**, passed. Otherwise **unknown**: dropped, or passed when
//!    the policy is discovery mode; either way it is recorded in the unknown-MAC map.
use crate::{wire::*, Counter, UnknownPolicy, DHCP_SERVER_PORT, PXE_BOOT_SERVER_PORT};

/// What the gate decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// True for XDP_PASS, false for XDP_DROP.
    pub pass: bool,
    /// The counter the packet increments.
    pub counter: Counter,
    /// Set when the packet is DHCP from a MAC that is not in the allowlist.
    pub unknown_mac: Option<[u8; 6]>,
}

impl Verdict {
    const fn other() -> Self {
        Verdict {
            pass: true,
            counter: Counter::PassedOther,
            unknown_mac: None,
        }
    }
    const fn malformed() -> Self {
        Verdict {
            pass: false,
            counter: Counter::DroppedMalformed,
            unknown_mac: None,
        }
    }
}

/// Classifies a whole Ethernet frame, as the XDP program does.
pub fn classify_frame(
    frame: &[u8],
    is_known: impl Fn(&[u8; 6]) -> bool,
    policy: UnknownPolicy,
) -> Verdict {
    let Some(ip_offset) = ipv4_offset(frame) else {
        return Verdict::other();
    };
    let ip = &frame[ip_offset..];
    if ip.len() < IPV4_MIN_HEADER_LEN || ip[0] >> 4 != 4 || ip[9] != IPPROTO_UDP {
        return Verdict::other();
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < IPV4_MIN_HEADER_LEN {
        return Verdict::malformed();
    }
    let fragment = be16(ip, 6);
    if fragment & IPV4_FRAGMENT_OFFSET_MASK != 0 {
        return Verdict::other();
    }
    // The ports are the first four bytes of the UDP header.
    let Some(ports) = ip.get(ihl..ihl + 4) else {
        return Verdict::other();
    };
    let dest_port = be16(ports, 2);
    if dest_port != DHCP_SERVER_PORT && dest_port != PXE_BOOT_SERVER_PORT {
        return Verdict::other();
    }
    if fragment & IPV4_MORE_FRAGMENTS != 0 {
        return Verdict::malformed();
    }
    let Some(udp) = ip.get(ihl..ihl + UDP_HEADER_LEN) else {
        return Verdict::malformed();
    };
    let total_len = usize::from(be16(ip, 2));
    if total_len < ihl + UDP_HEADER_LEN || total_len > ip.len() {
        return Verdict::malformed();
    }
    let udp_len = usize::from(be16(udp, 4));
    if udp_len < UDP_HEADER_LEN || udp_len > total_len - ihl {
        return Verdict::malformed();
    }
    let payload_start = ihl + UDP_HEADER_LEN;
    let payload_end = ihl + udp_len;
    classify_bootp(&ip[payload_start..payload_end], is_known, policy)
}

/// Classifies a UDP payload already known to be addressed to port 67 or 4011: the part of the
/// gate that applies when the daemon filters in userspace.
pub fn classify_bootp(
    payload: &[u8],
    is_known: impl Fn(&[u8; 6]) -> bool,
    policy: UnknownPolicy,
) -> Verdict {
    if payload.len() < BOOTP_HEADER_LEN
        || payload[BOOTP_HTYPE_OFFSET] != HTYPE_ETHERNET
        || payload[BOOTP_HLEN_OFFSET] != HLEN_ETHERNET
    {
        return Verdict::malformed();
    }
    let mut chaddr = [0u8; 6];
    chaddr.copy_from_slice(&payload[BOOTP_CHADDR_OFFSET..BOOTP_CHADDR_OFFSET + 6]);
    if is_known(&chaddr) {
        return Verdict {
            pass: true,
            counter: Counter::PassedKnown,
            unknown_mac: None,
        };
    }
    match policy {
        UnknownPolicy::Drop => Verdict {
            pass: false,
            counter: Counter::DroppedUnknown,
            unknown_mac: Some(chaddr),
        },
        UnknownPolicy::Pass => Verdict {
            pass: true,
            counter: Counter::PassedUnknown,
            unknown_mac: Some(chaddr),
        },
    }
}

/// The offset of the IPv4 header, or None when the frame is not (complete enough to be) IPv4.
fn ipv4_offset(frame: &[u8]) -> Option<usize> {
    let mut ethertype_at = 12;
    for _ in 0..=MAX_VLAN_TAGS {
        let ethertype = be16(frame.get(ethertype_at..ethertype_at + 2)?, 0);
        match ethertype {
            ETHERTYPE_IPV4 => return Some(ethertype_at + 2),
            ETHERTYPE_VLAN | ETHERTYPE_QINQ => ethertype_at += VLAN_TAG_LEN,
            _ => return None,
        }
    }
    None
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: [u8; 6] = [0x1c, 0x69, 0x7a, 0x11, 0x22, 0x33];

    fn bootp(chaddr: [u8; 6]) -> [u8; 240] {
        let mut p = [0u8; 240];
        p[0] = 1;
        p[1] = HTYPE_ETHERNET;
        p[2] = HLEN_ETHERNET;
        p[28..34].copy_from_slice(&chaddr);
        p
    }

    fn known(mac: &[u8; 6]) -> bool {
        *mac == KNOWN
    }

    #[test]
    fn known_chaddr_passes_and_unknown_follows_policy() {
        assert_eq!(
            classify_bootp(&bootp(KNOWN), known, UnknownPolicy::Drop).counter,
            Counter::PassedKnown
        );
        let other = [2, 0, 0, 0, 0, 1];
        let dropped = classify_bootp(&bootp(other), known, UnknownPolicy::Drop);
        assert_eq!(
            (dropped.pass, dropped.counter, dropped.unknown_mac),
            (false, Counter::DroppedUnknown, Some(other))
        );
        let passed = classify_bootp(&bootp(other), known, UnknownPolicy::Pass);
        assert_eq!(
            (passed.pass, passed.counter),
            (true, Counter::PassedUnknown)
        );
    }

    #[test]
    fn short_or_non_ethernet_bootp_is_malformed() {
        assert_eq!(
            classify_bootp(&bootp(KNOWN)[..235], known, UnknownPolicy::Pass),
            Verdict::malformed()
        );
        let mut bad_hlen = bootp(KNOWN);
        bad_hlen[2] = 16;
        assert_eq!(
            classify_bootp(&bad_hlen, known, UnknownPolicy::Pass),
            Verdict::malformed()
        );
    }

    #[test]
    fn non_ip_frames_are_other() {
        let arp = [0u8; 60];
        let mut arp = arp;
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(
            classify_frame(&arp, known, UnknownPolicy::Drop),
            Verdict::other()
        );
        assert_eq!(
            classify_frame(&[0u8; 5], known, UnknownPolicy::Drop),
            Verdict::other()
        );
    }
}
