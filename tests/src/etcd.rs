//! Real etcd members (Debian's `etcd-server`) in the lab's namespaces, stopped when dropped.
use std::{
    path::Path,
    process::{Child, Stdio},
};

use crate::Netns;

/// One etcd member serving clients at `address:2379` in its namespace.
pub struct Etcd {
    child: Child,
    /// The store URL of its whole cluster, for `wisp serve --store`.
    pub url: String,
}

impl Etcd {
    /// One member, alone in its cluster.
    pub fn start(netns: &Netns, address: &str, dir: &Path) -> Etcd {
        Etcd::cluster(&[(netns, address)], dir)
            .pop()
            .expect("one member")
    }

    /// A cluster of one member per `(namespace, address)`, once it answers.
    pub fn cluster(members: &[(&Netns, &str)], dir: &Path) -> Vec<Etcd> {
        let name = |index: usize| format!("m{}", index + 1);
        let initial: Vec<String> = members
            .iter()
            .enumerate()
            .map(|(index, (_, address))| format!("{}=http://{address}:2380", name(index)))
            .collect();
        let url = format!(
            "etcd://{}",
            members
                .iter()
                .map(|(_, address)| format!("{address}:2379"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let cluster: Vec<Etcd> = members
            .iter()
            .enumerate()
            .map(|(index, (netns, address))| {
                let child = netns
                    .command("etcd")
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
                    .expect("start etcd (cargo xtask setup installs etcd-server)");
                Etcd {
                    child,
                    url: url.clone(),
                }
            })
            .collect();
        let (netns, address) = members[0];
        crate::eventually_within("etcd answers", std::time::Duration::from_secs(30), || {
            netns
                .exec(
                    "etcdctl",
                    &[
                        "--endpoints",
                        &format!("http://{address}:2379"),
                        "endpoint",
                        "health",
                    ],
                )
                .status
                .success()
        });
        cluster
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
