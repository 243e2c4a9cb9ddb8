//! The DHCP server against real clients: perfdhcp doing full DORA for 1,000 reserved MACs
//! (checked on the wire with dumpcap and tshark), relayed requests, and durable leases.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, UdpSocket},
    process::Stdio,
    time::Duration,
};

use dhcproto::{
    v4::{self, DhcpOption, MessageType, OptionCode},
    Decodable, Decoder, Encodable,
};
use nix::sys::signal::Signal;
use wisp_tests::{
    apply_ok,
    dhcp_wire::{acks, leases, perfdhcp, rack, Capture},
    eventually,
    frames::relayed,
    hardware_yaml, metric, output_text, require_root, wisp_ok, Daemon, Lab, TempDir, BRIDGE_IF,
    CLIENT_IF, CLIENT_IP, SERVER_IF, SERVER_IP,
};

/// A veth lab with `wisp serve` and the XDP gate in native mode on the server side.
fn start(purpose: &str) -> (Lab, TempDir, Daemon) {
    let lab = Lab::new(purpose);
    let work = TempDir::new(purpose);
    let daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &work.join("data"),
        &["--xdp-mode", "native"],
    );
    (lab, work, daemon)
}

#[test]
fn perfdhcp_completes_dora_for_1000_reserved_macs_with_their_addresses() {
    require_root!();
    let lab = Lab::new("perf");
    let work = TempDir::new("perf");
    let data_dir = work.join("data");
    let mut daemon = Daemon::start(&lab.server, SERVER_IF, &data_dir, &["--xdp-mode", "native"]);
    let (yaml, expected) = rack(1000);
    apply_ok(&lab.server, &yaml);

    // Capture what crosses the wire on the client side, to check every ACK independently.
    let capture = Capture::start(&lab, &work);
    // perfdhcp receives a thousand replies at once, as the benchmark does with its buffer.
    let _buffer = wisp_tests::ReceiveBuffer::raised();
    let perfdhcp = perfdhcp(&lab, &["--scenario", "avalanche", "-R", "1000"]);
    let report = output_text(&perfdhcp);
    // Every reply came before perfdhcp finished, so before the capture's end marker.
    let capture = capture.stop(&lab);
    assert!(
        perfdhcp.status.success(),
        "perfdhcp failed:\n{report}\n{}",
        daemon.log()
    );
    assert!(report.contains("to provision 1000 clients"), "{report}");
    assert_eq!(
        report.matches("drops: 0\n").count(),
        2,
        "DISCOVER-OFFER and REQUEST-ACK without drops:\n{report}"
    );
    let acked = acks(&lab, &capture);
    assert_eq!(acked.len(), 1000, "ACKs on the wire for 1000 distinct MACs");
    assert_eq!(
        acked, expected,
        "every ACK carries its MAC's reserved address"
    );

    // The leases are durable: all of them are still there after a restart.
    assert_eq!(leases(&lab), expected);
    daemon.stop(Signal::SIGKILL);
    let _restarted = Daemon::start(&lab.server, SERVER_IF, &data_dir, &["--xdp-mode", "native"]);
    assert_eq!(leases(&lab), expected, "leases after kill -9 and restart");
}

