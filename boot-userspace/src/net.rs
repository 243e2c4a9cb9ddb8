//! Facts about the served interface, listening on it, how much one address may hold, and how
//! long a peer may keep a connection without using it.
use std::{
    collections::HashMap,
    future::Future as _,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use anyhow::Context;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// The first IPv4 address of `interface`: Wisp's address on the boot network, which DHCP
/// names as the server and next-server and which TFTP and HTTP answer on.
pub fn interface_ipv4(interface: &str) -> anyhow::Result<Ipv4Addr> {
    let addresses = nix::ifaddrs::getifaddrs().context("listing interface addresses")?;
    addresses
        .filter(|entry| entry.interface_name == interface)
        .find_map(|entry| entry.address?.as_sockaddr_in().map(|sin| sin.ip()))
        .with_context(|| {
            format!(
                "interface {interface:?} has no IPv4 address; Wisp serves the boot network on one"
            )
        })
}

/// Room for this many connections waiting to be accepted; the kernel caps it at
/// `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener for the machines of a rack. The standard library listens with a backlog of 128
/// (tokio with 1024): with thousands of machines connecting at once, the queue overflowed, and
/// the kernel dropped connections that their machines took as established.
pub fn listen_tcp(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std and tokio do: a restarted daemon can bind again at once.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Adds a complete ARP entry for `address` on `interface`, so that a reply can be unicast to a
/// client that has no address yet and so cannot answer ARP (RFC 2131 4.1). dnsmasq does the same.
pub fn add_arp_entry(
    socket: &impl std::os::fd::AsRawFd,
    interface: &str,
    address: Ipv4Addr,
    mac: [u8; 6],
) -> std::io::Result<()> {
    // SAFETY: arpreq is plain old data; zero is a valid value for every field.
    let mut request: libc::arpreq = unsafe { std::mem::zeroed() };
    let protocol = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; arp_pa holds an AF_INET one.
    request.arp_pa = unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(protocol) };
    request.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (slot, byte) in request.arp_ha.sa_data.iter_mut().zip(mac) {
        *slot = byte as libc::c_char;
    }
    request.arp_flags = libc::ATF_COM;
    for (slot, byte) in request
        .arp_dev
        .iter_mut()
        .zip(interface.bytes().take(libc::IFNAMSIZ - 1))
    {
        *slot = byte as libc::c_char;
    }
    // SAFETY: SIOCSARP reads a valid arpreq from the pointer.
    match unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSARP, &request) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_listener_queues_a_racks_worth_of_connections() {
        let listener = listen_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        let output = std::process::Command::new("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .output()
            .unwrap();
        // For a listening socket, ss's Send-Q column is the backlog it was given.
        let line = String::from_utf8(output.stdout).unwrap();
        let backlog: u32 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(backlog, LISTEN_BACKLOG.min(somaxconn), "{line}");
    }
}

/// How many of something (transfers, connections) each client address holds, up to a cap, so
/// that one host on the boot network cannot take what a rack shares.
#[derive(Clone)]
pub struct PerAddress {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    cap: usize,
}

impl PerAddress {
    pub fn new(cap: usize) -> PerAddress {
        PerAddress {
            held: Arc::default(),
            cap,
        }
    }

    /// One more for `address`, unless it holds as many as it may; given back when dropped.
    pub fn take(&self, address: IpAddr) -> Option<AddressSlot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(address).or_default();
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            limit: self.clone(),
            address,
        })
    }
}

/// One of an address's slots.
pub struct AddressSlot {
    limit: PerAddress,
    address: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.limit.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.address);
            }
        }
    }
}

/// Connections a server holds at once: `total` in all and `per_address` from one address.
#[derive(Clone)]
pub struct ConnectionLimits {
    total: Arc<tokio::sync::Semaphore>,
    total_cap: usize,
    per_address: PerAddress,
}

