//! The bytes a boot HTTP client sends first, as the asset fast path reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u32, &[u8])| {
    let (file_length, head) = input;
    boot_userspace::http::assets::fuzz_head(head, u64::from(file_length));
});
