//! Builds the XDP program (boot-ebpf) for the bpfel target, so that `cargo build` at the root
//! yields a `wisp` binary with the program embedded.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let ebpf = Package {
        name: "boot-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../boot-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default())
}
