//! Datagrams in batches: one recvmmsg takes everything queued on the socket (up to [`BATCH`]),
//! and one sendmmsg sends a batch's replies. A rack's burst then costs a few system calls and
//! one wakeup, not several per packet. Nothing waits for a batch to fill: under light load a
//! batch is the one datagram that arrived.
use std::{
    io::{self, IoSliceMut},
    net::{SocketAddr, SocketAddrV4},
    os::fd::AsRawFd as _,
};

use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrIn, SockaddrLike as _};
use tokio::{io::Interest, net::UdpSocket};

/// Datagrams taken or sent per system call.
const BATCH: usize = 64;
/// Room for any DHCP message a client sends: at most an Ethernet frame's payload, as clients
/// cannot rely on IP reassembly before they have an address. A longer datagram is cut, and
/// reported as truncated (the server counts it as malformed).
const MAX_DATAGRAM: usize = 4096;

/// One received datagram: where it is in the receiver's buffers, and where it came from.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    buffer: usize,
    pub length: usize,
    pub source: SocketAddr,
    /// Longer than the buffer; only its first bytes were kept.
    pub truncated: bool,
}

/// Buffers for one batch, reused for every receive.
pub struct Receiver {
    buffers: Vec<[u8; MAX_DATAGRAM]>,
    received: Vec<Received>,
}

impl Default for Receiver {
    fn default() -> Receiver {
        Receiver {
            buffers: vec![[0; MAX_DATAGRAM]; BATCH],
            received: Vec::with_capacity(BATCH),
        }
    }
}

impl Receiver {
    /// Waits until at least one datagram has arrived, and takes what has queued up behind it.
    pub async fn receive(&mut self, socket: &UdpSocket) -> io::Result<()> {
        let Receiver { buffers, received } = self;
        socket
            .async_io(Interest::READABLE, || {
                received.clear();
                // Made for each call (a few small allocations per batch): nix's headers hold raw
                // pointers, which cannot be kept across the awaits of a spawned task.
                let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
                let mut slices: Vec<[IoSliceMut; 1]> = buffers
                    .iter_mut()
                    .map(|buffer| [IoSliceMut::new(buffer)])
                    .collect();
                let messages = recvmmsg(
                    socket.as_raw_fd(),
                    &mut headers,
                    slices.iter_mut(),
                    MsgFlags::MSG_DONTWAIT,
                    None,
                )?;
                received.extend(messages.enumerate().filter_map(|(buffer, message)| {
                    Some(Received {
                        buffer,
                        length: message.bytes,
                        source: message.address?.into(),
                        truncated: message.flags.contains(MsgFlags::MSG_TRUNC),
                    })
                }));
                Ok(())
            })
            .await
    }

    /// The datagrams of the last receive, in arrival order.
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], Received)> {
        self.received
            .iter()
            .map(|received| (&self.buffers[received.buffer][..received.length], *received))
    }
}

/// Sends each datagram to its target, in order, and says for each whether it went. A datagram
/// the kernel refuses (no route, say) fails alone; the rest are still sent.
pub async fn send_all(
    socket: &UdpSocket,
    datagrams: &[(&[u8], SocketAddrV4)],
) -> Vec<io::Result<()>> {
    let mut outcomes = Vec::with_capacity(datagrams.len());
    while outcomes.len() < datagrams.len() {
        let pending = &datagrams[outcomes.len()..datagrams.len().min(outcomes.len() + BATCH)];
        let sent = socket
            .async_io(Interest::WRITABLE, || send_batch(socket, pending))
            .await;
        match sent {
            Ok(count) => outcomes.extend((0..count).map(|_| Ok(()))),
            // sendmmsg fails only when the first datagram cannot be sent: that one is marked and
            // the next call starts after it.
            Err(err) => outcomes.push(Err(err)),
        }
    }
    outcomes
}

