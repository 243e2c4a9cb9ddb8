//! The TFTP server: read-only, and it serves only the iPXE binaries, from memory. Layers:
//! [`packet`] is the wire format, [`transfer`] sends one file to one client, and this module
//! receives requests and decides what may be read: a flat set of boot files, loaded once, so
//! that a rack booting at once never waits on the disk.
//!
//! It is Wisp's own rather than a crate's because of speed: a window of blocks goes out as one
//! GSO send (see [`transfer`]).
pub mod packet;
pub mod transfer;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::{Component, Path},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

use self::{
    packet::{ErrorCode, Options, Request, DEFAULT_BLOCK_SIZE},
    transfer::{Failed, Transfer},
};
use crate::{
    boot_files::BootFiles,
    events::{EventKind, EventLog},
    log_budget::LogBudget,
    metrics::{Metrics, TftpLabels},
    net::{AddressSlot, PerAddress},
};

/// The TFTP server port.
pub const TFTP_PORT: u16 = 69;
/// A client that stops answering is dropped after this many resends of the same packet, so a
/// machine that died mid-transfer holds its transfer for at most a minute (with the longest
/// timeout taken).
pub const MAX_RETRANSMISSIONS: u32 = 5;
/// Before a client's first acknowledgement, its source address is unconfirmed (it may be
/// forged): the first packet is resent at most this many times, so a forged request costs a
/// slot for a few seconds and is not amplified into six packets at a victim.
pub const FIRST_CONTACT_RETRANSMISSIONS: u32 = 2;
/// A smaller `blksize` is not acknowledged (512 applies): eight-byte blocks would turn one
/// slot into days of a transfer.
const MIN_BLOCK_SIZE: u16 = 512;
/// Transfers from one address at once, unless configured: one host cannot hold every slot.
/// Room for a rack's worth of firmware behind one NAT, or a test's burst.
pub const DEFAULT_MAX_TRANSFERS_PER_CLIENT: usize = 32;
/// Every transfer ends by this long, plus [`PER_WINDOW`] for each window of its file: a client
/// that acknowledges just before each timeout cannot hold a slot for long, and one on a slow,
/// relayed link still has a round trip of 50 ms per window.
const DEADLINE_BASE: Duration = Duration::from_secs(30);
const PER_WINDOW: Duration = Duration::from_millis(50);
/// Until a client's first acknowledgement, resends come at most this far apart, whatever
/// timeout it asked for: a forged request holds its slot for seconds, not half a minute.
pub const FIRST_CONTACT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for an acknowledgement without a timeout option, unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest timeout option taken; a longer one is not acknowledged, and the default applies.
const MAX_TIMEOUT_SECONDS: u8 = 10;
/// Transfers at once, unless configured. Each has a socket and up to a window of blocks in
/// memory; a flood of requests (their source can be forged) gets an ERROR beyond this, not
/// unbounded resources.
pub const DEFAULT_MAX_TRANSFERS: usize = 4096;

/// Where the TFTP server listens, and its limits.
pub struct TftpConfig {
    pub interface: String,
    pub address: Ipv4Addr,
    pub max_transfers: usize,
    /// Transfers from one client address at once.
    pub max_per_client: usize,
    /// How long to wait for an acknowledgement when the client asks for no timeout.
    pub timeout: Duration,
}
/// IPv4 and UDP headers and the DATA header: a block is at most the path MTU less these.
const BLOCK_OVERHEAD: u16 = 20 + 8 + 4;
/// The largest window taken: a bigger one would put a burst of that many datagrams on the wire
/// for a single ACK.
const MAX_WINDOW: u16 = 64;

/// The file a TFTP client asked for, or the TFTP error it gets.
fn lookup(files: &BootFiles, requested: &str) -> Result<Arc<[u8]>, ErrorCode> {
    // Boot files live in a flat namespace: an absolute path or any directory component
    // (`..` above all) is refused outright rather than resolved.
    if requested.ends_with('/') {
        return Err(ErrorCode::AccessViolation);
    }
    let mut components = Path::new(requested).components();
    let (Some(Component::Normal(name)), None) = (components.next(), components.next()) else {
        return Err(ErrorCode::AccessViolation);
    };
    let name = name.to_str().ok_or(ErrorCode::FileNotFound)?;
    files.get(name).cloned().ok_or(ErrorCode::FileNotFound)
}

