//! `.Hardware` as Tinkerbell gives it to templates: its Go struct `templateHardwareData`
//! (Disks, Interfaces, UserData, Metadata, VendorData), read by Go field names. Go names do not
//! follow from the JSON names (`vlan_id` is `VLANID`, `allow_pxe` is `AllowPxe`, `allowPXE` is
//! `AllowPXE`), so they are spelled out here, type by type, from Tinkerbell's v1alpha1 API. A
//! field the Hardware leaves out renders as Go's zero value (`""`, `0`, `false`, an empty list),
//! and a nil pointer as Go's `<nil>`.
use serde_json::{Map, Value as Json};

/// The Go type of a field.
#[derive(Clone, Copy)]
enum Go {
    String,
    Int,
    Bool,
    /// `*bool`: nil when absent.
    OptionalBool,
    Strings,
    /// A struct held by value: its zero value when absent.
    Struct(&'static [Field]),
    /// A pointer to a struct: nil when absent.
    Pointer(&'static [Field]),
    /// A slice of structs (or of pointers to them).
    Structs(&'static [Field]),
}

/// A Go struct field: its JSON name, its Go name and its type.
type Field = (&'static str, &'static str, Go);

const IP: &[Field] = &[
    ("address", "Address", Go::String),
    ("netmask", "Netmask", Go::String),
    ("gateway", "Gateway", Go::String),
    ("family", "Family", Go::Int),
];

const CLASSLESS_STATIC_ROUTE: &[Field] = &[
    (
        "destination_descriptor",
        "DestinationDescriptor",
        Go::String,
    ),
    ("router", "Router", Go::String),
];

const DHCP: &[Field] = &[
    ("mac", "MAC", Go::String),
    ("hostname", "Hostname", Go::String),
    ("domain_name", "DomainName", Go::String),
    ("lease_time", "LeaseTime", Go::Int),
    ("name_servers", "NameServers", Go::Strings),
    ("time_servers", "TimeServers", Go::Strings),
    ("arch", "Arch", Go::String),
    ("uefi", "UEFI", Go::Bool),
    ("iface_name", "IfaceName", Go::String),
    ("ip", "IP", Go::Pointer(IP)),
    ("vlan_id", "VLANID", Go::String),
    (
        "classless_static_routes",
        "ClasslessStaticRoutes",
        Go::Structs(CLASSLESS_STATIC_ROUTE),
    ),
    ("tftp_server_name", "TFTPServerName", Go::String),
    ("boot_file_name", "BootFileName", Go::String),
];

const IPXE: &[Field] = &[
    ("url", "URL", Go::String),
    ("contents", "Contents", Go::String),
    ("binary", "Binary", Go::String),
];

const OSIE: &[Field] = &[
    ("baseURL", "BaseURL", Go::String),
    ("kernel", "Kernel", Go::String),
    ("initrd", "Initrd", Go::String),
    ("kernelParams", "KernelParams", Go::Strings),
];

const PXELINUX: &[Field] = &[("config", "Config", Go::String)];

const RPI: &[Field] = &[
    ("configTxt", "ConfigTxt", Go::String),
    ("firmwarePath", "FirmwarePath", Go::String),
    ("serialNum", "SerialNum", Go::String),
];

const NETBOOT: &[Field] = &[
    ("allowPXE", "AllowPXE", Go::OptionalBool),
    ("allowWorkflow", "AllowWorkflow", Go::OptionalBool),
    ("ipxe", "IPXE", Go::Pointer(IPXE)),
    ("osie", "OSIE", Go::Pointer(OSIE)),
    ("pxelinux", "PXELINUX", Go::Pointer(PXELINUX)),
    ("rpi", "RPI", Go::Pointer(RPI)),
];

const ISOBOOT: &[Field] = &[("sourceISO", "SourceISO", Go::String)];

const INTERFACE: &[Field] = &[
    ("netboot", "Netboot", Go::Pointer(NETBOOT)),
    ("isoboot", "Isoboot", Go::Pointer(ISOBOOT)),
    ("dhcp", "DHCP", Go::Pointer(DHCP)),
    ("disableDhcp", "DisableDHCP", Go::Bool),
];

const MANUFACTURER: &[Field] = &[("id", "ID", Go::String), ("slug", "Slug", Go::String)];

const OPERATING_SYSTEM: &[Field] = &[
    ("slug", "Slug", Go::String),
    ("distro", "Distro", Go::String),
    ("version", "Version", Go::String),
    ("image_tag", "ImageTag", Go::String),
    ("os_slug", "OsSlug", Go::String),
];

const INSTANCE_IP: &[Field] = &[
    ("address", "Address", Go::String),
    ("netmask", "Netmask", Go::String),
    ("gateway", "Gateway", Go::String),
    ("family", "Family", Go::Int),
    ("public", "Public", Go::Bool),
    ("management", "Management", Go::Bool),
];

const PARTITION: &[Field] = &[
    ("label", "Label", Go::String),
    ("number", "Number", Go::Int),
    ("size", "Size", Go::Int),
    ("start", "Start", Go::Int),
    ("type_guid", "TypeGUID", Go::String),
];

const STORAGE_DISK: &[Field] = &[
    ("device", "Device", Go::String),
    ("wipe_table", "WipeTable", Go::Bool),
    ("partitions", "Partitions", Go::Structs(PARTITION)),
];

const RAID: &[Field] = &[
    ("name", "Name", Go::String),
    ("level", "Level", Go::String),
    ("devices", "Devices", Go::Strings),
    ("spare", "Spare", Go::Int),
];

const FILE: &[Field] = &[
    ("path", "Path", Go::String),
    ("contents", "Contents", Go::String),
    ("mode", "Mode", Go::Int),
    ("uid", "UID", Go::Int),
    ("gid", "GID", Go::Int),
];

const FILESYSTEM_OPTIONS: &[Field] = &[
    ("force", "Force", Go::Bool),
    ("options", "Options", Go::Strings),
];

const MOUNT: &[Field] = &[
    ("device", "Device", Go::String),
    ("format", "Format", Go::String),
    ("files", "Files", Go::Structs(FILE)),
    ("create", "Create", Go::Pointer(FILESYSTEM_OPTIONS)),
    ("point", "Point", Go::String),
];

const FILESYSTEM: &[Field] = &[("mount", "Mount", Go::Pointer(MOUNT))];

const STORAGE: &[Field] = &[
    ("disks", "Disks", Go::Structs(STORAGE_DISK)),
    ("raid", "Raid", Go::Structs(RAID)),
    ("filesystems", "Filesystems", Go::Structs(FILESYSTEM)),
];

const INSTANCE: &[Field] = &[
    ("id", "ID", Go::String),
    ("state", "State", Go::String),
    ("hostname", "Hostname", Go::String),
    ("allow_pxe", "AllowPxe", Go::Bool),
    ("rescue", "Rescue", Go::Bool),
    (
        "operating_system",
        "OperatingSystem",
        Go::Pointer(OPERATING_SYSTEM),
    ),
    ("always_pxe", "AlwaysPxe", Go::Bool),
    ("ipxe_script_url", "IpxeScriptURL", Go::String),
    ("ips", "Ips", Go::Structs(INSTANCE_IP)),
    ("userdata", "Userdata", Go::String),
    ("crypted_root_password", "CryptedRootPassword", Go::String),
    ("tags", "Tags", Go::Strings),
    ("storage", "Storage", Go::Pointer(STORAGE)),
    ("ssh_keys", "SSHKeys", Go::Strings),
    ("network_ready", "NetworkReady", Go::Bool),
];

const CUSTOM: &[Field] = &[
    (
        "preinstalled_operating_system_version",
        "PreinstalledOperatingSystemVersion",
        Go::Pointer(OPERATING_SYSTEM),
    ),
    ("private_subnets", "PrivateSubnets", Go::Strings),
];

const FACILITY: &[Field] = &[
    ("plan_slug", "PlanSlug", Go::String),
    ("plan_version_slug", "PlanVersionSlug", Go::String),
    ("facility_code", "FacilityCode", Go::String),
];

const METADATA: &[Field] = &[
    ("state", "State", Go::String),
    ("bonding_mode", "BondingMode", Go::Int),
    ("manufacturer", "Manufacturer", Go::Pointer(MANUFACTURER)),
    ("instance", "Instance", Go::Pointer(INSTANCE)),
    ("custom", "Custom", Go::Pointer(CUSTOM)),
    ("facility", "Facility", Go::Pointer(FACILITY)),
];

/// `.Hardware` from the Hardware's `spec` (JSON, as stored).
pub fn template_hardware_data(spec: &Json) -> Json {
    let field = |name: &str| spec.get(name).unwrap_or(&Json::Null);
    let disks: Vec<Json> = field("disks")
        .as_array()
        .into_iter()
        .flatten()
        .map(|disk| go_value(disk.get("device").unwrap_or(&Json::Null), Go::String))
        .collect();
    serde_json::json!({
        "Disks": disks,
        "Interfaces": go_value(field("interfaces"), Go::Structs(INTERFACE)),
        "UserData": go_value(field("userData"), Go::String),
        "Metadata": go_value(field("metadata"), Go::Struct(METADATA)),
        "VendorData": go_value(field("vendorData"), Go::String),
    })
}

/// A JSON value as the Go field of type `ty` holds it, with Go's zero value when absent.
fn go_value(value: &Json, ty: Go) -> Json {
    match ty {
        Go::String => match value {
            Json::Null => Json::String(String::new()),
            Json::String(_) => value.clone(),
            other => Json::String(other.to_string()),
        },
        Go::Int => match value {
            Json::Number(_) => value.clone(),
            Json::String(text) => text.parse::<i64>().map_or(Json::from(0), Json::from),
            _ => Json::from(0),
        },
        Go::Bool => Json::Bool(value.as_bool().unwrap_or(false)),
        Go::OptionalBool => value.as_bool().map_or(Json::Null, Json::Bool),
        Go::Strings => Json::Array(
            value
                .as_array()
                .into_iter()
                .flatten()
                .map(|item| go_value(item, Go::String))
                .collect(),
        ),
        Go::Struct(fields) => go_struct(value, fields),
        Go::Pointer(fields) => match value {
            Json::Object(_) => go_struct(value, fields),
            _ => Json::Null,
        },
        Go::Structs(fields) => Json::Array(
            value
                .as_array()
                .into_iter()
                .flatten()
                .map(|item| go_value(item, Go::Pointer(fields)))
                .collect(),
        ),
    }
}

fn go_struct(value: &Json, fields: &[Field]) -> Json {
    let mut out = Map::new();
    for (json, go, ty) in fields {
        out.insert(
            go.to_string(),
            go_value(value.get(json).unwrap_or(&Json::Null), *ty),
        );
    }
    Json::Object(out)
}
