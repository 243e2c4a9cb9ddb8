//! The DHCP receive path: sockets on ports 67 and 4011 bound to the served interface, behind
//! the gate. Every datagram the gate admits is decoded and counted by message type.
use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use boot_ebpf::{DHCP_SERVER_PORT, PXE_BOOT_SERVER_PORT};
use dhcproto::{v4, Decodable, Decoder};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::{
    gate::Gate,
    metrics::{DhcpLabels, Metrics},
};

/// Binds both DHCP ports on `interface` and serves them until the task is dropped.
pub async fn listen(
    interface: String,
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let interface = interface.as_str();
    let mut tasks = tokio::task::JoinSet::new();
    for port in [DHCP_SERVER_PORT, PXE_BOOT_SERVER_PORT] {
        let socket = bind(interface, port)?;
        tracing::info!(interface, port, "DHCP socket listening");
        tasks.spawn(receive_loop(
            socket,
            Arc::clone(&gate),
            Arc::clone(&metrics),
        ));
    }
    while let Some(result) = tasks.join_next().await {
        result.context("DHCP receive task")??;
    }
    Ok(())
}

fn bind(interface: &str, port: u16) -> anyhow::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    // Clients broadcast from 0.0.0.0, so the socket listens on any address but only on the
    // served interface.
    socket
        .bind_device(Some(interface.as_bytes()))
        .with_context(|| format!("binding the DHCP socket to {interface}"))?;
    let address: SocketAddr = ([0, 0, 0, 0], port).into();
    socket
        .bind(&address.into())
        .with_context(|| format!("binding UDP port {port} on {interface}"))?;
    socket.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(socket.into())?)
}

async fn receive_loop(
    socket: UdpSocket,
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let mut buffer = vec![0u8; 65_535];
    loop {
        let (length, peer) = socket
            .recv_from(&mut buffer)
            .await
            .context("receiving DHCP")?;
        let payload = &buffer[..length];
        if !gate.admit(payload) {
            continue;
        }
        let message_type = match v4::Message::decode(&mut Decoder::new(payload)) {
            Ok(message) => {
                let message_type = message
                    .opts()
                    .msg_type()
                    .map_or("bootp".to_string(), |t| format!("{t:?}").to_lowercase());
                let client = workflow::resource::MacAddr(
                    message
                        .chaddr()
                        .get(..6)
                        .and_then(|c| c.try_into().ok())
                        .unwrap_or_default(),
                );
                tracing::info!(%client, %peer, message_type, xid = message.xid(), "DHCP message received");
                message_type
            }
            Err(err) => {
                tracing::debug!(%peer, "undecodable DHCP message dropped: {err}");
                "malformed".to_string()
            }
        };
        metrics
            .dhcp_received
            .get_or_create(&DhcpLabels { message_type })
            .inc();
    }
}
