//! A machine's network boot over the wire, as its PXE firmware and then iPXE do it: the
//! firmware's DHCP (DISCOVER, OFFER, REQUEST, ACK), TFTP of the boot file the ACK names, iPXE's
//! own DHCP, the script its ACK names, and the kernel and initramfs the script names, each
//! stage timed. Nothing in it is Wisp's: it follows what the servers answer, so that the same
//! machine boots from dnsmasq and nginx too.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use dhcproto::{v4, Decodable, Decoder, Encodable, Encoder};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Bytes};
use hyper_util::rt::TokioIo;
use tokio::{net::UdpSocket, sync::oneshot};

use crate::connect_from;

/// The stages of a boot, then of the workflow, in the order a machine goes through them.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Stage {
    /// The firmware's DHCP, from its DISCOVER to the ACK.
    Dhcp,
    /// TFTP of the boot file the ACK names (an iPXE binary).
    Tftp,
    /// iPXE's own DHCP, from its DISCOVER to the ACK naming the script.
    IpxeDhcp,
    /// The script, over HTTP.
    Script,
    /// The kernel and the initramfs the script names, one after the other over HTTP.
    KernelAndInitramfs,
    /// The workflow, from the first GetAction to the machine's last report.
    Workflow,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Dhcp,
        Stage::Tftp,
        Stage::IpxeDhcp,
        Stage::Script,
        Stage::KernelAndInitramfs,
        Stage::Workflow,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Stage::Dhcp => "DHCP",
            Stage::Tftp => "TFTP",
            Stage::IpxeDhcp => "iPXE's DHCP",
            Stage::Script => "script",
            Stage::KernelAndInitramfs => "kernel and initramfs",
            Stage::Workflow => "workflow",
        }
    }
}

/// How far a machine boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// Its DHCP, iPXE's, and the script: what Wisp needs to see before the workflow (the
    /// workflow benchmark, the rack page's test).
    Script,
    /// Everything a real machine fetches: the boot file over TFTP, the kernel and initramfs.
    Everything,
}

/// What a boot found: the token on the script's kernel command line (Wisp's), and each
/// stage's time.
pub struct Booted {
    pub token: Option<String>,
    pub stages: Vec<(Stage, Duration)>,
}

/// How the firmware retransmits a DHCP message that got no answer: after 4, 8, 16 and 32 s (PXE
/// 2.1, 2.2.1), and once more, so that a rack's burst costs time rather than machines.
const FIRMWARE_DHCP_TIMEOUTS: [u64; 5] = [4, 8, 16, 32, 32];
/// iPXE starts at 1 s and doubles (its DHCP_MIN_TIMEOUT and DHCP_MAX_TIMEOUT).
const IPXE_DHCP_TIMEOUTS: [u64; 6] = [1, 2, 4, 8, 10, 10];
/// A TFTP packet unanswered this long is sent again, up to [`TFTP_TRIES`] times.
const TFTP_TIMEOUT: Duration = Duration::from_secs(1);
const TFTP_TRIES: usize = 6;

/// The rack's shared segment for DHCP: one broadcast socket on the machines' interface, as their
/// NICs share it. Replies are broadcast (the clients set the broadcast bit, having no address
/// yet), so one reader hands each to the machine waiting for its transaction id.
pub struct DhcpSegment {
    socket: UdpSocket,
    waiting: Mutex<HashMap<u32, oneshot::Sender<v4::Message>>>,
    /// DHCP messages sent again for want of an answer.
    pub retransmissions: AtomicU64,
}

