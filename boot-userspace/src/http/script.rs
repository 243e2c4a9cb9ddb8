//! The per-machine iPXE script.
use std::net::Ipv4Addr;

use crate::machines::Machine;

/// What the script needs besides the machine.
pub struct ScriptContext<'a> {
    /// Wisp's address on the boot network, for the worker to call back.
    pub server: Ipv4Addr,
    /// The worker API's port there.
    pub worker_api_port: u16,
    /// The other appliances' worker APIs (`address:port`), when appliances share a store.
    pub peers: &'a [String],
    /// Where boot assets are served unless the Hardware's `osie.baseURL` says otherwise.
    pub assets_base: &'a str,
    /// Wisp's assets directory holds HookOS-named kernels (`vmlinuz-<arch>`).
    pub arch_named_assets: bool,
    /// A workflow waits for this machine.
    pub pending_work: bool,
    /// The machine's metadata token (see `identity::token`), when the script goes to the machine
    /// itself.
    pub token: Option<&'a str>,
}

/// Wisp's kernel and initramfs names under the assets base, unless `osie` names others or the
/// files are named as HookOS names them (`vmlinuz-<arch>`, `initramfs-<arch>`).
pub const DEFAULT_KERNEL: &str = "vmlinuz";
pub const DEFAULT_INITRD: &str = "initramfs";

/// Whether `assets` holds kernels named as HookOS names them.
pub fn arch_named_assets(assets: &std::path::Path) -> bool {
    std::fs::read_dir(assets).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with("vmlinuz-"))
        })
    })
}