/// Sends `payload` from the relay address (the client side, port 67) and returns the decoded
/// reply, or None when nothing comes back within a second.
fn relay_exchange(lab: &Lab, payload: &[u8]) -> Option<v4::Message> {
    lab.client.within(|| {
        let socket = UdpSocket::bind((CLIENT_IP, 67)).expect("bind the relay socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        socket
            .send_to(payload, (SERVER_IP, 67))
            .expect("send to the server");
        let mut buffer = [0u8; 1500];
        // Only the read timeout means "no reply": any other error fails the test.
        let (length, from) = match socket.recv_from(&mut buffer) {
            Ok(received) => received,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(err) => panic!("receiving the reply: {err}"),
        };
        assert_eq!(from.port(), 67, "the server answers a relay from port 67");
        Some(v4::Message::decode(&mut Decoder::new(&buffer[..length])).expect("a DHCP reply"))
    })
}

#[test]
fn relayed_requests_get_unicast_replies_with_option_82_echoed() {
    require_root!();
    let (lab, _work, _daemon) = start("relay");
    let on_subnet = [0x1c, 0x69, 0x7a, 0x11, 0x22, 0x33];
    let off_subnet = [0x1c, 0x69, 0x7a, 0x11, 0x22, 0x44];
    let yaml = "apiVersion: tinkerbell.org/v1alpha1\nkind: Hardware\nmetadata:\n  name: relayed\n  namespace: lab\nspec:\n  interfaces:\n    - dhcp:\n        mac: 1c:69:7a:11:22:33\n        hostname: relayed\n        ip:\n          address: 10.99.0.60\n          netmask: 255.255.255.0\n          gateway: 10.99.0.254\n    - dhcp:\n        mac: 1c:69:7a:11:22:44\n        ip:\n          address: 10.50.0.60\n          netmask: 255.255.255.0\n";
    apply_ok(&lab.server, yaml);
    let reserved: Ipv4Addr = [10, 99, 0, 60].into();
    let circuit = b"rack7-port12";
    let relay_info = |message: &v4::Message| {
        message
            .opts()
            .get(OptionCode::RelayAgentInformation)
            .cloned()
    };
    let sent_info = {
        let mut info = v4::relay::RelayAgentInformation::default();
        info.insert(v4::relay::RelayInfo::AgentCircuitId(circuit.to_vec()));
        Some(DhcpOption::RelayAgentInformation(info))
    };

    let offer = relay_exchange(
        &lab,
        &relayed(
            MessageType::Discover,
            on_subnet,
            CLIENT_IP,
            None,
            None,
            circuit,
        ),
    )
    .expect("an OFFER");
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!((offer.yiaddr(), offer.giaddr()), (reserved, CLIENT_IP));
    assert_eq!(
        relay_info(&offer),
        sent_info,
        "option 82 comes back unchanged"
    );
    assert_eq!(
        offer.opts().get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![[10, 99, 0, 254].into()]))
    );

    let ack = relay_exchange(
        &lab,
        &relayed(
            MessageType::Request,
            on_subnet,
            CLIENT_IP,
            Some(reserved),
            Some(SERVER_IP),
            circuit,
        ),
    )
    .expect("an ACK");
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), reserved);
    assert_eq!(relay_info(&ack), sent_info);
    assert_eq!(
        ack.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER_IP))
    );

    // Asking for another address is refused.
    let nak = relay_exchange(
        &lab,
        &relayed(
            MessageType::Request,
            on_subnet,
            CLIENT_IP,
            Some([10, 99, 0, 61].into()),
            None,
            circuit,
        ),
    )
    .expect("a NAK");
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    assert!(
        nak.flags().broadcast(),
        "a NAK through a relay sets the broadcast bit"
    );

    // A reservation that is not on the relay's subnet is not offered there (and the metric
    // below says that is why).
    assert!(relay_exchange(
        &lab,
        &relayed(
            MessageType::Discover,
            off_subnet,
            CLIENT_IP,
            None,
            None,
            circuit
        )
    )
    .is_none());
    assert_eq!(
        metric(
            &lab.server,
            "wisp_dhcp_ignored_total{reason=\"not_on_relay_subnet\"}"
        ),
        Some(1)
    );
}

#[test]
fn a_malformed_message_from_a_known_mac_is_counted_and_the_server_keeps_serving() {
    require_root!();
    let (lab, _work, daemon) = start("malformed");
    let yaml = hardware_yaml("known", "1c:69:7a:11:22:33", "10.99.0.60");
    apply_ok(&lab.server, &yaml);
    let known = [0x1c, 0x69, 0x7a, 0x11, 0x22, 0x33];
    // Option 94 (client network interface) must be 3 bytes long; this one says 2. The BOOTP
    // header is intact, so the gate passes it and the DHCP decoder meets the lie.
    let mut broken = relayed(
        MessageType::Discover,
        known,
        CLIENT_IP,
        None,
        None,
        b"port1",
    );
    let end = broken
        .iter()
        .rposition(|&b| b == 255)
        .expect("an end option");
    broken.splice(end..end, [94, 2, 1, 0]);
    assert!(
        relay_exchange(&lab, &broken).is_none(),
        "no reply to a malformed message"
    );
    assert_eq!(
        metric(
            &lab.server,
            "wisp_dhcp_received_total{message_type=\"malformed\"}"
        ),
        Some(1),
        "{}",
        daemon.log()
    );
    let offer = relay_exchange(
        &lab,
        &relayed(
            MessageType::Discover,
            known,
            CLIENT_IP,
            None,
            None,
            b"port1",
        ),
    );
    assert_eq!(
        offer.expect("the server still answers").yiaddr(),
        Ipv4Addr::new(10, 99, 0, 60)
    );
    // dhcproto asserts on this lie (in debug builds, as the tests run Wisp). A stream of them
    // is counted, and its panics are logged a few at a time, on one line each.
    const FLOOD: u64 = 300;
    lab.client.within(|| {
        let relay = std::net::UdpSocket::bind((CLIENT_IP, 67)).expect("bind the relay port");
        for _ in 0..FLOOD {
            relay.send_to(&broken, (SERVER_IP, 67)).expect("send");
        }
    });
    wisp_tests::eventually("the flood is counted", || {
        metric(
            &lab.server,
            "wisp_dhcp_received_total{message_type=\"malformed\"}",
        ) == Some(FLOOD + 1)
    });
    let log = daemon.log();
    let logged = log.lines().filter(|line| line.contains("panicked")).count();
    let suppressed = metric(
        &lab.server,
        "wisp_log_lines_suppressed_total{protocol=\"panic\"}",
    )
    .expect("the suppressed panics are counted");
    assert!(
        logged <= 30 && suppressed >= FLOOD - 30 && logged as u64 + suppressed == FLOOD + 1,
        "{logged} panics logged, {suppressed} left out:\n{log}"
    );
    assert!(
        !log.contains("stack backtrace") && !log.contains("RUST_BACKTRACE"),
        "a panic is one log line: {log}"
    );
}

