//! A DHCP datagram, decoded and decided as the daemon does (`dhcp::handler::fuzz_decide`).
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;

static CONTAIN_DHCPROTO_PANICS: Once = Once::new();

fuzz_target!(|bytes: &[u8]| {
    // The daemon decodes under catch_unwind, because dhcproto asserts on some malformed
    // options. libFuzzer's hook aborts on every panic; this one lets dhcproto's unwind to the
    // catch below, as in the daemon, and still aborts on a panic anywhere in Wisp.
    CONTAIN_DHCPROTO_PANICS.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_dhcproto = info
                .location()
                .is_some_and(|location| location.file().contains("/dhcproto-"));
            if !in_dhcproto {
                abort(info);
            }
        }));
    });
    let _ = std::panic::catch_unwind(|| boot_userspace::dhcp::handler::fuzz_decide(bytes));
});
