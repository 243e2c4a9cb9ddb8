//! The boot HTTP server through curl, from a client across the veth pair: per-machine scripts,
//! refusals with reasons, and boot assets with HEAD and Range.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::Duration,
};

use wisp_tests::{
    apply_ok, closed_within, eventually, metric, require_root, Daemon, Lab, TempDir, SERVER_IF,
};

const MACHINES: &str = "apiVersion: tinkerbell.org/v1alpha1
kind: Hardware
metadata:
  name: busy
  namespace: lab
spec:
  interfaces:
    - dhcp:
        mac: 1c:69:7a:00:00:01
      netboot:
        allowPXE: true
        allowWorkflow: true
---
apiVersion: tinkerbell.org/v1alpha1
kind: Hardware
metadata:
  name: idle
  namespace: lab
spec:
  interfaces:
    - dhcp:
        mac: 1c:69:7a:00:00:02
      netboot:
        allowPXE: true
        allowWorkflow: true
---
apiVersion: tinkerbell.org/v1alpha1
kind: Hardware
metadata:
  name: locked
  namespace: lab
spec:
  interfaces:
    - dhcp:
        mac: 1c:69:7a:00:00:03
      netboot:
        allowPXE: false
---
apiVersion: tinkerbell.org/v1alpha1
kind: Template
metadata:
  name: any
  namespace: lab
spec:
  data: \"version: '0.1'\"
---
apiVersion: tinkerbell.org/v1alpha1
kind: Workflow
metadata:
  name: busy-wf
  namespace: lab
spec:
  templateRef: any
  hardwareRef: busy
";

/// curl from the client side; returns (HTTP status, body). `extra` adds curl arguments.
fn fetch(lab: &Lab, path: &str, extra: &[&str]) -> (u16, Vec<u8>) {
    let url = format!("http://10.99.0.1:8080{path}");
    let mut args = vec!["-s", "-o", "-", "-w", "\n%{http_code}"];
    args.extend(extra);
    args.push(&url);
    let output = lab.client.exec("curl", &args);
    let mut body = output.stdout;
    let split = body
        .iter()
        .rposition(|&b| b == b'\n')
        .expect("curl printed the status");
    let status = String::from_utf8_lossy(&body[split + 1..])
        .trim()
        .parse()
        .expect("a status code");
    body.truncate(split);
    (status, body)
}

