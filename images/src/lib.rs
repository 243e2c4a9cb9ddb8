//! What Wisp boots, built from Debian's packages and nothing else:
//! - [`kernel`]: the kernel of Debian's `linux-image-amd64`, taken out of its package;
//! - [`cpio`]: initramfs archives in the kernel's `newc` format, written directly.
pub mod cpio;
pub mod kernel;