#[test]
fn a_client_without_the_broadcast_bit_gets_its_lease_by_unicast() {
    require_root!();
    let (lab, _work, _daemon) = start("unicast");
    let yaml = hardware_yaml("plain", "1c:69:7a:00:00:77", "10.99.0.77");
    apply_ok(&lab.server, &yaml);
    // busybox udhcpc leaves the broadcast bit clear unless given -B, so the OFFER and ACK must
    // be unicast to the address being assigned, which needs an ARP entry on the server.
    let (leased, said) = udhcpc(&lab, "1c:69:7a:00:00:77", "10.99.0.77");
    assert!(leased, "{said}");
    let neighbour = lab
        .server
        .exec_ok("ip", &["neigh", "show", "10.99.0.77", "dev", SERVER_IF]);
    assert!(
        neighbour.contains("1c:69:7a:00:00:77"),
        "the server added the client's ARP entry: {neighbour:?}"
    );
}

/// busybox udhcpc on the client side, with the client's MAC set to `mac`: whether it got
/// `address`, and what it said.
fn udhcpc(lab: &Lab, mac: &str, address: &str) -> (bool, String) {
    udhcpc_with(lab, mac, address, &[])
}

/// [`udhcpc`] with more of its options.
fn udhcpc_with(lab: &Lab, mac: &str, address: &str, extra: &[&str]) -> (bool, String) {
    lab.client
        .exec_ok("ip", &["link", "set", CLIENT_IF, "address", mac]);
    let output = lab.client.exec(
        "busybox",
        &[
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-t",
            "3",
            "-T",
            "2",
            "-i",
            CLIENT_IF,
            "-s",
            "/bin/true",
        ]
        .iter()
        .chain(extra)
        .copied()
        .collect::<Vec<_>>(),
    );
    let said = output_text(&output);
    let leased = output.status.success() && said.contains(&format!("lease of {address} obtained"));
    (leased, said)
}

#[test]
fn an_address_leased_to_another_mac_waits_for_that_lease_to_end() {
    require_root!();
    let (lab, _work, _daemon) = start("held");
    apply_ok(
        &lab.server,
        &hardware_yaml("first", "1c:69:7a:00:00:81", "10.99.0.81"),
    );
    let (leased, said) = udhcpc(&lab, "1c:69:7a:00:00:81", "10.99.0.81");
    assert!(leased, "{said}");
    // The first machine's Hardware goes; its lease (a day) does not. The address moves to a
    // second machine.
    wisp_ok(&lab.server, &["delete", "hardware", "first", "-n", "lab"]);
    let applied = wisp_tests::apply_yaml(
        &lab.server,
        &hardware_yaml("second", "1c:69:7a:00:00:82", "10.99.0.81"),
    );
    let said = output_text(&applied);
    assert!(applied.status.success(), "{said}");
    assert!(
        said.contains("10.99.0.81, reserved for Hardware lab/second (1c:69:7a:00:00:82), is leased to 1c:69:7a:00:00:81 until"),
        "the apply says why the second machine will wait: {said}"
    );
    let (leased, said) = udhcpc(&lab, "1c:69:7a:00:00:82", "10.99.0.81");
    assert!(!leased, "two MACs were given 10.99.0.81: {said}");
    assert!(
        metric(
            &lab.server,
            "wisp_dhcp_ignored_total{reason=\"address_leased_to_another\"}"
        )
        .is_some_and(|count| count >= 1),
        "the refusal is counted"
    );
    // The first machine is gone for good: its lease is deleted, and the address moves at once.
    let deleted = wisp_ok(&lab.server, &["delete", "lease", "1c:69:7a:00:00:81"]);
    assert!(
        deleted.contains("lease of 10.99.0.81 on 1c:69:7a:00:00:81 deleted"),
        "{deleted}"
    );
    let (leased, said) = udhcpc(&lab, "1c:69:7a:00:00:82", "10.99.0.81");
    assert!(leased, "{said}");
    assert_eq!(
        leases(&lab).get("1c:69:7a:00:00:82").map(String::as_str),
        Some("10.99.0.81")
    );
    assert!(!leases(&lab).contains_key("1c:69:7a:00:00:81"));
}

