//! The decisions, case by case.
use dhcproto::v4::{Architecture, DhcpOption, Flags, MessageType, OptionCode, UnknownOption};

use super::*;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const RESERVED: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 8);
const MAC: [u8; 6] = [0x1c, 0x69, 0x7a, 0x11, 0x22, 0x33];

fn machine(allow_pxe: bool) -> Machine {
    Machine {
        mac: MacAddr(MAC),
        address: Some(RESERVED),
        netmask: Some([255, 255, 255, 0].into()),
        gateway: Some([10, 0, 0, 254].into()),
        name_servers: vec![[1, 1, 1, 1].into()],
        hostname: Some("nuc".into()),
        lease_secs: 800,
        allow_pxe,
        ..Machine::example()
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

/// One request's case: the mode, the port and the facts around it.
struct Case {
    mode: Mode,
    port: Port,
    machine: Machine,
    chainloaded: bool,
    declined: bool,
    address_held_by_another: bool,
}

impl Case {
    /// Reservation mode, on port 67, for a machine without `allowPXE`.
    fn reservation() -> Case {
        Case {
            mode: Mode::Reservation,
            port: Port::Dhcp,
            machine: machine(false),
            chainloaded: false,
            declined: false,
            address_held_by_another: false,
        }
    }

    /// proxyDHCP mode, on port 67, for a machine without `allowPXE`.
    fn proxy() -> Case {
        Case {
            mode: Mode::Proxy,
            ..Case::reservation()
        }
    }

    fn on(self, port: Port) -> Case {
        Case { port, ..self }
    }

    fn allow_pxe(self) -> Case {
        self.machine(machine(true))
    }

    fn machine(self, machine: Machine) -> Case {
        Case { machine, ..self }
    }

    /// Wisp handed this MAC an iPXE binary moments ago.
    fn chainloaded(self) -> Case {
        Case {
            chainloaded: true,
            ..self
        }
    }

    /// The client declined its reserved address moments ago.
    fn declined(self) -> Case {
        Case {
            declined: true,
            ..self
        }
    }

    /// Another MAC holds the reserved address on a lease that has not expired.
    fn held_by_another(self) -> Case {
        Case {
            address_held_by_another: true,
            ..self
        }
    }

    fn run(&self, message: &Message) -> Outcome {
        let boot = boot();
        let facts = Facts {
            mode: self.mode,
            boot: &boot,
            machine: Some(&self.machine),
            now: 1000,
            chainloaded: self.chainloaded,
            declined: self.declined,
            address_held_by_another: self.address_held_by_another,
        };
        let payload = encode(message);
        let request = Request {
            message,
            payload: &payload,
            source: "10.0.0.99:68".parse().unwrap(),
            port: self.port,
        };
        handle(&request, &facts)
    }
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

/// Why the request was ignored; any other outcome fails the test.
fn ignored(outcome: Outcome) -> IgnoreReason {
    match outcome {
        Outcome::Ignore(reason) => reason,
        other => panic!("expected the request to be ignored, got {other:?}"),
    }
}

fn option(reply: &Reply, code: OptionCode) -> Option<&DhcpOption> {
    reply.message.opts().get(code)
}

#[test]
fn discover_gets_the_reservation_with_lease_times() {
    let offer = reply(Case::reservation().run(&message(MessageType::Discover, |_| {})));
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
        reply(Case::reservation().run(&broadcast)).destination,
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
    let ack = reply(Case::reservation().run(&selecting));
    assert_eq!(ack.message.opts().msg_type(), Some(MessageType::Ack));
    let lease = ack.lease.expect("an ACK records its lease");
    assert_eq!((lease.address, lease.expires_unix), (RESERVED, 1800));

    let elsewhere = message(MessageType::Request, |m| {
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier([10, 0, 0, 2].into()));
        m.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(RESERVED));
    });
    assert_eq!(
        ignored(Case::reservation().run(&elsewhere)),
        IgnoreReason::OtherServerChosen
    );

    let init_reboot_wrong = message(MessageType::Request, |m| {
        m.opts_mut()
            .insert(DhcpOption::RequestedIpAddress([10, 0, 0, 9].into()));
    });
    let nak = reply(Case::reservation().run(&init_reboot_wrong));
    assert_eq!(nak.message.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(nak.destination, Destination::Broadcast);

    let renewing = message(MessageType::Request, |m| {
        m.set_ciaddr(RESERVED);
    });
    let renewed = reply(Case::reservation().run(&renewing));
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
        Case::reservation().run(&message(MessageType::Release, |_| {})),
        Outcome::Release(_)
    ));
    let decline = message(MessageType::Decline, |m| {
        m.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(RESERVED));
    });
    assert!(matches!(
        Case::reservation().run(&decline),
        Outcome::Decline {
            address: RESERVED,
            ..
        }
    ));
    let inform = message(MessageType::Inform, |m| {
        m.set_ciaddr(RESERVED);
    });
    let ack = reply(Case::reservation().run(&inform));
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
        reply(Case::reservation().run(&firmware))
            .message
            .fname()
            .is_none(),
        "allowPXE false"
    );
    let offer = reply(Case::reservation().allow_pxe().run(&firmware));
    assert_eq!(offer.message.fname_str().unwrap().unwrap(), "undionly.kpxe");
    assert_eq!(offer.message.siaddr(), SERVER);
    assert_eq!(offer.handoff, Handoff::Binary);
    assert!(
        option(&offer, OptionCode::ClassIdentifier).is_none(),
        "a plain offer, as OVMF needs"
    );
    let ipxe = message(MessageType::Discover, |m| {
        pxe(m);
        m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    });
    let script = reply(Case::reservation().allow_pxe().chainloaded().run(&ipxe));
    assert_eq!(
        script.message.fname_str().unwrap().unwrap(),
        "http://10.0.0.1:8080/ipxe/1c:69:7a:11:22:33/auto.ipxe"
    );
    assert_eq!(
        option(&script, OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert_eq!(script.handoff, Handoff::Script);
}

#[test]
fn proxy_mode_gives_boot_information_and_no_address() {
    let firmware = message(MessageType::Discover, pxe);
    let offer = reply(Case::proxy().allow_pxe().run(&firmware));
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
    assert_eq!(
        ignored(
            Case::proxy()
                .allow_pxe()
                .run(&message(MessageType::Discover, |_| {}))
        ),
        IgnoreReason::NotPxeClient
    );
    assert_eq!(
        ignored(Case::proxy().run(&firmware)),
        IgnoreReason::PxeNotAllowed
    );
    let boot_server = message(MessageType::Request, |m| {
        pxe(m);
        m.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(7)));
    });
    let ack = reply(
        Case::proxy()
            .on(Port::PxeBootServer)
            .allow_pxe()
            .run(&boot_server),
    );
    assert_eq!(ack.message.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.message.fname_str().unwrap().unwrap(), "snponly.efi");
    assert_eq!(
        ack.destination,
        Destination::Source("10.0.0.99:68".parse().unwrap())
    );
}