impl DhcpSegment {
    /// Opens the segment on `interface` and starts its reader, which ends with the runtime.
    pub fn open(interface: &str) -> anyhow::Result<Arc<DhcpSegment>> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_broadcast(true)?;
        socket.set_nonblocking(true)?;
        // A rack's replies arrive in bursts.
        socket.set_recv_buffer_size(8 << 20)?;
        socket.bind_device(Some(interface.as_bytes()))?;
        socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())?;
        let segment = Arc::new(DhcpSegment {
            socket: UdpSocket::from_std(socket.into())?,
            waiting: Mutex::default(),
            retransmissions: AtomicU64::new(0),
        });
        tokio::spawn(Arc::clone(&segment).deliver());
        Ok(segment)
    }

    async fn deliver(self: Arc<Self>) {
        let mut buffer = vec![0u8; 1500];
        while let Ok(length) = self.socket.recv(&mut buffer).await {
            // Not a DHCP message (or not one anybody waits for): not ours.
            let Ok(message) = v4::Message::decode(&mut Decoder::new(&buffer[..length])) else {
                continue;
            };
            if message.opcode() != v4::Opcode::BootReply {
                continue;
            }
            let waiter = self.waiting().remove(&message.xid());
            if let Some(waiter) = waiter {
                let _ = waiter.send(message);
            }
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u32, oneshot::Sender<v4::Message>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Broadcasts `message` until a reply of `kind` to its transaction comes, waiting
    /// `timeouts` seconds in turn.
    async fn exchange(
        &self,
        message: &v4::Message,
        kind: v4::MessageType,
        timeouts: &[u64],
    ) -> anyhow::Result<v4::Message> {
        let mut bytes = Vec::new();
        message.encode(&mut Encoder::new(&mut bytes))?;
        for (attempt, &timeout) in timeouts.iter().enumerate() {
            let (sender, mut reply) = oneshot::channel();
            self.waiting().insert(message.xid(), sender);
            if attempt > 0 {
                self.retransmissions.fetch_add(1, Ordering::Relaxed);
            }
            self.socket
                .send_to(&bytes, (Ipv4Addr::BROADCAST, 67))
                .await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            // A reply of another kind (a NAK, a stray OFFER) ends nothing: wait on.
            loop {
                match tokio::time::timeout_at(deadline, &mut reply).await {
                    Ok(Ok(answer)) if message_type(&answer) == Some(kind) => return Ok(answer),
                    Ok(Ok(_)) => {
                        let (sender, next) = oneshot::channel();
                        self.waiting().insert(message.xid(), sender);
                        reply = next;
                    }
                    Ok(Err(_)) | Err(_) => break,
                }
            }
        }
        self.waiting().remove(&message.xid());
        bail!(
            "no {kind:?} after {} tries over {} s",
            timeouts.len(),
            timeouts.iter().sum::<u64>()
        )
    }
}

fn message_type(message: &v4::Message) -> Option<v4::MessageType> {
    match message.opts().get(v4::OptionCode::MessageType) {
        Some(v4::DhcpOption::MessageType(kind)) => Some(*kind),
        _ => None,
    }
}

/// A PXE client's broadcast DISCOVER (transaction `xid`) from `chaddr`, with iPXE's user
/// class when it has one.
pub fn pxe_discover(chaddr: &[u8], xid: u32, user_class: Option<&[u8]>) -> v4::Message {
    let mut message = v4::Message::default();
    message
        .set_flags(v4::Flags::default().set_broadcast())
        .set_chaddr(chaddr)
        .set_xid(xid);
    let options = message.opts_mut();
    options.insert(v4::DhcpOption::MessageType(v4::MessageType::Discover));
    options.insert(v4::DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    if let Some(user_class) = user_class {
        options.insert(v4::DhcpOption::UserClass(user_class.to_vec()));
    }
    message
}

/// The REQUEST that takes `offer` (RFC 2131 4.3.2, SELECTING): the DISCOVER's transaction and
/// options, with the offered address and the offering server named.
fn selecting_request(discover: &v4::Message, offer: &v4::Message) -> anyhow::Result<v4::Message> {
    let server = match offer.opts().get(v4::OptionCode::ServerIdentifier) {
        Some(v4::DhcpOption::ServerIdentifier(server)) => *server,
        _ => bail!("the OFFER names no server (option 54)"),
    };
    let mut request = discover.clone();
    let options = request.opts_mut();
    options.insert(v4::DhcpOption::MessageType(v4::MessageType::Request));
    options.insert(v4::DhcpOption::RequestedIpAddress(offer.yiaddr()));
    options.insert(v4::DhcpOption::ServerIdentifier(server));
    Ok(request)
}

/// DISCOVER, OFFER, REQUEST, ACK; returns the ACK.
async fn dora(
    segment: &DhcpSegment,
    discover: v4::Message,
    timeouts: &[u64],
) -> anyhow::Result<v4::Message> {
    let offer = segment
        .exchange(&discover, v4::MessageType::Offer, timeouts)
        .await?;
    let request = selecting_request(&discover, &offer)?;
    segment
        .exchange(&request, v4::MessageType::Ack, timeouts)
        .await
}

/// The boot file an ACK names: option 67, else the `file` field.
fn boot_file(ack: &v4::Message) -> anyhow::Result<String> {
    let name = match ack.opts().get(v4::OptionCode::BootfileName) {
        Some(v4::DhcpOption::BootfileName(name)) => name.clone(),
        _ => ack.fname().unwrap_or_default().to_vec(),
    };
    let name = String::from_utf8(name).context("the boot file's name is not UTF-8")?;
    let name = name.trim_end_matches('\0').to_string();
    if name.is_empty() {
        bail!("the ACK names no boot file");
    }
    Ok(name)
}

/// What a TFTP client asks the server for.
#[derive(Clone, Copy, Debug)]
pub struct TftpOptions {
    pub block_size: usize,
    /// Blocks per acknowledgement (RFC 7440); 1, one block at a time, is not asked for.
    pub window: u16,
}

impl TftpOptions {
    /// As a PXE firmware asks: a 1500-byte frame less the headers, one block at a time.
    pub const PXE_FIRMWARE: TftpOptions = TftpOptions {
        block_size: 1456,
        window: 1,
    };
}

/// Fetches `file` from `server` over TFTP, from `address`, with `options` as far as the server
/// takes them (its OACK). Returns its size.
pub async fn tftp_get(
    address: Ipv4Addr,
    server: Ipv4Addr,
    file: &str,
    options: TftpOptions,
) -> anyhow::Result<u64> {
    let socket = UdpSocket::bind((address, 0)).await?;
    let mut request = vec![0, 1];
    let mut fields = vec![
        file.to_string(),
        "octet".into(),
        "blksize".into(),
        options.block_size.to_string(),
        "tsize".into(),
        "0".into(),
    ];
    if options.window > 1 {
        fields.extend(["windowsize".into(), options.window.to_string()]);
    }
    for field in fields {
        request.extend_from_slice(field.as_bytes());
        request.push(0);
    }
    // What goes out next when an answer is due or late: the request, then the last ACK.
    let mut last_sent = request;
    let mut send = true;
    let mut peer = SocketAddr::from((server, 69));
    // Without an OACK, the server took no option: RFC 1350's 512-byte blocks, one at a time.
    let (mut block_size, mut window) = (512, 1);
    // The last block received in order, and the last acknowledged.
    let (mut received, mut acked) = (0u16, 0u16);
    let mut size = 0u64;
    let mut buffer = vec![0u8; 65_536];
    let mut tries = 0;
    loop {
        if send {
            socket.send_to(&last_sent, peer).await?;
            send = false;
        }
        let Ok(answer) = tokio::time::timeout(TFTP_TIMEOUT, socket.recv_from(&mut buffer)).await
        else {
            tries += 1;
            if tries == TFTP_TRIES {
                bail!("TFTP of {file}: no answer to {TFTP_TRIES} tries");
            }
            send = true;
            continue;
        };
        tries = 0;
        let (length, from) = answer?;
        let packet = &buffer[..length];
        let (Some(opcode), Some(number)) = (packet.get(..2), packet.get(2..4)) else {
            bail!("a {length}-byte TFTP packet from {from}");
        };
        let number = u16::from_be_bytes([number[0], number[1]]);
        match u16::from_be_bytes([opcode[0], opcode[1]]) {
            // OACK: the server took these options; the transfer's port is its source.
            6 if received == 0 => {
                peer = from;
                block_size = oack_option(&packet[2..], b"blksize").unwrap_or(512);
                window = oack_option(&packet[2..], b"windowsize").unwrap_or(1);
                last_sent = vec![0, 4, 0, 0];
                send = true;
            }
            // The OACK again, after the data began: our ACK of it came late, and it was resent.
            6 => {}
            3 if number == received.wrapping_add(1) => {
                peer = from;
                let data = &packet[4..];
                size += data.len() as u64;
                received = number;
                let last = data.len() < block_size;
                // One ACK per window, for its last block, acknowledges them all (RFC 7440).
                if last || received.wrapping_sub(acked) >= window {
                    last_sent = [[0, 4], received.to_be_bytes()].concat();
                    acked = received;
                    send = true;
                }
                if last {
                    socket.send_to(&last_sent, peer).await?;
                    return Ok(size);
                }
            }
            // A block out of order, or again (our ACK was lost): the last block received in
            // order is acknowledged, and the server goes on after it (RFC 7440, section 4).
            3 => {
                last_sent = [[0, 4], received.to_be_bytes()].concat();
                acked = received;
                send = true;
            }
            5 => bail!(
                "TFTP error {number} for {file}: {}",
                String::from_utf8_lossy(&packet[4..]).trim_end_matches('\0')
            ),
            opcode => bail!("TFTP opcode {opcode} from {from}"),
        }
    }
}

/// A number in an OACK's options (`name\0value\0` pairs).
fn oack_option<T: std::str::FromStr>(options: &[u8], wanted: &[u8]) -> Option<T> {
    let mut fields = options.split(|&b| b == 0);
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if name.eq_ignore_ascii_case(wanted) {
            return std::str::from_utf8(value).ok()?.parse().ok();
        }
    }
    None
}

/// GETs `url` from `address` over a connection of its own, as iPXE does each file; returns the
/// body, or only its length when `keep` is false (an image, a kernel).
pub(crate) async fn http_get(
    address: Ipv4Addr,
    url: &str,
    keep: bool,
) -> anyhow::Result<(Vec<u8>, u64)> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("the URL {url}"))?;
    let host: Ipv4Addr = uri
        .host()
        .and_then(|host| host.parse().ok())
        .with_context(|| format!("{url} names no IPv4 host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = connect_from(address, host, port)
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    let (mut kept, mut length) = (Vec::new(), 0u64);
    while !body.is_end_stream() {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame?.into_data() {
            length += data.len() as u64;
            if keep || !status.is_success() {
                kept.extend_from_slice(&data);
            }
        }
    }
    if !status.is_success() {
        bail!("GET {url}: {status}: {}", String::from_utf8_lossy(&kept));
    }
    Ok((kept, length))
}

/// What an iPXE script fetches: its kernel's and initrd's URLs, and the token on the kernel's
/// command line.
struct Script {
    kernel: Option<String>,
    initrd: Option<String>,
    token: Option<String>,
}

fn parse_script(text: &str) -> Script {
    let url_after = |line: &str, command: &str| {
        line.strip_prefix(command)?
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .map(str::to_string)
    };
    let mut script = Script {
        kernel: None,
        initrd: None,
        token: None,
    };
    for line in text.lines().map(str::trim) {
        if let Some(url) = url_after(line, "kernel ") {
            script.kernel = Some(url);
            script.token = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("wisp.token="))
                .map(str::to_string);
        } else if let Some(url) = url_after(line, "initrd ") {
            script.initrd = Some(url);
        }
    }
    script
}

