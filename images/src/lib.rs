//! What Wisp boots, built from Debian's packages and nothing else:
//! - [`kernel`]: the kernel of Debian's `linux-image-amd64`, taken out of its package;
//! - [`cpio`]: initramfs archives in the kernel's `newc` format, written directly;
//! - [`hello`]: a minimal netboot payload that prints one line and powers off;
//! - [`qemu`]: VMs with real firmware, for the lab.
pub mod cpio;
pub mod hello;
pub mod kernel;
pub mod qemu;
