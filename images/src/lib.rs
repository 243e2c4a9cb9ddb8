//! What Wisp boots, built from Debian's packages and nothing else:
//! - [`kernel`]: the kernel of Debian's `linux-image-amd64`, taken out of its package;
//! - [`cpio`]: initramfs archives in the kernel's `newc` format, written directly;
//! - [`hello`]: a minimal netboot payload that prints one line and powers off;
//! - [`provisioning`]: Wisp's provisioning OS (busybox, the worker, the modules it needs);
//! - [`modules`]: kernel modules and their dependencies, for an initramfs;
//! - [`debian`]: a real Debian root, bootstrapped from the machine's own mirror;
//! - [`disk`]: the bootable disk image the tests install (GRUB, ext4, the Debian root);
//! - [`qemu`]: VMs with real firmware, for the lab;
//! - [`ipmi_sim`]: a real IPMI BMC for them (OpenIPMI's simulator);
//! - [`etcd`]: a real etcd cluster, a member per network namespace;
//! - [`appliance`]: Wisp itself in a VM, for the power-loss test;
//! - [`browser`]: headless Chromium, to look at the rack page.
pub mod appliance;
pub mod browser;
pub mod cpio;
pub mod debian;
pub mod disk;
pub mod etcd;
pub mod hello;
pub mod ipmi_sim;
pub mod kernel;
pub mod modules;
pub mod provisioning;
pub mod qemu;