#[test]
fn scripts_refusals_and_assets_with_head_and_range() {
    require_root!();
    let lab = Lab::new("http");
    let work = TempDir::new("http");
    let assets = work.join("assets");
    std::fs::create_dir_all(&assets).expect("assets dir");
    let image: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(assets.join("disk.img"), &image).expect("write an asset");
    let _daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &work.join("data"),
        &[
            "--xdp-mode",
            "native",
            "--assets-dir",
            assets.to_str().expect("utf-8"),
        ],
    );
    apply_ok(&lab.server, MACHINES);

    // Statistics are the API's: from the boot network, collecting them (a walk over the gate's
    // maps) is nobody's to ask for.
    let (status, _) = fetch(&lab, "/metrics", &[]);
    assert_eq!(status, 404, "/metrics is not served on the boot network");
    let api_metrics = lab.server.api_get("/metrics");
    assert!(
        api_metrics.contains("wisp_gate_allowlist_size"),
        "the API still serves them"
    );

    let (status, script) = fetch(&lab, "/ipxe/1c:69:7a:00:00:01/auto.ipxe", &[]);
    let script = String::from_utf8(script).expect("text");
    assert_eq!(status, 200, "{script}");
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(
        script.contains("kernel http://10.99.0.1:8080/assets/vmlinuz initrd=initrd"),
        "{script}"
    );
    assert!(
        script.contains("wisp.server=10.99.0.1 wisp.mac=1c:69:7a:00:00:01 wisp.hardware=lab/busy"),
        "{script}"
    );
    assert!(
        script.contains("initrd --name initrd http://10.99.0.1:8080/assets/initramfs"),
        "{script}"
    );

    let (status, idle) = fetch(&lab, "/ipxe/1c:69:7a:00:00:02/auto.ipxe", &[]);
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&idle).contains("\nexit 1\n"),
        "no pending work: boot the disk"
    );

    // An owned MAC whose netboot is off and a MAC nobody owns get the same answer: asking for
    // scripts must not tell anyone on the boot network which MACs Wisp owns.
    let (status, reason) = fetch(&lab, "/ipxe/1c:69:7a:00:00:03/auto.ipxe", &[]);
    assert_eq!(
        (status, String::from_utf8_lossy(&reason).trim()),
        (404, "no iPXE script for 1c:69:7a:00:00:03")
    );
    let (status, reason) = fetch(&lab, "/ipxe/02:00:00:00:00:09/auto.ipxe", &[]);
    assert_eq!(
        (status, String::from_utf8_lossy(&reason).trim()),
        (404, "no iPXE script for 02:00:00:00:00:09")
    );

    // Deleting the workflow takes effect at once: the machine's next boot goes to its disk.
    wisp_tests::wisp_ok(&lab.server, &["delete", "workflow", "busy-wf"]);
    let (status, after) = fetch(&lab, "/ipxe/1c:69:7a:00:00:01/auto.ipxe", &[]);
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&after).contains("\nexit 1\n"),
        "no pending work once the workflow is gone"
    );

    // A symlink out of the assets directory (here to the token key) is not followed, whichever
    // path answers the request; one that stays inside is.
    std::os::unix::fs::symlink(work.join("data/metadata.key"), assets.join("leak"))
        .expect("symlink out");
    std::os::unix::fs::symlink("disk.img", assets.join("inside")).expect("symlink inside");
    assert_eq!(fetch(&lab, "/assets/leak", &[]).0, 404, "the fast path");
    assert_eq!(
        fetch(&lab, "/assets/leak", &["-H", "If-None-Match: \"x\""]).0,
        404,
        "the router's ServeDir"
    );
    // Spellings the fast path declines and ServeDir would fold back to `leak`.
    for path in [
        "/assets/leak/",
        "/assets//leak",
        "/assets/./leak",
        "/assets/leak%2F",
    ] {
        assert_eq!(
            fetch(&lab, path, &["--path-as-is"]).0,
            404,
            "{path} reached the key"
        );
    }
    let (status, inside) = fetch(&lab, "/assets/inside", &[]);
    assert_eq!((status, inside.len()), (200, image.len()));

    // Assets: whole, HEAD, and a byte range.
    let (status, whole) = fetch(&lab, "/assets/disk.img", &[]);
    assert_eq!((status, whole.len()), (200, image.len()));
    assert!(whole == image, "the asset's bytes differ");
    let head = lab
        .client
        .exec_ok(
            "curl",
            &["-s", "-I", "http://10.99.0.1:8080/assets/disk.img"],
        )
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 1048576"), "{head}");
    assert!(head.contains("accept-ranges: bytes"), "{head}");
    let (status, part) = fetch(&lab, "/assets/disk.img", &["-H", "Range: bytes=1000-1999"]);
    assert_eq!(status, 206);
    assert!(part == image[1000..2000], "the range's bytes differ");

    // Plain fetches are sent with sendfile; what that fast path declines goes, with its
    // connection, to the router. One connection: a range, a script, then an asset again.
    let asset = "http://10.99.0.1:8080/assets/disk.img";
    let script = "http://10.99.0.1:8080/ipxe/1c:69:7a:00:00:02/auto.ipxe";
    let mut args = Vec::new();
    for (index, (url, range)) in [(asset, Some("0-99")), (script, None), (asset, None)]
        .into_iter()
        .enumerate()
    {
        if index > 0 {
            args.push("--next");
        }
        args.extend([
            "-s",
            "-w",
            "%{http_code}:%{num_connects} ",
            "-o",
            "/dev/null",
        ]);
        if let Some(range) = range {
            args.extend(["-r", range]);
        }
        args.push(url);
    }
    let reused = lab.client.exec_ok("curl", &args);
    assert_eq!(
        reused.trim(),
        "206:1 200:0 200:0",
        "one connection throughout"
    );
    std::fs::write(work.join("secret"), "not an asset").expect("write a file beside the assets");
    let escape = lab.client.exec_ok(
        "curl",
        &[
            "-s",
            "--path-as-is",
            "-w",
            " %{http_code}",
            "http://10.99.0.1:8080/assets/../secret",
        ],
    );
    assert!(!escape.contains("not an asset"), "{escape}");
    assert!(escape.ends_with(" 404"), "{escape}");
    let (status, _) = fetch(&lab, "/assets/missing.img", &[]);
    assert_eq!(status, 404);
    let (status, _) = fetch(
        &lab,
        "/assets/disk.img",
        &["-H", "Range: bytes=2000000-3000000"],
    );
    assert_eq!(status, 416, "a range past the end");

    // The iPXE binaries, for UEFI HTTP boot.
    let (status, efi) = fetch(&lab, "/ipxe/snponly.efi", &[]);
    assert_eq!(status, 200);
    assert!(efi == std::fs::read("/usr/lib/ipxe/snponly.efi").expect("Debian's snponly.efi"));

    assert_eq!(
        metric(
            &lab.server,
            "wisp_http_requests_total{route=\"/ipxe/{mac}/auto.ipxe\",status=\"404\"}"
        ),
        Some(2)
    );
    assert_eq!(
        metric(
            &lab.server,
            "wisp_http_requests_total{route=\"/assets\",status=\"206\"}"
        ),
        Some(2)
    );
    assert_eq!(
        metric(
            &lab.server,
            "wisp_http_requests_total{route=\"/assets\",status=\"416\"}"
        ),
        Some(1)
    );
}

