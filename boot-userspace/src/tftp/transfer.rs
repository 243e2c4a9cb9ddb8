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
    /// The same, before the client's first acknowledgement: until then its address may be
    /// forged, and every resend goes to whoever it names.
    pub first_contact_retransmissions: u32,
    /// The longest wait for that first acknowledgement, whatever `timeout` says.
    pub first_contact_timeout: Duration,
    /// The whole transfer ends by then, however the client paces its acknowledgements.
    pub deadline: tokio::time::Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum Failed {
    #[error("no acknowledgement after {0} retransmissions")]
    Unanswered(u32),
    #[error("the client ended the transfer: {0:?}")]
    ClientError(String),
    #[error("the transfer did not finish by its deadline")]
    Deadline,
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
        let result = tokio::time::timeout_at(self.deadline, self.send_file(oack, on_progress))
            .await
            .unwrap_or(Err(Failed::Deadline));
        if let Err(err @ (Failed::Unanswered(_) | Failed::Io(_) | Failed::Deadline)) = &result {
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
        let confirmed_by_oack = oack.is_some();
        if let Some(oack) = oack {
            // The client accepts the options with ACK 0 (RFC 2347).
            let first_contact = (
                self.first_contact_retransmissions,
                self.first_contact_timeout,
            );
            self.deliver(&mut sender, Packets::Oack(&oack), 0..=0, first_contact)
                .await?;
        }
        // The last block is shorter than the block size; empty when the size divides the file.
        let blocks = (self.file.len() / self.block_size) as u64 + 1;
        let mut acked = 0;
        while acked < blocks {
            let window = acked + 1..=(acked + self.window as u64).min(blocks);
            let patience = if acked == 0 && !confirmed_by_oack {
                (
                    self.first_contact_retransmissions,
                    self.first_contact_timeout,
                )
            } else {
                (self.max_retransmissions, self.timeout)
            };
            let newly_acked = self
                .deliver(
                    &mut sender,
                    Packets::Blocks(window.clone()),
                    window,
                    patience,
                )
                .await?;
            let bytes = |blocks: u64| (blocks * self.block_size as u64).min(self.file.len() as u64);
            on_progress(bytes(newly_acked) - bytes(acked));
            acked = newly_acked;
        }
        Ok(())
    }

    /// Sends the packets until the client acknowledges one of `expected` (block numbers as
    /// counted from the start, before they wrap at 16 bits), resending at most `resends`
    /// times, each after waiting `wait` (at most the transfer's timeout); returns which.
    async fn deliver(
        &self,
        sender: &mut Sender,
        packets: Packets<'_>,
        expected: RangeInclusive<u64>,
        (resends, wait): (u32, Duration),
    ) -> Result<u64, Failed> {
        let wait = wait.min(self.timeout);
        for _ in 0..=resends {
            match &packets {
                Packets::Oack(oack) => {
                    self.socket.send(oack).await?;
                }
                Packets::Blocks(blocks) => sender.send_blocks(self, blocks.clone()).await?,
            }
            if let Ok(acknowledged) =
                tokio::time::timeout(wait, self.acknowledgement(&expected)).await
            {
                return acknowledged;
            }
        }
        Err(Failed::Unanswered(resends))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A transfer to a client on loopback that never acknowledges anything.
    async fn to_a_silent_client(
        timeout: Duration,
        deadline: Duration,
    ) -> (Transfer, std::net::UdpSocket) {
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(client.local_addr().unwrap()).await.unwrap();
        let transfer = Transfer {
            socket,
            file: Arc::from(vec![7u8; 4096]),
            block_size: 512,
            window: 1,
            timeout,
            max_retransmissions: 5,
            first_contact_retransmissions: 2,
            first_contact_timeout: Duration::from_secs(2),
            deadline: tokio::time::Instant::now() + deadline,
        };
        (transfer, client)
    }

    /// The opcodes of what the client received, until nothing more comes.
    fn received(client: &std::net::UdpSocket) -> Vec<u8> {
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut opcodes = Vec::new();
        let mut buffer = [0u8; 600];
        while let Ok(length) = client.recv(&mut buffer) {
            assert!(length >= 2);
            opcodes.push(buffer[1]);
        }
        opcodes
    }

    #[tokio::test]
    async fn a_client_never_heard_from_gets_the_first_packet_three_times_at_most() {
        let (transfer, client) =
            to_a_silent_client(Duration::from_millis(50), Duration::from_secs(30)).await;
        let outcome = transfer.run(None, |_| {}).await;
        assert!(matches!(outcome, Err(Failed::Unanswered(2))), "{outcome:?}");
        // Three sends of block 1, then the ERROR.
        assert_eq!(received(&client), [3, 3, 3, 5]);
    }

    #[tokio::test]
    async fn a_transfer_ends_at_its_deadline_whatever_its_timeouts() {
        let (transfer, client) =
            to_a_silent_client(Duration::from_secs(10), Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let outcome = transfer.run(None, |_| {}).await;
        assert!(matches!(outcome, Err(Failed::Deadline)), "{outcome:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "ended by the deadline, not a timeout"
        );
        assert_eq!(received(&client), [3, 5], "block 1, then the ERROR");
    }
}
