//! A manifest as `wisp apply -f` reads it, and a template's data as a workflow renders it.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use workflow::{manifest::Manifest, template};

fuzz_target!(|text: &str| {
    let mut manifest = Manifest::default();
    manifest.parse("fuzz.yaml", text);
    let hardware_map = BTreeMap::from([("device_1".to_string(), "1c:69:7a:00:00:01".to_string())]);
    // A Hardware object as stored, so that `.Hardware` and `.hardware` have fields to reach.
    let hardware = serde_json::json!({
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {
            "disks": [{"device": "/dev/nvme0n1"}],
            "interfaces": [{"dhcp": {"mac": "1c:69:7a:00:00:01", "ip": {"address": "10.0.0.8"}}}],
            "metadata": {"instance": {"hostname": "m"}},
        },
    });
    let _ = template::render(text, &hardware_map, &hardware);
});
