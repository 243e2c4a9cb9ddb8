//! Rendering Tinkerbell templates: Go `text/template` (through gotmpl, a port of Go's engine)
//! with the functions and data Tinkerbell's controller gives a template:
//! - functions: sprig's hermetic text set ([`sprig`]) and Tinkerbell's own ([`functions`]);
//! - data: the Workflow's `hardwareMap` entries at the top level (`{{.device_1}}`), the bound
//!   machine as `.Hardware` with Go's field names ([`hardware`]), the whole Hardware object as
//!   `.hardware` with its JSON names, and `.references`;
//! - `missingkey=error`, and output capped at 256 KiB.
mod functions;
mod hardware;
mod sprig;

use std::collections::BTreeMap;

use gotmpl::{MissingKey, Template};
use serde_json::Value as Json;

pub use functions::format_partition;

/// Tinkerbell's cap on a rendered template (`maxRenderBytes`).
pub const MAX_RENDERED_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(String);

/// Renders a template's `spec.data` for `hardware`, the whole stored Hardware object (`null`
/// for a Workflow without a `hardwareRef`, which Tinkerbell renders against an empty
/// Hardware). A key the template uses but the data lacks is an error that names the key.
pub fn render(
    data: &str,
    hardware_map: &BTreeMap<String, String>,
    hardware: &Json,
) -> Result<String, RenderError> {
    let template = sprig::register(Template::new("workflow-template"))
        .missing_key(MissingKey::Error)
        .func("formatPartition", functions::format_partition_func)
        .func("netmaskToPrefixLength", functions::netmask_to_prefix_length)
        .func("toYaml", functions::to_yaml)
        .func("fromYaml", functions::from_yaml)
        .parse(data)
        .map_err(|err| RenderError(err.to_string()))?;
    let mut context = serde_json::Map::new();
    for (key, value) in hardware_map {
        context.insert(key.clone(), Json::String(value.clone()));
    }
    // Set after the map's entries, so that these names win, as in Tinkerbell.
    let empty = Json::Object(serde_json::Map::new());
    let hardware = if hardware.is_object() {
        hardware
    } else {
        &empty
    };
    context.insert(
        "Hardware".into(),
        hardware::template_hardware_data(hardware.get("spec").unwrap_or(&Json::Null)),
    );
    let mut context =
        gotmpl::to_value(&Json::Object(context)).map_err(|err| RenderError(err.to_string()))?;
    let whole =
        functions::template_value(hardware.clone()).map_err(|err| RenderError(err.to_string()))?;
    // References are resolved only by allow-list rules, which Wisp does not take: Tinkerbell's
    // default rules deny every reference, and so does Wisp.
    let references = gotmpl::Value::Map(Default::default());
    if let gotmpl::Value::Map(map) = &mut context {
        let map = std::sync::Arc::make_mut(map);
        map.insert("hardware".into(), whole);
        map.insert("references".into(), references);
    }
    let mut out = Capped::default();
    match template.execute_fmt(&mut out, &context) {
        Ok(()) => Ok(out.text),
        Err(_) if out.overflowed => Err(RenderError(format!(
            "rendered template exceeds {MAX_RENDERED_BYTES} bytes"
        ))),
        Err(err) => Err(RenderError(err.to_string())),
    }
}

/// The render's output, refusing to grow past [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct Capped {
    text: String,
    overflowed: bool,
}

