//! Foreign-MAC flood: DISCOVERs from random unknown MACs at rising rates, while perfdhcp keeps
//! serving the known hosts at a steady rate; Wisp with its XDP gate, then with `--xdp-mode off`.
//! Reported: the CPU time the Wisp process used per second of flood, the known hosts' p99, and
//! the kernel's softirq time on each core, apart from Wisp's.
//!
//! With the gate, unknown MACs are dropped in the kernel before any socket sees them: their
//! cost falls on the softirq of whoever sent them, not on Wisp. (A veth runs its peer's XDP
//! program in the sender's softirq, so here that is the generator's core; on a real NIC it is
//! the core that takes the NIC's interrupt.) Without it, every one of them is received,
//! parsed and refused in userspace.
use std::{
    net::UdpSocket,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;

use super::{
    dhcp,
    lab::{self, Lab, CLIENT, SERVER},
    report::{quantile, Table},
    Settings,
};

/// A flood rate that means "as fast as the generator can send".
pub const UNPACED: u32 = u32::MAX;

fn label(rate: u32) -> String {
    match rate {
        0 => "no flood".into(),
        UNPACED => "flood at full speed".into(),
        rate => format!("flood at {rate}/s"),
    }
}

pub fn run(lab: &Lab, work: &Path, settings: &Settings) -> anyhow::Result<Table> {
    // On one core, the server's softirq and the generator's cannot be told apart.
    let cores = lab::core_of(SERVER).zip(lab::core_of(CLIENT));
    let mut columns = vec!["flood pkt/s", "Wisp CPU %", "known p99 ms", "known drops"];
    if cores.is_some() {
        columns.extend(["softirq % server core", "softirq % generator core"]);
    }
    let mut table = Table::new(
        "Foreign-MAC flood",
        &format!(
            "A generator sends relayed DISCOVERs from random unknown MACs while perfdhcp \
             (single-threaded) runs {} exchanges/s for the known hosts ({} s per step). The flood rate is what the \
             generator achieved; Wisp's CPU is its process's user and system time per second, \
             measured inside the probe while the flood runs; the p99 is the known hosts' \
             request/reply latency. Softirq is the kernel's time receiving (and, with the gate, \
             dropping) packets on each core in the same window, counted apart from Wisp's: the \
             server's core, and the core of the generators (perfdhcp and the flood), where a veth runs \
             its peer's XDP program.",
            settings.flood_known_rate, settings.probe_seconds
        ),
        &columns,
    );
    table.ratio_of = Some(("Wisp CPU %".into(), false));
    let xtask = settings.wisp.with_file_name("xtask");
    let xtask = xtask.to_str().context("UTF-8 path")?;
    for (server, mode) in [("Wisp", "native"), ("Wisp, --xdp-mode off", "off")] {
        println!("  {server}");
        let wisp = dhcp::start_wisp(lab, work, settings, mode)?;
        for _ in 0..settings.runs {
            for &rate in &settings.flood_rates {
                // The flood outlasts perfdhcp (its start, its probe, its wait for late replies),
                // so that the CPU window, inside perfdhcp's probe, is all under flood.
                let generator = (rate > 0)
                    .then(|| Generator::start(lab, xtask, rate, settings.probe_seconds + 3))
                    .transpose()?;
                std::thread::sleep(Duration::from_millis(300));
                let (known, cpu, softirq) = std::thread::scope(|scope| -> anyhow::Result<_> {
                    let known = scope.spawn(|| {
                        dhcp::probe(
                            lab,
                            settings.dhcp_hosts,
                            settings.flood_known_rate,
                            settings.probe_seconds,
                            dhcp::Latency::Measured,
                        )
                    });
                    std::thread::sleep(Duration::from_millis(500));
                    let softirq_before = cores.map(softirq_seconds).transpose()?;
                    let (before, started) = (wisp.cpu_seconds()?, Instant::now());
                    std::thread::sleep(Duration::from_secs(
                        u64::from(settings.probe_seconds).saturating_sub(1).max(1),
                    ));
                    let seconds = started.elapsed().as_secs_f64();
                    let cpu = (wisp.cpu_seconds()? - before) / seconds;
                    let softirq = match (cores, softirq_before) {
                        (Some(cores), Some((server, client))) => {
                            let (server_now, client_now) = softirq_seconds(cores)?;
                            Some((
                                (server_now - server) / seconds,
                                (client_now - client) / seconds,
                            ))
                        }
                        _ => None,
                    };
                    let known = known
                        .join()
                        .map_err(|_| anyhow::anyhow!("the perfdhcp thread panicked"))??;
                    Ok((known, cpu, softirq))
                })?;
                let achieved = match generator {
                    Some(generator) => generator.finish()?,
                    None => 0.0,
                };
                let p99 = quantile(&known.delays, 0.99).unwrap_or(f64::NAN);
                let case = label(rate);
                let softirq_shown = softirq.map_or_else(String::new, |(server, generator)| {
                    format!(
                        ", softirq {:.1} % server core, {:.1} % generator core",
                        server * 100.0,
                        generator * 100.0
                    )
                });
                println!(
                    "    {case}: {achieved:.0} pkt/s, Wisp CPU {:.1} %, known p99 {p99:.2} ms, {} drops{softirq_shown}",
                    cpu * 100.0,
                    known.drops
                );
                table.record(&case, server, "flood pkt/s", achieved);
                table.record(&case, server, "Wisp CPU %", cpu * 100.0);
                table.record(&case, server, "known p99 ms", p99);
                table.record(&case, server, "known drops", known.drops as f64);
                if let Some((server_core, generator_core)) = softirq {
                    table.record(&case, server, "softirq % server core", server_core * 100.0);
                    table.record(
                        &case,
                        server,
                        "softirq % generator core",
                        generator_core * 100.0,
                    );
                }
            }
        }
        drop(wisp);
    }
    Ok(table)
}

/// The softirq seconds so far of the server's core and the generator's.
fn softirq_seconds((server, generator): (usize, usize)) -> anyhow::Result<(f64, f64)> {
    Ok((
        lab::softirq_seconds(server)?,
        lab::softirq_seconds(generator)?,
    ))
}

/// The flood generator, run in the client namespace; killed on drop if it has not finished.
struct Generator(Option<std::process::Child>);

impl Generator {
    fn start(lab: &Lab, xtask: &str, rate: u32, seconds: u32) -> anyhow::Result<Generator> {
        let child = lab
            .command(CLIENT, xtask)
            .args(["bench-flood", "--rate", &rate.to_string()])
            .args(["--seconds", &seconds.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the flood generator")?;
        Ok(Generator(Some(child)))
    }

    /// Waits for the end of the flood; the rate it achieved.
    fn finish(mut self) -> anyhow::Result<f64> {
        let output = self
            .0
            .take()
            .context("a running generator")?
            .wait_with_output()?;
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<f64>()
            .context("the flood generator printed no rate")
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `cargo xtask bench-flood`: sends relayed DISCOVERs from random locally administered MACs
/// (never one of the known hosts' 02:00:00:… MACs) to the server for `seconds`, at `rate` per
/// second or unpaced, and prints the rate it achieved.
pub fn generate(rate: u32, seconds: f64) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("10.88.0.2:0").context("binding the flood socket")?;
    socket.connect((super::lab::SERVER_IP, 67))?;
    let mut packet = discover_template();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let started = Instant::now();
    let duration = Duration::from_secs_f64(seconds);
    let mut sent: u64 = 0;
    while started.elapsed() < duration {
        let due = if rate == UNPACED {
            sent + 64
        } else {
            (started.elapsed().as_secs_f64() * f64::from(rate)) as u64
        };
        if sent >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        while sent < due {
            // xorshift64: a fresh MAC and transaction id for every packet.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            packet[4..8].copy_from_slice(&bytes[0..4]);
            packet[29..34].copy_from_slice(&bytes[3..8]);
            // A full socket buffer is the machine's limit: counted only when sent.
            if socket.send(&packet).is_ok() {
                sent += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
    println!("{}", sent as f64 / started.elapsed().as_secs_f64());
    Ok(())
}

/// A relayed DHCPDISCOVER (giaddr 10.88.0.2, one hop) from MAC 0a:…, padded to BOOTP's 300
/// bytes; the transaction id (bytes 4..8) and the MAC's last five bytes (29..34) vary.
fn discover_template() -> [u8; 300] {
    let mut packet = [0u8; 300];
    packet[0] = 1; // BOOTREQUEST
    packet[1] = 1; // Ethernet
    packet[2] = 6;
    packet[3] = 1; // hops
    packet[24..28].copy_from_slice(&[10, 88, 0, 2]); // giaddr
    packet[28] = 0x0a; // a locally administered MAC, unlike any known host's
    packet[236..240].copy_from_slice(&[99, 130, 83, 99]); // the magic cookie
    packet[240..243].copy_from_slice(&[53, 1, 1]); // DHCPDISCOVER
    packet[243] = 255;
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flood_is_well_formed_dhcp_from_unknown_macs() {
        let packet = discover_template();
        use dhcproto::Decodable as _;
        let message = dhcproto::v4::Message::decode(&mut dhcproto::Decoder::new(&packet))
            .expect("a DHCP message");
        assert_eq!(
            message.opts().msg_type(),
            Some(dhcproto::v4::MessageType::Discover)
        );
        assert_eq!(message.giaddr(), std::net::Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(message.chaddr()[0], 0x0a, "never a known host's 02:… MAC");
    }
}
