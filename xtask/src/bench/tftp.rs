//! TFTP: N concurrent atftp fetches (blksize 1468, windowsize 8) of `snponly.efi` and of a
//! large file, from Wisp and from tftpd-hpa. Reported: the time until the last fetch ends, and
//! the throughput of all of them together.
//!
//! The same fetches are made again by one process (`cargo xtask bench-tftp`, the simulated
//! rack's TFTP client, each fetch from its own socket): starting 50 or 200 atftp processes
//! takes about as long as the small file's transfers, so atftp's times for it are mostly its
//! own start-up, the same for both servers.
//!
//! Wisp's TFTP serves the iPXE binaries only (it is not a general file server), so the large
//! file is served under the name `ipxe.efi`; its bytes are random, which is all a transfer
//! cares about. Every atftp runs from the client namespace's one address, where machines each
//! have their own, so Wisp's per-address limit (`--tftp-max-per-client`) is raised to the
//! largest N; tftpd-hpa has none.
use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::{
    lab::{self, Lab, Server, CLIENT, CLIENT_IP, SERVER, SERVER_IP},
    report::Table,
    Settings,
};

/// Fetches `file` with `clients` concurrent atftp processes; returns how long the last took.
fn fetch_all(
    lab: &Lab,
    out: &Path,
    file: &str,
    size: u64,
    clients: usize,
) -> anyhow::Result<Duration> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out)?;
    let started = Instant::now();
    let mut children = Vec::with_capacity(clients);
    for index in 0..clients {
        let local = out.join(index.to_string());
        let child = lab
            .direct_command(CLIENT, "atftp")?
            .arg("--option")
            .arg(format!("blksize {}", OPTIONS.block_size))
            .arg("--option")
            .arg(format!("windowsize {}", OPTIONS.window))
            .args(["-g", "-r", file])
            .arg("-l")
            .arg(&local)
            .args([SERVER_IP, "69"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting atftp")?;
        children.push((child, local));
    }
    let mut failed = 0;
    for (mut child, local) in children {
        let ok = child.wait()?.success()
            && std::fs::metadata(&local).is_ok_and(|meta| meta.len() == size);
        failed += usize::from(!ok);
    }
    let elapsed = started.elapsed();
    if failed > 0 {
        bail!("{failed} of {clients} fetches of {file} failed");
    }
    Ok(elapsed)
}

/// The options both clients ask for.
const OPTIONS: wisp_simulated_rack::TftpOptions = wisp_simulated_rack::TftpOptions {
    block_size: 1468,
    window: 8,
};

/// Fetches `file` with `clients` concurrent fetches of the in-process client
/// (`cargo xtask bench-tftp`, in the client namespace); returns how long the last took.
fn fetch_all_in_process(
    lab: &Lab,
    xtask: &Path,
    file: &str,
    size: u64,
    clients: usize,
) -> anyhow::Result<Duration> {
    let output = lab.exec_ok(
        CLIENT,
        xtask.to_str().context("UTF-8 path")?,
        &[
            "bench-tftp",
            "--file",
            file,
            "--size",
            &size.to_string(),
            "--clients",
            &clients.to_string(),
        ],
    )?;
    let seconds: f64 = output
        .trim()
        .parse()
        .with_context(|| format!("bench-tftp printed {output:?}, not seconds"))?;
    Ok(Duration::from_secs_f64(seconds))
}

/// `cargo xtask bench-tftp`: `clients` concurrent fetches of `file` from Wisp's side, each from
/// its own socket, on one thread (the client's core); prints the seconds until the last ended.
/// Every fetch must bring `size` bytes.
pub fn simulate(file: &str, size: u64, clients: usize) -> anyhow::Result<()> {
    let (client, server) = (CLIENT_IP.parse()?, SERVER_IP.parse()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let seconds = runtime.block_on(async {
        let started = Instant::now();
        let fetches: Vec<_> = (0..clients)
            .map(|_| {
                let file = file.to_string();
                tokio::spawn(async move {
                    wisp_simulated_rack::tftp_get(client, server, &file, OPTIONS).await
                })
            })
            .collect();
        for fetch in fetches {
            let fetched = fetch.await??;
            if fetched != size {
                bail!("a fetch of {file} brought {fetched} bytes, not {size}");
            }
        }
        anyhow::Ok(started.elapsed().as_secs_f64())
    })?;
    println!("{seconds}");
    Ok(())
}

pub fn run(lab: &Lab, work: &Path, settings: &Settings) -> anyhow::Result<Table> {
    let root = work.join("tftp-root");
    std::fs::create_dir_all(&root)?;
    std::fs::copy("/usr/lib/ipxe/snponly.efi", root.join("snponly.efi"))
        .context("Debian's ipxe package provides snponly.efi")?;
    let large: Vec<u8> = (0..settings.tftp_large_bytes)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(root.join("ipxe.efi"), &large)?;
    let files = [
        (
            "snponly.efi",
            std::fs::metadata(root.join("snponly.efi"))?.len(),
        ),
        ("ipxe.efi", large.len() as u64),
    ];
    let mut table = Table::new(
        "TFTP",
        &format!(
            "N concurrent fetches, blksize 1468 and windowsize 8, of `snponly.efi` ({} KiB) \
             and of a {} MiB file: by N atftp processes, and by one process of our own with a \
             socket per fetch (\"one client\"), since starting N atftp processes takes about \
             as long as the small file's transfers. Time until the last fetch ends; throughput \
             of all together. tftpd-hpa forks a process per transfer and does not take the \
             windowsize option (one block per ACK).",
            files[0].1 / 1024,
            settings.tftp_large_bytes >> 20
        ),
        &["seconds", "MiB/s"],
    );
    table.ratio_of = Some(("MiB/s".into(), true));
    let root_arg = root.to_str().context("UTF-8 path")?;
    let most_clients = settings
        .tftp_clients
        .iter()
        .max()
        .context("no TFTP clients")?;
    let per_client_arg = most_clients.to_string();
    // Built beside `wisp` by the same `cargo build`.
    let xtask = settings.wisp.with_file_name("xtask");
    for name in ["Wisp", "tftpd-hpa"] {
        println!("  {name}");
        let _server = match name {
            "Wisp" => lab::start_wisp(
                lab,
                &settings.wisp,
                work,
                "tftp",
                &[
                    "--ipxe-dir",
                    root_arg,
                    "--tftp-max-per-client",
                    &per_client_arg,
                ],
            )?,
            _ => {
                let mut command = lab.command(SERVER, "in.tftpd");
                command.args([
                    "--listen",
                    "--foreground",
                    "--address",
                    "10.88.0.1:69",
                    "--secure",
                    root_arg,
                ]);
                Server::start("tftpd-hpa", command, &work.join("tftpd.log"), || {
                    lab.listening_udp(69)
                })?
            }
        };
        for (file, size) in files {
            for &clients in &settings.tftp_clients {
                for in_process in [false, true] {
                    let case = match in_process {
                        false => format!("{file} × {clients} (atftp)"),
                        true => format!("{file} × {clients} (one client)"),
                    };
                    for _ in 0..settings.runs {
                        let elapsed = match in_process {
                            false => fetch_all(lab, &work.join("tftp-out"), file, size, clients)?,
                            true => fetch_all_in_process(lab, &xtask, file, size, clients)?,
                        };
                        let seconds = elapsed.as_secs_f64();
                        let mib = (size as f64 * clients as f64) / f64::from(1 << 20);
                        println!("    {case}: {seconds:.3} s");
                        table.record(&case, name, "seconds", seconds);
                        table.record(&case, name, "MiB/s", mib / seconds);
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(work.join("tftp-out"));
    Ok(table)
}