/// What an open connection holds: one of the server's slots and one of its address's.
pub struct ConnectionSlots {
    _total: tokio::sync::OwnedSemaphorePermit,
    _address: AddressSlot,
}

impl ConnectionLimits {
    pub fn new(total: usize, per_address: usize) -> ConnectionLimits {
        ConnectionLimits {
            total: Arc::new(tokio::sync::Semaphore::new(total)),
            total_cap: total,
            per_address: PerAddress::new(per_address),
        }
    }

    /// Slots for a connection from `peer`, or why it gets none (it is then closed at once: the
    /// client sees it end, and retries).
    pub fn admit(&self, peer: SocketAddr) -> Result<ConnectionSlots, String> {
        let address = self.per_address.take(peer.ip()).ok_or_else(|| {
            format!(
                "{} connections are open from this address",
                self.per_address.cap
            )
        })?;
        let total = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| format!("{} connections are open", self.total_cap))?;
        Ok(ConnectionSlots {
            _total: total,
            _address: address,
        })
    }
}

/// How long a peer may keep a connection without using it: see [`Paced`].
#[derive(Clone, Copy, Debug)]
pub struct PaceLimits {
    /// No byte either way for this long, and the connection is closed. Also the grace a
    /// response gets before its rate counts.
    pub idle: Duration,
    /// Bytes per second a response must average after the grace.
    pub min_rate: u64,
}

impl PaceLimits {
    /// By when `bytes` must have been sent, for a response that started at `start`.
    pub fn deadline(&self, start: Instant, bytes: u64) -> Instant {
        start + self.idle + Duration::from_secs_f64(bytes as f64 / self.min_rate.max(1) as f64)
    }
}

/// A connection that fails its next read or write with `TimedOut` when it goes idle (no byte
/// either way for [`PaceLimits::idle`]), or when a response drags: from a request's arrival,
/// what is written back must average [`PaceLimits::min_rate`] after the grace. A per-write
/// timeout alone lets a slow reader (a byte a minute) hold the connection, its slot and the
/// file behind it as long as it likes.
///
/// A connection that runs out of time is reset, not closed: a close would leave megabytes in
/// the socket buffers, still trickling out to the slow reader after its slot is freed.
pub struct Paced<IO> {
    io: IO,
    /// The connection's socket, to reset it when time runs out.
    socket: std::os::fd::OwnedFd,
    limits: PaceLimits,
    last_progress: Instant,
    /// When the peer last sent bytes: the response to them starts there.
    response_start: Instant,
    written_since_request: u64,
    write_pending: bool,
    timer: Pin<Box<Sleep>>,
}

impl<IO> Paced<IO> {
    /// `socket` is a duplicate of the descriptor under `io`.
    pub fn new(io: IO, socket: std::os::fd::OwnedFd, limits: PaceLimits) -> Paced<IO> {
        let now = Instant::now();
        Paced {
            io,
            socket,
            limits,
            last_progress: now,
            response_start: now,
            written_since_request: 0,
            write_pending: false,
            timer: Box::pin(tokio::time::sleep_until(now + limits.idle)),
        }
    }

    /// The moment the connection has run out of time.
    fn expiry(&self) -> Instant {
        let idle = self.last_progress + self.limits.idle;
        if self.write_pending {
            idle.min(
                self.limits
                    .deadline(self.response_start, self.written_since_request),
            )
        } else {
            idle
        }
    }

    /// Err once the connection has run out of time; otherwise the timer is set to wake this
    /// task when it will.
    fn check_time(&mut self, cx: &mut TaskContext<'_>) -> io::Result<()> {
        let expiry = self.expiry();
        if self.timer.deadline() != expiry {
            self.timer.as_mut().reset(expiry);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            let why =
                if self.write_pending && Instant::now() < self.last_progress + self.limits.idle {
                    "the peer read the response too slowly"
                } else {
                    "the connection was idle too long"
                };
            reset_on_close(&self.socket);
            return Err(io::Error::new(io::ErrorKind::TimedOut, why));
        }
        Ok(())
    }
}

