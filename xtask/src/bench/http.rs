//! HTTP: wrk fetching a large initramfs-sized file at several concurrencies, from Wisp's boot
//! HTTP server and from nginx (sendfile on, access log off). Reported: throughput, the p99
//! request latency, wrk's socket errors, and the peak memory of the server's processes.
//!
//! wrk opens every connection from the client namespace's one address, where machines each
//! have their own, so Wisp's per-address limit (`--http-max-per-client`) is raised to the
//! largest concurrency; nginx has none.
//!
//! Wisp runs with its gate detached (`--xdp-mode off`), as nginx has no XDP program either. On
//! a veth, an attached XDP program changes the kernel's path for every packet the peer sends
//! (wrk's requests and ACKs): they are received in a NAPI poll that runs the program, on the
//! sending core, which is wrk's, and wrk is the limit at one connection. Measured in the lab:
//! Wisp with the gate attached made 0.89× nginx's throughput at one connection, detached
//! 1.08× (findings.md). On a NIC, the program runs in the driver's receive path, on the
//! server's side. The gate's own costs are the flood scenario's subject.
use std::path::Path;

use anyhow::{bail, Context};

use super::{
    lab::{self, Lab, Server, CLIENT, SERVER},
    report::Table,
    Settings,
};

const URL: &str = "http://10.88.0.1:8080/assets/initramfs.bin";

