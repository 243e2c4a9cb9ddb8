//! A real IPMI BMC for the tests: OpenIPMI's `ipmi_sim` serving IPMI v2.0 over LAN on an address
//! in a lab namespace, with a chassis-control program that keeps the machine's power and boot
//! device in files (or, for a VM, starts and stops QEMU).
use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use crate::{Netns, TempDir};

pub const USERNAME: &str = "admin";

/// How the simulated chassis answers.
#[derive(Clone, PartialEq, Eq)]
pub enum Chassis {
    /// Power and boot device change as asked.
    Obedient,
    /// Takes every request and never powers on: a BMC whose machine is broken.
    NeverPowersOn,
    /// A QEMU VM (run in the BMC's namespace): powering on starts it with these arguments, the
    /// NIC or the disk first as the boot device says; powering off kills it.
    Vm {
        network_first: Vec<String>,
        disk_first: Vec<String>,
    },
}

/// An `ipmi_sim` process, killed on drop.
pub struct IpmiSim {
    child: Child,
    pub address: String,
    pub port: u16,
    state: PathBuf,
}

impl IpmiSim {
    /// Starts a BMC at `address:port` in `netns` that takes `password` for [`USERNAME`].
    pub fn start(
        netns: &Netns,
        work: &TempDir,
        (address, port): (&str, u16),
        password: &str,
        chassis: Chassis,
    ) -> IpmiSim {
        let dir = work.join(&format!("ipmi-{port}"));
        let state = dir.join("chassis");
        std::fs::create_dir_all(&state).expect("BMC directories");
        let program = dir.join("chassis-control");
        // ipmi_sim calls `PROGRAM 0x20 get power boot` and `PROGRAM 0x20 set power 1 ...`;
        // it needs answers such as `power:1` and `boot:pxe`.
        let power = match &chassis {
            Chassis::Obedient => "power() { echo \"$1\" > power; }\nis_on() { [ \"$(cat power 2>/dev/null)\" = 1 ]; }\n".to_string(),
            Chassis::NeverPowersOn => "power() { [ \"$1\" = 0 ] && echo 0 > power; }\nis_on() { [ \"$(cat power 2>/dev/null)\" = 1 ]; }\n".to_string(),
            Chassis::Vm { network_first, disk_first } => {
                std::fs::write(state.join("network-first"), network_first.join("\n")).expect("arguments");
                std::fs::write(state.join("disk-first"), disk_first.join("\n")).expect("arguments");
                // A one-time boot device is used by the next power-on, then forgotten; QEMU is
                // detached from ipmi_sim's pipe (setsid, -daemonize, no inherited output).
                "is_on() { [ -f qemu.pid ] && kill -0 \"$(cat qemu.pid)\" 2>/dev/null; }\n\
                 power() {\n  if [ \"$1\" = 1 ]; then\n    is_on && return\n    \
                 order=disk-first; [ \"$(cat boot 2>/dev/null)\" = pxe ] && order=network-first\n    \
                 echo default > boot\n    \
                 setsid qemu-system-x86_64 $(cat $order) -daemonize -pidfile qemu.pid </dev/null >/dev/null 2>>qemu.log\n  \
                 else\n    is_on || return\n    pid=$(cat qemu.pid)\n    kill \"$pid\"\n    \
                 for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 \"$pid\" 2>/dev/null || break; sleep 0.2; done\n    \
                 kill -9 \"$pid\" 2>/dev/null\n    rm -f qemu.pid\n  fi\n}\n".to_string()
            }
        };
        std::fs::write(
            &program,
            format!(
                "#!/bin/sh\ncd '{state}' || exit 1\n{power}shift\nop=$1\nshift\necho \"$op $*\" >> calls\n\
                 if [ \"$op\" = get ]; then\n  for item in \"$@\"; do\n    case $item in\n      \
                 power) if is_on; then echo power:1; else echo power:0; fi;;\n      \
                 boot) echo \"boot:$(cat boot 2>/dev/null || echo default)\";;\n    esac\n  done\n\
                 else\n  while [ $# -gt 1 ]; do\n    case $1 in\n      power) power \"$2\";;\n      \
                 boot) echo \"$2\" > boot;;\n      reset) power 0; power 1;;\n      \
                 shutdown) power 0;;\n    esac\n    \
                 shift 2\n  done\nfi\n",
                state = state.display(),
            ),
        )
        .expect("chassis program");
        std::fs::set_permissions(
            &program,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let lan = dir.join("lan.conf");
        std::fs::write(
            &lan,
            format!(
                "name \"wisp-test-bmc\"\nset_working_mc 0x20\n  startlan 1\n    addr {address} {port}\n    \
                 priv_limit admin\n    allowed_auths_callback none md2 md5 straight\n    \
                 allowed_auths_user none md2 md5 straight\n    allowed_auths_operator none md2 md5 straight\n    \
                 allowed_auths_admin none md2 md5 straight\n    guid a123456789abcdefa123456789abcdef\n  endlan\n  \
                 chassis_control \"{program} 0x20\"\n  user 2 true \"{USERNAME}\" \"{password}\" admin 10 none md2 md5 straight\n",
                program = program.display(),
            ),
        )
        .expect("lan.conf");
        let emu = dir.join("bmc.emu");
        std::fs::write(
            &emu,
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n",
        )
        .expect("bmc.emu");
        let child = netns
            .command("ipmi_sim")
            .arg("-c")
            .arg(&lan)
            .arg("-f")
            .arg(&emu)
            .arg("-s")
            .arg(dir.join("sim-state"))
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ipmi_sim (Debian's openipmi)");
        let sim = IpmiSim {
            child,
            address: address.to_string(),
            port,
            state,
        };
        // Ready once ipmitool gets an answer.
        crate::eventually_within("ipmi_sim answers", Duration::from_secs(10), || {
            netns
                .command("ipmitool")
                .args([
                    "-I",
                    "lanplus",
                    "-C",
                    "3",
                    "-H",
                    address,
                    "-p",
                    &port.to_string(),
                ])
                .args(["-U", USERNAME, "-P", password, "-N", "1", "-R", "1"])
                .args(["chassis", "power", "status"])
                .output()
                .is_ok_and(|output| output.status.success())
        });
        sim
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.state.join(name))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// The chassis's power: `1` on, `0` (or nothing yet) off.
    pub fn power(&self) -> String {
        self.read("power")
    }

    /// The boot device ipmi_sim last set (`pxe`, `default` for the disk, ...).
    pub fn boot_device(&self) -> String {
        self.read("boot")
    }

    /// Every call ipmi_sim made to the chassis program, in order.
    pub fn calls(&self) -> String {
        self.read("calls")
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A VM it started runs on by itself.
        if let Ok(pid) = std::fs::read_to_string(self.state.join("qemu.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// The YAML of a Secret holding the BMC credentials, and of a Machine at `host:port` using it.
pub fn machine_yaml(name: &str, host: &str, port: u16, password: &str) -> String {
    format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: {name}-auth, namespace: lab}}
stringData: {{username: {USERNAME}, password: \"{password}\"}}
---
apiVersion: bmc.tinkerbell.org/v1alpha1
kind: Machine
metadata: {{name: {name}, namespace: lab}}
spec:
  connection:
    host: {host}
    port: {port}
    authSecretRef: {{name: {name}-auth, namespace: lab}}
    insecureTLS: false
    providerOptions:
      preferredOrder: [ipmitool]
      ipmitool: {{port: {port}, cipherSuite: \"3\"}}
"
    )
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