/// Makes the socket's close a reset (SO_LINGER 0): what is queued for a peer that stopped
/// reading is discarded instead of trickling out, as nginx's `reset_timedout_connection`.
pub fn reset_on_close(socket: &impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

impl<IO: AsyncRead + Unpin> AsyncRead for Paced<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let now = Instant::now();
                    self.last_progress = now;
                    self.response_start = now;
                    self.written_since_request = 0;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                self.check_time(cx)?;
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> Paced<IO> {
    fn wrote(
        &mut self,
        result: Poll<io::Result<usize>>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Ok(written)) => {
                self.write_pending = false;
                if written > 0 {
                    self.last_progress = Instant::now();
                    self.written_since_request += written as u64;
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                self.write_pending = true;
                self.check_time(cx)?;
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Paced<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(result, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod pace_tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A socket to stand for the duplex's: the tests read the timing, not the reset.
    fn socket() -> std::os::fd::OwnedFd {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap().into()
    }

    const LIMITS: PaceLimits = PaceLimits {
        idle: Duration::from_secs(60),
        min_rate: 64 << 10,
    };

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_for_the_timeout_fails() {
        let (server, _client) = tokio::io::duplex(1 << 10);
        let mut server = Paced::new(server, socket(), LIMITS);
        let start = Instant::now();
        let err = server.read(&mut [0; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "the connection was idle too long");
        assert_eq!(start.elapsed(), LIMITS.idle);
    }

    /// The server answers a request with `length` bytes to a client that reads `per_second`.
    async fn respond_to_a_reader(length: usize, per_second: usize) -> (io::Result<()>, Duration) {
        let (server, mut client) = tokio::io::duplex(4 << 10);
        let mut server = Paced::new(server, socket(), LIMITS);
        let request = b"GET /assets/image\r\n\r\n";
        client.write_all(request).await.unwrap();
        server.read_exact(&mut [0; 21]).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut buffer = vec![0; per_second];
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if client.read_exact(&mut buffer).await.is_err() {
                    return;
                }
            }
        });
        let start = Instant::now();
        let result = server.write_all(&vec![7; length]).await;
        drop(server);
        reader.await.unwrap();
        (result, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_slower_than_the_minimum_rate_is_cut_off_by_the_deadline() {
        // At 8 KiB/s, 1 MiB would take 128 s. Each write still moves bytes every second, so
        // no per-write timeout would ever fire; but after t seconds about 8t KiB are out, due
        // by 60 s + 8t/64 s, which t passes at about 68.6 s.
        let (result, elapsed) = respond_to_a_reader(1 << 20, 8 << 10).await;
        let err = result.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "the peer read the response too slowly");
        assert!(
            elapsed >= Duration::from_secs(68) && elapsed < Duration::from_secs(70),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_at_the_minimum_rate_gets_everything() {
        let (result, elapsed) = respond_to_a_reader(1 << 20, 64 << 10).await;
        result.unwrap();
        assert!(elapsed >= Duration::from_secs(15), "{elapsed:?}");
    }
}

/// Binds a packet socket to the interface with `index`, receiving frames of `ethertype`
/// (`ETH_P_ALL` for every one); it then sends on that interface too.
pub fn bind_packet_socket(
    socket: &socket2::Socket,
    index: u32,
    ethertype: u16,
) -> std::io::Result<()> {
    // SAFETY: the closure writes a sockaddr_ll, which fits in the storage, and says its length.
    let ((), address) = unsafe {
        socket2::SockAddr::try_init(|storage, length| {
            let link = storage.cast::<libc::sockaddr_ll>();
            (*link).sll_family = libc::AF_PACKET as u16;
            (*link).sll_protocol = ethertype.to_be();
            (*link).sll_ifindex = index as i32;
            *length = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            Ok(())
        })
    }?;
    socket.bind(&address)
}
