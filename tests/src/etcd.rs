//! Real etcd members (Debian's `etcd-server`) in the lab's namespaces, stopped when dropped.
use std::{
    path::Path,
    process::{Child, Stdio},
};

use crate::Netns;

/// One etcd member serving clients at `address:2379` in `netns`, alone in its cluster.
pub struct Etcd {
    child: Child,
    pub url: String,
}

impl Etcd {
    pub fn start(netns: &Netns, address: &str, dir: &Path) -> Etcd {
        let child = netns
            .command("etcd")
            .args(["--name", "m1", "--log-level", "error", "--data-dir"])
            .arg(dir.join("etcd"))
            .arg(format!("--listen-client-urls=http://{address}:2379"))
            .arg(format!("--advertise-client-urls=http://{address}:2379"))
            .arg(format!("--listen-peer-urls=http://{address}:2380"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://{address}:2380"
            ))
            .arg(format!("--initial-cluster=m1=http://{address}:2380"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd (cargo xtask setup installs etcd-server)");
        let url = format!("etcd://{address}:2379");
        crate::eventually_within("etcd answers", std::time::Duration::from_secs(20), || {
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
        Etcd { child, url }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
