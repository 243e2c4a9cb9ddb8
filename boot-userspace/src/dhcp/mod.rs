//! The DHCP server: sockets on ports 67 and 4011 bound to the served interface, behind the
//! gate. Layers: [`handler`] decides (pure), [`boot`] picks the boot program, [`reservation`]
//! is the DHCP view of Hardware, [`leases`] makes ACKed leases durable; this module receives,
//! persists and sends.
pub mod boot;
pub mod handler;
pub mod leases;
pub mod reservation;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use boot_ebpf::{DHCP_SERVER_PORT, PXE_BOOT_SERVER_PORT};
use dhcproto::{v4, Decodable, Decoder, Encodable, Encoder};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use workflow::{resource::MacAddr, store::LeaseStore};

use self::{
    boot::BootConfig,
    handler::{Context, Destination, Mode, Outcome, Reply, Request},
    leases::LeaseWriter,
    reservation::Reservations,
};
use crate::{
    gate::Gate,
    metrics::{DhcpLabels, Metrics},
};

const CLIENT_PORT: u16 = 68;
/// Receive buffer of the DHCP sockets: room for a few thousand requests in a burst.
const RECEIVE_BUFFER: usize = 4 << 20;

/// The reservations the DHCP server answers from, swapped whole when Hardware changes.
#[derive(Default)]
pub struct SharedReservations(RwLock<Arc<Reservations>>);

impl SharedReservations {
    pub fn replace(&self, reservations: Reservations) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(reservations);
    }

    pub fn current(&self) -> Arc<Reservations> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }
}

/// How long after handing a MAC an iPXE binary its iPXE counts as chainloaded by Wisp.
const CHAINLOAD_WINDOW: Duration = Duration::from_secs(300);

pub struct DhcpServer {
    pub interface: String,
    pub mode: Mode,
    pub boot: BootConfig,
    pub reservations: Arc<SharedReservations>,
    pub gate: Arc<Gate>,
    pub metrics: Arc<Metrics>,
    pub leases: Arc<dyn LeaseStore>,
    /// When each MAC was last handed an iPXE binary, and in which DHCP transaction (xid).
    pub handoffs: Mutex<HashMap<MacAddr, Handoff>>,
}

/// An iPXE binary handed to a client. Retransmissions of the same transaction keep its xid and
/// must get the same answer; the chainloaded iPXE starts a transaction of its own.
#[derive(Clone, Copy, Debug)]
pub struct Handoff {
    xid: u32,
    at: Instant,
}

impl DhcpServer {
    fn chainloaded(&self, mac: &MacAddr, xid: u32) -> bool {
        let handoffs = self.handoffs.lock().unwrap_or_else(|p| p.into_inner());
        handoffs
            .get(mac)
            .is_some_and(|handoff| handoff.xid != xid && handoff.at.elapsed() < CHAINLOAD_WINDOW)
    }

    fn record_handoff(&self, mac: MacAddr, xid: u32) {
        let mut handoffs = self.handoffs.lock().unwrap_or_else(|p| p.into_inner());
        // Old entries go whenever the map grows, so a rack's worth never accumulates.
        if handoffs.len() >= 4096 {
            handoffs.retain(|_, handoff| handoff.at.elapsed() < CHAINLOAD_WINDOW);
        }
        handoffs.insert(
            mac,
            Handoff {
                xid,
                at: Instant::now(),
            },
        );
    }

    /// Binds both ports and serves until the future is dropped.
    pub async fn serve(self) -> anyhow::Result<()> {
        let server = Arc::new(self);
        let writer = LeaseWriter::start(Arc::clone(&server.leases));
        let mut tasks = tokio::task::JoinSet::new();
        for port in [DHCP_SERVER_PORT, PXE_BOOT_SERVER_PORT] {
            let socket = Arc::new(bind(&server.interface, port)?);
            tracing::info!(interface = server.interface, port, mode = ?server.mode, "DHCP listening");
            tasks.spawn(Arc::clone(&server).receive_loop(socket, port, writer.clone()));
        }
        while let Some(result) = tasks.join_next().await {
            result.context("DHCP receive task")??;
        }
        Ok(())
    }

