//! Rendering Tinkerbell templates: Go `text/template` (through gotmpl, a port of Go's engine)
//! over the data Tinkerbell gives a template: the Workflow's `hardwareMap` entries at the top
//! level (`{{.device_1}}`) and the bound machine as `.Hardware`, with Go's field names
//! (`{{ index .Hardware.Disks 0 }}`), plus Tinkerbell's `formatPartition` helper.
use std::collections::BTreeMap;

use gotmpl::{MissingKey, Template, Value};
use serde_json::Value as Json;

use crate::resource::HardwareSpec;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(String);

/// Renders a template's `spec.data`. A key the template uses but the data lacks is an error
/// that names the key, as Tinkerbell's `missingkey=error` makes it.
pub fn render(
    data: &str,
    hardware_map: &BTreeMap<String, String>,
    hardware: &HardwareSpec,
) -> Result<String, RenderError> {
    let template = Template::new("workflow")
        .missing_key(MissingKey::Error)
        .func("formatPartition", |args| match args {
            [Value::String(device), partition] => match partition.as_int() {
                Some(partition) => Ok(Value::String(format_partition(device, partition).into())),
                None => Err(gotmpl::TemplateError::Exec(format!(
                    "formatPartition: partition {partition} is not a number"
                ))),
            },
            _ => Err(gotmpl::TemplateError::Exec(
                "formatPartition takes a device and a partition number".into(),
            )),
        })
        .parse(data)
        .map_err(|err| RenderError(err.to_string()))?;
    let mut context = serde_json::Map::new();
    for (key, value) in hardware_map {
        context.insert(key.clone(), Json::String(value.clone()));
    }
    context.insert("Hardware".into(), hardware_data(hardware));
    let context =
        gotmpl::to_value(&Json::Object(context)).map_err(|err| RenderError(err.to_string()))?;
    template
        .execute_to_string(&context)
        .map_err(|err| RenderError(err.to_string()))
}

/// Partition naming, exactly as Tinkerbell's `formatPartition`: a `/dev/disk/...` link (by-id,
/// by-path, ...) gets `-partN` (udev's names), a device whose name ends in a digit gets `pN`
/// (`/dev/nvme0n1p1`, `/dev/mmcblk0p1`, `/dev/loop0p1`), any other gets `N` (`/dev/sda1`).
pub fn format_partition(device: &str, partition: i64) -> String {
    if device.starts_with("/dev/disk/") {
        format!("{device}-part{partition}")
    } else if device.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{device}p{partition}")
    } else {
        format!("{device}{partition}")
    }
}

/// `.Hardware` as Tinkerbell builds it: Disks (device paths), Interfaces, UserData, VendorData
/// and Metadata, with the Go field names templates are written against.
fn hardware_data(hardware: &HardwareSpec) -> Json {
    let disks: Vec<Json> = hardware
        .disks
        .iter()
        .map(|disk| Json::String(disk.device.clone()))
        .collect();
    let interfaces = serde_json::to_value(&hardware.interfaces).unwrap_or(Json::Null);
    serde_json::json!({
        "Disks": disks,
        "Interfaces": go_names(interfaces),
        "UserData": hardware.user_data.clone().unwrap_or_default(),
        "VendorData": hardware.vendor_data.clone().unwrap_or_default(),
        "Metadata": go_names(hardware.metadata.clone().unwrap_or(Json::Null)),
    })
}

/// Renames JSON keys to the Go field names behind them: `lease_time` → `LeaseTime`,
/// `allowPXE` → `AllowPXE`, `mac` → `MAC`, with Go's initialisms.
fn go_names(value: Json) -> Json {
    match value {
        Json::Object(map) => Json::Object(
            map.into_iter()
                .map(|(key, value)| (go_name(&key), go_names(value)))
                .collect(),
        ),
        Json::Array(items) => Json::Array(items.into_iter().map(go_names).collect()),
        other => other,
    }
}

