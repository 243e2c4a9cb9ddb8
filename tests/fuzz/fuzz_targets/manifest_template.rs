//! A manifest as `wisp apply -f` reads it, and a template's data as a workflow renders it.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use workflow::{manifest::Manifest, resource::HardwareSpec, template};

fuzz_target!(|text: &str| {
    let mut manifest = Manifest::default();
    manifest.parse("fuzz.yaml", text);
    let hardware_map = BTreeMap::from([("device_1".to_string(), "1c:69:7a:00:00:01".to_string())]);
    let _ = template::render(text, &hardware_map, &HardwareSpec::default());
});