/// Boots the machine (`mac`, then at `address`) as deep as `depth` says.
pub async fn boot(
    segment: &DhcpSegment,
    mac: &[u8; 6],
    address: Ipv4Addr,
    depth: Depth,
) -> anyhow::Result<Booted> {
    let mut stages = Vec::new();
    let mut timed = |stage: Stage, started: Instant| stages.push((stage, started.elapsed()));
    // Transaction ids from the MAC, so that each machine's are its own.
    let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) << 4;

    let started = Instant::now();
    let ack = dora(
        segment,
        pxe_discover(mac, xid, None),
        &FIRMWARE_DHCP_TIMEOUTS,
    )
    .await
    .context("the firmware's DHCP")?;
    timed(Stage::Dhcp, started);
    if depth == Depth::Everything {
        let started = Instant::now();
        let file = boot_file(&ack).context("the firmware's ACK")?;
        let server = match ack.siaddr() {
            server if server.is_unspecified() => bail!("the ACK names no TFTP server (siaddr)"),
            server => server,
        };
        tftp_get(address, server, &file, TftpOptions::PXE_FIRMWARE).await?;
        timed(Stage::Tftp, started);
    }

    let started = Instant::now();
    let ack = dora(
        segment,
        pxe_discover(mac, xid + 1, Some(b"iPXE")),
        &IPXE_DHCP_TIMEOUTS,
    )
    .await
    .context("iPXE's DHCP")?;
    let script_url = boot_file(&ack).context("iPXE's ACK")?;
    timed(Stage::IpxeDhcp, started);

    let started = Instant::now();
    let (text, _) = http_get(address, &script_url, true).await?;
    let script = parse_script(&String::from_utf8_lossy(&text));
    timed(Stage::Script, started);

    if depth == Depth::Everything {
        let started = Instant::now();
        for (what, url) in [("kernel", &script.kernel), ("initrd", &script.initrd)] {
            let url = url
                .as_deref()
                .with_context(|| format!("the script at {script_url} names no {what}"))?;
            http_get(address, url, false).await?;
        }
        timed(Stage::KernelAndInitramfs, started);
    }
    Ok(Booted {
        token: script.token,
        stages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_gives_its_kernel_initrd_and_token() {
        let script = parse_script(
            "#!ipxe\necho Wisp: provisioning node-1\nkernel http://10.0.0.1:8080/assets/vmlinuz initrd=initrd wisp.token=abc.def console=ttyS0\ninitrd --name initrd http://10.0.0.1:8080/assets/initramfs\nboot\n",
        );
        assert_eq!(
            script.kernel.as_deref(),
            Some("http://10.0.0.1:8080/assets/vmlinuz")
        );
        assert_eq!(
            script.initrd.as_deref(),
            Some("http://10.0.0.1:8080/assets/initramfs")
        );
        assert_eq!(script.token.as_deref(), Some("abc.def"));
    }

    #[test]
    fn the_request_takes_the_offer_named_by_its_server() {
        let discover = pxe_discover(&[2, 0, 0, 0, 1, 2], 7, None);
        let mut offer = v4::Message::default();
        offer.set_yiaddr(Ipv4Addr::new(10, 0, 1, 2));
        offer
            .opts_mut()
            .insert(v4::DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 1)));
        let request = selecting_request(&discover, &offer).unwrap();
        assert_eq!(request.xid(), 7);
        assert_eq!(message_type(&request), Some(v4::MessageType::Request));
        assert_eq!(
            request.opts().get(v4::OptionCode::RequestedIpAddress),
            Some(&v4::DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                10, 0, 1, 2
            )))
        );
        assert!(selecting_request(&discover, &v4::Message::default()).is_err());
    }

    #[test]
    fn the_options_are_read_from_the_oack() {
        let oack = b"tsize\x0070000\x00blksize\x001456\x00windowsize\x008\x00";
        assert_eq!(oack_option::<usize>(oack, b"blksize"), Some(1456));
        assert_eq!(oack_option::<u16>(oack, b"windowsize"), Some(8));
        assert_eq!(
            oack_option::<usize>(b"tsize\x0070000\x00", b"blksize"),
            None
        );
    }
}