/// How many times option `code` appears in an encoded message.
fn occurrences(payload: &[u8], code: u8) -> usize {
    options_in(payload).filter(|&option| option == code).count()
}

/// The last option before End.
fn last_option(payload: &[u8]) -> Option<u8> {
    options_in(payload).last()
}

/// The option codes of an encoded message, in order.
fn options_in(payload: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut rest = &payload[240..];
    std::iter::from_fn(move || loop {
        let (&option, tail) = rest.split_first()?;
        match option {
            0 => rest = tail,
            255 => return None,
            _ => {
                let length = usize::from(*tail.first()?);
                rest = tail.get(1 + length..)?;
                return Some(option);
            }
        }
    })
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
    let offer = reply(Case::reservation().run(&discover));
    let sent = encode(&offer.message);
    assert_eq!(raw_option(&sent, 82), Some(relay_info.as_slice()));
    assert_eq!(occurrences(&sent, 82), 1, "option 82 once: {sent:02x?}");
    assert_eq!(occurrences(&sent, 61), 1, "option 61 once: {sent:02x?}");
    assert_eq!(
        last_option(&sent),
        Some(82),
        "option 82 last, as RFC 3046 2.1 asks"
    );
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
    let mut custom = machine(true);
    custom.ipxe_url = Some("http://scripts.example/boot.ipxe".into());
    let offer = reply(
        Case::reservation()
            .machine(custom.clone())
            .chainloaded()
            .run(&ipxe),
    );
    assert_eq!(
        offer.message.fname_str().unwrap().unwrap(),
        "http://scripts.example/boot.ipxe"
    );
    // A URL longer than the 128-byte `file` field goes in option 67 alone, without panicking.
    let long = format!("http://scripts.example/{}", "x".repeat(200));
    custom.ipxe_url = Some(long.clone());
    let offer = reply(
        Case::reservation()
            .machine(custom.clone())
            .chainloaded()
            .run(&ipxe),
    );
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
    let offer = reply(Case::reservation().allow_pxe().run(&http_boot));
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
    assert_eq!(
        ignored(Case::reservation().run(&other)),
        IgnoreReason::DeclineOfOtherAddress
    );
    let discover = message(MessageType::Discover, |_| {});
    assert_eq!(
        ignored(Case::reservation().declined().run(&discover)),
        IgnoreReason::DeclinedRecently
    );
    assert_eq!(
        ignored(Case::reservation().held_by_another().run(&discover)),
        IgnoreReason::AddressLeasedToAnother
    );
    let release = message(MessageType::Release, |_| {});
    assert!(
        matches!(
            Case::reservation().held_by_another().run(&release),
            Outcome::Release(_)
        ),
        "a RELEASE is still taken"
    );
    assert_eq!(
        ignored(Case::reservation().on(Port::PxeBootServer).run(&discover)),
        IgnoreReason::WrongPort,
        "4011 is proxy mode's"
    );
    let inform = message(MessageType::Inform, |_| {});
    assert_eq!(
        reply(Case::reservation().run(&inform)).destination,
        Destination::Broadcast
    );
}

