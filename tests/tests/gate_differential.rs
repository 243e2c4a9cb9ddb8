//! The loaded XDP program and the reference classifier decide alike on generated frames, run
//! through the kernel with BPF_PROG_TEST_RUN, and the program's counters add up.
use std::collections::{BTreeMap, BTreeSet};

use boot_ebpf::{spec::classify_frame, Counter, UnknownPolicy};
use boot_userspace::gate::XdpGate;
use rand::{rngs::StdRng, Rng, SeedableRng};
use wisp_tests::{
    frames::{discover, Framing},
    long_mode, report, require_root,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// Random and mutated frames per policy; a million in the long mode (`cargo xtask test --long`).
const RANDOM_FRAMES: usize = 100_000;
const RANDOM_FRAMES_LONG: usize = 1_000_000;
/// The kernel refuses test frames shorter than an Ethernet header.
const MIN_TEST_FRAME: usize = 14;

struct Harness {
    gate: XdpGate,
    allowlist: BTreeSet<[u8; 6]>,
    policy: UnknownPolicy,
    expected_counters: BTreeMap<Counter, u64>,
    expected_unknown: BTreeMap<[u8; 6], u64>,
    frames: usize,
}

impl Harness {
    fn new(policy: UnknownPolicy, allowlist: BTreeSet<[u8; 6]>) -> Harness {
        let mut gate = XdpGate::load(policy).expect("load the XDP program");
        gate.sync_allowlist(&allowlist).expect("fill the allowlist");
        Harness {
            gate,
            allowlist,
            policy,
            expected_counters: BTreeMap::new(),
            expected_unknown: BTreeMap::new(),
            frames: 0,
        }
    }

    fn check(&mut self, frame: &[u8]) -> Counter {
        let expected = classify_frame(frame, |mac| self.allowlist.contains(mac), self.policy);
        let action = self.gate.test_run(frame).expect("test run");
        let expected_action = if expected.pass { XDP_PASS } else { XDP_DROP };
        assert_eq!(
            action, expected_action,
            "verdict differs ({expected:?}) for frame {frame:02x?}"
        );
        *self.expected_counters.entry(expected.counter).or_default() += 1;
        if let Some(mac) = expected.unknown_mac {
            *self.expected_unknown.entry(mac).or_default() += 1;
        }
        self.frames += 1;
        expected.counter
    }

    fn check_counters(&self) {
        let counters = self.gate.counters().expect("read counters");
        for counter in Counter::ALL {
            let expected = self.expected_counters.get(&counter).copied().unwrap_or(0);
            assert_eq!(
                counters[counter as usize],
                expected,
                "counter {}",
                counter.name()
            );
        }
        assert_eq!(
            counters.iter().sum::<u64>(),
            self.frames as u64,
            "every frame counts exactly once"
        );
        let unknown: BTreeMap<[u8; 6], u64> = self
            .gate
            .unknown_macs()
            .expect("read unknown MACs")
            .into_iter()
            .map(|(mac, stat)| (mac, stat.count))
            .collect();
        assert_eq!(unknown, self.expected_unknown, "unknown-MAC record");
    }
}

fn mac(rng: &mut StdRng, pool: &[[u8; 6]]) -> [u8; 6] {
    pool[rng.random_range(0..pool.len())]
}

/// The shape of a generated DHCP frame, for the coverage check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Shape {
    vlan_tags: usize,
    relayed: bool,
    ip_options: bool,
}

fn random_frame(rng: &mut StdRng, known: &[[u8; 6]], unknown: &[[u8; 6]]) -> (Vec<u8>, Shape) {
    let client = if rng.random_bool(0.5) {
        mac(rng, known)
    } else {
        mac(rng, unknown)
    };
    let relayed = rng.random_bool(0.3);
    let mut payload = discover(client, relayed.then_some([10, 0, 7, 1].into()));
    match rng.random_range(0..20) {
        0 => payload[1] = rng.random_range(2..=255), // htype not Ethernet
        1 => payload[2] = rng.random_range(0..=16),  // hlen (6 is valid too)
        2 => payload.truncate(rng.random_range(0..236)), // short BOOTP header
        _ => {}
    }
    let vlan_tags = [0, 0, 0, 1, 1, 2, 2, 3][rng.random_range(0..8)];
    let mut framing = Framing {
        eth_src: if relayed {
            [0x02, 0xee, 0, 0, 0, 1]
        } else {
            client
        },
        vlan_tpids: (0..vlan_tags)
            .map(|_| if rng.random_bool(0.5) { 0x8100 } else { 0x88a8 })
            .collect(),
        ip_options: 4 * rng.random_range(0..=10),
        ..Framing::default()
    };
    match rng.random_range(0..40) {
        0 => framing.ethertype = [0x0806, 0x86dd, 0x88cc][rng.random_range(0..3)],
        1 => framing.protocol = [1, 6, 47][rng.random_range(0..3)],
        2 => framing.dest_port = [68, 53, 80, 4012, 66][rng.random_range(0..5)],
        3 => framing.fragment = 0x2000, // first fragment
        4 => {
            framing.fragment =
                rng.random_range(1..0x2000) | if rng.random_bool(0.5) { 0x2000 } else { 0 }
        }
        5 => framing.ihl_override = Some(rng.random_range(0..16)),
        6 => framing.total_len_delta = rng.random_range(-40..40),
        7 => framing.udp_len_delta = rng.random_range(-300..300),
        8 => framing.version = 6,
        9 => framing.dest_port = 4011,
        _ => {}
    }
    let mut frame = framing.frame(&payload);
    if rng.random_bool(0.2) {
        frame.truncate(rng.random_range(MIN_TEST_FRAME..=frame.len()));
    } else if rng.random_bool(0.1) {
        // Ethernet padding after the IP packet is legal and must not be read as a lie.
        frame.extend(std::iter::repeat_n(0, rng.random_range(1..64)));
    }
    let shape = Shape {
        vlan_tags,
        relayed,
        ip_options: framing.ip_options > 0,
    };
    (frame, shape)
}

