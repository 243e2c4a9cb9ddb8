//! The TFTP server against real clients (atftp, tftp-hpa), across a veth pair with the XDP gate
//! attached: option negotiation, identical bytes, refusals, concurrency and retransmission.
use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use wisp_tests::{
    metric, output_text, require_root, Daemon, Lab, TempDir, CLIENT_IF, SERVER_IF, SERVER_IP,
};

const IPXE_DIR: &str = "/usr/lib/ipxe";

fn start() -> (Lab, TempDir, Daemon) {
    let lab = Lab::new("tftp");
    let data = TempDir::new("tftp");
    let daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &data.join("data"),
        &["--xdp-mode", "native"],
    );
    (lab, data, daemon)
}

fn expected(name: &str) -> Vec<u8> {
    std::fs::read(format!("{IPXE_DIR}/{name}")).expect("Debian's ipxe package is installed")
}

#[test]
fn atftp_negotiates_blksize_tsize_and_windowsize_and_gets_identical_bytes() {
    require_root!();
    let (lab, data, _daemon) = start();
    let local = data.join("undionly.kpxe");
    let server = SERVER_IP.to_string();
    let output = lab.client.exec(
        "atftp",
        &[
            "--option",
            "blksize 1468",
            "--option",
            "tsize 0",
            "--option",
            "windowsize 8",
            "--trace",
            "-g",
            "-r",
            "undionly.kpxe",
            "-l",
            local.to_str().expect("utf-8"),
            &server,
        ],
    );
    let trace = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{trace}");
    let original = expected("undionly.kpxe");
    assert_eq!(
        std::fs::read(&local).expect("fetched"),
        original,
        "the bytes differ"
    );
    let oack = trace
        .lines()
        .find(|line| line.starts_with("received OACK"))
        .unwrap_or_else(|| panic!("no OACK:\n{trace}"));
    for option in [
        format!("tsize: {}", original.len()),
        "windowsize: 8".into(),
        "blksize: 1468".into(),
    ] {
        assert!(oack.contains(&option), "{option} not acknowledged: {oack}");
    }
    // With a window of 8, the client acknowledges about one block in 8.
    let blocks = original.len().div_ceil(1468);
    let acks = trace
        .lines()
        .filter(|line| line.starts_with("sent ACK"))
        .count();
    assert!(
        acks <= blocks / 8 + 2,
        "{acks} ACKs for {blocks} blocks: the window was not used"
    );
    assert_eq!(
        metric(&lab.server, "wisp_tftp_bytes_total").map(|bytes| bytes as usize),
        Some(original.len())
    );
}

#[test]
fn tftp_hpa_fetches_and_is_refused_traversal_absolute_paths_and_writes() {
    require_root!();
    let (lab, data, _daemon) = start();
    let server = SERVER_IP.to_string();
    let local = data.join("snponly.efi");
    let get = |remote: &str| {
        let local = local.to_str().expect("utf-8");
        let output = lab.client.exec(
            "tftp",
            &[&server, "-m", "binary", "-c", "get", remote, local],
        );
        output_text(&output)
    };
    let fetched = get("snponly.efi");
    assert_eq!(
        std::fs::read(&local).expect("fetched"),
        expected("snponly.efi"),
        "{fetched}"
    );
    for refused in ["../etc/passwd", "/etc/passwd", "boot/../../etc/passwd"] {
        let said = get(refused);
        assert!(said.contains("Error code 2"), "{refused}: {said}");
    }
    assert!(get("no-such-file").contains("Error code 1"));
    let put = lab.client.exec(
        "tftp",
        &[
            &server,
            "-m",
            "binary",
            "-c",
            "put",
            "/etc/hostname",
            "hostname",
        ],
    );
    let said = output_text(&put);
    assert!(
        said.contains("Error code 4"),
        "a write must be refused as an illegal operation: {said}"
    );
    assert_eq!(
        metric(&lab.server, "wisp_tftp_requests_total{outcome=\"denied\"}"),
        Some(4)
    );
    assert_eq!(
        metric(
            &lab.server,
            "wisp_tftp_requests_total{outcome=\"not_found\"}"
        ),
        Some(1)
    );
}