/// Serves the boot files on the configured address, port 69, until the future is dropped.
pub async fn serve(
    config: TftpConfig,
    files: Arc<BootFiles>,
    metrics: Arc<Metrics>,
    events: Arc<EventLog>,
) -> anyhow::Result<()> {
    let TftpConfig {
        interface,
        address,
        max_transfers,
        max_per_client,
        timeout,
    } = config;
    let socket = tokio::net::UdpSocket::from_std(bind(&interface, address)?)?;
    tracing::info!(interface, %address, port = TFTP_PORT, "TFTP server listening");
    let transfers = Arc::new(tokio::sync::Semaphore::new(max_transfers));
    // Anyone on the boot network can send requests as fast as the link allows.
    let log = Arc::new(LogBudget::new("tftp", &metrics.log_lines_suppressed));
    let per_client = PerAddress::new(max_per_client);
    let mut buffer = vec![0u8; 65_535];
    loop {
        let (length, client) = socket
            .recv_from(&mut buffer)
            .await
            .context("receiving TFTP")?;
        let count = |outcome: &str| {
            metrics
                .tftp_requests
                .get_or_create(&TftpLabels {
                    outcome: outcome.into(),
                })
                .inc()
        };
        // File names come from the network. Logged as string fields, they are quoted and
        // escaped, so that no name can forge a log line.
        let (filename, options) = match packet::parse_request(&buffer[..length]) {
            Ok(Request::Read { filename, options }) => (filename, options),
            Ok(Request::Write { filename }) => {
                if log.allow(client.ip()) {
                    tracing::warn!(%client, file = filename, "TFTP write request refused: the server is read-only");
                }
                count("denied");
                let refusal = packet::error(ErrorCode::IllegalOperation, "the server is read-only");
                let _ = socket.send_to(&refusal, client).await;
                continue;
            }
            Err(malformed) => {
                tracing::debug!(%client, "malformed TFTP request dropped: {malformed}");
                count("malformed");
                continue;
            }
        };
        let file = match lookup(&files, &filename) {
            Ok(file) => file,
            Err(code) => {
                let (outcome, message) = match code {
                    ErrorCode::AccessViolation => ("denied", "only boot file names, without paths"),
                    _ => ("not_found", "no such boot file"),
                };
                if log.allow(client.ip()) {
                    tracing::info!(%client, file = filename, outcome, "TFTP read request");
                }
                count(outcome);
                let _ = socket.send_to(&packet::error(code, message), client).await;
                continue;
            }
        };
        let Some(client_slot) = per_client.take(client.ip()) else {
            tracing::debug!(%client, file = filename, "TFTP read request refused: {max_per_client} transfers already running for this address");
            count("busy");
            let busy = packet::error(
                ErrorCode::NotDefined,
                "too many transfers from your address; try again",
            );
            let _ = socket.send_to(&busy, client).await;
            continue;
        };
        let Ok(global) = Arc::clone(&transfers).try_acquire_owned() else {
            if log.allow(client.ip()) {
                tracing::warn!(%client, file = filename, "TFTP read request refused: {max_transfers} transfers already running");
            }
            count("busy");
            let busy = packet::error(ErrorCode::NotDefined, "too many transfers; try again");
            let _ = socket.send_to(&busy, client).await;
            continue;
        };
        let slot = Slot {
            _global: global,
            _client: client_slot,
        };
        let to = Peer {
            address,
            client,
            timeout,
        };
        let size = file.len();
        let started = start_transfer(
            to,
            file,
            options,
            Arc::clone(&metrics),
            Arc::clone(&log),
            slot,
        );
        match started {
            Ok(()) => {
                if let std::net::IpAddr::V4(from) = client.ip() {
                    events.record_at(
                        from,
                        EventKind::Tftp,
                        format!("sending {filename:?} ({size} bytes)"),
                    );
                }
                if log.allow(client.ip()) {
                    tracing::info!(%client, file = filename, outcome = "served", "TFTP read request");
                }
                count("served");
            }
            Err(err) => {
                if log.allow(client.ip()) {
                    tracing::warn!(%client, file = filename, "cannot start a TFTP transfer: {err}")
                }
            }
        }
    }
}

/// What a running transfer holds: one of the server's slots, and one of its client's.
struct Slot {
    _global: tokio::sync::OwnedSemaphorePermit,
    _client: AddressSlot,
}

/// One transfer's ends: the server's address, the client, and the timeout when the client
/// asks for none.
struct Peer {
    address: Ipv4Addr,
    client: SocketAddr,
    timeout: Duration,
}

