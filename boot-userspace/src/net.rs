//! Facts about the served interface.
use std::net::Ipv4Addr;

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