#[test]
fn many_concurrent_transfers_all_complete_intact() {
    require_root!();
    let (lab, data, _daemon) = start();
    let server = SERVER_IP.to_string();
    let clients: Vec<(std::path::PathBuf, std::process::Child)> = (0..24)
        .map(|index| {
            let local = data.join(&format!("copy-{index}"));
            let child = lab
                .client
                .command("atftp")
                .args(["--option", "blksize 1468", "-g", "-r", "ipxe.efi", "-l"])
                .arg(&local)
                .arg(&server)
                .spawn()
                .expect("start atftp");
            (local, child)
        })
        .collect();
    let original = expected("ipxe.efi");
    for (local, mut child) in clients {
        assert!(
            child.wait().expect("atftp").success(),
            "{} failed",
            local.display()
        );
        assert_eq!(
            std::fs::read(&local).expect("fetched"),
            original,
            "{} differs",
            local.display()
        );
    }
    assert_eq!(
        metric(&lab.server, "wisp_tftp_requests_total{outcome=\"served\"}"),
        Some(24)
    );
}

#[test]
fn an_unacknowledged_oack_is_retransmitted_then_the_transfer_times_out() {
    require_root!();
    let (lab, _data, _daemon) = start();
    let (oacks, oack, last) = lab.client.within(|| {
        let socket = UdpSocket::bind(("10.99.0.2", 0)).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(4)))
            .expect("timeout");
        socket
            .send_to(
                b"\x00\x01undionly.kpxe\x00octet\x00timeout\x001\x00",
                (SERVER_IP, 69),
            )
            .expect("send RRQ");
        let start = Instant::now();
        let mut oacks = Vec::new();
        let mut buffer = [0u8; 1600];
        // Never acknowledge: the server resends its OACK once a second (the negotiated
        // timeout), then gives up with an ERROR, after which nothing comes within 4 s.
        let (mut last, mut oack) = (Vec::new(), Vec::new());
        while let Ok((length, _)) = socket.recv_from(&mut buffer) {
            match &buffer[..2] {
                b"\x00\x06" => {
                    oacks.push(start.elapsed());
                    oack = buffer[..length].to_vec();
                }
                _ => last = buffer[..length].to_vec(),
            }
        }
        (oacks, oack, last)
    });
    assert_eq!(
        oack, b"\x00\x06timeout\x001\x00",
        "the timeout option is acknowledged"
    );
    // Before a first ACK the client's address may be forged: two resends at most, so a forged
    // request is not amplified at whoever it names.
    assert_eq!(oacks.len(), 3, "the OACK and 2 retransmissions: {oacks:?}");
    // At the negotiated 1 s, well apart from the 3 s default.
    for gap in oacks.windows(2).map(|pair| pair[1] - pair[0]) {
        assert!(
            gap >= Duration::from_millis(700) && gap <= Duration::from_millis(1900),
            "retransmissions at {oacks:?}"
        );
    }
    assert_eq!(
        &last[..2],
        b"\x00\x05",
        "the transfer ends with a TFTP ERROR: {last:02x?}"
    );
}