fn macs(first_byte: u8, count: u8) -> Vec<[u8; 6]> {
    (0..count)
        .map(|i| [first_byte, 0x69, 0x7a, 0x11, 0x22, i])
        .collect()
}

#[test]
fn xdp_program_matches_the_reference_classifier() {
    require_root!();
    let known = macs(0x1c, 8);
    let unknown = macs(0x02, 16);
    for policy in [UnknownPolicy::Drop, UnknownPolicy::Pass] {
        let mut harness = Harness::new(policy, known.iter().copied().collect());
        let mut rng = StdRng::seed_from_u64(0x5749_5350 + policy as u64);
        let mut judged_by_chaddr: BTreeMap<Shape, usize> = BTreeMap::new();
        let random_frames = if long_mode() {
            RANDOM_FRAMES_LONG
        } else {
            RANDOM_FRAMES
        };
        for _ in 0..random_frames {
            let (frame, shape) = random_frame(&mut rng, &known, &unknown);
            let counter = harness.check(&frame);
            if matches!(
                counter,
                Counter::PassedKnown | Counter::DroppedUnknown | Counter::PassedUnknown
            ) {
                *judged_by_chaddr.entry(shape).or_default() += 1;
            }
        }
        // Every combination of 0-2 VLAN tags, relayed or not, and IP options or not reached the
        // chaddr decision many times.
        for vlan_tags in 0..=2 {
            for relayed in [false, true] {
                for ip_options in [false, true] {
                    let shape = Shape {
                        vlan_tags,
                        relayed,
                        ip_options,
                    };
                    let count = judged_by_chaddr.get(&shape).copied().unwrap_or(0);
                    assert!(
                        count >= 100,
                        "only {count} frames of shape {shape:?} reached the chaddr decision"
                    );
                }
            }
        }
        // Truncation at every offset, of a plain, a double-tagged and a relayed DISCOVER with
        // IP options.
        let plain = Framing::default().frame(&discover(known[0], None));
        let tagged = Framing {
            vlan_tpids: vec![0x88a8, 0x8100],
            ip_options: 12,
            ..Framing::default()
        }
        .frame(&discover(unknown[0], None));
        let relayed = Framing {
            eth_src: [0x02, 0xee, 0, 0, 0, 1],
            ip_options: 40,
            ..Framing::default()
        }
        .frame(&discover(known[1], Some([10, 0, 7, 1].into())));
        for frame in [plain, tagged, relayed] {
            for end in MIN_TEST_FRAME..=frame.len() {
                harness.check(&frame[..end]);
            }
        }
        harness.check_counters();
        report(&format!(
            "gate differential, unknown MACs {policy:?}: {} frames, the program and the \
             reference agreed on each; verdicts {:?}",
            harness.frames,
            harness
                .expected_counters
                .iter()
                .map(|(counter, count)| (counter.name(), count))
                .collect::<Vec<_>>()
        ));
        let counted: BTreeSet<Counter> = harness.expected_counters.keys().copied().collect();
        let expected_kinds: BTreeSet<Counter> = match policy {
            UnknownPolicy::Drop => [
                Counter::PassedKnown,
                Counter::DroppedUnknown,
                Counter::DroppedMalformed,
                Counter::PassedOther,
            ]
            .into(),
            UnknownPolicy::Pass => [
                Counter::PassedKnown,
                Counter::PassedUnknown,
                Counter::DroppedMalformed,
                Counter::PassedOther,
            ]
            .into(),
        };
        assert_eq!(
            counted, expected_kinds,
            "the generated frames reach every verdict of this policy"
        );
    }
}

#[test]
fn relayed_discover_is_judged_by_chaddr_not_ethernet_source() {
    require_root!();
    let client = [0x1c, 0x69, 0x7a, 0x11, 0x22, 0x33];
    let relay_mac = [0x02, 0xee, 0, 0, 0, 1];
    let frame = Framing {
        eth_src: relay_mac,
        ..Framing::default()
    }
    .frame(&discover(client, Some([10, 0, 7, 1].into())));
    let mut gate = XdpGate::load(UnknownPolicy::Drop).expect("load");
    gate.sync_allowlist(&[client].into())
        .expect("allow the client");
    assert_eq!(gate.test_run(&frame).expect("run"), XDP_PASS);
    gate.sync_allowlist(&[relay_mac].into())
        .expect("allow only the relay");
    assert_eq!(gate.test_run(&frame).expect("run"), XDP_DROP);
}
