//! `cargo xtask bench-dora`: our own DHCP load generator, for the rates perfdhcp cannot send.
//! perfdhcp makes one system call per packet on one thread; with a core of its own it tops out
//! below what Wisp answers. This one does the same work as perfdhcp in relay mode (DISCOVER,
//! OFFER, REQUEST, ACK from N reserved MACs, relayed with its own address as giaddr), but moves
//! its packets in batches: `sendmmsg` for everything due at a wakeup, `recvmmsg` for every reply
//! queued. Packets are built once with dhcproto and then only patched (transaction id, MAC,
//! server id, requested address), so the generator spends its core on the wire, not on
//! encoding.
//!
//! Its numbers count only where they agree with perfdhcp's: every full bench run measures Kea's
//! and dnsmasq's top rates with both (there the server, not the generator, is the limit), and
//! publishes this generator's rate for Wisp only when both agreed within 10% in that run.
use std::{
    net::{Ipv4Addr, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use dhcproto::{
    v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode},
    Encodable as _,
};

/// Where the generator sends from and what it names as giaddr: the lab's client address.
const RELAY: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
/// At most this many datagrams per system call.
const BATCH: usize = 256;
/// How long replies are awaited after the last DISCOVER, as perfdhcp's `-W`.
const LATE_REPLIES: Duration = Duration::from_secs(1);

/// What one run measured, printed as JSON for the bench.
#[derive(serde::Serialize, serde::Deserialize, Debug, Default)]
pub struct Report {
    /// Exchanges the run was asked for (rate × seconds).
    pub asked: u64,
    /// DISCOVERs that left.
    pub discovers: u64,
    pub offers: u64,
    pub requests: u64,
    pub acks: u64,
    /// DISCOVERs without an OFFER and REQUESTs without an ACK, as perfdhcp counts them.
    pub drops: u64,
    /// Milliseconds from each request to its reply (DISCOVER-OFFER and REQUEST-ACK pooled, as
    /// perfdhcp reports them).
    pub delays: Vec<f64>,
}

/// One client's exchange; its index is its transaction id less the run's base.
#[derive(Default, Clone, Copy)]
struct Exchange {
    discovered: Option<Instant>,
    requested: Option<Instant>,
    offered: bool,
    acked: bool,
}

/// The DISCOVER and REQUEST every exchange sends, encoded once by dhcproto; each send patches
/// the transaction id, the MAC and (REQUEST) the server id and requested address in place.
struct Templates {
    discover: Vec<u8>,
    request: Vec<u8>,
    /// Offsets of the REQUEST's option 54 and option 50 values.
    server_id_at: usize,
    requested_at: usize,
}

const XID_AT: usize = 4;
const CHADDR_AT: usize = 28;
const OPTIONS_AT: usize = 240;

impl Templates {
    fn new() -> anyhow::Result<Templates> {
        let encode = |kind: MessageType, extra: &[DhcpOption]| -> anyhow::Result<Vec<u8>> {
            let mut message = Message::default();
            message
                .set_opcode(Opcode::BootRequest)
                .set_hops(1)
                .set_giaddr(RELAY)
                .set_flags(Flags::default())
                .set_chaddr(&[2, 0, 0, 0, 0, 0]);
            message.opts_mut().insert(DhcpOption::MessageType(kind));
            for option in extra {
                message.opts_mut().insert(option.clone());
            }
            Ok(message.to_vec()?)
        };
        let request = encode(
            MessageType::Request,
            &[
                DhcpOption::ServerIdentifier(Ipv4Addr::UNSPECIFIED),
                DhcpOption::RequestedIpAddress(Ipv4Addr::UNSPECIFIED),
            ],
        )?;
        let server_id_at = option_at(&request, OptionCode::ServerIdentifier)
            .context("the REQUEST template has no server id")?;
        let requested_at = option_at(&request, OptionCode::RequestedIpAddress)
            .context("the REQUEST template has no requested address")?;
        Ok(Templates {
            discover: encode(MessageType::Discover, &[])?,
            request,
            server_id_at,
            requested_at,
        })
    }
}

/// Where the value of `code` starts in an encoded message's options.
fn option_at(message: &[u8], code: OptionCode) -> Option<usize> {
    let code = u8::from(code);
    let mut at = OPTIONS_AT;
    while let Some(&found) = message.get(at) {
        match found {
            0 => at += 1,
            255 => return None,
            _ if found == code => return Some(at + 2),
            _ => at += 2 + usize::from(*message.get(at + 1)?),
        }
    }
    None
}

/// The parts of a reply the generator needs.
struct Reply {
    xid: u32,
    kind: u8,
    yiaddr: [u8; 4],
    server_id: [u8; 4],
}

fn parse_reply(datagram: &[u8]) -> Option<Reply> {
    if datagram.len() < OPTIONS_AT || datagram[0] != 2 {
        return None;
    }
    let value = |code: OptionCode| -> Option<&[u8]> {
        let at = option_at(datagram, code)?;
        let length = usize::from(datagram[at - 1]);
        datagram.get(at..at + length)
    };
    Some(Reply {
        xid: u32::from_be_bytes(datagram[XID_AT..XID_AT + 4].try_into().ok()?),
        kind: *value(OptionCode::MessageType)?.first()?,
        yiaddr: datagram[16..20].try_into().ok()?,
        server_id: value(OptionCode::ServerIdentifier)?.try_into().ok()?,
    })
}

/// The reserved hosts' MACs, as the bench's Hardware and perfdhcp's `-b mac=02:00:00:00:00:00`.
fn mac(host: u32) -> [u8; 6] {
    let [_, _, high, low] = host.to_be_bytes();
    [2, 0, 0, 0, high, low]
}

/// Runs `seconds` of DORA at `rate` exchanges per second, round robin over `hosts` MACs.
pub fn generate(hosts: u32, rate: u32, seconds: f64) -> anyhow::Result<()> {
    let socket = UdpSocket::bind((RELAY, 67)).context("binding the relay port 10.88.0.2:67")?;
    socket.connect((super::lab::SERVER_IP, 67))?;
    socket.set_nonblocking(true)?;
    let report = Generator::new(hosts, rate, seconds)?.run(&socket)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

struct Generator {
    hosts: u32,
    rate: f64,
    duration: Duration,
    templates: Templates,
    /// The first transaction id: from the clock, so that late replies to an earlier run
    /// match nothing in this one.
    base: u32,
    exchanges: Vec<Exchange>,
    report: Report,
}

impl Generator {
    fn new(hosts: u32, rate: u32, seconds: f64) -> anyhow::Result<Generator> {
        let asked = (f64::from(rate) * seconds) as u64;
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        Ok(Generator {
            hosts: hosts.max(1),
            rate: f64::from(rate),
            duration: Duration::from_secs_f64(seconds),
            templates: Templates::new()?,
            base,
            exchanges: vec![Exchange::default(); usize::try_from(asked)?],
            report: Report {
                asked,
                ..Report::default()
            },
        })
    }

    fn run(mut self, socket: &UdpSocket) -> anyhow::Result<Report> {
        let started = Instant::now();
        let mut outgoing: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
        let mut received = vec![[0u8; 1500]; BATCH];
        loop {
            let elapsed = started.elapsed();
            if elapsed >= self.duration + LATE_REPLIES {
                break;
            }
            // The DISCOVERs due by now, after those already sent.
            let due = ((elapsed.as_secs_f64() * self.rate) as u64).min(self.report.asked);
            while self.report.discovers < due && outgoing.len() < BATCH {
                let index = self.report.discovers as usize;
                let mut packet = self.templates.discover.clone();
                self.patch(&mut packet, index);
                outgoing.push(packet);
                self.exchanges[index].discovered = Some(Instant::now());
                self.report.discovers += 1;
            }
            // A full socket buffer is the generator's limit: what did not leave waits.
            let sent = send_batch(socket, &outgoing)?;
            outgoing.drain(..sent);
            for datagram in receive_batch(socket, &mut received)? {
                self.answer(&received[datagram.0][..datagram.1], &mut outgoing);
            }
            if outgoing.is_empty() {
                wait_readable(socket, Duration::from_micros(50));
            }
        }
        let mut report = self.report;
        report.drops = (report.discovers - report.offers) + (report.requests - report.acks);
        Ok(report)
    }

    fn patch(&self, packet: &mut [u8], index: usize) {
        let xid = self.base.wrapping_add(index as u32);
        packet[XID_AT..XID_AT + 4].copy_from_slice(&xid.to_be_bytes());
        packet[CHADDR_AT..CHADDR_AT + 6].copy_from_slice(&mac(index as u32 % self.hosts));
    }

    /// Takes one reply: an OFFER queues its REQUEST, an ACK ends its exchange.
    fn answer(&mut self, datagram: &[u8], outgoing: &mut Vec<Vec<u8>>) {
        let Some(reply) = parse_reply(datagram) else {
            return;
        };
        let index = reply.xid.wrapping_sub(self.base) as usize;
        let Some(exchange) = self.exchanges.get_mut(index) else {
            return;
        };
        let now = Instant::now();
        match (reply.kind, exchange.discovered, exchange.requested) {
            (2, Some(discovered), None) if !exchange.offered => {
                exchange.offered = true;
                exchange.requested = Some(now);
                self.report.offers += 1;
                self.report.requests += 1;
                self.report
                    .delays
                    .push((now - discovered).as_secs_f64() * 1000.0);
                let mut packet = self.templates.request.clone();
                self.patch(&mut packet, index);
                let server_id_at = self.templates.server_id_at;
                let requested_at = self.templates.requested_at;
                packet[server_id_at..server_id_at + 4].copy_from_slice(&reply.server_id);
                packet[requested_at..requested_at + 4].copy_from_slice(&reply.yiaddr);
                outgoing.push(packet);
            }
            (5, _, Some(requested)) if !exchange.acked => {
                exchange.acked = true;
                self.report.acks += 1;
                self.report
                    .delays
                    .push((now - requested).as_secs_f64() * 1000.0);
            }
            _ => {}
        }
    }
}

/// One message header per buffer, naming no address (the socket is connected).
fn headers(buffers: &mut [libc::iovec]) -> Vec<libc::mmsghdr> {
    buffers
        .iter_mut()
        .map(|buffer| {
            // SAFETY: mmsghdr is plain data; all zeros is an empty header, filled in below.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_iov = buffer;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect()
}

/// Sends as many of `packets` as the socket takes now, in batches; returns how many left.
fn send_batch(socket: &UdpSocket, packets: &[Vec<u8>]) -> anyhow::Result<usize> {
    if packets.is_empty() {
        return Ok(0);
    }
    let mut buffers: Vec<libc::iovec> = packets[..packets.len().min(BATCH)]
        .iter()
        .map(|packet| libc::iovec {
            iov_base: packet.as_ptr().cast_mut().cast(),
            iov_len: packet.len(),
        })
        .collect();
    let mut headers = headers(&mut buffers);
    // SAFETY: the headers point at `buffers` and `packets`, which outlive the call; the socket
    // is connected, so the headers name no destination.
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr(),
            headers.len() as u32,
            libc::MSG_DONTWAIT,
        )
    };
    match usize::try_from(sent) {
        Ok(sent) => Ok(sent),
        Err(_) => match std::io::Error::last_os_error() {
            err if err.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            // The server's port is not open yet, or was closed: an ICMP error, not our limit.
            err if err.kind() == std::io::ErrorKind::ConnectionRefused => Ok(0),
            err => Err(err).context("sendmmsg"),
        },
    }
}

/// Receives every queued reply, up to a batch; returns each one's buffer and length.
fn receive_batch(
    socket: &UdpSocket,
    buffers: &mut [[u8; 1500]],
) -> anyhow::Result<Vec<(usize, usize)>> {
    let mut slices: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|buffer| libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: buffer.len(),
        })
        .collect();
    let mut headers = headers(&mut slices);
    // SAFETY: the headers point at `buffers`, which outlive the call and are not otherwise
    // borrowed while the kernel fills them.
    let received = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr(),
            headers.len() as u32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    match usize::try_from(received) {
        Ok(count) => Ok((0..count)
            .map(|index| (index, headers[index].msg_len as usize))
            .collect()),
        Err(_) => match std::io::Error::last_os_error() {
            err if err.kind() == std::io::ErrorKind::WouldBlock => Ok(Vec::new()),
            err if err.kind() == std::io::ErrorKind::ConnectionRefused => Ok(Vec::new()),
            err => Err(err).context("recvmmsg"),
        },
    }
}

