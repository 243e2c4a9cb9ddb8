//! The machine table: one [`Machine`] per interface of a Hardware that has a `dhcp` block,
//! derived from the store whenever resources change. Everything on the boot path reads
//! machines here and nowhere else: the gate's allowlist, DHCP, the iPXE script, identity
//! (metadata and the worker API). The store is never read on that path.
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::{Arc, RwLock},
};

use workflow::resource::{hardware::Osie, HardwareSpec, MacAddr, ResourceKey};

/// Lease time when the Hardware names none (Tinkerbell's default too).
pub const DEFAULT_LEASE_SECS: u32 = 86_400;

/// A machine as the boot path sees it: its DHCP reservation and how it netboots.
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    pub hardware: ResourceKey,
    pub mac: MacAddr,
    pub address: Option<Ipv4Addr>,
    pub netmask: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
    pub name_servers: Vec<Ipv4Addr>,
    pub time_servers: Vec<Ipv4Addr>,
    pub hostname: Option<String>,
    pub domain: Option<String>,
    pub lease_secs: u32,
    /// `netboot.allowPXE`; absent means false, as in Tinkerbell.
    pub allow_pxe: bool,
    /// `netboot.allowWorkflow`; absent means false, as in Tinkerbell.
    pub allow_workflow: bool,
    /// Some Workflow names this machine in `hardwareRef` (known at sync time, so the boot
    /// path never reads the store).
    pub workflow_bound: bool,
    pub ipxe_url: Option<String>,
    pub ipxe_script: Option<String>,
    pub osie: Osie,
    /// Option 121: (network, prefix length, router).
    pub routes: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
    /// `tftp_server_name` and `boot_file_name`: options 66 and 67 in place of Wisp's boot
    /// information, as Smee sends them.
    pub boot_server: Option<(String, String)>,
    /// `vlan_id`: option 43.116 and `vlan_id=` for the provisioning OS.
    pub vlan_id: Option<String>,
    /// `dhcp.arch`, which names HookOS's kernel files (`vmlinuz-<arch>`).
    pub arch: Option<String>,
    /// `spec.agentID`: the provisioning OS's `worker_id` when set, as Smee gives it.
    pub agent_id: Option<String>,
    /// `metadata.facility.facility_code`: the provisioning OS's `facility=`.
    pub facility: Option<String>,
}

impl Machine {
    /// Whether the machine has work waiting: a Workflow names it and its Hardware allows
    /// workflows. Its iPXE script then boots the provisioning OS, not its disk.
    pub fn pending_work(&self) -> bool {
        self.allow_workflow && self.workflow_bound
    }

    /// Whether `address` is on the same subnet as this machine's reserved address.
    pub fn same_subnet(&self, address: Ipv4Addr) -> bool {
        match (self.address, self.netmask) {
            (Some(own), Some(mask)) => {
                u32::from(own) & u32::from(mask) == u32::from(address) & u32::from(mask)
            }
            _ => false,
        }
    }
}

#[cfg(any(test, fuzzing))]
impl Machine {
    /// A machine for unit tests and fuzzing: `lab/nuc`, MAC 1c:69:7a:11:22:33, no reservation, allowed to
    /// netboot and run workflows, with one waiting.
    pub fn example() -> Machine {
        Machine {
            hardware: ResourceKey {
                kind: workflow::resource::Kind::Hardware,
                namespace: "lab".into(),
                name: "nuc".into(),
            },
            mac: MacAddr([0x1c, 0x69, 0x7a, 0x11, 0x22, 0x33]),
            address: None,
            netmask: None,
            gateway: None,
            name_servers: vec![],
            time_servers: vec![],
            hostname: None,
            domain: None,
            lease_secs: DEFAULT_LEASE_SECS,
            allow_pxe: true,
            allow_workflow: true,
            workflow_bound: true,
            ipxe_url: None,
            ipxe_script: None,
            osie: Osie::default(),
            routes: vec![],
            boot_server: None,
            vlan_id: None,
            arch: None,
            agent_id: None,
            facility: None,
        }
    }
}

fn non_empty(field: &Option<String>) -> Option<String> {
    field.clone().filter(|value| !value.is_empty())
}

