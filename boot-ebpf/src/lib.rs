//! Wisp's XDP DHCP gate, as data: the map layout shared by the kernel program (`main.rs`) and
//! userspace, and the reference classifier (`spec`) that defines what the program must decide.
//!
//! The gate's one job: a DHCP packet whose client hardware address (`chaddr`) Wisp does not own
//! never reaches userspace, so another DHCP server on the LAN keeps serving that machine.
#![no_std]

#[cfg(not(target_arch = "bpf"))]
pub mod spec;

/// Map names, as declared by the kernel program and looked up by the loader.
pub mod maps {
    /// `HashMap<[u8; 6], u8>`: the client MACs Wisp owns (chaddr of DHCP requests).
    pub const ALLOWLIST: &str = "ALLOWLIST";
    /// `Array<u32>` with one entry: what happens to an unknown MAC (see [`super::UnknownPolicy`]).
    pub const POLICY: &str = "POLICY";
    /// `PerCpuArray<u64>` indexed by [`super::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `LruHashMap<[u8; 6], UnknownMacStat>`: unknown MACs that asked, for enrollment.
    pub const UNKNOWN_MACS: &str = "UNKNOWN_MACS";
}

/// The name of the XDP program inside the object file.
pub const PROGRAM_NAME: &str = "wisp_gate";

/// Capacity of the allowlist map: the number of machines one appliance can own.
pub const ALLOWLIST_CAPACITY: u32 = 65_536;
/// Capacity of the unknown-MAC LRU map; the least recently seen entry is evicted first.
pub const UNKNOWN_MACS_CAPACITY: u32 = 4_096;

/// UDP port of the DHCP server.
pub const DHCP_SERVER_PORT: u16 = 67;
/// UDP port of the PXE boot server (the proxyDHCP "port 4011" exchange).
pub const PXE_BOOT_SERVER_PORT: u16 = 4011;

/// What the gate does with a DHCP packet whose chaddr is not in the allowlist.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownPolicy {
    /// The default: another DHCP server owns that machine.
    Drop = 0,
    /// Discovery mode: pass unknown MACs to userspace (still recorded in `UNKNOWN_MACS`).
    Pass = 1,
}

impl UnknownPolicy {
    pub const fn from_raw(raw: u32) -> Self {
        // Any value other than Pass means Drop: a corrupt policy never fails open.
        if raw == Self::Pass as u32 {
            Self::Pass
        } else {
            Self::Drop
        }
    }
}

/// The per-CPU counters. Every packet the program sees increments exactly one of them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    /// DHCP from a MAC in the allowlist.
    PassedKnown = 0,
    /// DHCP from an unknown MAC, dropped by the default policy.
    DroppedUnknown = 1,
    /// DHCP that is truncated or malformed.
    DroppedMalformed = 2,
    /// Everything that is not DHCP to us.
    PassedOther = 3,
    /// DHCP from an unknown MAC, passed because the policy is discovery mode.
    PassedUnknown = 4,
}

impl Counter {
    pub const ALL: [Counter; 5] = [
        Counter::PassedKnown,
        Counter::DroppedUnknown,
        Counter::DroppedMalformed,
        Counter::PassedOther,
        Counter::PassedUnknown,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn name(self) -> &'static str {
        match self {
            Counter::PassedKnown => "passed_known",
            Counter::DroppedUnknown => "dropped_unknown",
            Counter::DroppedMalformed => "dropped_malformed",
            Counter::PassedOther => "passed_other",
            Counter::PassedUnknown => "passed_unknown",
        }
    }
}

/// Value of the `UNKNOWN_MACS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnknownMacStat {
    /// DHCP packets seen from this MAC (approximate under concurrent CPUs).
    pub count: u64,
    /// `CLOCK_MONOTONIC` nanoseconds (bpf_ktime_get_ns) of the latest packet.
    pub last_seen_ns: u64,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for UnknownMacStat {}

/// Fixed offsets of the wire formats the gate reads.
pub mod wire {
    pub const ETH_HEADER_LEN: usize = 14;
    pub const VLAN_TAG_LEN: usize = 4;
    pub const ETHERTYPE_IPV4: u16 = 0x0800;
    pub const ETHERTYPE_VLAN: u16 = 0x8100;
    pub const ETHERTYPE_QINQ: u16 = 0x88a8;
    /// At most this many VLAN tags are parsed; a frame with more is not DHCP to us.
    pub const MAX_VLAN_TAGS: usize = 2;
    pub const IPV4_MIN_HEADER_LEN: usize = 20;
    pub const IPPROTO_UDP: u8 = 17;
    pub const UDP_HEADER_LEN: usize = 8;
    /// The fixed BOOTP header (op .. file), before the DHCP magic cookie and options.
    pub const BOOTP_HEADER_LEN: usize = 236;
    pub const BOOTP_HTYPE_OFFSET: usize = 1;
    pub const BOOTP_HLEN_OFFSET: usize = 2;
    pub const BOOTP_CHADDR_OFFSET: usize = 28;
    pub const HTYPE_ETHERNET: u8 = 1;
    pub const HLEN_ETHERNET: u8 = 6;
    /// IPv4 flags/fragment-offset field: "more fragments" and the offset mask.
    pub const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
    pub const IPV4_FRAGMENT_OFFSET_MASK: u16 = 0x1fff;
}