#[test]
fn kill_9_in_the_middle_of_a_storm_loses_no_acked_lease() {
    require_root!();
    let lab = Lab::new("storm");
    let work = TempDir::new("storm");
    let data_dir = work.join("data");
    let start = || Daemon::start(&lab.server, SERVER_IF, &data_dir, &["--xdp-mode", "native"]);
    let mut daemon = start();
    let (yaml, expected) = rack(1000);
    apply_ok(&lab.server, &yaml);
    let _buffer = wisp_tests::ReceiveBuffer::raised();
    // `cargo xtask test --long` kills it again and again.
    let kills = if wisp_tests::long_mode() { 10 } else { 2 };
    let capture = Capture::start(&lab, &work);
    for _ in 0..kills {
        // A storm at 1,000 exchanges a second among the 1,000 MACs, for 3 s; the daemon is
        // killed a second in, and started again while the storm goes on.
        std::thread::scope(|scope| {
            let storm = scope.spawn(|| perfdhcp(&lab, &["-R", "1000", "-r", "1000", "-p", "3"]));
            std::thread::sleep(Duration::from_secs(1));
            daemon.stop(Signal::SIGKILL);
            daemon = start();
            storm.join().expect("perfdhcp ran");
        });
    }
    let capture = capture.stop(&lab);
    let acked = acks(&lab, &capture);
    assert!(
        acked.len() >= 100,
        "the storm got ACKs before and after the kills: {}",
        acked.len()
    );
    // Every lease an ACK promised is in the store the restarted daemon keeps.
    let stored = leases(&lab);
    for (mac, address) in &acked {
        assert_eq!(
            stored.get(mac),
            Some(address),
            "{mac} was ACKed {address} before a kill -9, and the lease is gone"
        );
    }
    let mut holders = BTreeMap::new();
    for (mac, address) in &stored {
        if let Some(other) = holders.insert(address, mac) {
            panic!("{address} is held by {mac} and {other}");
        }
    }
    // The storm again, whole: the restarted daemon serves every machine.
    let again = perfdhcp(&lab, &["--scenario", "avalanche", "-R", "1000"]);
    let report = output_text(&again);
    assert!(again.status.success(), "{report}\n{}", daemon.log());
    assert_eq!(report.matches("drops: 0\n").count(), 2, "{report}");
    assert_eq!(leases(&lab), expected);
}

#[test]
fn a_real_client_that_finds_its_address_in_use_declines_it_and_is_not_offered_it_again() {
    require_root!();
    let lab = Lab::bridged("decline");
    let work = TempDir::new("decline");
    let daemon = Daemon::start(&lab.server, BRIDGE_IF, &work.join("data"), &[]);
    apply_ok(
        &lab.server,
        &hardware_yaml("clash", "1c:69:7a:00:00:70", "10.99.0.70"),
    );
    // Another host on the link already uses the reserved address.
    let _squatter = lab.join_bridge("squatter", "sqport", Some("10.99.0.70/24"));
    // busybox udhcpc checks the ACKed address with ARP (-a), finds it answered, and declines.
    let (leased, said) = udhcpc_with(&lab, "1c:69:7a:00:00:70", "10.99.0.70", &["-a"]);
    assert!(!leased, "{said}");
    assert!(said.contains("declining"), "{said}\n{}", daemon.log());
    assert_eq!(
        metric(
            &lab.server,
            "wisp_dhcp_received_total{message_type=\"decline\"}"
        ),
        Some(1),
        "{said}"
    );
    // Its next tries are not offered the declined address, saying why.
    assert!(
        metric(
            &lab.server,
            "wisp_dhcp_ignored_total{reason=\"declined_recently\"}"
        )
        .is_some_and(|ignored| ignored >= 1),
        "{said}"
    );
    assert!(
        !leases(&lab).contains_key("1c:69:7a:00:00:70"),
        "a declined lease is not kept"
    );
}