#[test]
fn replies_are_not_steered_by_what_the_sender_fills_in() {
    let elsewhere: Ipv4Addr = [10, 0, 0, 200].into();
    // ciaddr is the sender's to write: a reply goes there only when it is the machine's own.
    let discover = message(MessageType::Discover, |m| {
        m.set_ciaddr(elsewhere);
    });
    assert_eq!(
        reply(Case::reservation().run(&discover)).destination,
        Destination::Unicast {
            address: RESERVED,
            mac: MacAddr(MAC)
        }
    );
    let selecting = message(MessageType::Request, |m| {
        m.set_ciaddr(elsewhere);
        m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        m.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(RESERVED));
    });
    assert_ne!(
        reply(Case::reservation().run(&selecting)).destination,
        Destination::Client(elsewhere)
    );
    let inform = message(MessageType::Inform, |m| {
        m.set_ciaddr(elsewhere);
    });
    assert_eq!(
        ignored(Case::reservation().run(&inform)),
        IgnoreReason::NotTheReservedAddress
    );
    // In proxy mode too, a relay off the machine's reserved subnet is not its relay. The
    // sender's address is not the relay's (relays send from their server-facing side; these
    // requests come from 10.0.0.99).
    let relayed_by = |relay: [u8; 4]| {
        message(MessageType::Discover, |m| {
            pxe(m);
            m.set_giaddr(relay);
        })
    };
    assert_eq!(
        ignored(Case::proxy().allow_pxe().run(&relayed_by([192, 168, 5, 5]))),
        IgnoreReason::NotOnRelaySubnet
    );
    assert_eq!(
        reply(Case::proxy().allow_pxe().run(&relayed_by([10, 0, 0, 2]))).destination,
        Destination::Relay([10, 0, 0, 2].into())
    );
}

#[test]
fn smees_options_from_the_hardware() {
    let configured = Machine {
        domain: Some("lab.example".into()),
        routes: vec![([10, 20, 0, 0].into(), 16, [10, 0, 0, 254].into())],
        vlan_id: Some("30".into()),
        ..machine(true)
    };
    let offer = reply(
        Case::reservation()
            .machine(configured.clone())
            .run(&message(MessageType::Discover, pxe)),
    );
    assert_eq!(
        option(&offer, OptionCode::BroadcastAddr),
        Some(&DhcpOption::BroadcastAddr([10, 0, 0, 255].into()))
    );
    assert_eq!(
        option(&offer, OptionCode::DomainSearch),
        Some(&DhcpOption::DomainSearch(vec![dhcproto::Name::from_ascii(
            "lab.example"
        )
        .unwrap()]))
    );
    assert_eq!(
        option(&offer, OptionCode::ClasslessStaticRoute),
        Some(&DhcpOption::ClasslessStaticRoute(vec![(
            "10.20.0.0/16".parse().unwrap(),
            [10, 0, 0, 254].into()
        )]))
    );
    // Option 43, sub-option 116: the VLAN as text.
    assert_eq!(
        option(&offer, OptionCode::VendorExtensions),
        Some(&DhcpOption::VendorExtensions(vec![116, 2, b'3', b'0', 255]))
    );
    // Wisp's own boot information, as the Hardware names no boot server.
    assert!(option(&offer, OptionCode::BootfileName).is_some());
    assert_eq!(option(&offer, OptionCode::TFTPServerName), None);

    // With tftp_server_name and boot_file_name, those replace Wisp's boot information.
    let elsewhere = Machine {
        boot_server: Some(("10.0.0.9".into(), "pxelinux.0".into())),
        ..configured
    };
    let offer = reply(
        Case::reservation()
            .machine(elsewhere)
            .run(&message(MessageType::Discover, pxe)),
    );
    assert_eq!(
        option(&offer, OptionCode::TFTPServerName),
        Some(&DhcpOption::TFTPServerName(b"10.0.0.9".to_vec()))
    );
    assert_eq!(
        option(&offer, OptionCode::BootfileName),
        Some(&DhcpOption::BootfileName(b"pxelinux.0".to_vec()))
    );
    assert_eq!(offer.message.fname_str(), Some(Ok("pxelinux.0")));
    assert_eq!(offer.handoff, Handoff::None);
}