/// Every machine by MAC (and by reserved address): one snapshot, rebuilt whole whenever
/// resources change.
#[derive(Clone, Debug, Default)]
pub struct MachineTable {
    by_mac: HashMap<MacAddr, Arc<Machine>>,
    by_address: HashMap<Ipv4Addr, Arc<Machine>>,
}

impl MachineTable {
    /// `bound` holds the Hardware that some Workflow names.
    pub fn build<'a>(
        hardware: impl IntoIterator<Item = (&'a ResourceKey, &'a HardwareSpec)>,
        bound: &HashSet<ResourceKey>,
    ) -> MachineTable {
        let mut by_mac = HashMap::new();
        for (key, spec) in hardware {
            for (index, dhcp) in spec.dhcp_interfaces() {
                let netboot = spec.interfaces[index].netboot.clone().unwrap_or_default();
                let ip = dhcp.ip.as_ref();
                let machine = Machine {
                    hardware: key.clone(),
                    mac: dhcp.mac,
                    address: ip.map(|ip| ip.address),
                    netmask: ip.and_then(|ip| ip.netmask),
                    gateway: ip.and_then(|ip| ip.gateway),
                    name_servers: dhcp.name_servers.iter().map(|a| a.0).collect(),
                    time_servers: dhcp.time_servers.iter().map(|a| a.0).collect(),
                    hostname: dhcp.hostname.clone().filter(|h| !h.is_empty()),
                    domain: dhcp.domain_name.clone().filter(|d| !d.is_empty()),
                    lease_secs: dhcp
                        .lease_time
                        .filter(|&secs| secs > 0)
                        .unwrap_or(DEFAULT_LEASE_SECS),
                    allow_pxe: netboot.allow_pxe.unwrap_or(false),
                    allow_workflow: netboot.allow_workflow.unwrap_or(false),
                    workflow_bound: bound.contains(key),
                    ipxe_url: netboot
                        .ipxe
                        .as_ref()
                        .and_then(|i| i.url.clone())
                        .filter(|u| !u.is_empty()),
                    ipxe_script: netboot
                        .ipxe
                        .as_ref()
                        .and_then(|i| i.contents.clone())
                        .filter(|c| !c.is_empty()),
                    osie: netboot.osie.clone().unwrap_or_default(),
                    routes: dhcp
                        .classless_static_routes
                        .iter()
                        .map(|route| {
                            let network = route.destination_descriptor;
                            (network.network, network.prefix, route.router)
                        })
                        .collect(),
                    boot_server: dhcp
                        .tftp_server_name
                        .clone()
                        .zip(dhcp.boot_file_name.clone())
                        .filter(|(server, file)| !server.is_empty() && !file.is_empty()),
                    vlan_id: non_empty(&dhcp.vlan_id),
                    arch: non_empty(&dhcp.arch),
                    agent_id: non_empty(&spec.agent_id),
                    facility: spec
                        .metadata
                        .as_ref()
                        .and_then(|metadata| metadata.pointer("/facility/facility_code"))
                        .and_then(|code| code.as_str())
                        // It goes on a kernel command line: one printable word, or nothing.
                        .filter(|code| {
                            !code.is_empty() && code.chars().all(|c| c.is_ascii_graphic())
                        })
                        .map(str::to_string),
                };
                by_mac.insert(dhcp.mac, Arc::new(machine));
            }
        }
        let by_address = by_mac
            .values()
            .filter_map(|machine| Some((machine.address?, Arc::clone(machine))))
            .collect();
        MachineTable { by_mac, by_address }
    }

    pub fn get(&self, mac: &MacAddr) -> Option<&Arc<Machine>> {
        self.by_mac.get(mac)
    }

    /// The machine that `address` is reserved for.
    pub fn by_address(&self, address: Ipv4Addr) -> Option<&Arc<Machine>> {
        self.by_address.get(&address)
    }

    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }

    pub fn macs(&self) -> impl Iterator<Item = &MacAddr> {
        self.by_mac.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Machine>> {
        self.by_mac.values()
    }
}

/// The current machine table, shared by every service and swapped whole: a reader keeps the
/// snapshot it took for as long as it needs it, and never waits for a rebuild.
#[derive(Default)]
pub struct Machines(RwLock<Arc<MachineTable>>);

impl Machines {
    pub fn replace(&self, table: MachineTable) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    pub fn current(&self) -> Arc<MachineTable> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }
}