/// The script for a machine whose netboot Wisp allows. `netboot.ipxe.contents` wins; then a
/// machine with no pending work exits to the next boot device; otherwise it boots the
/// provisioning OS, with the kernel parameters both Wisp's provisioning OS and Tinkerbell's
/// HookOS read.
pub fn script(machine: &Machine, context: &ScriptContext) -> String {
    if let Some(contents) = &machine.ipxe_script {
        // Smee puts the contents under a `#!ipxe` header of its own, so Tinkerbell users write
        // them with or without one.
        return if contents.trim_start().starts_with("#!ipxe") {
            contents.clone()
        } else {
            format!("#!ipxe\n{contents}\n")
        };
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
    let remote = osie.base_url.as_deref().filter(|b| !b.is_empty());
    let base = remote.unwrap_or(context.assets_base).trim_end_matches('/');
    // A HookOS at `osie.baseURL`, or one copied into the assets, names its files by arch.
    let arch_named = remote.is_some() || context.arch_named_assets;
    let name = |named: &Option<String>, default: &str| match named.as_deref() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ if arch_named => format!("{default}-${{arch}}"),
        _ => default.to_string(),
    };
    let (kernel, initrd) = (
        name(&osie.kernel, "vmlinuz"),
        name(&osie.initrd, "initramfs"),
    );
    // HookOS's names: Smee's `dhcp.arch`, else what this iPXE was built for, in Linux's names.
    let arch = match &machine.arch {
        Some(arch) => format!("set arch {arch}\n"),
        None => "set arch ${buildarch}\n\
                 iseq ${arch} arm64 && set arch aarch64 ||\n\
                 iseq ${arch} i386 && set arch x86_64 ||\n"
            .to_string(),
    };
    let hardware = &machine.hardware;
    let mut cmdline = vec![
        // EFI kernels find their initramfs by the name iPXE registered it under.
        "initrd=initrd".to_string(),
        "console=tty0".into(),
        "console=ttyS0,115200".into(),
        format!("wisp.server={}", context.server),
        format!("wisp.mac={mac}"),
        format!("wisp.hardware={}/{}", hardware.namespace, hardware.name),
    ];
    // What Tinkerbell's HookOS reads (Smee's parameters), so that it boots from Wisp too.
    cmdline.extend(
        machine
            .vlan_id
            .as_ref()
            .map(|vlan| format!("vlan_id={vlan}")),
    );
    cmdline.extend([
        format!(
            "facility={}",
            machine.facility.as_deref().unwrap_or_default()
        ),
        format!(
            "grpc_authority={}:{}",
            context.server, context.worker_api_port
        ),
        "tinkerbell_tls=false".into(),
        "tinkerbell_insecure_tls=false".into(),
        format!(
            "worker_id={}",
            machine.agent_id.clone().unwrap_or_else(|| mac.to_string())
        ),
        format!("hw_addr={mac}"),
        "modules=loop,squashfs,sd-mod,usb-storage".into(),
    ]);
    cmdline.extend(context.token.map(|token| format!("wisp.token={token}")));
    // The other appliances sharing the store: the worker goes on with one of them when this
    // one stops answering.
    if !context.peers.is_empty() {
        cmdline.push(format!("wisp.peers={}", context.peers.join(",")));
    }
    // The Hardware's own parameters last: for the kernel, the last `console=` wins.
    cmdline.extend(osie.kernel_params.iter().flatten().cloned());
    format!(
        "#!ipxe\necho Wisp: provisioning {name} ({mac})\n{arch}kernel {base}/{kernel} {cmdline}\ninitrd --name initrd {base}/{initrd}\nboot\n",
        name = machine.hostname.as_deref().unwrap_or(&hardware.name),
        cmdline = cmdline.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use workflow::resource::hardware::Osie;

    use super::*;

    fn machine() -> Machine {
        Machine {
            hostname: Some("nuc-demo".into()),
            lease_secs: 60,
            ..Machine::example()
        }
    }

    fn context(pending_work: bool) -> ScriptContext<'static> {
        ScriptContext {
            server: [10, 0, 0, 1].into(),
            worker_api_port: 42113,
            peers: &[],
            assets_base: "http://10.0.0.1:8080/assets",
            arch_named_assets: false,
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
                && text.contains(" facility= grpc_authority=10.0.0.1:42113 tinkerbell_tls=false tinkerbell_insecure_tls=false worker_id=1c:69:7a:11:22:33 hw_addr=1c:69:7a:11:22:33 modules=loop,squashfs,sd-mod,usb-storage"),
            "{text}"
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
    fn no_pending_work_exits_and_contents_win_with_or_without_a_header() {
        assert!(script(&machine(), &context(false)).contains("\nexit 1\n"));
        let mut custom = machine();
        custom.ipxe_script = Some("#!ipxe\nshell\n".into());
        assert_eq!(script(&custom, &context(true)), "#!ipxe\nshell\n");
        // As Smee serves them: contents without `#!ipxe` get one.
        custom.ipxe_script = Some("dhcp\nchain http://10.0.0.9/boot.ipxe".into());
        assert_eq!(
            script(&custom, &context(true)),
            "#!ipxe\ndhcp\nchain http://10.0.0.9/boot.ipxe\n"
        );
    }

    #[test]
    fn hookos_parameters_and_names() {
        let mut machine = machine();
        machine.agent_id = Some("rack4-u12".into());
        machine.vlan_id = Some("30".into());
        machine.facility = Some("onprem".into());
        machine.osie.base_url = Some("http://10.0.0.5/hook".into());
        let text = script(&machine, &context(true));
        assert!(text.contains(" vlan_id=30 facility=onprem "), "{text}");
        assert!(
            text.contains(" worker_id=rack4-u12 hw_addr=1c:69:7a:11:22:33 "),
            "{text}"
        );
        // HookOS's file names, by arch: iPXE's own build, in Linux's names.
        assert!(
            text.contains("set arch ${buildarch}\niseq ${arch} arm64 && set arch aarch64 ||\n"),
            "{text}"
        );
        assert!(
            text.contains("kernel http://10.0.0.5/hook/vmlinuz-${arch} "),
            "{text}"
        );
        assert!(
            text.contains("initrd --name initrd http://10.0.0.5/hook/initramfs-${arch}\n"),
            "{text}"
        );
        // The Hardware's arch, when it names one.
        machine.arch = Some("aarch64".into());
        assert!(script(&machine, &context(true)).contains("set arch aarch64\nkernel "));
        // Wisp's own assets keep Wisp's names unless HookOS-named files are there.
        machine.osie.base_url = None;
        assert!(script(&machine, &context(true)).contains("/assets/vmlinuz initrd=initrd"));
        let named = ScriptContext {
            arch_named_assets: true,
            ..context(true)
        };
        assert!(script(&machine, &named).contains("/assets/vmlinuz-${arch} initrd=initrd"));
    }

    #[test]
    fn names_the_other_appliances_only_when_there_are_some() {
        let machine = Machine::example();
        assert!(!script(&machine, &context(true)).contains("wisp.peers"));
        let peers = ["10.0.0.2:42113".to_string(), "10.0.0.3:42113".to_string()];
        let shared = ScriptContext {
            peers: &peers,
            ..context(true)
        };
        assert!(script(&machine, &shared).contains(" wisp.peers=10.0.0.2:42113,10.0.0.3:42113"));
    }
}
