//! The XDP DHCP gate. It makes exactly the decision of the reference classifier in `spec.rs`
//! (whose doc comment lists the rules); a differential test holds the two together.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Host builds only need the library; the program itself is built for bpfel by
    // boot-userspace/build.rs.
}

#[cfg(target_arch = "bpf")]
mod gate {
    use aya_ebpf::{
        bindings::xdp_action::{XDP_DROP, XDP_PASS},
        helpers::bpf_ktime_get_ns,
        macros::{map, xdp},
        maps::{Array, HashMap, LruHashMap, PerCpuArray},
        programs::XdpContext,
    };
    use boot_ebpf::{
        wire::*, Counter, UnknownMacStat, UnknownPolicy, ALLOWLIST_CAPACITY, DHCP_SERVER_PORT,
        PXE_BOOT_SERVER_PORT, UNKNOWN_MACS_CAPACITY,
    };

    #[map]
    static ALLOWLIST: HashMap<[u8; 6], u8> = HashMap::with_max_entries(ALLOWLIST_CAPACITY, 0);
    #[map]
    static POLICY: Array<u32> = Array::with_max_entries(1, 0);
    #[map]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);
    #[map]
    static UNKNOWN_MACS: LruHashMap<[u8; 6], UnknownMacStat> =
        LruHashMap::with_max_entries(UNKNOWN_MACS_CAPACITY, 0);

    #[xdp]
    pub fn wisp_gate(ctx: XdpContext) -> u32 {
        let (pass, counter) = match classify(&ctx) {
            Decision::Other => (true, Counter::PassedOther),
            Decision::Malformed => (false, Counter::DroppedMalformed),
            Decision::Known => (true, Counter::PassedKnown),
            Decision::Unknown(mac) => {
                record_unknown(&mac);
                match unknown_policy() {
                    UnknownPolicy::Drop => (false, Counter::DroppedUnknown),
                    UnknownPolicy::Pass => (true, Counter::PassedUnknown),
                }
            }
        };
        if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
            // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
            unsafe { *slot += 1 };
        }
        if pass {
            XDP_PASS
        } else {
            XDP_DROP
        }
    }

    enum Decision {
        Other,
        Malformed,
        Known,
        Unknown([u8; 6]),
    }

    #[inline(always)]
    fn classify(ctx: &XdpContext) -> Decision {
        let Some(ip) = ipv4_offset(ctx) else {
            return Decision::Other;
        };
        let Some(version_ihl) = load::<u8>(ctx, ip) else {
            return Decision::Other;
        };
        // The whole minimal header must be in the frame before any field of it counts.
        if load::<[u8; IPV4_MIN_HEADER_LEN]>(ctx, ip).is_none()
            || version_ihl >> 4 != 4
            || load::<u8>(ctx, ip + 9) != Some(IPPROTO_UDP)
        {
            return Decision::Other;
        }
        let ihl = usize::from(version_ihl & 0x0f) * 4;
        if ihl < IPV4_MIN_HEADER_LEN {
            return Decision::Malformed;
        }
        let Some(fragment) = load_be16(ctx, ip + 6) else {
            return Decision::Other;
        };
        if fragment & IPV4_FRAGMENT_OFFSET_MASK != 0 {
            return Decision::Other;
        }
        let udp = ip + ihl;
        let Some(dest_port) = load_be16(ctx, udp + 2) else {
            return Decision::Other;
        };
        if dest_port != DHCP_SERVER_PORT && dest_port != PXE_BOOT_SERVER_PORT {
            return Decision::Other;
        }
        if fragment & IPV4_MORE_FRAGMENTS != 0 {
            return Decision::Malformed;
        }
        let Some(udp_header) = load::<[u8; UDP_HEADER_LEN]>(ctx, udp) else {
            return Decision::Malformed;
        };
        let ip_available = ctx.data_end() - ctx.data() - ip;
        let Some(total_len) = load_be16(ctx, ip + 2) else {
            return Decision::Malformed;
        };
        let total_len = usize::from(total_len);
        if total_len < ihl + UDP_HEADER_LEN || total_len > ip_available {
            return Decision::Malformed;
        }
        let udp_len = usize::from(u16::from_be_bytes([udp_header[4], udp_header[5]]));
        if udp_len < UDP_HEADER_LEN || udp_len > total_len - ihl {
            return Decision::Malformed;
        }
        if udp_len - UDP_HEADER_LEN < BOOTP_HEADER_LEN {
            return Decision::Malformed;
        }
        let bootp = udp + UDP_HEADER_LEN;
        // The length checks above put these bytes inside the frame; the verifier still wants
        // each load bounds-checked, and a failed one is treated like the length lie it would be.
        let (Some(htype), Some(hlen), Some(chaddr)) = (
            load::<u8>(ctx, bootp + BOOTP_HTYPE_OFFSET),
            load::<u8>(ctx, bootp + BOOTP_HLEN_OFFSET),
            load::<[u8; 6]>(ctx, bootp + BOOTP_CHADDR_OFFSET),
        ) else {
            return Decision::Malformed;
        };
        if htype != HTYPE_ETHERNET || hlen != HLEN_ETHERNET {
            return Decision::Malformed;
        }
        // SAFETY: the value is a plain u8 and is only tested for presence.
        // By reference, as clippy would not have it: passed by value, the key is copied in a
        // way the verifier rejects ("R8 !read_ok", seen on kernel 6.1).
        #[allow(clippy::needless_borrows_for_generic_args)]
        if unsafe { ALLOWLIST.get(&chaddr) }.is_some() {
            Decision::Known
        } else {
            Decision::Unknown(chaddr)
        }
    }

    /// The offset of the IPv4 header after Ethernet and at most two VLAN tags.
    #[inline(always)]
    fn ipv4_offset(ctx: &XdpContext) -> Option<usize> {
        let mut ethertype_at = 12;
        for _ in 0..=MAX_VLAN_TAGS {
            match load_be16(ctx, ethertype_at)? {
                ETHERTYPE_IPV4 => return Some(ethertype_at + 2),
                ETHERTYPE_VLAN | ETHERTYPE_QINQ => ethertype_at += VLAN_TAG_LEN,
                _ => return None,
            }
        }
        None
    }

    #[inline(always)]
    fn unknown_policy() -> UnknownPolicy {
        UnknownPolicy::from_raw(POLICY.get(0).copied().unwrap_or(UnknownPolicy::Drop as u32))
    }

    #[inline(always)]
    fn record_unknown(mac: &[u8; 6]) {
        // SAFETY: a helper call with no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        match UNKNOWN_MACS.get_ptr_mut(mac) {
            // SAFETY: the pointer is into the map's value; concurrent CPUs may race on the
            // count, which is documented as approximate.
            Some(stat) => unsafe {
                (*stat).count += 1;
                (*stat).last_seen_ns = now;
            },
            None => {
                let _ = UNKNOWN_MACS.insert(
                    mac,
                    UnknownMacStat {
                        count: 1,
                        last_seen_ns: now,
                    },
                    0,
                );
            }
        }
    }

    #[inline(always)]
    fn load<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
        let start = ctx.data();
        if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
            return None;
        }
        // SAFETY: bounds-checked against data_end just above.
        Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
    }

    #[inline(always)]
    fn load_be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
        load::<[u8; 2]>(ctx, offset).map(u16::from_be_bytes)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}