/// wrk's figures: throughput in MiB/s, the p99 latency in milliseconds, and its socket errors
/// (connect, read, write and timeout together). The latency is NaN (shown as "-") when no
/// request completed within the run, for wrk then prints zeros.
fn parse(text: &str) -> Option<(f64, f64, u64)> {
    let scaled = |value: &str, units: &[(&str, f64)]| -> Option<f64> {
        units.iter().find_map(|(suffix, factor)| {
            value
                .strip_suffix(suffix)
                .and_then(|number| number.parse::<f64>().ok())
                .map(|number| number * factor)
        })
    };
    let mut throughput = None;
    let mut p99 = None;
    let mut completed = None;
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        // "Socket errors: connect 0, read 3, write 0, timeout 0", printed only when there are.
        if let Some(counts) = line.strip_prefix("Socket errors:") {
            errors = counts
                .split(',')
                .filter_map(|count| count.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        }
        if let Some((count, _)) = line.split_once(" requests in ") {
            completed = count.trim().parse::<u64>().ok();
        }
        if let Some(value) = line.strip_prefix("Transfer/sec:") {
            throughput = scaled(
                value.trim(),
                &[
                    ("GB", 1024.0),
                    ("MB", 1.0),
                    ("KB", 1.0 / 1024.0),
                    ("B", 1.0 / 1048576.0),
                ],
            );
        } else if let Some(value) = line.strip_prefix("99%") {
            p99 = scaled(
                value.trim(),
                &[("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)],
            );
        }
    }
    let p99 = if completed == Some(0) { f64::NAN } else { p99? };
    Some((throughput?, p99, errors))
}

/// nginx serving `root` at http://10.88.0.1:8080/assets/, ready once it serves `probe` there.
pub(super) fn start_nginx(
    lab: &Lab,
    work: &Path,
    root: &Path,
    probe: &str,
) -> anyhow::Result<Server> {
    let temp = work.join("nginx-temp");
    std::fs::create_dir_all(&temp)?;
    let config = format!(
        "daemon off;\nworker_processes auto;\npid {work}/nginx.pid;\nerror_log {work}/nginx-error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  sendfile on;\n  tcp_nopush on;\n  access_log off;\n\
           client_body_temp_path {temp};\n  proxy_temp_path {temp};\n  fastcgi_temp_path {temp};\n\
           uwsgi_temp_path {temp};\n  scgi_temp_path {temp};\n\
           server {{\n    listen 10.88.0.1:8080;\n    location /assets/ {{ alias {root}/; }}\n  }}\n}}\n",
        work = work.display(),
        temp = temp.display(),
        root = root.display(),
    );
    let path = work.join("nginx.conf");
    std::fs::write(&path, config)?;
    let mut command = lab.command(SERVER, "nginx");
    command.arg("-c").arg(&path);
    let probe = format!("http://10.88.0.1:8080/assets/{probe}");
    Server::start("nginx", command, &work.join("nginx.log"), || {
        lab.exec(SERVER, "curl", &["-sfI", &probe])
            .is_ok_and(|output| output.status.success())
    })
}

pub fn run(lab: &Lab, work: &Path, settings: &Settings) -> anyhow::Result<Table> {
    let root = work.join("http-root");
    std::fs::create_dir_all(&root)?;
    let file: Vec<u8> = (0..settings.http_file_bytes)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect();
    std::fs::write(root.join("initramfs.bin"), &file)?;
    let mut table = Table::new(
        "HTTP",
        &format!(
            "wrk (up to 2 threads; {} connections) fetching a {} MiB file at each \
             concurrency. Throughput, p99 request latency, wrk's socket errors, and the peak \
             resident memory of the server's processes. wrk connects from one address, so \
             Wisp's per-address connection limit is raised to the largest concurrency. Wisp's \
             gate is detached (`--xdp-mode off`), as nginx has no XDP program: on the lab's \
             veth an attached one moves the kernel's receiving of wrk's packets onto wrk's \
             core, which is the limit (see findings.md).",
            settings
                .http_connections
                .iter()
                .map(|(connections, seconds)| format!("{seconds} s at {connections}"))
                .collect::<Vec<_>>()
                .join(", "),
            settings.http_file_bytes >> 20
        ),
        &["MiB/s", "p99 ms", "socket errors", "peak MiB"],
    );
    table.ratio_of = Some(("MiB/s".into(), true));
    let root_arg = root.to_str().context("UTF-8 path")?.to_string();
    let most_connections = settings
        .http_connections
        .iter()
        .map(|(connections, _)| connections)
        .max()
        .context("no connections")?;
    let per_client_arg = most_connections.to_string();
    for name in ["Wisp", "nginx"] {
        println!("  {name}");
        let _server = match name {
            "Wisp" => lab::start_wisp(
                lab,
                &settings.wisp,
                work,
                "http",
                &[
                    "--assets-dir",
                    &root_arg,
                    "--http-max-per-client",
                    &per_client_arg,
                    "--xdp-mode",
                    "off",
                ],
            )?,
            _ => start_nginx(lab, work, &root, "initramfs.bin")?,
        };
        for &(connections, seconds) in &settings.http_connections {
            let case = format!("{connections} connections");
            for _ in 0..settings.runs {
                let output = lab.exec_ok(
                    CLIENT,
                    "wrk",
                    &[
                        "-t",
                        &connections.min(2).to_string(),
                        "-c",
                        &connections.to_string(),
                        "-d",
                        &format!("{seconds}s"),
                        "--latency",
                        // A 64 MiB response shared by hundreds of connections takes seconds:
                        // wrk's 2 s default would drop exactly the slow ones from the latencies.
                        "--timeout",
                        "60s",
                        URL,
                    ],
                )?;
                let Some((throughput, p99, errors)) = parse(&output) else {
                    bail!("wrk printed no figures:\n{output}");
                };
                println!(
                    "    {case}: {throughput:.0} MiB/s, p99 {p99:.1} ms, {errors} socket errors"
                );
                table.record(&case, name, "MiB/s", throughput);
                table.record(&case, name, "p99 ms", p99);
                table.record(&case, name, "socket errors", errors as f64);
                table.record(&case, name, "peak MiB", lab::peak_memory_mib()?);
            }
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_reports() {
        let report = "  Latency Distribution\n     50%  10.00ms\n     99%    1.20s\n\
            Requests/sec:     12.34\nTransfer/sec:      1.50GB\n";
        assert_eq!(parse(report), Some((1536.0, 1200.0, 0)));
        assert_eq!(
            parse("Transfer/sec: 512.00KB\n 99% 250.00us\n"),
            Some((0.5, 0.25, 0))
        );
        let refused = "  Socket errors: connect 0, read 436, write 0, timeout 2\n 99% 1.00s\n\
            Transfer/sec: 1.00GB\n";
        assert_eq!(parse(refused), Some((1024.0, 1000.0, 438)));
        assert_eq!(parse("nothing"), None);
        let (_, none, _) =
            parse("  0 requests in 10.00s, 11.00GB read\n 99% 0.00us\nTransfer/sec: 1.10GB\n")
                .unwrap();
        assert!(none.is_nan(), "no completed request, no latency");
    }
}