#[test]
fn windows_restart_after_a_partial_ack_blocks_fit_the_mtu_and_malformed_requests_count() {
    require_root!();
    let (lab, _data, _daemon) = start();
    let original = expected("snponly.efi");
    let (oack, windows) = lab.client.within(|| {
        let socket = UdpSocket::bind(("10.99.0.2", 0)).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(4)))
            .expect("timeout");
        // Not a request (an ERROR to port 69): counted and dropped, with no answer.
        socket
            .send_to(b"\x00\x05\x00\x00nonsense\x00", (SERVER_IP, 69))
            .expect("send garbage");
        socket
            .send_to(
                b"\x00\x01snponly.efi\x00octet\x00blksize\x009000\x00windowsize\x004\x00",
                (SERVER_IP, 69),
            )
            .expect("send RRQ");
        let mut buffer = [0u8; 1600];
        let (length, transfer) = socket.recv_from(&mut buffer).expect("an OACK");
        let oack = buffer[..length].to_vec();
        socket
            .send_to(b"\x00\x04\x00\x00", transfer)
            .expect("ACK 0");
        let mut window = |socket: &UdpSocket| -> Vec<(u16, Vec<u8>)> {
            (0..4)
                .map(|_| {
                    let (length, _) = socket.recv_from(&mut buffer).expect("a DATA block");
                    assert_eq!(&buffer[..2], b"\x00\x03", "{:02x?}", &buffer[..4]);
                    let block = u16::from_be_bytes([buffer[2], buffer[3]]);
                    (block, buffer[4..length].to_vec())
                })
                .collect()
        };
        let first = window(&socket);
        // As if block 3 was lost: the client acknowledges block 2, the last it has in order.
        socket
            .send_to(b"\x00\x04\x00\x02", transfer)
            .expect("ACK 2");
        let second = window(&socket);
        (oack, [first, second])
    });
    // 9000-byte blocks would be IP fragments on this 1500-byte MTU: the server takes the
    // largest block that fits in one datagram.
    assert_eq!(oack, b"\x00\x06blksize\x001468\x00windowsize\x004\x00");
    let numbers: Vec<Vec<u16>> = windows
        .iter()
        .map(|window| window.iter().map(|(block, _)| *block).collect())
        .collect();
    assert_eq!(numbers, [vec![1, 2, 3, 4], vec![3, 4, 5, 6]]);
    for (block, data) in windows.iter().flatten() {
        let start = (usize::from(*block) - 1) * 1468;
        assert!(
            data[..] == original[start..start + 1468],
            "block {block} holds the wrong bytes"
        );
    }
    assert_eq!(
        metric(
            &lab.server,
            "wisp_tftp_requests_total{outcome=\"malformed\"}"
        ),
        Some(1)
    );
}

#[test]
fn a_file_past_65535_blocks_arrives_whole_as_the_block_number_rolls_over() {
    require_root!();
    let lab = Lab::new("tftp-big");
    let data = TempDir::new("tftp-big");
    // 200 MiB: 143,000 blocks of 1,468 bytes (two roll-overs of the 16-bit block number) and
    // 409,600 of tftp-hpa's 512 (six). Served as if it were an iPXE binary.
    let ipxe_dir = data.join("ipxe");
    std::fs::create_dir_all(&ipxe_dir).expect("the iPXE directory");
    let big: Vec<u8> = (0..200u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(ipxe_dir.join("ipxe.efi"), &big).expect("write the file");
    let _daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &data.join("data"),
        &[
            "--xdp-mode",
            "native",
            "--ipxe-dir",
            ipxe_dir.to_str().expect("utf-8"),
        ],
    );
    let server = SERVER_IP.to_string();
    let fetched = |client: &str, args: &[&str], local: &std::path::Path| {
        let output = lab.client.exec(client, args);
        assert!(
            output.status.success(),
            "{client}: {}",
            output_text(&output)
        );
        let got = std::fs::read(local).expect("fetched");
        assert_eq!(got.len(), big.len(), "{client}: the length differs");
        assert!(got == big, "{client}: the bytes differ");
        std::fs::remove_file(local).expect("remove the copy");
    };
    let local = data.join("by-atftp");
    let local_arg = local.to_str().expect("utf-8");
    fetched(
        "atftp",
        &[
            "--option",
            "blksize 1468",
            "--option",
            "windowsize 16",
            "-g",
            "-r",
            "ipxe.efi",
            "-l",
            local_arg,
            &server,
        ],
        &local,
    );
    let local = data.join("by-tftp-hpa");
    let local_arg = local.to_str().expect("utf-8");
    fetched(
        "tftp",
        &[&server, "-m", "binary", "-c", "get", "ipxe.efi", local_arg],
        &local,
    );
}

