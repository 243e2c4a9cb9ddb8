//! A real etcd cluster for the lab (Debian's `etcd-server`): a member per network namespace,
//! each serving clients at `address:2379` and its peers at `address:2380`. The HA tests, the
//! workflow benchmark and `cargo xtask demo --ha` run appliances against it.
use std::{
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::qemu::in_netns;

/// One member, killed on drop.
pub struct Etcd {
    child: Child,
    /// The store URL of its whole cluster, for `wisp serve --store`.
    pub url: String,
}

impl Etcd {
    /// One member, alone in its cluster, its data in `dir` (kept: a member started again on the
    /// same `dir` comes back with its data).
    pub fn start(netns: &str, address: &str, dir: &Path) -> anyhow::Result<Etcd> {
        Ok(Etcd::cluster(&[(netns, address)], dir)?
            .pop()
            .expect("one member"))
    }

    /// A cluster of one member per `(namespace, address)`, once it answers; member `mN` keeps
    /// its data in `dir/etcd-mN`.
    pub fn cluster(members: &[(&str, &str)], dir: &Path) -> anyhow::Result<Vec<Etcd>> {
        let name = |index: usize| format!("m{}", index + 1);
        let initial: Vec<String> = members
            .iter()
            .enumerate()
            .map(|(index, (_, address))| format!("{}=http://{address}:2380", name(index)))
            .collect();
        let endpoints: Vec<String> = members
            .iter()
            .map(|(_, address)| format!("{address}:2379"))
            .collect();
        let url = format!("etcd://{}", endpoints.join(","));
        let mut cluster = Vec::with_capacity(members.len());
        for (index, (netns, address)) in members.iter().enumerate() {
            let child = in_netns(netns, "etcd")
                .args(["--name", &name(index), "--log-level", "error", "--data-dir"])
                .arg(dir.join(format!("etcd-{}", name(index))))
                .arg(format!("--listen-client-urls=http://{address}:2379"))
                .arg(format!("--advertise-client-urls=http://{address}:2379"))
                .arg(format!("--listen-peer-urls=http://{address}:2380"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://{address}:2380"
                ))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .args(["--initial-cluster-state", "new"])
                // As docs/ha.md advises for rack-sized applies, which are one transaction.
                .arg("--max-txn-ops=4096")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting etcd (cargo xtask setup installs etcd-server)")?;
            cluster.push(Etcd {
                child,
                url: url.clone(),
            });
        }
        let (netns, address) = members[0];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let health = in_netns(netns, "etcdctl")
                .arg(format!("--endpoints=http://{address}:2379"))
                .args(["endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if health.success() {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                bail!("etcd at {address} did not answer within 30 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