/// One sendmmsg of `datagrams`: how many went. Called directly through libc, as nix's wrapper
/// reports the count only through an iterator that reads addresses sendmmsg never writes.
fn send_batch(socket: &UdpSocket, datagrams: &[(&[u8], SocketAddrV4)]) -> io::Result<usize> {
    let targets: Vec<SockaddrIn> = datagrams
        .iter()
        .map(|(_, target)| (*target).into())
        .collect();
    let mut buffers: Vec<libc::iovec> = datagrams
        .iter()
        .map(|(bytes, _)| libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = targets
        .iter()
        .zip(&mut buffers)
        .map(|(target, buffer)| {
            // SAFETY: mmsghdr is plain data, for which all zeroes is a valid (empty) value.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_name = target.as_ptr().cast_mut().cast();
            header.msg_hdr.msg_namelen = target.len();
            header.msg_hdr.msg_iov = buffer;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect();
    let count = u32::try_from(headers.len()).unwrap_or(u32::MAX);
    // SAFETY: every header points at an address in `targets` and an iovec in `buffers`, which
    // point at the caller's bytes; all of them outlive the call, and count is at most the number
    // of headers.
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr(),
            count,
            libc::MSG_DONTWAIT,
        )
    };
    match usize::try_from(sent) {
        Err(_) => Err(io::Error::last_os_error()),
        // The kernel sends at least one, or fails; a zero would otherwise never end the loop.
        Ok(0) => Err(io::Error::other("sendmmsg sent nothing")),
        Ok(sent) => Ok(sent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn bound() -> (UdpSocket, SocketAddrV4) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(address) = socket.local_addr().unwrap() else {
            unreachable!("bound to an IPv4 address")
        };
        (socket, address)
    }

    #[tokio::test]
    async fn a_batch_goes_out_and_comes_back_in_order() {
        let (sender, sender_address) = bound().await;
        let (first, first_address) = bound().await;
        let (second, second_address) = bound().await;
        let messages: Vec<Vec<u8>> = (0..BATCH as u8 + 3).map(|n| vec![n; 300]).collect();
        // Every third datagram to the second socket; more than one sendmmsg's worth in all.
        let datagrams: Vec<(&[u8], SocketAddrV4)> = messages
            .iter()
            .enumerate()
            .map(|(index, bytes)| {
                let target = if index % 3 == 2 {
                    second_address
                } else {
                    first_address
                };
                (bytes.as_slice(), target)
            })
            .collect();
        let outcomes = send_all(&sender, &datagrams).await;
        assert_eq!(outcomes.len(), datagrams.len());
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");

        let mut receiver = Receiver::default();
        let mut got = Vec::new();
        while got.len() < datagrams.len() - datagrams.len() / 3 {
            receiver.receive(&first).await.unwrap();
            for (bytes, received) in receiver.datagrams() {
                assert_eq!(received.source, SocketAddr::V4(sender_address));
                assert!(!received.truncated);
                got.push(bytes.to_vec());
            }
        }
        let expected: Vec<Vec<u8>> = datagrams
            .iter()
            .filter(|(_, target)| *target == first_address)
            .map(|(bytes, _)| bytes.to_vec())
            .collect();
        assert_eq!(got, expected);
        receiver.receive(&second).await.unwrap();
        assert_eq!(receiver.datagrams().next().unwrap().0, [2; 300]);
    }

    #[tokio::test]
    async fn a_refused_datagram_fails_alone() {
        let (sender, _) = bound().await;
        let (socket, address) = bound().await;
        // The kernel refuses UDP to port 0, so the middle datagram cannot go.
        let refused = SocketAddrV4::new(*address.ip(), 0);
        let datagrams: [(&[u8], SocketAddrV4); 3] = [
            (b"first", address),
            (b"refused", refused),
            (b"third", address),
        ];
        let outcomes = send_all(&sender, &datagrams).await;
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
        assert!(outcomes[1].is_err(), "sending to port 0 must fail");

        let mut receiver = Receiver::default();
        let mut got = Vec::new();
        while got.len() < 2 {
            receiver.receive(&socket).await.unwrap();
            got.extend(receiver.datagrams().map(|(bytes, _)| bytes.to_vec()));
        }
        assert_eq!(got, [b"first".to_vec(), b"third".to_vec()]);
    }

    #[tokio::test]
    async fn a_datagram_longer_than_the_buffer_is_marked_truncated() {
        let (sender, _) = bound().await;
        let (socket, address) = bound().await;
        let long = vec![7u8; MAX_DATAGRAM + 100];
        sender.send_to(&long, address).await.unwrap();
        let mut receiver = Receiver::default();
        receiver.receive(&socket).await.unwrap();
        let (bytes, received) = receiver.datagrams().next().unwrap();
        assert!(received.truncated);
        assert_eq!(bytes.len(), MAX_DATAGRAM);
    }
}
