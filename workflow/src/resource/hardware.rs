//! Hardware: a machine Wisp owns, identified by the MACs of its interfaces.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{addr, MacAddr};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HardwareSpec {
    pub interfaces: Vec<Interface>,
    /// Free-form: served as-is by the metadata service.
    pub metadata: Option<Value>,
    pub disks: Vec<Disk>,
    pub user_data: Option<String>,
    pub vendor_data: Option<String>,
    /// The BMC Machine (`bmc.tinkerbell.org`) that powers this machine, in its namespace.
    pub bmc_ref: Option<BmcRef>,
    // Tinkerbell fields Wisp keeps but does not act on.
    pub tink_version: Option<i64>,
    pub resources: Option<BTreeMap<String, Value>>,
    #[serde(rename = "agentID")]
    pub agent_id: Option<String>,
    pub auto: Option<Value>,
    pub references: Option<Value>,
}

/// Kubernetes' `TypedLocalObjectReference`. Tinkerbell reads only the name; its examples write
/// `kind: machine.bmc.tinkerbell.org`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct BmcRef {
    pub api_group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Interface {
    pub dhcp: Option<Dhcp>,
    pub netboot: Option<Netboot>,
    pub disable_dhcp: bool,
    pub isoboot: Option<Value>,
}

/// The DHCP reservation of one interface (snake_case, as in Tinkerbell).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Dhcp {
    pub mac: MacAddr,
    pub ip: Option<Ip>,
    pub hostname: Option<String>,
    pub lease_time: Option<u32>,
    #[serde(default)]
    pub name_servers: Vec<addr::Ipv4>,
    #[serde(default)]
    pub time_servers: Vec<addr::Ipv4>,
    pub arch: Option<String>,
    #[serde(default)]
    pub uefi: bool,
    /// The VLAN the machine boots on (0-4096, as text): option 43.116 and `vlan_id=` on the
    /// provisioning OS's kernel command line.
    pub vlan_id: Option<String>,
    pub iface_name: Option<String>,
    /// Option 15, and the one entry of option 119 (domain search), as Smee sends it.
    pub domain_name: Option<String>,
    /// Option 121 (RFC 3442).
    #[serde(default)]
    pub classless_static_routes: Vec<ClasslessStaticRoute>,
    /// With `boot_file_name`, options 66 and 67 in place of Wisp's own boot information
    /// (Tinkerbell requires both or neither).
    pub tftp_server_name: Option<String>,
    pub boot_file_name: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ClasslessStaticRoute {
    pub destination_descriptor: addr::Cidr,
    #[serde(deserialize_with = "addr::required")]
    pub router: Ipv4Addr,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Ip {
    #[serde(deserialize_with = "addr::required")]
    pub address: Ipv4Addr,
    #[serde(default, deserialize_with = "addr::netmask")]
    pub netmask: Option<Ipv4Addr>,
    #[serde(default, deserialize_with = "addr::optional")]
    pub gateway: Option<Ipv4Addr>,
    pub family: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Netboot {
    #[serde(rename = "allowPXE")]
    pub allow_pxe: Option<bool>,
    pub allow_workflow: Option<bool>,
    pub ipxe: Option<Ipxe>,
    pub osie: Option<Osie>,
    pub pxelinux: Option<Value>,
    pub rpi: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Ipxe {
    pub url: Option<String>,
    pub contents: Option<String>,
    pub binary: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Osie {
    #[serde(rename = "baseURL")]
    pub base_url: Option<String>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub kernel_params: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Disk {
    pub device: String,
}

impl HardwareSpec {
    /// Tinkerbell's fields that Wisp keeps but does not act on, by their paths under `spec`:
    /// apply names each in a warning (see docs/tinkerbell-compat.md for why).
    pub fn unused_fields(&self) -> Vec<String> {
        let mut unused = Vec::new();
        let top = [
            ("tinkVersion", self.tink_version.is_some()),
            ("resources", self.resources.is_some()),
            ("auto", self.auto.is_some()),
            ("references", self.references.is_some()),
        ];
        unused.extend(
            top.iter()
                .filter(|(_, set)| *set)
                .map(|(name, _)| name.to_string()),
        );
        for (index, interface) in self.interfaces.iter().enumerate() {
            let at = |field: &str| format!("interfaces[{index}].{field}");
            if interface.isoboot.is_some() {
                unused.push(at("isoboot"));
            }
            if let Some(netboot) = &interface.netboot {
                if netboot.pxelinux.is_some() {
                    unused.push(at("netboot.pxelinux"));
                }
                if netboot.rpi.is_some() {
                    unused.push(at("netboot.rpi"));
                }
                if netboot
                    .ipxe
                    .as_ref()
                    .is_some_and(|ipxe| ipxe.binary.is_some())
                {
                    unused.push(at("netboot.ipxe.binary"));
                }
            }
            if let Some(dhcp) = &interface.dhcp {
                if dhcp.iface_name.is_some() {
                    unused.push(at("dhcp.iface_name"));
                }
                if dhcp.ip.as_ref().is_some_and(|ip| ip.family.is_some()) {
                    unused.push(at("dhcp.ip.family"));
                }
            }
        }
        unused
    }

    /// The DHCP blocks of the interfaces Wisp answers DHCP for, with their indices in
    /// `spec.interfaces`.
    pub fn dhcp_interfaces(&self) -> impl Iterator<Item = (usize, &Dhcp)> + '_ {
        self.interfaces
            .iter()
            .enumerate()
            .filter(|(_, interface)| !interface.disable_dhcp)
            .filter_map(|(index, interface)| interface.dhcp.as_ref().map(|dhcp| (index, dhcp)))
    }

    /// The MACs this machine answers DHCP for: the allowlist entries of the XDP gate.
    pub fn macs(&self) -> impl Iterator<Item = MacAddr> + '_ {
        self.dhcp_interfaces().map(|(_, dhcp)| dhcp.mac)
    }
}
