//! The per-machine iPXE script.
use std::net::Ipv4Addr;

use crate::{dhcp::reservation::Reservation, worker_api::WORKER_API_PORT};

/// What the script needs besides the reservation.
pub struct ScriptContext<'a> {
    /// Wisp's address on the boot network, for the worker to call back.
    pub server: Ipv4Addr,
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
pub fn script(reservation: &Reservation, context: &ScriptContext) -> String {
    if let Some(contents) = &reservation.ipxe_script {
        return contents.clone();
    }
    let mac = reservation.mac;
    if !context.pending_work {
        // `exit 1` rather than `exit`: on success OVMF opens its setup menu, on failure both
        // firmwares fall through to the next boot entry, the disk.
        return format!(
            "#!ipxe\necho Wisp: no pending work for {mac}; booting the next device\nexit 1\n"
        );
    }
    let osie = &reservation.osie;
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
    let hardware = &reservation.hardware;
    let mut cmdline = vec![
        // EFI kernels find their initramfs by the name iPXE registered it under.
        "initrd=initrd".to_string(),
        "console=tty0".into(),
        "console=ttyS0,115200".into(),
        format!("wisp.server={}", context.server),
        format!("wisp.mac={mac}"),
        format!("wisp.hardware={}/{}", hardware.namespace, hardware.name),
        // What Tinkerbell's HookOS reads, so that it can be booted from Wisp too.
        format!("grpc_authority={}:{WORKER_API_PORT}", context.server),
        "tinkerbell_tls=false".into(),
        format!("worker_id={mac}"),
        format!("hw_addr={mac}"),
    ];
    cmdline.extend(context.token.map(|token| format!("wisp.token={token}")));
    cmdline.extend(osie.kernel_params.iter().flatten().cloned());
    format!(
        "#!ipxe\necho Wisp: provisioning {name} ({mac})\nkernel {base}/{kernel} {cmdline}\ninitrd --name initrd {base}/{initrd}\nboot\n",
        name = reservation.hostname.as_deref().unwrap_or(&hardware.name),
        cmdline = cmdline.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use workflow::resource::{hardware::Osie, Kind, ResourceKey};

    use super::*;

    fn reservation() -> Reservation {
        Reservation {
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
            assets_base: "http://10.0.0.1:8080/assets",
            pending_work,
            token: Some("1c697a112233-00"),
        }
    }

    #[test]
    fn boots_the_provisioning_os_with_identity_and_efi_initrd_name() {
        let text = script(&reservation(), &context(true));
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
        let mut reservation = reservation();
        reservation.osie = Osie {
            base_url: Some("http://mirror/osie/".into()),
            kernel: Some("k".into()),
            initrd: Some("i".into()),
            kernel_params: Some(vec!["quiet".into()]),
        };
        let text = script(&reservation, &context(true));
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
        assert!(script(&reservation(), &context(false)).contains("\nexit 1\n"));
        let mut custom = reservation();
        custom.ipxe_script = Some("#!ipxe\nshell\n".into());
        assert_eq!(script(&custom, &context(true)), "#!ipxe\nshell\n");
    }
}
