//! A TFTP datagram, as the server's first socket (requests) and a transfer's socket (replies)
//! parse it.
#![no_main]

use boot_userspace::tftp::packet::{self, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(Request::Read { options, .. }) = packet::parse_request(bytes) {
        // Only values the server can honour get through (RFC 2348, 2349, 7440).
        assert!(options
            .block_size
            .is_none_or(|size| (8..=65464).contains(&size)));
        assert!(options.timeout_seconds.is_none_or(|seconds| seconds >= 1));
        assert!(options.window_size.is_none_or(|window| window >= 1));
    }
    let _ = packet::parse_reply(bytes);
});
