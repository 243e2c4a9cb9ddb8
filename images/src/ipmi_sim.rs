//! A real IPMI BMC for the lab: OpenIPMI's `ipmi_sim` serving IPMI v2.0 over LAN on an address
//! in a lab namespace, with a chassis-control program that keeps the machine's power and boot
//! device in files, or, for a VM, starts and stops QEMU. The tests and the demo power machines
//! through it.
use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::qemu::in_netns;

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
    /// Starts a BMC at `address:port` in `netns`, keeping its files under `workdir`; returns
    /// once it answers.
    pub fn start(
        netns: &str,
        workdir: &Path,
        (address, port): (&str, u16),
        password: &str,
        chassis: Chassis,
    ) -> anyhow::Result<IpmiSim> {
        let dir = workdir.join(format!("ipmi-{port}"));
        let state = dir.join("chassis");
        std::fs::create_dir_all(&state)?;
        let program = dir.join("chassis-control");
        // ipmi_sim calls `PROGRAM 0x20 get power boot` and `PROGRAM 0x20 set power 1 ...`;
        // it needs answers such as `power:1` and `boot:pxe`.
        let power = match &chassis {
            Chassis::Obedient => "power() { echo \"$1\" > power; }\nis_on() { [ \"$(cat power 2>/dev/null)\" = 1 ]; }\n".to_string(),
            Chassis::NeverPowersOn => "power() { [ \"$1\" = 0 ] && echo 0 > power; }\nis_on() { [ \"$(cat power 2>/dev/null)\" = 1 ]; }\n".to_string(),
            Chassis::Vm { network_first, disk_first } => {
                std::fs::write(state.join("network-first"), network_first.join("\n"))?;
                std::fs::write(state.join("disk-first"), disk_first.join("\n"))?;
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
        )?;
        let emu = dir.join("bmc.emu");
        std::fs::write(
            &emu,
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n",
        )?;
        let child = in_netns(netns, "ipmi_sim")
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
            .context("starting ipmi_sim (Debian's openipmi)")?;
        let sim = IpmiSim {
            child,
            address: address.to_string(),
            port,
            state,
        };
        // Ready once ipmitool gets an answer.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answered = in_netns(netns, "ipmitool")
                .args(["-I", "lanplus", "-C", "3", "-H", address])
                .args(["-p", &port.to_string(), "-U", USERNAME, "-P", password])
                .args(["-N", "1", "-R", "1", "chassis", "power", "status"])
                .output()
                .is_ok_and(|output| output.status.success());
            if answered {
                return Ok(sim);
            }
            if Instant::now() > deadline {
                bail!("ipmi_sim did not answer on {address}:{port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
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
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The YAML of a Secret holding a BMC's credentials, and of a Machine at `host:port` (IPMI)
/// using it, in `namespace`.
pub fn machine_yaml(
    name: &str,
    namespace: &str,
    (host, port): (&str, u16),
    password: &str,
) -> String {
    format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: {name}-auth, namespace: {namespace}}}
stringData: {{username: {USERNAME}, password: \"{password}\"}}
---
apiVersion: bmc.tinkerbell.org/v1alpha1
kind: Machine
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  connection:
    host: {host}
    port: {port}
    authSecretRef: {{name: {name}-auth, namespace: {namespace}}}
    insecureTLS: false
    providerOptions:
      preferredOrder: [ipmitool]
      ipmitool: {{port: {port}, cipherSuite: \"3\"}}
"
    )
}

/// The Tinkerbell example resources (as [`crate::disk::adapted_tinkerbell_example`] makes
/// them) with what a Tinkerbell user adds for zero-touch provisioning: the BMC's Secret and
/// Machine (`nuc-bmc` at `host:port`), `bmcRef` on the Hardware, netboot off until the workflow
/// turns it on, and the Workflow's `bootOptions` (`toggleAllowNetboot`, `bootMode: netboot`).
pub fn zero_touch_example(
    example: &str,
    bmc: (&str, u16),
    password: &str,
) -> anyhow::Result<String> {
    let resources = example
        .replacen(
            "spec:\n  disks:",
            "spec:\n  bmcRef: {kind: machine.bmc.tinkerbell.org, name: nuc-bmc}\n  disks:",
            1,
        )
        .replacen("allowPXE: true", "allowPXE: false", 1)
        .replacen("allowWorkflow: true", "allowWorkflow: false", 1)
        .replacen(
            "  hardwareMap:",
            "  bootOptions:\n    toggleAllowNetboot: true\n    bootMode: netboot\n  hardwareMap:",
            1,
        );
    if !(resources.contains("bmcRef")
        && resources.contains("allowPXE: false")
        && resources.contains("bootMode: netboot"))
    {
        bail!("the example no longer has the fields the zero-touch adaptation changes");
    }
    Ok(format!(
        "{}---\n{resources}",
        machine_yaml("nuc-bmc", "tink-system", bmc, password)
    ))
}