#[test]
fn one_address_cannot_hold_every_slot_nor_ask_for_tiny_blocks() {
    require_root!();
    let (lab, _data, _daemon) = start();
    lab.client
        .exec_ok("ip", &["addr", "add", "10.99.0.3/24", "dev", CLIENT_IF]);
    let (answers, tiny) = lab.client.within(|| {
        // 33 requests from one address, never acknowledged: 32 transfers start (each holds a
        // slot until it gives up), the 33rd is refused.
        let sockets: Vec<UdpSocket> = (0..33)
            .map(|_| {
                let socket = UdpSocket::bind(("10.99.0.2", 0)).expect("bind");
                socket
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                socket
                    .send_to(
                        b"\x00\x01undionly.kpxe\x00octet\x00timeout\x005\x00",
                        (SERVER_IP, 69),
                    )
                    .expect("send RRQ");
                socket
            })
            .collect();
        let mut buffer = [0u8; 1600];
        let answers: Vec<Vec<u8>> = sockets
            .iter()
            .map(|socket| {
                let (length, _) = socket.recv_from(&mut buffer).expect("an answer");
                buffer[..length].to_vec()
            })
            .collect();
        drop(sockets);
        // Eight-byte blocks would make one transfer last for days: not acknowledged.
        let socket = UdpSocket::bind(("10.99.0.3", 0)).expect("bind a second address");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        socket
            .send_to(
                b"\x00\x01undionly.kpxe\x00octet\x00blksize\x008\x00tsize\x000\x00",
                (SERVER_IP, 69),
            )
            .expect("send RRQ");
        let (length, _) = socket.recv_from(&mut buffer).expect("an OACK");
        (answers, buffer[..length].to_vec())
    });
    let oacks = answers
        .iter()
        .filter(|answer| answer[..2] == *b"\x00\x06")
        .count();
    let refusals: Vec<String> = answers
        .iter()
        .filter(|answer| answer[..2] == *b"\x00\x05")
        .map(|answer| String::from_utf8_lossy(&answer[4..]).into_owned())
        .collect();
    assert_eq!(oacks, 32, "{refusals:?}");
    assert_eq!(refusals.len(), 1);
    assert!(
        refusals[0].contains("too many transfers from your address"),
        "{refusals:?}"
    );
    assert_eq!(&tiny[..2], b"\x00\x06", "an OACK");
    let options = String::from_utf8_lossy(&tiny[2..]).to_string();
    assert!(options.contains("tsize"), "{options:?}");
    assert!(
        !options.contains("blksize"),
        "blksize 8 was acknowledged: {options:?}"
    );
}

#[test]
fn a_flood_of_requests_is_answered_and_counted_but_logged_a_few_lines_at_a_time() {
    require_root!();
    let (lab, _data, daemon) = start();
    lab.client
        .exec_ok("ip", &["addr", "add", "10.99.0.3/24", "dev", CLIENT_IF]);
    const FLOOD: u64 = 300;
    let request = b"\0\x01nope.efi\0octet\0";
    lab.client.within(|| {
        let flooder = UdpSocket::bind("10.99.0.2:0").expect("bind");
        flooder
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut answer = [0u8; 512];
        for _ in 0..FLOOD {
            flooder.send_to(request, (SERVER_IP, 69)).expect("send");
            // Each request gets its "not found" ERROR (opcode 5, code 1).
            let (length, _) = flooder.recv_from(&mut answer).expect("an answer");
            assert_eq!(&answer[..4], b"\0\x05\0\x01", "{:?}", &answer[..length]);
        }
        // Another host's request is still logged.
        let other = UdpSocket::bind("10.99.0.3:0").expect("bind");
        other.send_to(request, (SERVER_IP, 69)).expect("send");
    });
    wisp_tests::eventually("every request is counted", || {
        metric(
            &lab.server,
            "wisp_tftp_requests_total{outcome=\"not_found\"}",
        ) == Some(FLOOD + 1)
    });
    let log = daemon.log();
    let lines_about = |client: &str| {
        log.lines()
            .filter(|line| line.contains("TFTP read request") && line.contains(client))
            .count() as u64
    };
    let suppressed = metric(
        &lab.server,
        "wisp_log_lines_suppressed_total{protocol=\"tftp\"}",
    )
    .expect("the left-out lines are counted");
    let flooder = lines_about("client=10.99.0.2:");
    assert!(
        flooder <= 30 && flooder + suppressed == FLOOD,
        "{flooder} lines about the flooder, {suppressed} left out"
    );
    assert_eq!(
        lines_about("client=10.99.0.3:"),
        1,
        "another host's line is written"
    );
}

