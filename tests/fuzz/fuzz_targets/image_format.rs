//! An OS image as image2disk receives it: format detection, then the decoder it picks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    wisp_fuzz::contain_dependency_panics();
    wisp_worker::actions::fuzz_image(bytes);
});