/// Takes the options the client asked for (RFC 2347) and sends the file from a new socket.
fn start_transfer(
    Peer {
        address,
        client,
        timeout,
    }: Peer,
    file: Arc<[u8]>,
    options: Options,
    metrics: Arc<Metrics>,
    log: Arc<LogBudget<IpAddr>>,
    slot: Slot,
) -> std::io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind(&SocketAddr::from((address, 0)).into())?;
    socket.connect(&client.into())?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UdpSocket::from_std(UdpSocket::from(socket))?;

    let mut taken = Vec::new();
    // A block larger than the path MTU allows would go out as IP fragments, which are lost
    // together and reassembled by the client's firmware, if at all. RFC 2348 lets the server
    // answer with a smaller block size.
    let path_mtu = nix::sys::socket::getsockopt(&socket, nix::sys::socket::sockopt::IpMtu)
        .ok()
        .and_then(|mtu| u16::try_from(mtu).ok())
        .filter(|&mtu| mtu > BLOCK_OVERHEAD + 8);
    let block_size = options
        .block_size
        .filter(|&size| size >= MIN_BLOCK_SIZE)
        .map(|size| match path_mtu {
            Some(mtu) => size.min(mtu - BLOCK_OVERHEAD),
            None => size,
        });
    if let Some(size) = block_size {
        taken.push(("blksize", u64::from(size)));
    }
    let block_size = block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
    let timeout_seconds = options
        .timeout_seconds
        .filter(|&seconds| seconds <= MAX_TIMEOUT_SECONDS);
    if let Some(seconds) = timeout_seconds {
        taken.push(("timeout", u64::from(seconds)));
    }
    if options.transfer_size {
        taken.push(("tsize", file.len() as u64));
    }
    let window = options.window_size.map_or(1, |w| w.min(MAX_WINDOW));
    if options.window_size.is_some() {
        taken.push(("windowsize", u64::from(window)));
    }
    let oack = (!taken.is_empty()).then(|| packet::oack(&taken));
    let windows = (file.len() / usize::from(block_size) / usize::from(window) + 1) as u32;
    let deadline = tokio::time::Instant::now() + DEADLINE_BASE + PER_WINDOW * windows;
    let transfer = Transfer {
        socket,
        file,
        block_size: usize::from(block_size),
        window: usize::from(window),
        timeout: timeout_seconds.map_or(timeout, |s| Duration::from_secs(s.into())),
        max_retransmissions: MAX_RETRANSMISSIONS,
        first_contact_retransmissions: FIRST_CONTACT_RETRANSMISSIONS,
        first_contact_timeout: FIRST_CONTACT_TIMEOUT,
        deadline,
    };
    tokio::spawn(async move {
        let _slot = slot;
        let bytes = metrics.tftp_bytes.clone();
        let progress = |newly| {
            bytes.inc_by(newly);
        };
        match transfer.run(oack, progress).await {
            Ok(()) => tracing::debug!(%client, "TFTP transfer complete"),
            // UEFI firmware reads a file's size this way: it takes the OACK, then aborts.
            Err(Failed::ClientError(message)) => {
                if log.allow(client.ip()) {
                    tracing::info!(%client, "TFTP transfer ended by the client: {message:?}")
                }
            }
            Err(err) => {
                if log.allow(client.ip()) {
                    tracing::info!(%client, "TFTP transfer failed: {err}")
                }
            }
        }
    });
    Ok(())
}

/// Binding to the interface's own address makes each transfer's socket use it too, so replies
/// leave from the address the client was told to use.
fn bind(interface: &str, address: Ipv4Addr) -> anyhow::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket
        .bind_device(Some(interface.as_bytes()))
        .with_context(|| format!("binding the TFTP socket to {interface}"))?;
    socket
        .bind(&SocketAddr::from((address, TFTP_PORT)).into())
        .with_context(|| format!("binding {address}:{TFTP_PORT}"))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> BootFiles {
        BootFiles::from_named([("undionly.kpxe".to_string(), Arc::from(&b"ipxe"[..]))])
    }

    #[test]
    fn serves_only_known_flat_names() {
        assert_eq!(&*lookup(&files(), "undionly.kpxe").unwrap(), b"ipxe");
        assert!(matches!(
            lookup(&files(), "ipxe.efi"),
            Err(ErrorCode::FileNotFound)
        ));
    }

    #[test]
    fn refuses_traversal_and_absolute_paths() {
        for path in [
            "../undionly.kpxe",
            "/undionly.kpxe",
            "/etc/passwd",
            "a/../undionly.kpxe",
            "boot/undionly.kpxe",
            "..",
            "undionly.kpxe/",
        ] {
            assert!(
                matches!(lookup(&files(), path), Err(ErrorCode::AccessViolation)),
                "{path}"
            );
        }
    }
}