#[test]
fn duplicate_acks_resend_nothing_and_transfers_beyond_the_cap_are_refused() {
    require_root!();
    let lab = Lab::new("tftp-cap");
    let data = TempDir::new("tftp-cap");
    let _daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &data.join("data"),
        &["--tftp-max-transfers", "2"],
    );
    let file = expected("undionly.kpxe");
    let (blocks, refusal) = lab.client.within(|| {
        let socket = UdpSocket::bind(("10.99.0.2", 0)).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        // No options: 512-byte blocks, one at a time, each acknowledged twice, as a client
        // with the Sorcerer's Apprentice bug does (RFC 1123 4.2.3.1): a duplicate ACK must not
        // send the next block again, or every block after it goes out twice, then four times.
        socket
            .send_to(b"\x00\x01undionly.kpxe\x00octet\x00", (SERVER_IP, 69))
            .expect("send RRQ");
        let mut blocks: std::collections::BTreeMap<u16, (usize, Vec<u8>)> = Default::default();
        let mut buffer = [0u8; 1600];
        let mut server = None;
        let mut held = Vec::new();
        // Until nothing more comes: the last block came.
        while let Ok((length, from)) = socket.recv_from(&mut buffer) {
            assert_eq!(&buffer[..2], b"\x00\x03", "DATA: {:02x?}", &buffer[..4]);
            let block = u16::from_be_bytes([buffer[2], buffer[3]]);
            let entry = blocks.entry(block).or_default();
            entry.0 += 1;
            entry.1 = buffer[4..length].to_vec();
            server = Some(from);
            let ack = [0, 4, buffer[2], buffer[3]];
            socket.send_to(&ack, from).expect("ACK");
            socket.send_to(&ack, from).expect("ACK again");
            if block == 1 {
                // While this transfer runs, two more: the second is the last the cap allows.
                for _ in 0..2 {
                    let other = UdpSocket::bind(("10.99.0.2", 0)).expect("bind");
                    other
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .expect("timeout");
                    other
                        .send_to(b"\x00\x01undionly.kpxe\x00octet\x00", (SERVER_IP, 69))
                        .expect("send RRQ");
                    held.push(other);
                }
            }
        }
        assert!(server.is_some(), "the transfer started");
        let mut answer = [0u8; 1600];
        let (length, _) = held[1].recv_from(&mut answer).expect("an answer");
        (blocks, answer[..length].to_vec())
    });
    let received: Vec<u8> = blocks
        .values()
        .flat_map(|(_, bytes)| bytes.clone())
        .collect();
    assert_eq!(received, file, "the file arrives whole");
    assert!(
        blocks.values().all(|(count, _)| *count == 1),
        "each block came once: {:?}",
        blocks
            .iter()
            .filter(|(_, (count, _))| *count > 1)
            .map(|(block, (count, _))| (block, count))
            .collect::<Vec<_>>()
    );
    assert_eq!(&refusal[..2], b"\x00\x05", "an ERROR: {refusal:02x?}");
    assert!(
        String::from_utf8_lossy(&refusal).contains("too many transfers"),
        "{}",
        String::from_utf8_lossy(&refusal)
    );
}