/// Sends `head` on a new connection from the client side, and returns the response's status
/// line (empty when the server closed the connection without one).
fn raw_status(stream: &mut TcpStream, head: &str) -> String {
    stream.write_all(head.as_bytes()).expect("send the head");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap_or_default();
    line.trim_end().to_string()
}

#[test]
fn no_host_gets_400_and_one_address_cannot_hold_every_connection() {
    require_root!();
    let lab = Lab::new("http-limits");
    let work = TempDir::new("http-limits");
    let assets = work.join("assets");
    std::fs::create_dir_all(&assets).expect("assets dir");
    std::fs::write(assets.join("disk.img"), b"image").expect("write an asset");
    let _daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &work.join("data"),
        &["--assets-dir", assets.to_str().expect("utf-8")],
    );
    apply_ok(&lab.server, MACHINES);
    lab.client.within(|| {
        let connect = || {
            let stream = TcpStream::connect("10.99.0.1:8080").expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            stream
        };
        // HTTP/1.1 requires Host, on the asset fast path and on the router's paths alike.
        for path in ["/assets/disk.img", "/ipxe/1c:69:7a:00:00:01/auto.ipxe"] {
            let status = raw_status(&mut connect(), &format!("GET {path} HTTP/1.1\r\n\r\n"));
            assert_eq!(status, "HTTP/1.1 400 Bad Request", "{path}");
        }
        // 64 idle connections from one address are all it may hold: the 65th is closed at
        // once, and the ones it holds still work.
        let mut held: Vec<TcpStream> = (0..64).map(|_| connect()).collect();
        let mut refused = connect();
        let mut byte = [0u8; 1];
        assert_eq!(
            refused.read(&mut byte).expect("the server closes it"),
            0,
            "the 65th connection is closed"
        );
        let status = raw_status(
            &mut held[0],
            "GET /assets/disk.img HTTP/1.1\r\nHost: 10.99.0.1\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, "HTTP/1.1 200 OK");
        // Closed connections give their slots back.
        held.clear();
        eventually("a slot is free again", || {
            let mut stream = connect();
            raw_status(
                &mut stream,
                "GET /assets/disk.img HTTP/1.1\r\nHost: 10.99.0.1\r\n\r\n",
            ) == "HTTP/1.1 200 OK"
        });
    });
}

