//! A DHCP datagram, decoded and decided as the daemon does (`dhcp::handler::fuzz_decide`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    wisp_fuzz::contain_dependency_panics();
    boot_userspace::dhcp::handler::fuzz_decide(bytes);
});