    async fn receive_loop(
        self: Arc<Self>,
        socket: Arc<UdpSocket>,
        port: u16,
        writer: LeaseWriter,
    ) -> anyhow::Result<()> {
        let mut buffer = vec![0u8; 65_535];
        loop {
            let (length, source) = socket
                .recv_from(&mut buffer)
                .await
                .context("receiving DHCP")?;
            let payload = &buffer[..length];
            if !self.gate.admit(payload) {
                continue;
            }
            let message = match v4::Message::decode(&mut Decoder::new(payload)) {
                Ok(message) => message,
                Err(err) => {
                    tracing::debug!(%source, "undecodable DHCP message dropped: {err}");
                    self.count_received("malformed");
                    continue;
                }
            };
            let message_type = message
                .opts()
                .msg_type()
                .map_or("bootp".to_string(), |t| format!("{t:?}").to_lowercase());
            self.count_received(&message_type);
            let reservations = self.reservations.current();
            let mac = handler::client_mac(&message);
            let context = Context {
                mode: self.mode,
                boot: &self.boot,
                reservation: mac
                    .and_then(|mac| reservations.get(&mac))
                    .map(|r| r.as_ref()),
                now: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                chainloaded: mac.is_some_and(|mac| self.chainloaded(&mac, message.xid())),
            };
            let request = Request {
                message: &message,
                source,
                port,
            };
            let client = mac.map(|m| m.to_string()).unwrap_or_default();
            match handler::handle(&request, &context) {
                Outcome::Reply(reply) => {
                    if let (true, Some(mac)) = (reply.handoff, mac) {
                        self.record_handoff(mac, message.xid());
                    }
                    tracing::info!(client, %source, request = message_type, reply = ?reply.message.opts().msg_type(), yiaddr = %reply.message.yiaddr(), file = ?reply.message.fname_str().and_then(Result::ok), "DHCP reply");
                    match reply.lease.clone() {
                        // The ACK waits for its lease to be durable, without holding up the loop.
                        Some(lease) => {
                            let (server, socket, writer) =
                                (Arc::clone(&self), Arc::clone(&socket), writer.clone());
                            tokio::spawn(async move {
                                match writer.record(lease).await {
                                    Ok(()) => server.send(&socket, *reply).await,
                                    Err(err) => tracing::error!(
                                        client,
                                        "lease not stored, ACK withheld: {err}"
                                    ),
                                }
                            });
                        }
                        None => self.send(&socket, *reply).await,
                    }
                }
                Outcome::Release(mac) => {
                    tracing::info!(client, "DHCP release");
                    self.forget_lease(mac).await;
                }
                Outcome::Decline { mac, address } => {
                    tracing::warn!(client, %address, "DHCP decline: the client found its reserved address in use on the network");
                    self.forget_lease(mac).await;
                }
                Outcome::Ignore(reason) => {
                    tracing::debug!(client, %source, request = message_type, reason, "DHCP request ignored");
                    self.metrics
                        .dhcp_ignored
                        .get_or_create(&crate::metrics::ReasonLabels {
                            reason: reason.into(),
                        })
                        .inc();
                }
            }
        }
    }

    fn count_received(&self, message_type: &str) {
        self.metrics
            .dhcp_received
            .get_or_create(&DhcpLabels {
                message_type: message_type.into(),
            })
            .inc();
    }

    async fn forget_lease(&self, mac: MacAddr) {
        let leases = Arc::clone(&self.leases);
        match tokio::task::spawn_blocking(move || leases.remove_lease(&mac)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::error!(client = %mac, "cannot remove the lease: {err}"),
            Err(err) => tracing::error!(client = %mac, "lease removal task failed: {err}"),
        }
    }

    async fn send(&self, socket: &UdpSocket, reply: Reply) {
        let mut bytes = Vec::with_capacity(576);
        if let Err(err) = reply.message.encode(&mut Encoder::new(&mut bytes)) {
            tracing::error!("cannot encode a DHCP reply: {err}");
            return;
        }
        let target: SocketAddr = match reply.destination {
            Destination::Relay(relay) => (relay, DHCP_SERVER_PORT).into(),
            Destination::Client(address) => (address, CLIENT_PORT).into(),
            Destination::Broadcast => (Ipv4Addr::BROADCAST, CLIENT_PORT).into(),
            Destination::Source(source) => source,
            Destination::Unicast { address, mac } => {
                match crate::net::add_arp_entry(socket, &self.interface, address, mac.0) {
                    Ok(()) => (address, CLIENT_PORT).into(),
                    Err(err) => {
                        tracing::debug!(client = %mac, "cannot add an ARP entry ({err}); broadcasting instead");
                        (Ipv4Addr::BROADCAST, CLIENT_PORT).into()
                    }
                }
            }
        };
        let reply_type = reply
            .message
            .opts()
            .msg_type()
            .map_or("unknown".to_string(), |t| format!("{t:?}").to_lowercase());
        match socket.send_to(&bytes, target).await {
            Ok(_) => {
                self.metrics
                    .dhcp_replies
                    .get_or_create(&DhcpLabels {
                        message_type: reply_type,
                    })
                    .inc();
            }
            Err(err) => tracing::warn!(%target, "cannot send a DHCP reply: {err}"),
        }
    }
}

fn bind(interface: &str, port: u16) -> anyhow::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    // A rack powering on sends a burst of DISCOVERs at once; a small buffer drops them.
    if let Err(err) = nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::RcvBufForce,
        &RECEIVE_BUFFER,
    ) {
        tracing::debug!(
            "cannot force a {RECEIVE_BUFFER}-byte receive buffer ({err}); using the system limit"
        );
        socket.set_recv_buffer_size(RECEIVE_BUFFER)?;
    }
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
