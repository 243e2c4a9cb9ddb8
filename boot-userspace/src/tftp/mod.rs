//! The TFTP server: read-only, and it serves only the iPXE binaries, from memory.
//!
//! The protocol (RFC 1350 with the option extension, blksize, timeout/tsize and windowsize:
//! RFC 2347, 2348, 2349, 7440) is async-tftp's. This module decides what may be read: a flat
//! set of boot files, loaded once, so that a rack booting at once never waits on the disk.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::{Component, Path},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use anyhow::Context as _;
use async_tftp::{packet, server::Handler};
use futures_lite::{io::Cursor, AsyncRead};
use socket2::{Domain, Protocol, Socket, Type};

use crate::metrics::{Metrics, TftpLabels};

/// The TFTP server port.
pub const TFTP_PORT: u16 = 69;
/// A client that stops answering is dropped after this many resends of the same packet, so a
/// machine that died mid-transfer does not hold a transfer for minutes (async-tftp's default
/// is 100).
pub const MAX_RETRANSMISSIONS: u32 = 5;

/// The iPXE binaries, by the file name clients ask for.
pub struct BootFiles {
    files: BTreeMap<String, Arc<[u8]>>,
}

/// The iPXE builds Wisp serves, as Debian's `ipxe` package names them.
pub const IPXE_BINARIES: &[&str] = &[
    "undionly.kpxe",
    "ipxe.efi",
    "snponly.efi",
    "ipxe-arm64.efi",
    "snponly-arm64.efi",
];

impl BootFiles {
    /// Loads whichever of [`IPXE_BINARIES`] exist in `dir`. None existing is an error: the
    /// appliance could boot nothing.
    pub fn load(dir: &Path) -> anyhow::Result<BootFiles> {
        let mut files = BTreeMap::new();
        for name in IPXE_BINARIES {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    files.insert(name.to_string(), Arc::from(bytes));
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
            }
        }
        anyhow::ensure!(
            !files.is_empty(),
            "no iPXE binaries in {} (install Debian's `ipxe` package, or pass --ipxe-dir)",
            dir.display()
        );
        Ok(BootFiles { files })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<[u8]>> {
        self.files.get(name)
    }

    /// The file a TFTP client asked for, or the TFTP error it gets.
    fn lookup(&self, requested: &Path) -> Result<Arc<[u8]>, packet::Error> {
        // Boot files live in a flat namespace: an absolute path or any directory component
        // (`..` above all) is refused outright rather than resolved.
        let mut components = requested.components();
        let (Some(Component::Normal(name)), None) = (components.next(), components.next()) else {
            return Err(packet::Error::PermissionDenied);
        };
        let name = name.to_str().ok_or(packet::Error::FileNotFound)?;
        self.files
            .get(name)
            .cloned()
            .ok_or(packet::Error::FileNotFound)
    }
}

struct BootFileHandler {
    files: Arc<BootFiles>,
    metrics: Arc<Metrics>,
}

impl Handler for BootFileHandler {
    type Reader = CountingReader;
    type Writer = futures_lite::io::Sink;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), packet::Error> {
        let result = self.files.lookup(path);
        let outcome = match &result {
            Ok(_) => "served",
            Err(packet::Error::PermissionDenied) => "denied",
            Err(_) => "not_found",
        };
        tracing::info!(%client, file = %path.display(), outcome, "TFTP read request");
        self.metrics
            .tftp_requests
            .get_or_create(&TftpLabels {
                outcome: outcome.into(),
            })
            .inc();
        let bytes = result?;
        let size = bytes.len() as u64;
        let reader = CountingReader {
            inner: Cursor::new(bytes),
            metrics: Arc::clone(&self.metrics),
        };
        Ok((reader, Some(size)))
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<Self::Writer, packet::Error> {
        tracing::warn!(%client, file = %path.display(), "TFTP write request refused: the server is read-only");
        Err(packet::Error::IllegalOperation)
    }
}

/// Counts the bytes handed to the protocol engine, for `wisp_tftp_bytes_total`.
struct CountingReader {
    inner: Cursor<Arc<[u8]>>,
    metrics: Arc<Metrics>,
}

impl AsyncRead for CountingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(read)) = &poll {
            self.metrics.tftp_bytes.inc_by(*read as u64);
        }
        poll
    }
}

/// Serves the boot files on `address`:69 of `interface` until the future is dropped.
pub async fn serve(
    interface: String,
    address: Ipv4Addr,
    files: Arc<BootFiles>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let interface = interface.as_str();
    let socket = bind(interface, address)?;
    let handler = BootFileHandler { files, metrics };
    let server = async_tftp::server::TftpServerBuilder::with_handler(handler)
        .max_send_retries(MAX_RETRANSMISSIONS)
        .std_socket(socket)
        .context("setting up the TFTP socket")?
        .build()
        .await
        .context("starting the TFTP server")?;
    tracing::info!(interface, %address, port = TFTP_PORT, "TFTP server listening");
    server.serve().await.context("TFTP server")
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
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> BootFiles {
        BootFiles {
            files: [("undionly.kpxe".to_string(), Arc::from(&b"ipxe"[..]))].into(),
        }
    }

    #[test]
    fn serves_only_known_flat_names() {
        assert_eq!(
            &*files().lookup(Path::new("undionly.kpxe")).unwrap(),
            b"ipxe"
        );
        assert!(matches!(
            files().lookup(Path::new("ipxe.efi")),
            Err(packet::Error::FileNotFound)
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
        ] {
            assert!(
                matches!(
                    files().lookup(Path::new(path)),
                    Err(packet::Error::PermissionDenied)
                ),
                "{path}"
            );
        }
    }
}