fn go_name(key: &str) -> String {
    const INITIALISMS: &[&str] = &[
        "id", "ip", "ips", "mac", "url", "pxe", "dhcp", "uefi", "ssh", "uuid", "os", "vlan",
        "osie", "ipxe", "bmc",
    ];
    // Split snake_case, then camelCase boundaries.
    let mut words = Vec::new();
    for part in key.split('_').filter(|p| !p.is_empty()) {
        let mut word = String::new();
        for c in part.chars() {
            if c.is_ascii_uppercase()
                && !word.is_empty()
                && !word.chars().all(|w| w.is_ascii_uppercase())
            {
                words.push(std::mem::take(&mut word));
            }
            word.push(c);
        }
        words.push(word);
    }
    words
        .iter()
        .map(|word| {
            let lower = word.to_ascii_lowercase();
            if INITIALISMS.contains(&lower.as_str()) {
                match lower.as_str() {
                    "ips" => "IPs".to_string(),
                    other => other.to_ascii_uppercase(),
                }
            } else {
                let mut chars = word.chars();
                chars.next().map_or_else(String::new, |first| {
                    first.to_ascii_uppercase().to_string() + chars.as_str()
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    /// The `spec` of the one document in an example file of the Tinkerbell demo.
    fn example_spec(file: &str) -> serde_json::Value {
        let path = format!(
            "{}/../examples/tinkerbell-demo/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut manifest = Manifest::default();
        manifest.parse(file, &std::fs::read_to_string(path).unwrap());
        manifest.documents[0].1.object["spec"].clone()
    }

    fn demo() -> (String, HardwareSpec) {
        let data = example_spec("template.yaml")["data"]
            .as_str()
            .unwrap()
            .to_string();
        let spec: HardwareSpec = serde_json::from_value(example_spec("hardware.yaml")).unwrap();
        (data, spec)
    }

    #[test]
    fn the_tinkerbell_demo_template_renders_with_its_hardware_map() {
        let (data, hardware) = demo();
        let map = BTreeMap::from([("device_1".to_string(), "1c:69:7a:11:22:33".to_string())]);
        let rendered = render(&data, &map, &hardware).unwrap();
        // Golden: the template is unchanged but for the worker.
        assert_eq!(rendered, data.replace("{{.device_1}}", "1c:69:7a:11:22:33"));
    }

    #[test]
    fn hardware_fields_and_format_partition() {
        let (_, hardware) = demo();
        let data = "disk: {{ index .Hardware.Disks 0 }}\nroot: {{ formatPartition ( index .Hardware.Disks 0 ) 1 }}\nmac: {{ (index .Hardware.Interfaces 0).DHCP.MAC }}\nip: {{ (index .Hardware.Interfaces 0).DHCP.IP.Address }}\nhost: {{ .Hardware.Metadata.Instance.Hostname }}\n";
        let rendered = render(data, &BTreeMap::new(), &hardware).unwrap();
        assert_eq!(rendered, "disk: /dev/nvme0n1\nroot: /dev/nvme0n1p1\nmac: 1c:69:7a:11:22:33\nip: 192.168.1.8\nhost: nuc-demo\n");
        // Tinkerbell's three cases: a /dev/disk/ link, a name ending in a digit, any other.
        assert_eq!(
            format_partition("/dev/disk/by-id/nvme-Samsung_SSD_970_S4EWNX0N", 1),
            "/dev/disk/by-id/nvme-Samsung_SSD_970_S4EWNX0N-part1"
        );
        assert_eq!(format_partition("/dev/mmcblk0", 3), "/dev/mmcblk0p3");
        assert_eq!(format_partition("/dev/sda", 2), "/dev/sda2");
        assert_eq!(format_partition("/dev/mapper/root", 2), "/dev/mapper/root2");
        assert_eq!(format_partition("", 1), "1");
        let err = render(
            "{{ formatPartition \"/dev/sda\" \"one\" }}",
            &BTreeMap::new(),
            &hardware,
        )
        .unwrap_err();
        assert!(err.to_string().contains("is not a number"), "{err}");
    }

    #[test]
    fn a_missing_key_is_an_error_that_names_it() {
        let (data, hardware) = demo();
        let err = render(&data, &BTreeMap::new(), &hardware).unwrap_err();
        assert!(err.to_string().contains("device_1"), "{err}");
    }
}