/// Sleeps until a reply arrives or `timeout` passes, whichever is first.
fn wait_readable(socket: &UdpSocket, timeout: Duration) {
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: timeout.as_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd and a valid timespec, both on the stack for the call.
    unsafe { libc::ppoll(&mut poll, 1, &timeout, std::ptr::null()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::Decodable as _;

    fn decode(packet: &[u8]) -> Message {
        Message::decode(&mut dhcproto::Decoder::new(packet)).expect("a DHCP message")
    }

    #[test]
    fn patched_templates_are_the_relayed_dora_perfdhcp_sends() {
        let generator = Generator::new(300, 100, 1.0).unwrap();
        let templates = &generator.templates;
        let mut discover = templates.discover.clone();
        generator.patch(&mut discover, 257);
        let message = decode(&discover);
        assert_eq!(message.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(message.xid(), generator.base.wrapping_add(257));
        assert_eq!(&message.chaddr()[..6], &[2, 0, 0, 0, 1, 1]);
        assert_eq!((message.giaddr(), message.hops()), (RELAY, 1));

        let mut request = templates.request.clone();
        request[templates.server_id_at..templates.server_id_at + 4]
            .copy_from_slice(&[10, 88, 0, 1]);
        request[templates.requested_at..templates.requested_at + 4]
            .copy_from_slice(&[10, 88, 5, 1]);
        let message = decode(&request);
        assert_eq!(message.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(
            message.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 88, 0, 1)))
        );
        assert_eq!(
            message.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 88, 5, 1)))
        );
    }

    #[test]
    fn replies_are_read_and_others_skipped() {
        let mut offer = Message::default();
        offer
            .set_opcode(Opcode::BootReply)
            .set_xid(7)
            .set_yiaddr(Ipv4Addr::new(10, 88, 4, 9));
        offer
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Offer));
        offer
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 88, 0, 1)));
        let bytes = offer.to_vec().unwrap();
        let reply = parse_reply(&bytes).expect("an OFFER");
        assert_eq!((reply.xid, reply.kind), (7, 2));
        assert_eq!(
            (reply.yiaddr, reply.server_id),
            ([10, 88, 4, 9], [10, 88, 0, 1])
        );
        assert!(parse_reply(&bytes[..100]).is_none(), "too short");
        let templates = Templates::new().unwrap();
        assert!(parse_reply(&templates.discover).is_none(), "a request");
    }
}
