//! The DHCP server: sockets on ports 67 and 4011 bound to the served interface, behind the
//! gate. Layers: [`handler`] decides (pure), [`boot`] picks the boot program, [`leases`] makes
//! ACKed leases durable, [`datagrams`] moves datagrams in batches; this module receives,
//! persists and sends. Machines come from the machine table ([`crate::machines`]).
pub mod boot;
pub mod datagrams;
pub mod handler;
pub mod leases;

use std::{
    collections::HashMap,
    future::Future,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use boot_ebpf::DHCP_SERVER_PORT;
use dhcproto::{v4, Decodable, Decoder, Encodable, Encoder};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use workflow::{
    resource::MacAddr,
    store::{CommitError, Lease, LeaseStore, StoreError},
};

use self::{
    boot::BootConfig,
    datagrams::Receiver,
    handler::{Destination, Facts, Handoff, Mode, Outcome, Port, Reply, Request},
    leases::LeaseWriter,
};
use crate::{
    events::{EventKind, EventLog},
    gate::Gate,
    log_budget::LogBudget,
    machines::Machines,
    metrics::{DhcpLabels, Metrics, ReasonLabels},
};

const CLIENT_PORT: u16 = 68;
/// Receive buffer of the DHCP sockets: room for a few thousand requests in a burst.
const RECEIVE_BUFFER: usize = 4 << 20;

/// How long after handing a MAC an iPXE binary its iPXE counts as chainloaded by Wisp, unless
/// configured otherwise.
pub const DEFAULT_CHAINLOAD_WINDOW: Duration = Duration::from_secs(300);
/// How long a declined reservation is not offered (RFC 2131 3.1 wants a pause, not a loop).
const DECLINE_HOLD_OFF: Duration = Duration::from_secs(60);
/// Above this many remembered handoffs, expired ones are swept out on insert.
const HANDOFF_SWEEP_THRESHOLD: usize = 4096;

/// What the DHCP server is given; everything else it keeps to itself.
pub struct DhcpConfig {
    /// The served interface, which the sockets are bound to.
    pub interface: String,
    pub mode: Mode,
    pub boot: BootConfig,
    pub chainload_window: Duration,
}

pub struct DhcpServer {
    config: DhcpConfig,
    machines: Arc<Machines>,
    gate: Arc<Gate>,
    /// Lines about each client (by MAC), rationed.
    log: LogBudget<MacAddr>,
    metrics: Arc<Metrics>,
    leases: Arc<dyn LeaseStore>,
    /// When each MAC was last handed an iPXE binary, and in which DHCP transaction (xid).
    handoffs: Mutex<HashMap<MacAddr, BinaryHandoff>>,
    /// When each MAC last declined its reserved address.
    declined: Mutex<HashMap<MacAddr, Instant>>,
    /// Which MAC holds each leased address, and until when, so that an address is never
    /// handed to a second MAC while the first one's lease runs.
    holders: Arc<LeaseHolders>,
    script_handoffs: Arc<ScriptHandoffs>,
    /// With appliances sharing a store: this one answers only while it holds the segment's
    /// leadership; the others stand by, their gates attached.
    leadership: Option<Arc<workflow::store::Leadership>>,
    /// The leadership's term whose leases are loaded: a new term reloads them.
    loaded_term: tokio::sync::Mutex<u64>,
    events: Arc<EventLog>,
}

/// The MAC that holds an address, until the Unix time its lease expires.
#[derive(Clone, Copy, Debug)]
struct Holder {
    mac: MacAddr,
    expires_unix: u64,
}

/// Who holds each leased address, shared by the DHCP server (which keeps it with every ACK,
/// RELEASE and DECLINE) and the API (which deletes leases); loaded from the lease store at
/// start.
#[derive(Default)]
pub struct LeaseHolders(Mutex<Holders>);

impl LeaseHolders {
    pub fn load(leases: &dyn LeaseStore) -> Result<LeaseHolders, StoreError> {
        let holders = LeaseHolders::default();
        holders.reload(leases)?;
        Ok(holders)
    }

    /// Takes who holds what from the lease store again; how many leases there are.
    pub fn reload(&self, leases: &dyn LeaseStore) -> Result<usize, StoreError> {
        let mut holders = Holders::default();
        let leases = leases.leases()?;
        for lease in &leases {
            holders.hold(lease.address, lease.mac, lease.expires_unix);
        }
        *self.lock() = holders;
        Ok(leases.len())
    }

    /// Another MAC than `mac` holds `address`, and its lease has not expired.
    pub fn held_by_another(&self, address: Ipv4Addr, mac: MacAddr, now_unix: u64) -> bool {
        self.lock().held_by_another(address, mac, now_unix)
    }

    fn hold(&self, address: Ipv4Addr, mac: MacAddr, expires_unix: u64) {
        self.lock().hold(address, mac, expires_unix);
    }

    /// `mac` holds no address any more: its lease was released, declined or deleted.
    pub fn let_go(&self, mac: MacAddr) {
        self.lock().let_go(mac);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Holders> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Who holds each address, and which address each MAC holds (a MAC has one lease, as in the
/// journal): both ways, so that every change is a lookup, not a scan.
#[derive(Default)]
struct Holders {
    by_address: HashMap<Ipv4Addr, Holder>,
    by_mac: HashMap<MacAddr, Ipv4Addr>,
}

impl Holders {
    /// Another MAC than `mac` holds `address`, and its lease has not expired.
    fn held_by_another(&self, address: Ipv4Addr, mac: MacAddr, now_unix: u64) -> bool {
        self.by_address
            .get(&address)
            .is_some_and(|holder| holder.mac != mac && holder.expires_unix > now_unix)
    }

    /// `mac` holds `address` until `expires_unix`, and nothing else: an address it held before
    /// is free once it moves.
    fn hold(&mut self, address: Ipv4Addr, mac: MacAddr, expires_unix: u64) {
        self.let_go(mac);
        if let Some(previous) = self
            .by_address
            .insert(address, Holder { mac, expires_unix })
        {
            self.by_mac.remove(&previous.mac);
        }
        self.by_mac.insert(mac, address);
    }

    fn let_go(&mut self, mac: MacAddr) {
        if let Some(address) = self.by_mac.remove(&mac) {
            self.by_address.remove(&address);
        }
    }
}

/// Which machines Wisp's DHCP pointed at their iPXE script, and when: the script that follows
/// within the window starts the machine's boot, and only it carries a token (a script fetched
/// at any other time, by anyone, carries none).
pub struct ScriptHandoffs {
    window: Duration,
    at: Mutex<HashMap<MacAddr, Instant>>,
}

impl ScriptHandoffs {
    pub fn new(window: Duration) -> ScriptHandoffs {
        ScriptHandoffs {
            window,
            at: Mutex::default(),
        }
    }

    /// Only MACs that Wisp owns get replies, so the map holds at most one entry per machine.
    pub fn record(&self, mac: MacAddr) {
        self.at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(mac, Instant::now());
    }

    /// Whether Wisp pointed `mac` at its script within the window; the handoff is used up, so
    /// that one handoff starts one boot (a second fetch, by anyone, gets no token).
    pub fn take(&self, mac: &MacAddr) -> bool {
        self.at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(mac)
            .is_some_and(|at| at.elapsed() < self.window)
    }
}

/// An iPXE binary handed to a client. Retransmissions of the same transaction keep its xid and
/// must get the same answer; the chainloaded iPXE starts a transaction of its own.
#[derive(Clone, Copy, Debug)]
struct BinaryHandoff {
    xid: u32,
    at: Instant,
}

impl DhcpServer {
    /// Answers only while `leadership` is held (see [`workflow::store::Leadership`]).
    pub fn with_leadership(mut self, leadership: Arc<workflow::store::Leadership>) -> DhcpServer {
        self.leadership = Some(leadership);
        self
    }

    pub fn new(
        config: DhcpConfig,
        machines: Arc<Machines>,
        gate: Arc<Gate>,
        metrics: Arc<Metrics>,
        leases: Arc<dyn LeaseStore>,
        holders: Arc<LeaseHolders>,
        // What the boot path tells the rest: which machines were just pointed at their script,
        // and every machine's events.
        (script_handoffs, events): (Arc<ScriptHandoffs>, Arc<EventLog>),
    ) -> DhcpServer {
        // Every counter from zero, so that a dashboard's rate() and a test's "none" see a
        // series from the start, and a renamed metric is missed rather than read as zero.
        for message_type in [
            "discover",
            "request",
            "decline",
            "release",
            "inform",
            "malformed",
        ] {
            let _ = metrics.dhcp_received.get_or_create(&DhcpLabels {
                message_type: message_type.into(),
            });
        }
        for message_type in ["offer", "ack", "nak"] {
            let _ = metrics.dhcp_replies.get_or_create(&DhcpLabels {
                message_type: message_type.into(),
            });
        }
        DhcpServer {
            config,
            machines,
            gate,
            // A MAC the gate passes can still be spoofed, as fast as the link allows.
            log: LogBudget::new("dhcp", &metrics.log_lines_suppressed),
            metrics,
            leases,
            handoffs: Mutex::default(),
            declined: Mutex::default(),
            leadership: None,
            loaded_term: Default::default(),
            events,
            holders,
            script_handoffs,
        }
    }

    fn chainloaded(&self, mac: &MacAddr, xid: u32) -> bool {
        let handoffs = self.handoffs.lock().unwrap_or_else(|p| p.into_inner());
        handoffs.get(mac).is_some_and(|handoff| {
            handoff.xid != xid && handoff.at.elapsed() < self.config.chainload_window
        })
    }

    fn record_handoff(&self, mac: MacAddr, xid: u32) {
        let mut handoffs = self.handoffs.lock().unwrap_or_else(|p| p.into_inner());
        // Expired entries are swept when the map is large, so it stays bounded without a scan
        // on every insert: after a sweep, at least the threshold's worth of new entries must
        // arrive before the next.
        if handoffs.len() >= HANDOFF_SWEEP_THRESHOLD && handoffs.len().is_power_of_two() {
            let window = self.config.chainload_window;
            handoffs.retain(|_, handoff| handoff.at.elapsed() < window);
        }
        handoffs.insert(
            mac,
            BinaryHandoff {
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
        for port in Port::ALL {
            let interface = &server.config.interface;
            let socket = Arc::new(bind(interface, port.number())?);
            tracing::info!(interface, port = port.number(), mode = ?server.config.mode, "DHCP listening");
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
        port: Port,
        writer: LeaseWriter,
    ) -> anyhow::Result<()> {
        let mut receiver = Receiver::default();
        loop {
            receiver.receive(&socket).await.context("receiving DHCP")?;
            // Decided once per batch: a batch is answered, or left to the leader, whole.
            let standing_by = match &self.leadership {
                Some(leadership) if leadership.held() => {
                    self.load_leases_for(leadership.term()).await;
                    false
                }
                Some(_) => true,
                None => false,
            };
            let mut replies = Replies::default();
            for (payload, datagram) in receiver.datagrams() {
                if !self.gate.admit(payload) {
                    continue;
                }
                if datagram.truncated {
                    tracing::debug!(source = %datagram.source, "oversized DHCP datagram dropped");
                    self.count_received("malformed");
                    continue;
                }
                // Bad input never takes the server down: dhcproto asserts on some malformed
                // options, so decoding and deciding run under catch_unwind, and a panic there
                // is counted and dropped like any other malformed packet.
                // AssertUnwindSafe: deciding only reads shared state (and bumps counters), so
                // a panic part-way leaves nothing inconsistent behind.
                let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.decide(payload, datagram.source, port)
                }));
                let Ok(Some((message, outcome))) = decided else {
                    tracing::debug!(source = %datagram.source, "malformed DHCP message dropped");
                    self.count_received("malformed");
                    continue;
                };
                self.act(
                    message,
                    outcome,
                    (datagram.source, port, standing_by),
                    &socket,
                    &writer,
                    &mut replies,
                );
            }
            self.send(&socket, replies.now).await;
            if !replies.after_lease.is_empty() {
                // The ACKs wait for their leases to be durable without holding up the loop. The
                // leases were queued together, in decision order, so they nearly always share
                // one group commit; when the writer cuts a batch in two, its first ACKs wait for
                // the second commit too.
                let (server, socket) = (Arc::clone(&self), Arc::clone(&socket));
                let writer = writer.clone();
                tokio::spawn(async move {
                    let mut durable = Vec::with_capacity(replies.after_lease.len());
                    let deadline = tokio::time::Instant::now() + SHARED_STORE_PATIENCE;
                    let shared = server.leadership.is_some();
                    for (stored, reply, lease) in replies.after_lease {
                        let stored = match shared {
                            true => tokio::time::timeout_at(deadline, stored)
                                .await
                                .unwrap_or_else(|_| {
                                    Err(CommitError::Store(Arc::new(StoreError::Backend {
                                        store: "etcd",
                                        source: "no answer in time".into(),
                                    })))
                                }),
                            false => stored.await,
                        };
                        match stored {
                            Ok(()) => durable.push(reply),
                            // A shared store out of reach (etcd without its quorum): the address
                            // is the machine's reservation, which this appliance knows, and no
                            // other appliance can answer meanwhile (none can take the
                            // leadership without the store). The ACK goes; the lease is stored
                            // once the store answers again.
                            Err(CommitError::Store(err)) if shared => {
                                tracing::warn!(client = %reply.client, "lease not stored yet ({err}); ACKed from the reservation, and stored once the store answers");
                                durable.push(reply);
                                writer.store_later(lease);
                            }
                            // A full queue is a flood (or a disk that has stopped): counted,
                            // and logged at debug, or the flood would set the log's volume.
                            Err(err @ CommitError::Full(..)) => {
                                tracing::debug!(client = %reply.client, "ACK withheld: {err}");
                                server
                                    .metrics
                                    .dhcp_ignored
                                    .get_or_create(&ReasonLabels {
                                        reason: "lease_queue_full",
                                    })
                                    .inc();
                            }
                            Err(err) => {
                                tracing::error!(client = %reply.client, "lease not stored, ACK withheld: {err}")
                            }
                        }
                    }
                    server.send(&socket, durable).await;
                });
            }
        }
    }

    /// Decodes a datagram and decides what to do with it; None when it cannot be decoded.
    fn decide(
        &self,
        payload: &[u8],
        source: SocketAddr,
        port: Port,
    ) -> Option<(v4::Message, Outcome)> {
        let message = v4::Message::decode(&mut Decoder::new(payload)).ok()?;
        self.count_received(type_name(message.opts().msg_type()));
        let machines = self.machines.current();
        let mac = handler::client_mac(&message);
        let machine = mac.and_then(|mac| machines.get(&mac));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let facts = Facts {
            mode: self.config.mode,
            boot: &self.config.boot,
            machine: machine.map(|machine| machine.as_ref()),
            now,
            chainloaded: mac.is_some_and(|mac| self.chainloaded(&mac, message.xid())),
            declined: mac.is_some_and(|mac| self.recently_declined(&mac)),
            address_held_by_another: machine.is_some_and(|machine| {
                machine
                    .address
                    .is_some_and(|address| self.holders.held_by_another(address, machine.mac, now))
            }),
        };
        let request = Request {
            message: &message,
            payload,
            source,
            port,
        };
        let outcome = handler::handle(&request, &facts);
        Some((message, outcome))
    }

    /// Carries out `outcome` for `message`, which came from `source` on `port`; a reply is
    /// withheld when `standing_by` (another appliance leads the segment).
    fn act(
        &self,
        message: v4::Message,
        outcome: Outcome,
        (source, port, standing_by): (SocketAddr, Port, bool),
        socket: &UdpSocket,
        writer: &LeaseWriter,
        replies: &mut Replies,
    ) {
        let mac = handler::client_mac(&message);
        let client = mac.map(|m| m.to_string()).unwrap_or_default();
        let request = type_name(message.opts().msg_type());
        let outcome = match outcome {
            Outcome::Reply(_) if standing_by => Outcome::Ignore(handler::IgnoreReason::Standby),
            outcome => outcome,
        };
        match outcome {
            Outcome::Reply(mut reply) => {
                if let Some(mac) = mac {
                    let file = reply.message.fname_str().and_then(Result::ok).unwrap_or("");
                    self.events.record(
                        mac,
                        EventKind::Dhcp,
                        format!(
                            "{request} → {} {}{}{file}",
                            type_name(reply.message.opts().msg_type()),
                            reply.message.yiaddr(),
                            if file.is_empty() { "" } else { ", boot file " },
                        ),
                    );
                }
                if mac.is_some_and(|mac| self.log.allow(mac)) {
                    tracing::info!(client, %source, port = port.number(), request, reply = ?reply.message.opts().msg_type(), yiaddr = %reply.message.yiaddr(), file = ?reply.message.fname_str().and_then(Result::ok), "DHCP reply");
                }
                if let (Some(mac), Handoff::Script) = (mac, reply.handoff) {
                    self.script_handoffs.record(mac);
                }
                let handoff = mac
                    .filter(|_| reply.handoff == Handoff::Binary)
                    .map(|mac| (mac, message.xid()));
                let lease = reply.lease.take();
                if let Some(lease) = &lease {
                    self.holders
                        .hold(lease.address, lease.mac, lease.expires_unix);
                }
                let Some(outgoing) = self.prepare(socket, *reply, client, handoff) else {
                    return;
                };
                match lease {
                    // Queued here, in decision order; the ACK goes once the lease is durable.
                    Some(lease) => replies.after_lease.push((
                        Box::pin(writer.record(lease.clone())),
                        outgoing,
                        lease,
                    )),
                    None => replies.now.push(outgoing),
                }
            }
            Outcome::Release(mac) => {
                if self.log.allow(mac) {
                    tracing::info!(client, "DHCP release");
                }
                self.holders.let_go(mac);
                self.forget_lease(writer, mac);
            }
            Outcome::Decline { mac, address } => {
                if self.log.allow(mac) {
                    tracing::warn!(client, %address, "DHCP decline: the reserved address is in use on the network; not offering it for a while");
                }
                self.declined
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(mac, Instant::now());
                self.holders.let_go(mac);
                self.forget_lease(writer, mac);
            }
            Outcome::Ignore(reason) => {
                tracing::debug!(client, %source, request, %reason, "DHCP request ignored");
                self.metrics
                    .dhcp_ignored
                    .get_or_create(&ReasonLabels {
                        reason: reason.label(),
                    })
                    .inc();
            }
        }
    }

    /// Loads the segment's leases once per leadership term, before its first answer: what the
    /// appliance before leased is in the shared store, not in this one's memory. Tried again
    /// at the next batch when the store does not answer.
    async fn load_leases_for(&self, term: u64) {
        let mut loaded = self.loaded_term.lock().await;
        if *loaded == term {
            return;
        }
        let (holders, leases) = (Arc::clone(&self.holders), Arc::clone(&self.leases));
        match tokio::task::spawn_blocking(move || holders.reload(&*leases)).await {
            Ok(Ok(count)) => {
                *loaded = term;
                tracing::info!(
                    leases = count,
                    "answering DHCP now: the segment's leases loaded"
                );
            }
            Ok(Err(err)) => {
                tracing::warn!("loading the segment's leases: {err}; again at the next request")
            }
            Err(err) => {
                tracing::warn!("loading the segment's leases: {err}; again at the next request")
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

    fn recently_declined(&self, mac: &MacAddr) -> bool {
        let declined = self.declined.lock().unwrap_or_else(|p| p.into_inner());
        declined
            .get(mac)
            .is_some_and(|at| at.elapsed() < DECLINE_HOLD_OFF)
    }

    /// Removals go through the lease writer's queue, behind any ACK of the same MAC decided
    /// before them.
    fn forget_lease(&self, writer: &LeaseWriter, mac: MacAddr) {
        let removed = writer.remove(mac);
        tokio::spawn(async move {
            if let Err(err) = removed.await {
                tracing::error!(client = %mac, "cannot remove the lease: {err}");
            }
        });
    }

    /// Encodes a reply and works out where it goes; None (and logged) when it cannot be encoded.
    fn prepare(
        &self,
        socket: &UdpSocket,
        reply: Reply,
        client: String,
        handoff: Option<(MacAddr, u32)>,
    ) -> Option<Outgoing> {
        // Encoding runs under catch_unwind like decoding: a reply that cannot be encoded is
        // dropped, not a reason to stop serving.
        let encoded = std::panic::catch_unwind(|| {
            let mut bytes = Vec::with_capacity(576);
            reply
                .message
                .encode(&mut Encoder::new(&mut bytes))
                .map(|()| bytes)
        });
        let bytes = match encoded {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(err)) => {
                tracing::error!(client, "cannot encode a DHCP reply: {err}");
                return None;
            }
            Err(_) => {
                tracing::error!(client, "encoding a DHCP reply panicked; reply dropped");
                return None;
            }
        };
        let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT);
        let target = match reply.destination {
            Destination::Relay(relay) => SocketAddrV4::new(relay, DHCP_SERVER_PORT),
            Destination::Client(address) => SocketAddrV4::new(address, CLIENT_PORT),
            Destination::Broadcast => broadcast,
            Destination::Source(SocketAddr::V4(source)) => source,
            Destination::Source(SocketAddr::V6(source)) => {
                tracing::error!(client, %source, "a DHCP reply cannot go to an IPv6 source");
                return None;
            }
            Destination::Unicast { address, mac } => {
                match crate::net::add_arp_entry(socket, &self.config.interface, address, mac.0) {
                    Ok(()) => SocketAddrV4::new(address, CLIENT_PORT),
                    Err(err) => {
                        tracing::debug!(
                            client,
                            "cannot add an ARP entry ({err}); broadcasting instead"
                        );
                        broadcast
                    }
                }
            }
        };
        Some(Outgoing {
            bytes,
            target,
            reply_type: type_name(reply.message.opts().msg_type()),
            client,
            handoff,
        })
    }

    /// Sends replies in one batch; a handoff is recorded once its iPXE binary has actually been
    /// handed out.
    async fn send(&self, socket: &UdpSocket, replies: Vec<Outgoing>) {
        if replies.is_empty() {
            return;
        }
        let datagrams: Vec<_> = replies
            .iter()
            .map(|reply| (reply.bytes.as_slice(), reply.target))
            .collect();
        let outcomes = datagrams::send_all(socket, &datagrams).await;
        for (reply, outcome) in replies.iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    self.metrics
                        .dhcp_replies
                        .get_or_create(&DhcpLabels {
                            message_type: reply.reply_type.into(),
                        })
                        .inc();
                    if let Some((mac, xid)) = reply.handoff {
                        self.record_handoff(mac, xid);
                    }
                }
                Err(err) => {
                    tracing::warn!(client = reply.client, target = %reply.target, "cannot send a DHCP reply: {err}")
                }
            }
        }
    }
}

/// An encoded reply and what to record once it is sent.
struct Outgoing {
    bytes: Vec<u8>,
    target: SocketAddrV4,
    reply_type: &'static str,
    client: String,
    handoff: Option<(MacAddr, u32)>,
}

/// How long ACKs wait for a shared store (etcd) to make their leases durable before they go
/// anyway, their leases stored later: a client retransmits after a few seconds, and etcd that
/// has lost its quorum answers only after the client's own timeouts.
const SHARED_STORE_PATIENCE: Duration = Duration::from_secs(2);

/// A lease on its way to the journal: resolves once it is durable.
type LeaseStored = Pin<Box<dyn Future<Output = Result<(), CommitError>> + Send>>;

/// The replies to one received batch.
#[derive(Default)]
struct Replies {
    /// Sent as soon as the batch is decided.
    now: Vec<Outgoing>,
    /// ACKs, each sent once its lease is durable; with the lease, in case it must be stored
    /// later.
    after_lease: Vec<(LeaseStored, Outgoing, Lease)>,
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

/// The metric label of a DHCP message type (`bootp` without one): a constant, as this runs for
/// every packet.
fn type_name(message_type: Option<v4::MessageType>) -> &'static str {
    use v4::MessageType::*;
    match message_type {
        None => "bootp",
        Some(Discover) => "discover",
        Some(Offer) => "offer",
        Some(Request) => "request",
        Some(Decline) => "decline",
        Some(Ack) => "ack",
        Some(Nak) => "nak",
        Some(Release) => "release",
        Some(Inform) => "inform",
        Some(_) => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);

    #[test]
    fn an_address_is_held_by_one_mac_until_it_expires_moves_or_is_let_go() {
        let (x, y) = (Ipv4Addr::new(10, 0, 0, 8), Ipv4Addr::new(10, 0, 0, 9));
        let mut holders = Holders::default();
        holders.hold(x, A, 100);
        assert!(holders.held_by_another(x, B, 50));
        assert!(!holders.held_by_another(x, A, 50), "not from its holder");
        assert!(!holders.held_by_another(x, B, 100), "expired");
        // A moves to y: x is free for B at once.
        holders.hold(y, A, 200);
        assert!(!holders.held_by_another(x, B, 50));
        assert!(holders.held_by_another(y, B, 50));
        holders.let_go(A);
        assert!(!holders.held_by_another(y, B, 50));
        assert!(holders.by_address.is_empty() && holders.by_mac.is_empty());
    }
}
