//! The per-machine iPXE script.
use std::net::Ipv4Addr;

use crate::machines::Machine;

/// What the script needs besides the machine.
pub struct ScriptContext<'a> {
    /// Wisp's address on the boot network, for the worker to call back.
    pub server: Ipv4Addr,
    /// The worker API's port there.
    pub worker_api_port: u16,
    /// Where boot assets are served unless the Hardware's `osie.baseURL` says otherwise.
    pub assets_base: &'a str,
    /// A workflow waits for this machine.
    pub pending_work: bool,
    /// The machine's metadata token (see `identity::token`), when the script goes to the machine
    /// itself.
    pub token: Option<&'a str>,
}

/// Kernel and initramfs names under the assets base, unless `osie` names others.
pub const DEFAULT_KERNEL: &str = "vmlinuz";
pub const DEFAULT_INITRD: &str = "initramfs";

/// The script for a machine whose netboot Wisp allows. `netboot.ipxe.contents` wins; then a
/// machine with no pending work exits to the next boot device; otherwise it boots the
/// provisioning OS.
pub fn script(machine: &Machine, context: &ScriptContext) -> String {
    if let Some(contents) = &machine.ipxe_script {
        return contents.clone();
    }
    let mac = machine.mac;
    if !context.pending_work {
        // `exit 1` rather than `exit`: on success OVMF opens its setup menu, on failure both
        // firmwares fall through to the next boot entry, the disk.
        return format!(
            "#!ipxe\necho Wisp: no pending work for {mac}; booting the next device\nexit 1\n"
        );
    }
    let osie = &machine.osie;
    let base = osie
        .base_url
        .as_deref()
        .filter(|b| !b.is_empty())
        .unwrap_or(context.assets_base)
        .trim_end_matches('/');
    let kernel = osie
        .kernel
        .as_deref()
        .filter(|k| !k.is_empty())
        .unwrap_or(DEFAULT_KERNEL);
    let initrd = osie
        .initrd
        .as_deref()
        .filter(|i| !i.is_empty())
        .unwrap_or(DEFAULT_INITRD);
    let hardware = &machine.hardware;
    let mut cmdline = vec![
        // EFI kernels find their initramfs by the name iPXE registered it under.
        "initrd=initrd".to_string(),
        "console=tty0".into(),
        "console=ttyS0,115200".into(),
        format!("wisp.server={}", context.server),
        format!("wisp.mac={mac}"),
        format!("wisp.hardware={}/{}", hardware.namespace, hardware.name),
        // What Tinkerbell's HookOS reads, so that it can be booted from Wisp too.
        format!(
            "grpc_authority={}:{}",
            context.server, context.worker_api_port
        ),
        "tinkerbell_tls=false".into(),
        format!("worker_id={mac}"),
        format!("hw_addr={mac}"),
    ];
    cmdline.extend(context.token.map(|token| format!("wisp.token={token}")));
    cmdline.extend(osie.kernel_params.iter().flatten().cloned());
    format!(
        "#!ipxe\necho Wisp: provisioning {name} ({mac})\nkernel {base}/{kernel} {cmdline}\ninitrd --name initrd {base}/{initrd}\nboot\n",
        name = machine.hostname.as_deref().unwrap_or(&hardware.name),
        cmdline = cmdline.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use workflow::resource::{hardware::Osie, Kind, ResourceKey};

    use super::*;

    fn machine() -> Machine {
        Machine {
            hardware: ResourceKey {
                kind: Kind::Hardware,
                namespace: "lab".into(),
                name: "nuc".into(),
            },
            mac: "1c:69:7a:11:22:33".parse().unwrap(),
            address: None,
            netmask: None,
            gateway: None,
            name_servers: vec![],
            time_servers: vec![],
            hostname: Some("nuc-demo".into()),
            domain: None,
            lease_secs: 60,
            allow_pxe: true,
            allow_workflow: true,
            workflow_bound: true,
            ipxe_url: None,
            ipxe_script: None,
            osie: Osie::default(),
        }
    }

    fn context(pending_work: bool) -> ScriptContext<'static> {
        ScriptContext {
            server: [10, 0, 0, 1].into(),
            worker_api_port: 42113,
            assets_base: "http://10.0.0.1:8080/assets",
            pending_work,
            token: Some("1c697a112233-00"),
        }
    }

    #[test]
    fn boots_the_provisioning_os_with_identity_and_efi_initrd_name() {
        let text = script(&machine(), &context(true));
        assert!(text.starts_with("#!ipxe\n"));
        assert!(text.contains("kernel http://10.0.0.1:8080/assets/vmlinuz initrd=initrd "));
        assert!(
            text.contains(" wisp.server=10.0.0.1 wisp.mac=1c:69:7a:11:22:33 wisp.hardware=lab/nuc")
                && text.contains(" grpc_authority=10.0.0.1:42113 tinkerbell_tls=false worker_id=1c:69:7a:11:22:33")
        );
        assert!(text.contains("initrd --name initrd http://10.0.0.1:8080/assets/initramfs\nboot\n"));
    }

    #[test]
    fn osie_overrides_the_defaults() {
        let mut machine = machine();
        machine.osie = Osie {
            base_url: Some("http://mirror/osie/".into()),
            kernel: Some("k".into()),
            initrd: Some("i".into()),
            kernel_params: Some(vec!["quiet".into()]),
        };
        let text = script(&machine, &context(true));
        assert!(
            text.contains("kernel http://mirror/osie/k initrd=initrd"),
            "{text}"
        );
        assert!(text.contains(" quiet\n"), "{text}");
        assert!(
            text.contains("initrd --name initrd http://mirror/osie/i"),
            "{text}"
        );
    }

    #[test]
    fn no_pending_work_exits_and_contents_win() {
        assert!(script(&machine(), &context(false)).contains("\nexit 1\n"));
        let mut custom = machine();
        custom.ipxe_script = Some("#!ipxe\nshell\n".into());
        assert_eq!(script(&custom, &context(true)), "#!ipxe\nshell\n");
    }
}