/// A process killed (and reaped) on drop.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_client_behind_a_real_relay_agent_gets_its_lease_with_option_82_echoed() {
    require_root!();
    // client (eth0) ── (rdown 10.98.0.1) relay: dhcrelay (cli 10.99.0.2) ── (srv 10.99.0.1) Wisp
    let (lab, work, daemon) = start("dhcrelay");
    let client = wisp_tests::Netns::new("dhcrelay-c");
    lab.client.exec_ok(
        "ip",
        &[
            "link",
            "add",
            "rdown",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &client.name,
        ],
    );
    lab.client
        .exec_ok("ip", &["addr", "add", "10.98.0.1/24", "dev", "rdown"]);
    lab.client.exec_ok("ip", &["link", "set", "rdown", "up"]);
    client.exec_ok(
        "ip",
        &["link", "set", "eth0", "address", "1c:69:7a:00:00:98"],
    );
    client.exec_ok("ip", &["link", "set", "eth0", "up"]);
    // Replies go to the relay's downstream address (giaddr).
    lab.server
        .exec_ok("ip", &["route", "add", "10.98.0.0/24", "via", "10.99.0.2"]);
    apply_ok(
        &lab.server,
        &hardware_yaml("behind", "1c:69:7a:00:00:98", "10.98.0.50"),
    );
    let capture = Capture::start(&lab, &work);
    // -a: add the relay agent information option (82), with the downstream interface as its
    // circuit id; dhcrelay takes it off again before passing a reply on.
    let _relay = Running(
        lab.client
            .command("dhcrelay")
            .args([
                "-4",
                "-d",
                "--no-pid",
                "-a",
                "-id",
                "rdown",
                "-iu",
                CLIENT_IF,
                "10.99.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dhcrelay"),
    );
    let output = client.exec(
        "busybox",
        &[
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-t",
            "5",
            "-T",
            "2",
            "-i",
            "eth0",
            "-s",
            "/bin/true",
        ],
    );
    let said = output_text(&output);
    let capture = capture.stop(&lab);
    assert!(
        output.status.success() && said.contains("lease of 10.98.0.50 obtained"),
        "{said}\n{}",
        daemon.log()
    );
    // Between the relay and Wisp: the relay's requests carry option 82 with its circuit id,
    // and Wisp's OFFER and ACK echo it (RFC 3046 2.2).
    let with_82 = |filter: &str| {
        lab.server.exec_ok(
            "tshark",
            &[
                "-r",
                capture.to_str().expect("utf-8"),
                "-Y",
                &format!("{filter} && dhcp.option.agent_information_option.agent_circuit_id"),
                "-T",
                "fields",
                "-e",
                "dhcp.option.agent_information_option.agent_circuit_id",
            ],
        )
    };
    let requests = with_82("dhcp.option.dhcp == 1 || dhcp.option.dhcp == 3");
    let replies = with_82("dhcp.option.dhcp == 2 || dhcp.option.dhcp == 5");
    assert!(!requests.trim().is_empty(), "the relay added option 82");
    assert_eq!(
        replies.lines().count(),
        2,
        "the OFFER and the ACK echo option 82: {replies:?}"
    );
    let circuit = requests.lines().next().expect("a circuit id");
    assert!(
        replies.lines().all(|line| line == circuit),
        "echoed as sent: {replies:?}, sent {circuit:?}"
    );
}

/// A broadcast request from `mac` with `ciaddr` filled in, without the broadcast flag.
fn with_ciaddr(message_type: MessageType, mac: [u8; 6], ciaddr: Ipv4Addr) -> Vec<u8> {
    let mut message = v4::Message::default();
    message
        .set_chaddr(&mac)
        .set_xid(0x5749_0c1a)
        .set_ciaddr(ciaddr);
    message
        .opts_mut()
        .insert(DhcpOption::MessageType(message_type));
    message.to_vec().expect("encodes")
}

