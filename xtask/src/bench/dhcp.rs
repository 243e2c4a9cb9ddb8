//! DHCP DORA: Wisp, Kea (memfile; default and multi-threaded) and dnsmasq, each with the same
//! reservations, measured with two generators: perfdhcp (Debian's kea-admin), the reference, and
//! our batched one (`dora.rs`), for the rates perfdhcp cannot send. Reported: the highest rate
//! of full exchanges with no drops by each generator, and the latency of each request/reply
//! pair (DISCOVER-OFFER and REQUEST-ACK pooled) at half the published rate.
//!
//! Both generators act as a relay agent, unicasting to the server with their own address as
//! giaddr, as the relays of a rack do; the clients' MACs are 02:00:00:00:HH:LL (`-b mac=… -R
//! hosts`).
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::{
    lab::{self, Lab, Server, CLIENT, CLIENT_IF, SERVER, SERVER_IF, SERVER_IP},
    report::{quantile, Table},
    Settings,
};

/// The reserved hosts: MAC 02:00:00:00:HH:LL holds 10.88.(4+HH).LL.
pub(super) fn hosts(count: u32) -> impl Iterator<Item = (String, String)> {
    (0..count).map(|index| {
        let (high, low) = (index >> 8, index & 0xff);
        (
            format!("02:00:00:00:{high:02x}:{low:02x}"),
            format!("10.88.{}.{low}", 4 + high),
        )
    })
}

/// One generator's run at a fixed rate.
pub(super) struct Probe {
    /// Completed 4-way exchanges (ACKs received).
    acks: u64,
    pub drops: u64,
    /// Milliseconds, one per answered request.
    pub delays: Vec<f64>,
}

impl Probe {
    /// Exchanges per second over the probe's sending time (perfdhcp's own rate also counts
    /// the wait for the last replies).
    fn rate(&self, seconds: u32) -> f64 {
        self.acks as f64 / f64::from(seconds)
    }

    /// No drops, and (nearly) every exchange asked for completed.
    fn clean(&self, asked: u32, seconds: u32) -> bool {
        self.drops == 0 && self.rate(seconds) >= 0.9 * f64::from(asked)
    }
}

/// Whether perfdhcp keeps each packet's send and receive times (`-x t`), for the latency. That
/// costs the generator CPU, which lowers the rate it can send, so the probes that search for the
/// top rate skip it.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Latency {
    Measured,
    Skipped,
}

