//! What the fuzz targets share.
use std::sync::Once;

static HOOK: Once = Once::new();

/// Lets a panic raised inside a dependency (a crate from the registry) unwind to the
/// catch_unwind Wisp wraps that dependency in, as the daemon and the worker do with dhcproto
/// and the image decoders. A panic in Wisp's own code still aborts, and so does a dependency's
/// panic that Wisp does not contain (libfuzzer-sys aborts on any panic that reaches it).
pub fn contain_dependency_panics() {
    HOOK.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_dependency = info
                .location()
                .is_some_and(|location| location.file().contains("/.cargo/registry/"));
            if !in_dependency {
                abort(info);
            }
        }));
    });
}
