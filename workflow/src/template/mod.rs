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

/// A template is an operator's text, run inside the appliance: what it may cost is bounded,
/// so that no template can exhaust the appliance's memory, stack or time.
/// - `range` iterations, over the whole render (gotmpl counts them);
const MAX_RANGE_ITERATIONS: u64 = 100_000;
/// - what the functions make, over the whole render (strings by their bytes, lists and dicts
///   by their entries), so that no loop can build values without end;
const MAX_FUNCTION_BYTES: usize = 64 << 20;
/// - and the stack it runs on: values nest at most as deep as the iterations allow, and
///   dropping or printing one recurses through it (reserved, not committed, until used).
const RENDER_STACK_BYTES: usize = 512 << 20;

/// What a render's functions have made so far (see [`MAX_FUNCTION_BYTES`]).
#[derive(Clone, Default)]
pub(crate) struct Budget(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Budget {
    /// Go's builtin `name` (`printf`, `print`, `println`), which gotmpl keeps to itself,
    /// charged for what it returns: a template that doubles a string with `printf` in a loop
    /// is stopped like one that does so with `cat`. The builtin runs in a template of its own,
    /// with Go's formatting exactly.
    pub(crate) fn charged_builtin(
        &self,
        name: &'static str,
    ) -> impl Fn(&[gotmpl::Value]) -> gotmpl::Result<gotmpl::Value> + Send + Sync + 'static {
        let spent = std::sync::Arc::clone(&self.0);
        move |args| {
            let names: Vec<String> = (0..args.len()).map(|index| format!(".a{index}")).collect();
            let source = format!("{{{{ {name} {} }}}}", names.join(" "));
            let data = gotmpl::Value::Map(std::sync::Arc::new(
                args.iter()
                    .enumerate()
                    .map(|(index, arg)| (std::sync::Arc::from(format!("a{index}")), arg.clone()))
                    .collect(),
            ));
            let text = Template::new(name)
                .parse(&source)?
                .execute_to_string(&data)?;
            charge(&spent, name, text.len())?;
            Ok(gotmpl::Value::String(text.into()))
        }
    }

    /// `func`, charged for what it returns.
    pub(crate) fn charged(
        &self,
        name: &'static str,
        func: fn(&[gotmpl::Value]) -> gotmpl::Result<gotmpl::Value>,
    ) -> impl Fn(&[gotmpl::Value]) -> gotmpl::Result<gotmpl::Value> + Send + Sync + 'static {
        let spent = std::sync::Arc::clone(&self.0);
        move |args| {
            let value = func(args)?;
            let cost = match &value {
                gotmpl::Value::String(text) => text.len(),
                gotmpl::Value::List(items) => items.len() * 16,
                gotmpl::Value::Map(entries) => entries.len() * 48,
                _ => 8,
            };
            charge(&spent, name, cost)?;
            Ok(value)
        }
    }
}

/// Adds `cost` to what the render's functions have made, failing past the bound.
fn charge(spent: &std::sync::atomic::AtomicUsize, name: &str, cost: usize) -> gotmpl::Result<()> {
    let total = spent.fetch_add(cost, std::sync::atomic::Ordering::Relaxed) + cost;
    if total > MAX_FUNCTION_BYTES {
        return Err(gotmpl::TemplateError::Exec(format!(
            "{name}: the template's functions have made more than {} MiB; a template this \
             costly is a mistake",
            MAX_FUNCTION_BYTES >> 20
        )));
    }
    Ok(())
}

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
    // On a thread of its own, for the stack a deeply nested value may need (see above).
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("render".into())
            .stack_size(RENDER_STACK_BYTES)
            .spawn_scoped(scope, || render_here(data, hardware_map, hardware))
            .map_err(|err| RenderError(format!("cannot start the render: {err}")))?
            .join()
            .map_err(|_| RenderError("the render failed".into()))?
    })
}

fn render_here(
    data: &str,
    hardware_map: &BTreeMap<String, String>,
    hardware: &Json,
) -> Result<String, RenderError> {
    let budget = Budget::default();
    let template = sprig::register(Template::new("workflow-template"), &budget)
        .missing_key(MissingKey::Error)
        .max_range_iters(MAX_RANGE_ITERATIONS)
        .func(
            "formatPartition",
            budget.charged("formatPartition", functions::format_partition_func),
        )
        .func(
            "netmaskToPrefixLength",
            budget.charged("netmaskToPrefixLength", functions::netmask_to_prefix_length),
        )
        .func("toYaml", budget.charged("toYaml", functions::to_yaml))
        .func("fromYaml", budget.charged("fromYaml", functions::from_yaml))
        .func("printf", budget.charged_builtin("printf"))
        .func("print", budget.charged_builtin("print"))
        .func("println", budget.charged_builtin("println"))
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
            // Go's own formatting, through the charged builtins.
            ("{{ printf \"%s-%03d %v %q\" \"disk\" 7 (list 1 2) \"x\" }}", "disk-007 [1 2] \"x\""),
            ("{{ print \"a\" 1 2 \"b\" }}|{{ println \"a\" }}", "a1 2b|a\n"),
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
                "{{ range until 90000 }}aaaa{{ end }}",
                "rendered template exceeds 262144 bytes",
            ),
            // What a template may cost is bounded: time, what its functions make, its depth.
            (
                "{{ range until 1000 }}{{ range until 1000 }}{{ end }}{{ end }}",
                "range iteration budget exhausted",
            ),
            (
                "{{ $x := \"a\" }}{{ range until 40 }}{{ $x = cat $x $x }}{{ end }}",
                "more than 64 MiB",
            ),
            (
                "{{ $x := \"a\" }}{{ range until 40 }}{{ $x = printf \"%s%s\" $x $x }}{{ end }}",
                "more than 64 MiB",
            ),
            (
                "{{ $l := list }}{{ range until 90000 }}{{ $l = append $l (repeat 1000 \"a\") }}{{ end }}",
                "more than 64 MiB",
            ),
        ];
        for (data, needle) in cases {
            let err = render_demo(data).unwrap_err();
            assert!(err.contains(needle), "{data}: {err}");
        }
        // A value nested as deep as the iterations allow is made, printed and dropped.
        let deep = render_demo(
            "{{ $d := dict }}{{ range until 90000 }}{{ $d = dict \"a\" $d }}{{ end }}{{ len (toJson $d) }}",
        );
        assert!(deep.is_ok(), "{deep:?}");
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