/// Sends a request the router answers (the fast path hands the connection over) and reads the
/// whole answer, leaving the connection open.
fn router_exchange(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /ipxe/02:00:00:00:00:09/auto.ipxe HTTP/1.1\r\nHost: 10.99.0.1\r\n\r\n")
        .expect("send");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    // The 404's body is short: the head and the body come together, or nearly.
    while !String::from_utf8_lossy(&response).contains("no iPXE script") {
        let read = stream.read(&mut buffer).expect("the router answers");
        assert!(
            read > 0,
            "the router closed the connection instead of answering"
        );
        response.extend_from_slice(&buffer[..read]);
    }
    assert!(
        response.starts_with(b"HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&response)
    );
}

/// Fetches `head` and reads slowly (64 KiB every half second); the bytes received and whether
/// the server closed the connection within 20 s.
fn read_slowly(stream: &mut TcpStream, head: &str) -> (usize, bool) {
    stream.write_all(head.as_bytes()).expect("send the head");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let start = std::time::Instant::now();
    let mut received = 0;
    let mut buffer = vec![0u8; 64 << 10];
    while start.elapsed() < Duration::from_secs(20) {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return (received, true),
            Ok(read) => received += read,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    (received, false)
}

#[test]
fn idle_slow_and_trickling_peers_are_cut_off() {
    require_root!();
    let lab = Lab::new("http-pace");
    let work = TempDir::new("http-pace");
    let assets = work.join("assets");
    std::fs::create_dir_all(&assets).expect("assets dir");
    const IMAGE: usize = 32 << 20;
    std::fs::write(assets.join("big.img"), vec![0x5a; IMAGE]).expect("write an asset");
    // A 2 s connection timeout, and responses at 8 MiB/s at least after it: 32 MiB are due
    // within 6 s; the clients below read at 128 KiB/s.
    let _daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &work.join("data"),
        &[
            "--assets-dir",
            assets.to_str().expect("utf-8"),
            "--connection-timeout",
            "2s",
            "--min-transfer-rate",
            "8388608",
        ],
    );
    apply_ok(&lab.server, MACHINES);
    let connect = || TcpStream::connect("10.99.0.1:8080").expect("connect");
    lab.client.within(|| {
        // Idle after an exchange with the router: closed after the timeout.
        let mut idle = connect();
        router_exchange(&mut idle);
        let closed = closed_within(&mut idle, Duration::from_secs(10));
        assert!(
            closed.is_some_and(|after| after >= Duration::from_millis(1500)),
            "an idle connection is closed after 2 s, not before: {closed:?}"
        );

        // After an exchange with the router, the next head sent a byte every 300 ms: each byte
        // is progress, but the head is not whole within the timeout.
        let mut loris = connect();
        router_exchange(&mut loris);
        let start = std::time::Instant::now();
        let head = b"GET /ipxe/02:00:00:00:00:09/auto.ipxe HTTP/1.1\r\nHost: 10.99.0.1\r\n\r\n";
        let mut cut_off = false;
        for byte in head {
            if loris.write_all(&[*byte]).is_err() {
                cut_off = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
            let mut probe = [0u8; 1];
            loris.set_nonblocking(true).expect("nonblocking");
            let read = loris.read(&mut probe);
            loris.set_nonblocking(false).expect("blocking");
            if matches!(read, Ok(0)) || read.is_err_and(|err| err.kind() != std::io::ErrorKind::WouldBlock) {
                cut_off = true;
                break;
            }
        }
        assert!(
            cut_off && start.elapsed() < Duration::from_secs(8),
            "a head sent a byte at a time is cut off after about 2 s (cut off: {cut_off}, after {:?})",
            start.elapsed()
        );

        // A trickling reader of a 32 MiB asset, on the fast path and through the router (a
        // conditional request goes there), is cut off before it has the whole file.
        for (path, extra) in [
            ("fast path", ""),
            ("router", "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n"),
        ] {
            // A small receive buffer, so that what the kernel took in before the server's
            // reset (which the client reads before the reset's error) is small too.
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            socket.set_recv_buffer_size(64 << 10).expect("SO_RCVBUF");
            socket
                .connect(&std::net::SocketAddr::from(([10, 99, 0, 1], 8080)).into())
                .expect("connect");
            let (received, closed) = read_slowly(
                &mut socket.into(),
                &format!("GET /assets/big.img HTTP/1.1\r\nHost: 10.99.0.1\r\n{extra}\r\n"),
            );
            assert!(
                closed && received < IMAGE,
                "{path}: a reader at 128 KiB/s is cut off (closed: {closed}, {received} bytes)"
            );
        }
        // HTTP/2 with prior knowledge (h2c) is not spoken: under it the client's flow control
        // would pace the writes, and a slow reader would escape the pace.
        let mut h2c = connect();
        h2c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .expect("send the preface");
        h2c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut answer = Vec::new();
        let _ = h2c.read_to_end(&mut answer);
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 "),
            "no HTTP/2 frames in answer: {answer:02x?}"
        );
        // A reader at full speed gets it all.
        let (received, closed) = read_fast(&mut connect());
        assert_eq!((received, closed), (IMAGE, false), "a reader at full speed gets it all");
    });
}

/// Fetches the whole big asset as fast as it comes: bytes of body received, and whether the
/// connection was closed before they were all there.
fn read_fast(stream: &mut TcpStream) -> (usize, bool) {
    stream
        .write_all(b"GET /assets/big.img HTTP/1.1\r\nHost: 10.99.0.1\r\n\r\n")
        .expect("send");
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("head");
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().expect("a length");
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; length];
    match reader.read_exact(&mut body) {
        Ok(()) => (length, false),
        Err(_) => (0, true),
    }
}