#[test]
fn replies_go_where_rfc_2131_says_not_where_the_sender_points_them() {
    require_root!();
    let (lab, work, _daemon) = start("steer");
    let mac = [0x1c, 0x69, 0x7a, 0x00, 0x00, 0x55];
    apply_ok(
        &lab.server,
        &hardware_yaml("steered", "1c:69:7a:00:00:55", "10.99.0.55"),
    );
    let capture = Capture::start(&lab, &work);
    // ciaddr names a third host (here the client side's own address): a DISCOVER's OFFER and
    // an INFORM's ACK must not be aimed at it.
    lab.send_dhcp(&with_ciaddr(MessageType::Discover, mac, CLIENT_IP), false);
    lab.send_dhcp(&with_ciaddr(MessageType::Inform, mac, CLIENT_IP), false);
    eventually("the INFORM is judged", || {
        metric(
            &lab.server,
            "wisp_dhcp_ignored_total{reason=\"not_the_reserved_address\"}",
        ) == Some(1)
    });
    let capture = capture.stop(&lab);
    let offers = lab.server.exec_ok(
        "tshark",
        &[
            "-r",
            capture.to_str().expect("utf-8"),
            "-Y",
            "dhcp.option.dhcp == 2",
            "-T",
            "fields",
            "-e",
            "ip.dst",
        ],
    );
    assert_eq!(
        offers.trim(),
        "10.99.0.55",
        "the OFFER goes to the address it assigns, not to ciaddr"
    );
    let acks = acks(&lab, &capture);
    assert!(acks.is_empty(), "no ACK for the INFORM: {acks:?}");
}

#[test]
fn a_real_client_whose_renewals_go_unanswered_rebinds_by_broadcast_and_keeps_its_address() {
    require_root!();
    let (lab, work, daemon) = start("rebind");
    // As a client's script does: the leased address on the interface, so that unicast to it
    // (the server's answer to a renewing or rebinding client, RFC 2131 4.1) arrives.
    let script = work.join("udhcpc.script");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr flush dev \"$interface\"; ip addr add \"$ip/$mask\" dev \"$interface\";; esac\n",
    )
    .expect("write the script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("make it executable");
    // A 20 s lease (busybox takes nothing shorter than 16 s): renewing from 10 s (unicast to
    // the server), rebinding from 17.5 s (broadcast, to any server; RFC 2131 4.4.5).
    apply_ok(
        &lab.server,
        "apiVersion: tinkerbell.org/v1alpha1\nkind: Hardware\nmetadata: {name: rebinder, namespace: lab}\nspec:\n  interfaces:\n    - dhcp:\n        mac: 1c:69:7a:00:00:66\n        lease_time: 20\n        ip: {address: 10.99.0.66, netmask: 255.255.255.0}\n",
    );
    lab.client.exec_ok(
        "ip",
        &["link", "set", CLIENT_IF, "address", "1c:69:7a:00:00:66"],
    );
    // Unicast from the client's address to the server is refused on the server's way in (its
    // renewals go unanswered); broadcast, and the server's answers, pass.
    // (The local table's rule comes first, so it moves behind this one.)
    for rule in [
        "add pref 10 from 10.99.0.66 to 10.99.0.1 prohibit",
        "add pref 100 lookup local",
        "del pref 0 lookup local",
    ] {
        let args: Vec<&str> = ["rule"].into_iter().chain(rule.split(' ')).collect();
        lab.server.exec_ok("ip", &args);
    }
    let output = lab.client.exec(
        "timeout",
        &[
            "-s",
            "INT",
            "24",
            "busybox",
            "udhcpc",
            "-f",
            "-i",
            CLIENT_IF,
            "-s",
            script.to_str().expect("utf-8"),
        ],
    );
    let said = output_text(&output);
    assert!(
        said.matches("lease of 10.99.0.66 obtained").count() >= 2,
        "the lease, then the same lease again by rebinding:\n{said}\n{}",
        daemon.log()
    );
    assert!(
        said.contains("broadcasting renew"),
        "the renewal by unicast failed, and the client rebound by broadcast:\n{said}"
    );
    // What reached Wisp after the first lease was the broadcast rebinding REQUEST: ciaddr set,
    // no server identifier.
    let log = daemon.log();
    let acks = log
        .lines()
        .filter(|line| line.contains("request=\"request\"") && line.contains("reply=Some(Ack)"))
        .count();
    assert!(acks >= 2, "{log}");
    assert_eq!(
        leases(&lab).get("1c:69:7a:00:00:66").map(String::as_str),
        Some("10.99.0.66")
    );
}

