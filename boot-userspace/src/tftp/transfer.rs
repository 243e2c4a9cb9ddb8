//! One read transfer, on its own socket connected to the client (a new TID, RFC 1350): the
//! OACK if options were taken, then the file in windows of blocks (RFC 7440).
//!
//! Each window goes out with as few sends as the kernel allows: with UDP GSO (a `UDP_SEGMENT`
//! control message on the send) one send carries up to 64 blocks, or 64 KiB, which the kernel
//! cuts into datagrams of one block each. The per-datagram send path (a system call, a route
//! lookup, a socket buffer) was most of the server's CPU per transfer
//! (docs/benchmarks/findings.md). Where GSO is refused (a device without checksum offload, an
//! older kernel), blocks go one by one.
use std::{
    io::{self, IoSlice},
    ops::RangeInclusive,
    os::fd::AsRawFd as _,
    sync::Arc,
    time::Duration,
};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use tokio::{io::Interest, net::UdpSocket};

use super::packet::{self, Reply, DATA_HEADER};

/// The kernel's limits for one GSO send: segments, and bytes of UDP payload.
const MAX_GSO_SEGMENTS: usize = 64;
const MAX_GSO_BYTES: usize = 65_507;

pub struct Transfer {
    pub socket: UdpSocket,
    pub file: Arc<[u8]>,
    pub block_size: usize,
    pub window: usize,
    pub timeout: Duration,
    /// Sends of the same packet after the first, before the client is given up on.
    pub max_retransmissions: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum Failed {
    #[error("no acknowledgement after {0} retransmissions")]
    Unanswered(u32),
    #[error("the client ended the transfer: {0:?}")]
    ClientError(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Transfer {
    /// Sends the OACK, if there is one, then the file. `on_progress` hears how many of the
    /// file's bytes each acknowledgement newly covers. A transfer the server gives up on ends
    /// with an ERROR to the client; one the client ended does not.
    pub async fn run(
        self,
        oack: Option<Vec<u8>>,
        on_progress: impl FnMut(u64),
    ) -> Result<(), Failed> {
        let result = self.send_file(oack, on_progress).await;
        if let Err(err @ (Failed::Unanswered(_) | Failed::Io(_))) = &result {
            let message = packet::error(packet::ErrorCode::NotDefined, &err.to_string());
            let _ = self.socket.send(&message).await;
        }
        result
    }

    async fn send_file(
        &self,
        oack: Option<Vec<u8>>,
        mut on_progress: impl FnMut(u64),
    ) -> Result<(), Failed> {
        let mut sender = Sender::new(self);
        if let Some(oack) = oack {
            // The client accepts the options with ACK 0 (RFC 2347).
            self.deliver(&mut sender, Packets::Oack(&oack), 0..=0)
                .await?;
        }
        // The last block is shorter than the block size; empty when the size divides the file.
        let blocks = (self.file.len() / self.block_size) as u64 + 1;
        let mut acked = 0;
        while acked < blocks {
            let window = acked + 1..=(acked + self.window as u64).min(blocks);
            let newly_acked = self
                .deliver(&mut sender, Packets::Blocks(window.clone()), window)
                .await?;
            let bytes = |blocks: u64| (blocks * self.block_size as u64).min(self.file.len() as u64);
            on_progress(bytes(newly_acked) - bytes(acked));
            acked = newly_acked;
        }
        Ok(())
    }

    /// Sends the packets until the client acknowledges one of `expected` (block numbers as
    /// counted from the start, before they wrap at 16 bits); returns which.
    async fn deliver(
        &self,
        sender: &mut Sender,
        packets: Packets<'_>,
        expected: RangeInclusive<u64>,
    ) -> Result<u64, Failed> {
        for _ in 0..=self.max_retransmissions {
            match &packets {
                Packets::Oack(oack) => {
                    self.socket.send(oack).await?;
                }
                Packets::Blocks(blocks) => sender.send_blocks(self, blocks.clone()).await?,
            }
            if let Ok(acknowledged) =
                tokio::time::timeout(self.timeout, self.acknowledgement(&expected)).await
            {
                return acknowledged;
            }
        }
        Err(Failed::Unanswered(self.max_retransmissions))
    }

    /// Waits for an ACK of a block in `expected`. Older ACKs are duplicates and are ignored:
    /// answering them would double every later packet (the Sorcerer's Apprentice bug,
    /// RFC 1123 4.2.3.1). An ACK inside the window means the blocks after it were lost, and the
    /// next window starts right after it (RFC 7440).
    async fn acknowledgement(&self, expected: &RangeInclusive<u64>) -> Result<u64, Failed> {
        let mut buffer = [0u8; 516];
        loop {
            let length = self.socket.recv(&mut buffer).await?;
            match packet::parse_reply(&buffer[..length]) {
                Some(Reply::Ack(wire)) => {
                    if let Some(block) = expected.clone().rev().find(|&b| b as u16 == wire) {
                        return Ok(block);
                    }
                }
                Some(Reply::Error(message)) => return Err(Failed::ClientError(message)),
                None => {}
            }
        }
    }
}

enum Packets<'a> {
    Oack(&'a [u8]),
    Blocks(RangeInclusive<u64>),
}

/// Builds windows of DATA packets and sends them, with GSO while the kernel takes it.
struct Sender {
    /// Allocated at the first window, not before the client has answered.
    buffer: Vec<u8>,
    segment: usize,
    gso: bool,
}

impl Sender {
    fn new(transfer: &Transfer) -> Sender {
        Sender {
            buffer: Vec::new(),
            segment: DATA_HEADER + transfer.block_size,
            gso: true,
        }
    }

    async fn send_blocks(
        &mut self,
        transfer: &Transfer,
        blocks: RangeInclusive<u64>,
    ) -> io::Result<()> {
        self.buffer.clear();
        for block in blocks {
            let start = (block as usize - 1) * transfer.block_size;
            let end = (start + transfer.block_size).min(transfer.file.len());
            self.buffer
                .extend_from_slice(&packet::data_header(block as u16));
            self.buffer.extend_from_slice(&transfer.file[start..end]);
        }
        if self.gso {
            match self.send_segmented(&transfer.socket).await {
                Ok(()) => return Ok(()),
                Err(err) if gso_refused(&err) => {
                    tracing::debug!(peer = ?transfer.socket.peer_addr().ok(), "UDP GSO refused ({err}); sending blocks one by one");
                    self.gso = false;
                }
                Err(err) => return Err(err),
            }
        }
        for datagram in self.buffer.chunks(self.segment) {
            transfer.socket.send(datagram).await?;
        }
        Ok(())
    }

    /// Sends the window in as few sends as GSO allows. Every segment is one block, and only
    /// the file's last block, at the very end, may be shorter, as GSO requires.
    async fn send_segmented(&self, socket: &UdpSocket) -> io::Result<()> {
        let per_send = (MAX_GSO_BYTES / self.segment).clamp(1, MAX_GSO_SEGMENTS);
        let segment = u16::try_from(self.segment).map_err(io::Error::other)?;
        for chunk in self.buffer.chunks(self.segment * per_send) {
            socket
                .async_io(Interest::WRITABLE, || {
                    sendmsg::<()>(
                        socket.as_raw_fd(),
                        &[IoSlice::new(chunk)],
                        &[ControlMessage::UdpGsoSegments(&segment)],
                        MsgFlags::empty(),
                        None,
                    )
                    .map_err(io::Error::from)
                })
                .await?;
        }
        Ok(())
    }
}

/// The errors with which the kernel refuses a GSO send it cannot segment.
fn gso_refused(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::EIO | libc::EOPNOTSUPP | libc::EMSGSIZE)
    )
}
