//! Datagrams in batches: one recvmmsg takes everything queued on the socket (up to [`BATCH`]),
//! and one sendmmsg sends a batch's replies. A rack's burst then costs a few system calls and
//! one wakeup, not several per packet. Nothing waits for a batch to fill: under light load a
//! batch is the one datagram that arrived.
use std::{
    io::{self, IoSlice, IoSliceMut},
    net::{SocketAddr, SocketAddrV4},
    os::fd::AsRawFd as _,
};

use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrIn};
use tokio::{io::Interest, net::UdpSocket};

/// Datagrams taken or sent per system call.
const BATCH: usize = 64;
/// Room for any DHCP message: clients keep to the 576 bytes every host must accept, or to the
/// size they announce in option 57, which is below the MTU. A longer datagram is cut, and
/// reported as truncated.
const MAX_DATAGRAM: usize = 4096;

/// One received datagram: its length in the receiver's buffer, and where it came from.
#[derive(Clone, Copy, Debug)]
pub struct Received {
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
                // The headers hold pointers into `slices`, so they are made for each call
                // (two small allocations per batch) rather than kept across awaits.
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
                received.extend(messages.filter_map(|message| {
                    Some(Received {
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
            .zip(&self.buffers)
            .map(|(received, buffer)| (&buffer[..received.length], *received))
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
            .async_io(Interest::WRITABLE, || {
                let mut headers = MultiHeaders::<SockaddrIn>::preallocate(pending.len(), None);
                let slices: Vec<[IoSlice; 1]> = pending
                    .iter()
                    .map(|(bytes, _)| [IoSlice::new(bytes)])
                    .collect();
                let targets: Vec<Option<SockaddrIn>> = pending
                    .iter()
                    .map(|(_, target)| Some((*target).into()))
                    .collect();
                let sent = sendmmsg(
                    socket.as_raw_fd(),
                    &mut headers,
                    &slices,
                    targets,
                    [],
                    MsgFlags::MSG_DONTWAIT,
                )?;
                Ok(sent.count())
            })
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