#[test]
fn in_proxy_mode_a_relay_address_off_the_machines_subnet_gets_nothing() {
    require_root!();
    let lab = Lab::new("proxy-giaddr");
    let work = TempDir::new("proxy-giaddr");
    let _daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &work.join("data"),
        &["--xdp-mode", "native", "--dhcp-mode", "proxy"],
    );
    apply_ok(
        &lab.server,
        "apiVersion: tinkerbell.org/v1alpha1\nkind: Hardware\nmetadata: {name: pxe, namespace: lab}\nspec:\n  interfaces:\n    - dhcp:\n        mac: 1c:69:7a:00:00:44\n        ip: {address: 10.99.0.44, netmask: 255.255.255.0}\n      netboot: {allowPXE: true}\n",
    );
    let mac = [0x1c, 0x69, 0x7a, 0x00, 0x00, 0x44];
    // giaddr names a host off the machine's subnet: the boot reply would be aimed at it.
    let steered = relay_exchange(
        &lab,
        &wisp_tests::frames::discover(mac, Some([10, 77, 0, 1].into())),
    );
    assert!(steered.is_none());
    assert_eq!(
        metric(
            &lab.server,
            "wisp_dhcp_ignored_total{reason=\"not_on_relay_subnet\"}"
        ),
        Some(1)
    );
    // The relay on the machine's subnet gets the proxy offer: boot information, no address.
    let offer = relay_exchange(&lab, &wisp_tests::frames::discover(mac, Some(CLIENT_IP)))
        .expect("a proxy offer through the relay");
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    // The file field as it came off the wire: dhcproto keeps its terminator.
    assert_eq!(
        offer
            .fname_str()
            .and_then(Result::ok)
            .map(|file| file.trim_end_matches('\0')),
        Some("undionly.kpxe")
    );
}

/// A filesystem of its own on a loop device, mounted at `mountpoint`, that the test can freeze
/// (`fsfreeze`): every write to it then blocks, as on a disk that has stopped. Thawed, unmounted
/// and detached on drop, so that nothing stays blocked when the test fails.
struct FreezableDisk {
    mountpoint: std::path::PathBuf,
}

impl FreezableDisk {
    fn new(work: &TempDir, name: &str) -> FreezableDisk {
        let image = work.join(&format!("{name}.img"));
        let mountpoint = work.join(name);
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(64 << 20))
            .expect("create the image");
        std::fs::create_dir_all(&mountpoint).expect("mountpoint");
        for (program, args) in [
            (
                "mkfs.ext4",
                vec!["-q", "-F", image.to_str().expect("utf-8")],
            ),
            (
                "mount",
                vec![
                    "-o",
                    "loop",
                    image.to_str().expect("utf-8"),
                    mountpoint.to_str().expect("utf-8"),
                ],
            ),
        ] {
            let status = std::process::Command::new(program)
                .args(&args)
                .status()
                .unwrap_or_else(|err| panic!("{program}: {err}"));
            assert!(status.success(), "{program} {args:?}");
        }
        FreezableDisk { mountpoint }
    }

    /// Freezes the filesystem until the guard is dropped. Declared after the daemon, the guard
    /// drops first, so a failing test never kills a daemon stuck on the frozen disk.
    fn freeze(&self) -> Frozen<'_> {
        fsfreeze("-f", &self.mountpoint);
        Frozen(self)
    }
}

fn fsfreeze(flag: &str, mountpoint: &std::path::Path) {
    let status = std::process::Command::new("fsfreeze")
        .arg(flag)
        .arg(mountpoint)
        .status()
        .expect("run fsfreeze");
    assert!(status.success(), "fsfreeze {flag} {}", mountpoint.display());
}

struct Frozen<'a>(&'a FreezableDisk);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        fsfreeze("-u", &self.0.mountpoint);
    }
}

impl Drop for FreezableDisk {
    fn drop(&mut self) {
        // Lazily: the daemon may still hold files open here.
        let _ = std::process::Command::new("umount")
            .args(["-l", "-d"])
            .arg(&self.mountpoint)
            .status();
    }
}

/// A REQUEST in the SELECTING state (RFC 2131 §4.3.2) for `address` from Wisp.
fn selecting_request(mac: [u8; 6], address: Ipv4Addr) -> Vec<u8> {
    let mut message = v4::Message::default();
    message
        .set_chaddr(&mac)
        .set_xid(0x5749_f00d)
        .set_flags(v4::Flags::default().set_broadcast());
    let options = message.opts_mut();
    options.insert(DhcpOption::MessageType(MessageType::Request));
    options.insert(DhcpOption::ServerIdentifier(SERVER_IP));
    options.insert(DhcpOption::RequestedIpAddress(address));
    message.to_vec().expect("encodes")
}

