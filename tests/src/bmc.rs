//! Real BMCs for the tests: OpenIPMI's `ipmi_sim` (see `wisp_images::ipmi_sim`) and the Redfish
//! emulator of sushy-tools.
use std::{
    process::{Child, Stdio},
    time::Duration,
};

pub use wisp_images::ipmi_sim::{Chassis, IpmiSim, USERNAME};

use crate::{Netns, TempDir};

/// The YAML of a Secret holding the BMC credentials, and of a Machine at `host:port` using it,
/// in the namespace `lab`.
pub fn machine_yaml(name: &str, host: &str, port: u16, password: &str) -> String {
    wisp_images::ipmi_sim::machine_yaml(name, "lab", (host, port), password)
}

/// Starts an [`IpmiSim`] in `netns`, with its files in `work`.
pub fn ipmi_sim(
    netns: &Netns,
    work: &TempDir,
    at: (&str, u16),
    password: &str,
    chassis: Chassis,
) -> IpmiSim {
    IpmiSim::start(&netns.name, &work.0, at, password, chassis).expect("start ipmi_sim")
}

/// The Redfish emulator of OpenStack's sushy-tools (`cargo xtask setup` installs it in
/// `target/lab/sushy-tools`), with its fake driver: one system, `node0`, powered off, over HTTPS
/// with a self-signed certificate and basic authentication. Killed on drop.
pub struct SushyEmulator {
    child: Child,
    pub base: String,
    password: String,
}

impl SushyEmulator {
    pub fn start(
        netns: &Netns,
        work: &TempDir,
        (address, port): (&str, u16),
        password: &str,
    ) -> SushyEmulator {
        let tools = crate::repo_root().join("target/lab/sushy-tools/bin");
        assert!(
            tools.join("sushy-emulator").exists(),
            "sushy-tools is missing: run `cargo xtask setup`"
        );
        let dir = work.join(&format!("redfish-{port}"));
        std::fs::create_dir_all(dir.join("state")).expect("emulator directories");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=wisp-test-bmc",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(made.success(), "openssl made no certificate");
        // The htpasswd file sushy-tools reads: bcrypt, made with the bcrypt it depends on.
        let hashed = std::process::Command::new(tools.join("python3"))
            .args(["-c", "import bcrypt, sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt()).decode())", password])
            .output()
            .expect("hash the password");
        let auth = dir.join("htpasswd");
        std::fs::write(
            &auth,
            format!("{USERNAME}:{}", String::from_utf8_lossy(&hashed.stdout)),
        )
        .expect("htpasswd");
        let config = dir.join("emulator.conf");
        std::fs::write(
            &config,
            format!(
                "SUSHY_EMULATOR_LISTEN_IP = '{address}'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\n\
                 SUSHY_EMULATOR_SSL_CERT = '{cert}'\nSUSHY_EMULATOR_SSL_KEY = '{key}'\n\
                 SUSHY_EMULATOR_AUTH_FILE = '{auth}'\nSUSHY_EMULATOR_STATE_DIR = '{state}'\n\
                 SUSHY_EMULATOR_FAKE_DRIVER = True\n\
                 SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '27946b59-9e44-4fa7-8e91-f3527a1ef094', 'name': 'node0', \
                 'power_state': 'Off', 'nics': [{{'mac': '02:00:00:00:00:0e', 'ip': '10.99.0.14'}}]}}]\n",
                cert = cert.display(),
                key = key.display(),
                auth = auth.display(),
                state = dir.join("state").display(),
            ),
        )
        .expect("emulator.conf");
        let child = netns
            .command(tools.join("sushy-emulator"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("emulator.log")).expect("log"))
            .spawn()
            .expect("start sushy-emulator");
        let emulator = SushyEmulator {
            child,
            base: format!("https://{address}:{port}"),
            password: password.to_string(),
        };
        crate::eventually_within("sushy-emulator answers", Duration::from_secs(30), || {
            netns
                .command("curl")
                .args(["-skf", "-m", "2", &format!("{}/redfish/v1", emulator.base)])
                .output()
                .is_ok_and(|output| output.status.success())
        });
        emulator
    }

    /// GET `path` from the emulator (from inside `netns`), as JSON.
    pub fn get(&self, netns: &Netns, path: &str) -> serde_json::Value {
        let body = netns.exec_ok(
            "curl",
            &[
                "-skf",
                "-u",
                &format!("{USERNAME}:{}", self.password),
                &format!("{}{path}", self.base),
            ],
        );
        serde_json::from_str(&body).unwrap_or_else(|err| panic!("{path}: {err}: {body}"))
    }
}

impl Drop for SushyEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
