//! Facts about the served interface, listening on it, and how much one address may hold.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use anyhow::Context;

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