pub(super) fn probe(
    lab: &Lab,
    hosts: u32,
    rate: u32,
    seconds: u32,
    latency: Latency,
) -> anyhow::Result<Probe> {
    let rate_text = rate.to_string();
    let (hosts_text, seconds_text) = (hosts.to_string(), seconds.to_string());
    let mut args = vec![
        "-4",
        // One thread: perfdhcp's default on a multi-core machine adds a receiving thread, which
        // takes a core's share from the server here and generated fewer clean exchanges.
        "-g",
        "single",
        "-l",
        CLIENT_IF,
        "-r",
        &rate_text,
        "-R",
        &hosts_text,
        "-b",
        "mac=02:00:00:00:00:00",
        "-p",
        &seconds_text,
        "-d",
        "2",
        // Wait for the last replies before counting drops.
        "-W",
        "1000000",
    ];
    if latency == Latency::Measured {
        args.extend(["-x", "t"]);
    }
    args.push(SERVER_IP);
    let output = lab.exec(CLIENT, "perfdhcp", &args)?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse(&text).with_context(|| {
        format!(
            "perfdhcp at {rate}/s printed no report: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn parse(text: &str) -> Option<Probe> {
    let number = |line: &str, prefix: &str| -> Option<f64> {
        line.strip_prefix(prefix)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let mut probe = Probe {
        acks: 0,
        drops: 0,
        delays: Vec::new(),
    };
    let mut saw_report = false;
    let mut section = "";
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("***Statistics for: ") {
            section = name.trim_end_matches('*');
            saw_report = true;
        } else if let Some(drops) = number(line, "drops: ") {
            probe.drops += drops as u64;
        } else if let Some(received) = number(line, "received packets: ") {
            if section == "REQUEST-ACK" {
                probe.acks = received as u64;
            }
        } else if let Some(times) = line.strip_prefix("sent / received: ") {
            let mut parts = times.split(" / ").map(|t| t.trim().parse::<f64>());
            if let (Some(Ok(sent)), Some(Ok(received))) = (parts.next(), parts.next()) {
                probe.delays.push((received - sent) * 1000.0);
            }
        }
    }
    saw_report.then_some(probe)
}

/// The two load generators.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Generator {
    Perfdhcp,
    Batched,
}

impl Generator {
    fn column(self) -> &'static str {
        match self {
            Generator::Perfdhcp => "perfdhcp",
            Generator::Batched => "batched",
        }
    }

    fn probe(
        self,
        lab: &Lab,
        settings: &Settings,
        rate: u32,
        latency: Latency,
    ) -> anyhow::Result<Probe> {
        let (hosts, seconds) = (settings.dhcp_hosts, settings.probe_seconds);
        wait_until_drained(lab)?;
        match self {
            Generator::Perfdhcp => probe(lab, hosts, rate, seconds, latency),
            Generator::Batched => probe_batched(lab, settings, rate),
        }
    }
}

/// Waits until the server's UDP sockets have nothing queued. A probe above a slow server's
/// limit leaves requests in its 4 MiB receive buffer (seconds of them for dnsmasq, which
/// answers a few hundred a second), and the next probe would count that backlog's late
/// replies as its own drops.
fn wait_until_drained(lab: &Lab) -> anyhow::Result<()> {
    const PATIENCE: Duration = Duration::from_secs(60);
    let started = Instant::now();
    loop {
        let queued = queued_bytes(&lab.exec_ok(SERVER, "ss", &UDP_SOCKETS)?);
        if queued == 0 {
            return Ok(());
        }
        if started.elapsed() > PATIENCE {
            bail!("the server's sockets still held {queued} bytes after {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ss`'s arguments to list every UDP socket with the bytes in its receive queue. `-a`: a bound
/// socket that is not connected (UNCONN, as a server's) counts as listening, and without it ss
/// lists only the others.
const UDP_SOCKETS: [&str; 1] = ["-Huan"];

/// The bytes waiting in every UDP socket's receive queue, from `ss -Huan` (state, Recv-Q, …).
fn queued_bytes(sockets: &str) -> u64 {
    sockets
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// One run of our batched generator (`cargo xtask bench-dora`); it always times every pair.
fn probe_batched(lab: &Lab, settings: &Settings, rate: u32) -> anyhow::Result<Probe> {
    let xtask = settings.wisp.with_file_name("xtask");
    let output = lab
        .command(CLIENT, &xtask)
        .args(["bench-dora", "--hosts", &settings.dhcp_hosts.to_string()])
        .args(["--rate", &rate.to_string()])
        .args(["--seconds", &settings.probe_seconds.to_string()])
        .output()
        .context("running the batched generator")?;
    let report: super::dora::Report =
        serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "the batched generator at {rate}/s printed no report: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    Ok(Probe {
        acks: report.acks,
        drops: report.drops,
        delays: report.delays,
    })
}

/// Why a probe was not clean.
#[derive(Clone, Copy, PartialEq)]
enum Shortfall {
    /// Exchanges were lost: the server's limit.
    Drops,
    /// Nothing was lost, but perfdhcp sent fewer than asked: the generator's limit.
    Generator,
}

/// The highest clean rate, and whether the first rate above it fell short at the generator.
struct TopRate {
    achieved: f64,
    generator_bound: bool,
}

/// The highest clean rate: from `start`, doubling while clean (or halving until clean), then
/// bisecting between the last clean rate and the first that fell short.
fn max_clean_rate(
    lab: &Lab,
    settings: &Settings,
    generator: Generator,
    start: u32,
) -> anyhow::Result<TopRate> {
    const LOWEST: u32 = 25;
    let seconds = settings.probe_seconds;
    let try_rate = |rate: u32| -> anyhow::Result<Result<f64, Shortfall>> {
        let result = generator.probe(lab, settings, rate, Latency::Skipped)?;
        println!(
            "    {generator:?} {rate}/s: {:.0}/s achieved, {} drops",
            result.rate(seconds),
            result.drops
        );
        Ok(if result.clean(rate, seconds) {
            Ok(result.rate(seconds))
        } else if result.drops == 0 {
            Err(Shortfall::Generator)
        } else {
            Err(Shortfall::Drops)
        })
    };
    let mut best: Option<(u32, f64)> = None;
    let mut failed: Option<(u32, Shortfall)> = None;
    let mut rate = start;
    loop {
        match try_rate(rate)? {
            Ok(achieved) => {
                best = Some((rate, achieved));
                if failed.is_some() || rate * 2 > settings.dhcp_max_rate {
                    break;
                }
                rate *= 2;
            }
            Err(shortfall) => {
                failed = Some((rate, shortfall));
                if best.is_some() || rate / 2 < LOWEST {
                    break;
                }
                rate /= 2;
            }
        }
    }
    let Some((mut low, mut achieved)) = best else {
        bail!("no clean run even at {LOWEST}/s");
    };
    if let Some((mut high, _)) = failed.filter(|&(high, _)| high > low) {
        for _ in 0..settings.bisect_steps {
            let middle = (low + high) / 2;
            if middle <= low {
                break;
            }
            match try_rate(middle)? {
                Ok(rate) => (low, achieved) = (middle, rate),
                Err(shortfall) => (high, failed) = (middle, Some((middle, shortfall))),
            }
        }
    }
    Ok(TopRate {
        achieved,
        generator_bound: failed
            .is_some_and(|(high, shortfall)| high > low && shortfall == Shortfall::Generator),
    })
}

/// Wisp with the reserved hosts, its gate in `xdp_mode`.
pub(super) fn start_wisp(
    lab: &Lab,
    work: &Path,
    settings: &Settings,
    xdp_mode: &str,
) -> anyhow::Result<Server> {
    let server = lab::start_wisp(lab, &settings.wisp, work, "dhcp", &["--xdp-mode", xdp_mode])?;
    let mut yaml = String::new();
    for (index, (mac, address)) in hosts(settings.dhcp_hosts).enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: tinkerbell.org/v1alpha1\nkind: Hardware\nmetadata: {{name: node-{index}, namespace: bench}}\nspec:\n  interfaces:\n    - dhcp: {{mac: \"{mac}\", lease_time: 3600, ip: {{address: {address}, netmask: 255.255.0.0}}}}\n"
        ));
    }
    let manifest = work.join("hosts.yaml");
    std::fs::write(&manifest, yaml)?;
    let wisp = settings.wisp.to_str().context("UTF-8 path")?;
    lab.exec_ok(
        SERVER,
        wisp,
        &[
            "apply",
            "--api-token-file",
            lab::api_token_file(work).to_str().context("UTF-8 path")?,
            "-f",
            manifest.to_str().context("UTF-8 path")?,
        ],
    )?;
    Ok(server)
}

/// Kea as installed: one thread.
fn start_kea(lab: &Lab, work: &Path, settings: &Settings) -> anyhow::Result<Server> {
    start_kea_with(
        lab,
        work,
        settings,
        serde_json::json!({"enable-multi-threading": false}),
    )
}

/// Kea with multi-threading, as ISC's Administrator Reference Manual recommends for kea-dhcp4
/// on memfile ("Multi-Threading Settings in Different Backends"): 4 threads, a queue of 28
/// packets. Its threads share the server's core with each other, as Wisp's do.
fn start_kea_multi_threaded(lab: &Lab, work: &Path, settings: &Settings) -> anyhow::Result<Server> {
    start_kea_with(
        lab,
        work,
        settings,
        serde_json::json!({
            "enable-multi-threading": true,
            "thread-pool-size": KEA_THREADS,
            "packet-queue-size": KEA_QUEUE,
        }),
    )
}

const KEA_THREADS: u32 = 4;
const KEA_QUEUE: u32 = 28;

fn start_kea_with(
    lab: &Lab,
    work: &Path,
    settings: &Settings,
    multi_threading: serde_json::Value,
) -> anyhow::Result<Server> {
    let reservations: Vec<serde_json::Value> = hosts(settings.dhcp_hosts)
        .map(|(mac, address)| serde_json::json!({"hw-address": mac, "ip-address": address}))
        .collect();
    let leases = work.join("kea-leases4.csv");
    let _ = std::fs::remove_file(&leases);
    let config = serde_json::json!({
        "Dhcp4": {
            "interfaces-config": {"interfaces": [SERVER_IF], "dhcp-socket-type": "udp"},
            "lease-database": {"type": "memfile", "persist": true, "name": leases, "lfc-interval": 0},
            "valid-lifetime": 3600,
            "multi-threading": multi_threading,
            "host-reservation-identifiers": ["hw-address"],
            "subnet4": [{"id": 1, "subnet": "10.88.0.0/16", "reservations": reservations}],
            "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
                         "output_options": [{"output": work.join("kea.log")}]}]
        }
    });
    let path = work.join("kea-dhcp4.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
    let mut command = lab.command(SERVER, "kea-dhcp4");
    // Its pid and lock files go to the work directory, not /run/kea.
    command
        .arg("-c")
        .arg(&path)
        .env("KEA_PIDFILE_DIR", work)
        .env("KEA_LOCKFILE_DIR", work);
    Server::start("Kea", command, &work.join("kea.out"), || {
        lab.listening_udp(67)
    })
}

fn start_dnsmasq(lab: &Lab, work: &Path, settings: &Settings) -> anyhow::Result<Server> {
    let command = dnsmasq_command(lab, work, settings.dhcp_hosts, "dnsmasq")?;
    Server::start("dnsmasq", command, &work.join("dnsmasq.log"), || {
        lab.listening_udp(67)
    })
}

/// dnsmasq on the server side with `count` of [`hosts`] reserved, and its files in `work`
/// named after `name`; the caller adds what else it serves.
pub(super) fn dnsmasq_command(
    lab: &Lab,
    work: &Path,
    count: u32,
    name: &str,
) -> anyhow::Result<std::process::Command> {
    let hosts_file = work.join(format!("{name}-hosts"));
    let lines: Vec<String> = hosts(count)
        .map(|(mac, address)| format!("{mac},{address}"))
        .collect();
    std::fs::write(&hosts_file, lines.join("\n") + "\n")?;
    let leases = work.join(format!("{name}.leases"));
    let _ = std::fs::remove_file(&leases);
    let mut command = lab.command(SERVER, "dnsmasq");
    command
        .args([
            "--keep-in-foreground",
            "--port=0",
            "--interface",
            SERVER_IF,
            "--bind-interfaces",
            "--dhcp-range=10.88.0.0,static,255.255.0.0",
            "--dhcp-authoritative",
            "--quiet-dhcp",
            "--no-resolv",
            "--no-hosts",
            "--dhcp-lease-max=100000",
        ])
        .arg(format!("--dhcp-hostsfile={}", hosts_file.display()))
        .arg(format!("--dhcp-leasefile={}", leases.display()));
    Ok(command)
}

type Start = fn(&Lab, &Path, &Settings) -> anyhow::Result<Server>;

/// The servers, in the order they run: the peers on which the generators are checked against
/// each other (where the server, not the generator, sets the top rate) come first.
const SERVERS: [(&str, Start); 4] = [
    ("Kea", start_kea),
    ("dnsmasq", start_dnsmasq),
    ("Kea, multi-threaded", start_kea_multi_threaded),
    ("Wisp", |lab, work, settings| {
        start_wisp(lab, work, settings, "native")
    }),
];

/// The servers on which both generators must agree for the batched one's rates to count.
const CHECKED_ON: [&str; 2] = ["Kea", "dnsmasq"];

/// Top rates disagreeing by more than this (relative to perfdhcp's) fail the check.
const AGREEMENT: f64 = 0.10;

/// One server's top rates, one per run, by each generator.
struct TopRates {
    server: &'static str,
    perfdhcp: Vec<TopRate>,
    batched: Vec<TopRate>,
}

pub fn run(lab: &Lab, work: &Path, settings: &Settings) -> anyhow::Result<Table> {
    let mut table = Table::new(
        "DHCP DORA",
        &format!(
            "{} reserved hosts, relayed. The rate is the highest of 4-way exchanges per second \
             with no drops ({} s probes), by perfdhcp (single-threaded, one packet per system \
             call) and by our batched generator (`sendmmsg`/`recvmmsg`, `xtask/src/bench/dora.rs`); \
             the latency is per request/reply pair at half the published rate, and so is the \
             server's CPU time (user and system, every thread) per lease. Every generator runs \
             on a core of its own and each server on the other (see Machine); every socket in \
             the lab has a 4 MiB receive buffer. Kea, multi-threaded, runs {KEA_THREADS} threads \
             and a queue of {KEA_QUEUE}, ISC's recommendation for memfile.",
            settings.dhcp_hosts, settings.probe_seconds
        ),
        &[
            "leases/s",
            "perfdhcp leases/s",
            "batched leases/s",
            "p50 ms",
            "p99 ms",
            "CPU µs/lease",
        ],
    );
    table.ratio_of = Some(("leases/s".into(), true));
    let case = format!("{} hosts", settings.dhcp_hosts);

    let mut measured = Vec::new();
    for (server, start) in SERVERS {
        println!("  {server}: top rates");
        let running = start(lab, work, settings)?;
        let mut rates = TopRates {
            server,
            perfdhcp: Vec::new(),
            batched: Vec::new(),
        };
        for _ in 0..settings.runs {
            for (generator, tops) in [
                (Generator::Perfdhcp, &mut rates.perfdhcp),
                (Generator::Batched, &mut rates.batched),
            ] {
                // After the first run, the search starts below the last top rate, so it takes
                // a step or two, not a climb from the bottom.
                let start = tops
                    .last()
                    .map_or(settings.dhcp_start_rate, |top: &TopRate| {
                        ((top.achieved * 0.7) as u32).max(1)
                    });
                let top = max_clean_rate(lab, settings, generator, start)?;
                table.record(
                    &case,
                    server,
                    &format!("{} leases/s", generator.column()),
                    top.achieved,
                );
                tops.push(top);
            }
        }
        drop(running);
        measured.push(rates);
    }

    let check = agreement(&measured);
    table.description.push_str(&format!(" {}", check.text));
    let generator = match check.passed {
        true => Generator::Batched,
        false => Generator::Perfdhcp,
    };
    for (rates, (server, start)) in measured.iter().zip(SERVERS) {
        let tops = match generator {
            Generator::Perfdhcp => &rates.perfdhcp,
            Generator::Batched => &rates.batched,
        };
        for top in tops {
            table.record(&case, server, "leases/s", top.achieved);
        }
        let generator_bound = tops.iter().filter(|top| top.generator_bound).count();
        if generator_bound > 0 {
            table.description.push_str(&format!(
                " In {generator_bound} of {} runs, {server}'s published top rate is the \
                 generator's: above it the generator sent fewer exchanges than asked, and none \
                 was dropped.",
                settings.runs
            ));
        }
        let Some(top) = super::report::Samples(tops.iter().map(|t| t.achieved).collect()).median()
        else {
            continue;
        };
        println!("  {server}: latency at half of {top:.0}/s");
        let running = start(lab, work, settings)?;
        let half = ((top / 2.0) as u32).max(1);
        for _ in 0..settings.runs {
            let cpu_before = running.cpu_seconds()?;
            let at_half = generator.probe(lab, settings, half, Latency::Measured)?;
            if at_half.acks > 0 {
                let cpu = running.cpu_seconds()? - cpu_before;
                table.record(
                    &case,
                    server,
                    "CPU µs/lease",
                    cpu * 1e6 / at_half.acks as f64,
                );
            }
            if let (Some(p50), Some(p99)) = (
                quantile(&at_half.delays, 0.5),
                quantile(&at_half.delays, 0.99),
            ) {
                println!("    {generator:?} {half}/s: p50 {p50:.3} ms, p99 {p99:.3} ms");
                table.record(&case, server, "p50 ms", p50);
                table.record(&case, server, "p99 ms", p99);
            }
        }
        drop(running);
    }
    Ok(table)
}

/// The check of the batched generator against perfdhcp, and what the report says about it.
struct Agreement {
    passed: bool,
    text: String,
}

/// Whether the generators' top rates (each the median of its runs, as published) agreed
/// within [`AGREEMENT`] on each of [`CHECKED_ON`]; the batched generator's rates are published
/// only then. Not run by run: one search's top rate is only as fine as its last bisection step
/// (1/16 of the rate with four steps), and two single runs of one generator differ by more.
fn agreement(measured: &[TopRates]) -> Agreement {
    let median = |tops: &[TopRate]| {
        super::report::Samples(tops.iter().map(|t| t.achieved).collect()).median()
    };
    let mut passed = true;
    let mut pairs = Vec::new();
    for rates in measured.iter().filter(|r| CHECKED_ON.contains(&r.server)) {
        let (Some(perfdhcp), Some(batched)) = (median(&rates.perfdhcp), median(&rates.batched))
        else {
            continue;
        };
        let difference = (batched - perfdhcp) / perfdhcp;
        passed &= difference.abs() <= AGREEMENT;
        pairs.push(format!(
            "{} {perfdhcp:.0} against {batched:.0} ({:+.1}%)",
            rates.server,
            difference * 100.0
        ));
    }
    passed &= !pairs.is_empty();
    let text = match passed {
        true => format!(
            "Generator check passed in this run: on the servers that set their own limit, \
             perfdhcp's and the batched generator's median top rates agreed within {:.0}% \
             ({}), so \
             the published rates, latencies and CPU are the batched generator's.",
            AGREEMENT * 100.0,
            pairs.join("; ")
        ),
        false => format!(
            "Generator check failed in this run: perfdhcp's and the batched generator's median \
             top rates did not agree within {:.0}% on every checked server ({}), so the published \
             rates, latencies and CPU are perfdhcp's.",
            AGREEMENT * 100.0,
            pairs.join("; ")
        ),
    };
    Agreement { passed, text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_perfdhcp_reports() {
        let report = "Rate: 99.6386 4-way exchanges/second, expected rate: 100\n\
            ***Statistics for: DISCOVER-OFFER***\nsent packets: 299\nreceived packets: 299\n\
            drops: 0\ndrops ratio: 0 %\n***Statistics for: REQUEST-ACK***\nsent packets: 299\n\
            received packets: 298\ndrops: 1\n\
            sent / received: 000002.610531 / 000002.611991\n";
        let probe = parse(report).unwrap();
        assert_eq!((probe.drops, probe.acks), (1, 298));
        assert!((probe.rate(3) - 298.0 / 3.0).abs() < 1e-9);
        assert_eq!(probe.delays.len(), 1);
        assert!((probe.delays[0] - 1.46).abs() < 1e-6);
        assert!(!probe.clean(99, 3), "a drop is not clean");
        assert!(parse("no report").is_none());
    }

    #[test]
    fn batched_rates_count_only_when_both_generators_agree_on_the_checked_servers() {
        let top = |achieved| TopRate {
            achieved,
            generator_bound: false,
        };
        let rates = |server, perfdhcp: f64, batched: f64| TopRates {
            server,
            perfdhcp: vec![top(perfdhcp)],
            batched: vec![top(batched)],
        };
        let check = agreement(&[
            rates("Kea", 20_000.0, 21_000.0),
            rates("dnsmasq", 117.0, 112.0),
            rates("Wisp", 26_000.0, 60_000.0),
        ]);
        assert!(check.passed, "Wisp is not a checked server: {}", check.text);
        assert!(check.text.contains("Kea 20000 against 21000 (+5.0%)"));
        let check = agreement(&[
            rates("Kea", 20_000.0, 23_000.0),
            rates("dnsmasq", 117.0, 117.0),
        ]);
        assert!(!check.passed, "15% apart on Kea");
        // Runs apart by a bisection step each, and the medians together.
        let runs = |rates: [f64; 3]| rates.into_iter().map(top).collect::<Vec<_>>();
        let check = agreement(&[TopRates {
            server: "Kea",
            perfdhcp: runs([20_000.0, 24_000.0, 27_000.0]),
            batched: runs([24_000.0, 26_000.0, 23_000.0]),
        }]);
        assert!(check.passed, "medians 24000 and 24000: {}", check.text);
        assert!(
            !agreement(&[rates("Wisp", 1.0, 1.0)]).passed,
            "no checked server ran"
        );
    }

    #[test]
    fn counts_what_the_servers_sockets_hold() {
        let sockets = "UNCONN 0      0      10.88.0.1%srv:67   0.0.0.0:*\n\
                       UNCONN 213248 0     0.0.0.0:67         0.0.0.0:*\n\
                       UNCONN 768    0     0.0.0.0:4011       0.0.0.0:*\n";
        assert_eq!(queued_bytes(sockets), 214_016);
        assert_eq!(queued_bytes(""), 0);
    }

    #[test]
    fn sees_what_a_servers_socket_holds() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("a socket");
        let address = server.local_addr().expect("its address");
        std::net::UdpSocket::bind("127.0.0.1:0")
            .expect("a socket")
            .send_to(&[0; 100], address)
            .expect("sent");
        let listing = crate::shell::output("ss", &UDP_SOCKETS).expect("ss");
        let line = listing
            .lines()
            .find(|line| line.contains(&format!("{address} ")))
            .unwrap_or_else(|| panic!("no line for {address}:\n{listing}"));
        assert!(queued_bytes(line) >= 100, "{line}");
    }

    #[test]
    fn hosts_match_perfdhcps_macs() {
        let all: Vec<_> = hosts(300).collect();
        assert_eq!(all[0], ("02:00:00:00:00:00".into(), "10.88.4.0".into()));
        assert_eq!(all[257], ("02:00:00:00:01:01".into(), "10.88.5.1".into()));
    }
}