#[test]
fn on_a_disk_that_has_stopped_the_lease_queue_is_bounded_and_serving_resumes_when_it_returns() {
    require_root!();
    let lab = Lab::new("frozen");
    let work = TempDir::new("frozen");
    let disk = FreezableDisk::new(&work, "data");
    // The daemon's log is beside the data directory, off the disk that will stop.
    let daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &disk.mountpoint,
        &["--xdp-mode", "native"],
    );
    apply_ok(
        &lab.server,
        &(hardware_yaml("spoofed", "1c:69:7a:00:00:80", "10.99.0.80")
            + "---\n"
            + &hardware_yaml("patient", "1c:69:7a:00:00:81", "10.99.0.81")),
    );
    let frozen = disk.freeze();

    // Spoofed REQUESTs for a known MAC, as fast as one socket sends them. Each is a lease write
    // that cannot finish; once the queue holds its limit, the rest are refused at once, counted,
    // and not held in memory.
    let refused = || {
        metric(
            &lab.server,
            "wisp_dhcp_ignored_total{reason=\"lease_queue_full\"}",
        )
        .unwrap_or(0)
    };
    let request = selecting_request(
        [0x1c, 0x69, 0x7a, 0, 0, 0x80],
        "10.99.0.80".parse().unwrap(),
    );
    let socket = lab.pxe_client_socket();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut sent = 0u64;
    while refused() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{sent} REQUESTs sent and none refused: the queue is not bounded\n{}",
            daemon.log()
        );
        for _ in 0..20_000 {
            let _ = socket.send_to(&request, (Ipv4Addr::BROADCAST, 67));
            sent += 1;
        }
    }
    // Nothing was ACKed (no lease is durable), and the daemon still answers.
    assert_eq!(
        metric(&lab.server, "wisp_dhcp_replies_total{message_type=\"ack\"}"),
        Some(0)
    );

    // The disk comes back: the queue drains and a real client gets its lease.
    drop(frozen);
    let (leased, said) = udhcpc(&lab, "1c:69:7a:00:00:81", "10.99.0.81");
    assert!(leased, "{said}\n{}", daemon.log());
    assert!(
        leases(&lab).get("1c:69:7a:00:00:81").map(String::as_str) == Some("10.99.0.81"),
        "the client's lease is stored"
    );
}

#[test]
fn a_real_client_gets_the_options_smee_sends_from_the_hardware() {
    require_root!();
    let (lab, work, _daemon) = start("smee-options");
    let mac = "1c:69:7a:00:00:66";
    apply_ok(
        &lab.server,
        &format!(
            "{}        domain_name: lab.example\n        vlan_id: \"30\"\n        tftp_server_name: 10.99.0.9\n        boot_file_name: pxelinux.0\n        classless_static_routes:\n          - destination_descriptor: 10.20.0.0/16\n            router: 10.99.0.254\n",
            hardware_yaml("smee", mac, "10.99.0.66")
        ),
    );
    // udhcpc's script sees each option as a variable; it writes them where the test reads.
    let script = work.join("record.sh");
    let record = work.join("bound.env");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && env > {}\nexit 0\n",
            record.display()
        ),
    )
    .expect("the script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let script = script.to_str().expect("utf-8");
    let (leased, said) = udhcpc_with(
        &lab,
        mac,
        "10.99.0.66",
        &[
            "-s",
            script,
            "-O",
            "staticroutes",
            "-O",
            "search",
            "-O",
            "tftp",
            "-O",
            "bootfile",
            "-O",
            "43",
        ],
    );
    assert!(leased, "{said}");
    let env = std::fs::read_to_string(&record).expect("udhcpc ran the script");
    for expected in [
        "broadcast=10.99.0.255",
        "domain=lab.example",
        "search=lab.example",
        "staticroutes=10.20.0.0/16 10.99.0.254",
        "tftp=10.99.0.9",
        "bootfile=pxelinux.0",
        "boot_file=pxelinux.0",
        // 43.116 = "30": 74 02 33 30, then the end of the sub-options.
        "opt43=74023330ff",
    ] {
        assert!(
            env.lines().any(|line| line == expected),
            "{expected} missing from:\n{env}"
        );
    }
}