impl std::fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.text.len() + s.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(std::fmt::Error);
        }
        self.text.push_str(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    /// The one document of an example file of the Tinkerbell demo, as stored.
    fn example(file: &str) -> Json {
        let path = format!(
            "{}/../examples/tinkerbell-demo/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut manifest = Manifest::default();
        manifest.parse(file, &std::fs::read_to_string(path).unwrap());
        manifest.documents[0].1.object.clone()
    }

    fn demo_hardware() -> Json {
        example("hardware.yaml")
    }

    fn render_demo(data: &str) -> Result<String, String> {
        let map = BTreeMap::from([("device_1".to_string(), "1c:69:7a:11:22:33".to_string())]);
        render(data, &map, &demo_hardware()).map_err(|err| err.to_string())
    }

    #[test]
    fn the_tinkerbell_demo_template_renders_with_its_hardware_map() {
        let data = example("template.yaml")["spec"]["data"]
            .as_str()
            .unwrap()
            .to_string();
        // Golden: the template is unchanged but for the worker.
        assert_eq!(
            render_demo(&data).unwrap(),
            data.replace("{{.device_1}}", "1c:69:7a:11:22:33")
        );
    }

    /// Modelled on Tinkerbell's own cases (`template_funcs_test.go`,
    /// `template_validator_test.go`, `pre_test.go`, `reconciler_test.go`), against the demo
    /// Hardware: each template and what it renders to.
    #[test]
    fn renders_as_tinkerbell_renders() {
        let cases = [
            // .Hardware, by Go field names; zero values for what the Hardware leaves out.
            ("{{ index .Hardware.Disks 0 }}", "/dev/nvme0n1"),
            ("{{ formatPartition ( index .Hardware.Disks 0 ) 1 }}", "/dev/nvme0n1p1"),
            ("{{ (index .Hardware.Interfaces 0).DHCP.MAC }}", "1c:69:7a:11:22:33"),
            ("{{ (index .Hardware.Interfaces 0).DHCP.MAC | replace \":\" \"-\" }}", "1c-69-7a-11-22-33"),
            ("{{ (index .Hardware.Interfaces 0).DHCP.IP.Address }}", "192.168.1.8"),
            ("{{ (index .Hardware.Interfaces 0).DHCP.LeaseTime }}", "86400"),
            ("{{ (index .Hardware.Interfaces 0).DHCP.VLANID }}|{{ (index .Hardware.Interfaces 0).DHCP.TFTPServerName }}", "|"),
            ("{{ (index .Hardware.Interfaces 0).Netboot.AllowPXE }}", "true"),
            ("{{ .Hardware.Metadata.Instance.Hostname }}", "nuc-demo"),
            ("{{ .Hardware.Metadata.Instance.AllowPxe }}|{{ .Hardware.Metadata.Instance.IpxeScriptURL }}|{{ .Hardware.Metadata.Instance.Ips }}", "false||[]"),
            ("{{ .Hardware.Metadata.Instance.OperatingSystem.Distro }}|{{ .Hardware.Metadata.Instance.OperatingSystem.OsSlug }}|{{ .Hardware.Metadata.State }}|{{ .Hardware.UserData }}", "ubuntu|||"),
            ("{{ .Hardware.Metadata.Facility.FacilityCode }}", "onprem"),
            ("{{ if .Hardware.Metadata.Manufacturer }}set{{ else }}nil{{ end }}", "nil"),
            // .hardware: the whole object, by JSON names.
            ("{{ .hardware.metadata.name }}", "nuc-demo"),
            ("{{ (index .hardware.spec.interfaces 0).dhcp.hostname }}", "nuc-demo"),
            ("{{ .hardware.spec.metadata.instance.operating_system.distro }}", "ubuntu"),
            ("{{ .references }}", "map[]"),
            // Tinkerbell's functions.
            ("{{ netmaskToPrefixLength \"255.255.255.0\" }} {{ netmaskToPrefixLength \"255.255.255.240\" }} {{ netmaskToPrefixLength \"0.0.0.0\" }}", "24 28 0"),
            ("{{ (index .Hardware.Interfaces 0).DHCP.IP.Netmask | netmaskToPrefixLength }}", "24"),
            ("{{ netmaskToPrefixLength \"255.0.255.0\" }}", "0"),
            ("{{ dict \"name\" \"bob\" \"age\" 25 | toYaml }}", "age: 25\nname: bob"),
            ("{{ list \"a\" \"b\" \"c\" | toYaml }}", "- a\n- b\n- c"),
            ("{{ $m := fromYaml \"name: alice\\nage: 30\" }}{{ $m.name }}", "alice"),
            ("{{ (fromYaml (dict \"name\" \"test\" \"items\" (list \"one\" \"two\") | toYaml)).name }}", "test"),
            ("CONFIG: |\n{{ dict \"hostname\" \"worker-1\" | toYaml | nindent 2 }}", "CONFIG: |\n\n  hostname: worker-1"),
            // The map's keys, overridden by the three names Tinkerbell sets after them.
            ("{{ .device_1 }}", "1c:69:7a:11:22:33"),
        ];
        for (data, expected) in cases {
            assert_eq!(render_demo(data).as_deref(), Ok(expected), "{data}");
        }
    }

    #[test]
    fn fails_as_tinkerbell_fails() {
        let cases = [
            // missingkey=error names the key.
            ("{{ .device_2 }}", "device_2"),
            ("{{ .Hardware.NoSuchField }}", "NoSuchField"),
            ("{{ index .Hardware.Disks 5 }}", "out of range"),
            ("{{ .Invalid", "unclosed action"),
            ("{{ env \"HOME\" }}", "undefined function: env"),
            ("{{ expandenv \"$HOME\" }}", "undefined function: expandenv"),
            (
                "{{ getHostByName \"example.com\" }}",
                "undefined function: getHostByName",
            ),
            (
                "{{ netmaskToPrefixLength \"invalid\" }}",
                "invalid netmask format: invalid",
            ),
            (
                "{{ netmaskToPrefixLength \"255.255.255\" }}",
                "invalid netmask format",
            ),
            (
                "{{ netmaskToPrefixLength \"::1\" }}",
                "netmask must be IPv4: ::1",
            ),
            ("{{ fromYaml \"\" }}", "fromYaml: empty YAML input"),
            (
                "{{ fromYaml \":\\n  :\\n  - :\\n  invalid:: yaml:: content\" }}",
                "fromYaml",
            ),
            (
                "{{ formatPartition \"/dev/sda\" \"one\" }}",
                "is not a number",
            ),
            ("{{ repeat 300000 \"a\" }}", "exceeds"),
            (
                "{{ range until 300000 }}a{{ end }}",
                "rendered template exceeds 262144 bytes",
            ),
        ];
        for (data, needle) in cases {
            let err = render_demo(data).unwrap_err();
            assert!(err.contains(needle), "{data}: {err}");
        }
        // Exactly the cap renders.
        let at_cap = format!("{{{{ repeat {MAX_RENDERED_BYTES} \"a\" }}}}");
        assert_eq!(render_demo(&at_cap).unwrap().len(), MAX_RENDERED_BYTES);
    }

    #[test]
    fn without_a_hardware_it_renders_against_an_empty_one() {
        let map = BTreeMap::from([("device_1".to_string(), "3c:ec:ef:4c:4f:54".to_string())]);
        let rendered = render(
            "{{ .device_1 }} {{ .Hardware.Disks }} {{ .Hardware.UserData | quote }} {{ .hardware }}",
            &map,
            &Json::Null,
        )
        .unwrap();
        assert_eq!(rendered, "3c:ec:ef:4c:4f:54 [] \"\" map[]");
        let err = render("{{ index .Hardware.Disks 0 }}", &map, &Json::Null).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }

    #[test]
    fn format_partition_has_tinkerbells_three_cases() {
        for (device, partition, expected) in [
            ("/dev/disk/by-id/foobar", 1, "/dev/disk/by-id/foobar-part1"),
            ("/dev/disk/other", 2, "/dev/disk/other-part2"),
            ("/dev/nvme0n1", 1, "/dev/nvme0n1p1"),
            ("/dev/nvme0n1", 5, "/dev/nvme0n1p5"),
            ("/dev/sda", 1, "/dev/sda1"),
            ("/dev/sda", 2, "/dev/sda2"),
            ("/dev/loop0", 3, "/dev/loop0p3"),
            ("/dev/loop", 4, "/dev/loop4"),
            ("/dev/mmcblk0", 3, "/dev/mmcblk0p3"),
            ("", 1, "1"),
        ] {
            assert_eq!(format_partition(device, partition), expected);
        }
    }
}
